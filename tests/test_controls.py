"""The `intensity` control: hand-crafted features that run like any backbone and are marked
as a control wherever results are shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainbench.backbone import create_backbone
from brainbench.errors import BenchError
from brainbench.features import FeatureCache, extract_features
from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.tables import stats_table
from brainbench.profiles import PROFILES
from brainbench.runner import RunConfig, run
from brainbench.store import ResultStore, default_url

from .phantom_cohorts import phantoms  # noqa: F401  (fixture)


def test_intensity_features_separate_contrasts_and_are_deterministic(phantoms, tmp_path):  # noqa: F811
    backbone = create_backbone("intensity")
    assert backbone.weights.status == "control" and backbone.weights.is_control
    assert not backbone.weights.is_random and backbone.parameter_count() == 0
    case = sorted((phantoms / "BraTS2021").iterdir())[0]
    paths = [case / f"{case.name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    tokens, _ = extract_features(backbone, paths, FeatureCache(tmp_path / "a"), progress=False)
    again, _ = extract_features(backbone, paths, FeatureCache(tmp_path / "b"), progress=False)
    vectors = np.stack([tokens[p]["cls"][0] for p in paths])
    np.testing.assert_array_equal(vectors, np.stack([again[p]["cls"][0] for p in paths]))
    assert vectors.shape == (4, backbone.contract.feature_dim) and np.isfinite(vectors).all()
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    assert (distances[~np.eye(4, dtype=bool)] > 1e-3).all()  # every contrast looks different
    histogram = vectors[:, 1:27]
    np.testing.assert_allclose(histogram.sum(axis=1), 1.0, rtol=1e-5)


def test_an_empty_volume_gives_zero_features():
    backbone = create_backbone("intensity")
    out = backbone.embed(torch.zeros(1, 1, 64, 64, 64))
    assert torch.count_nonzero(out["cls"]) == 0


def test_intensity_takes_no_weights(tmp_path):
    with pytest.raises(BenchError, match="control and takes no weights"):
        create_backbone("intensity", weights=tmp_path / "w.pt")


def test_control_rows_are_marked_on_the_table(tmp_path):
    config = RunConfig(model="intensity", fractions=(1.0,), seeds=(0, 1),
                       profile=PROFILES.get("tiny"), cache_dir=tmp_path / "cache",
                       results_dir=tmp_path / "results", tasks=("brain_age", "idh_status"),
                       progress=False)
    report = run(config)
    assert report.weights_status == "control" and len(report.cells) == 4
    store = ResultStore(default_url(tmp_path / "results"))
    assert set(store.frame().weights_status) == {"control"}
    text = stats_table(load_analysis(store), 1.0, "markdown")
    assert "intensity [control]" in text and "| CONTROL" in text and "CONTROL = " in text


def test_control_results_and_persons_survive_export_and_import(tmp_path):
    from brainbench.results_io import export_results, import_results

    config = RunConfig(model="intensity", fractions=(1.0,), seeds=(0,),
                       profile=PROFILES.get("tiny"), cache_dir=tmp_path / "cache",
                       results_dir=tmp_path / "results", tasks=("sequence_cls",),
                       progress=False)
    run(config)
    source = ResultStore(default_url(tmp_path / "results"))
    cell_ids = list(source.frame().cell_id.unique())
    persons = source.persons(cell_ids)
    [cell_persons] = persons.values()
    # four sequences per BraTS subject: each test person holds four samples
    assert len(cell_persons) == 4 * len(set(cell_persons.values()))
    [path] = export_results(source, tmp_path / "export")
    target = ResultStore(default_url(tmp_path / "other"))
    import_results(target, path)
    assert target.persons(cell_ids) == persons
    assert set(target.frame().weights_status) == {"control"}


def test_oracle_reads_the_phantom_truth_and_tops_random_features(tmp_path):
    config = RunConfig(model="oracle", fractions=(1.0,), seeds=(0,),
                       profile=PROFILES.get("tiny"), cache_dir=tmp_path / "cache",
                       results_dir=tmp_path / "results",
                       tasks=("brain_age", "sequence_cls", "tumor_seg"), progress=False)
    report = run(config)
    assert report.weights_status == "control"
    assert [t.id for t in report.pending] == ["tumor_seg"]  # no patch tokens: reported, not run
    assert "reads ground truth" in report.pending[0].pending_reason
    frame = ResultStore(default_url(tmp_path / "results")).frame()
    score = {(r.task, r.metric): r.value for r in frame.itertuples()}
    assert score[("sequence_cls", "auc")] == pytest.approx(1.0)  # the true contrast
    assert score[("brain_age", "mae")] < 10  # ageing latents predict age (chance is ~18 y)


def test_oracle_refuses_real_data(tmp_path):
    from .helpers import random_brain, write_nifti

    image = write_nifti(tmp_path / "IXI" / "IXI-T1" / "IXI002-Guys-0482-T1.nii.gz",
                        random_brain(0))
    backbone = create_backbone("oracle")
    with pytest.raises(BenchError, match="phantom cohorts only"):
        extract_features(backbone, [image], FeatureCache(tmp_path / "cache"), progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npz"))
