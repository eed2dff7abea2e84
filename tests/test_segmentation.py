"""tumor_seg: frozen patch tokens + trained heads segment phantom tumours; bad labels are named."""

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainbench.backbone import Backbone, InputContract, WeightsInfo
from brainbench.errors import BenchError
from brainbench.phantoms import generate_phantoms
from brainbench.profiles import PROFILES
from brainbench.evaluators.segmentation import SegmentationConfig, SegmentationEvaluator
from brainbench.runner import RunConfig, RunReport, run_task
from brainbench.segmentation import region_scores
from brainbench.segmentation.data import choose_slices
from brainbench.segmentation.heads import head_layers, make_head, trainable_parameters
from brainbench.segmentation.labels import read_regions
from brainbench.segmentation.metrics import diagonal_mm
from brainbench.segmentation.train import (HEAD_INIT_LOCK, HEAD_THREADS_MEMORY_BYTES,
                                           TrainConfig, head_threads, run_head_jobs,
                                           train_head)
from brainbench.store import ResultStore, default_url
from brainbench.targets import SegLabel, SegmentationTarget
from brainbench.taskspec import get_task
from tests.helpers import TinyBackbone, write_nifti

TASK = get_task("tumor_seg")


class PatchConvBackbone(Backbone):
    """A fixed random conv patch encoder (stride 4) with `patch_tokens`."""

    name = "patchconv"

    def __init__(self, dim: int = 16, size: int = 64, slices: int = 24, layers: int = 2) -> None:
        generator = torch.Generator().manual_seed(0)
        self.net = torch.nn.ModuleList([torch.nn.Conv2d(3, dim, 4, stride=4)] + [
            torch.nn.Conv2d(dim, dim, 3, padding=1) for _ in range(layers - 1)])
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        self.contract = InputContract("2d", 3, (size, size), slices, "robust_zscore",
                                      ("cls", "patch_mean"), dim)
        self.weights = WeightsInfo("pretrained", "patchconv seed 0", "0" * 64)
        self.calls = 0

    def embed(self, batch):
        grid = self.patch_tokens(batch, [1])[0]
        return {"cls": grid.amax((2, 3)), "patch_mean": grid.mean((2, 3))}

    def num_patch_layers(self) -> int:
        return len(self.net)

    def patch_tokens(self, batch, layers):
        # no inference_mode / requires_grad_(False) here on purpose: the harness must not
        # let the head's optimiser reach the encoder by itself
        self.calls += 1
        outputs, x = [], batch
        for conv in self.net:
            x = torch.relu(conv(x))
            outputs.append(x)
        return [outputs[i].detach() for i in layers]

    def architecture(self):
        return {"model": "patchconv", "dim": self.contract.feature_dim}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg_phantoms")
    return generate_phantoms(root, 14, seed=0, workers=1, datasets=["brats2021"], progress=False)


def _run(root: Path, work: Path, backbone: Backbone, settings: SegmentationConfig,
         force: bool = False) -> tuple[RunReport, ResultStore]:
    config = RunConfig(model=backbone.name, fractions=(1.0,), seeds=(0,),
                       profile=PROFILES.get("tiny"), cache_dir=work / "cache",
                       results_dir=work / "results", progress=False, force=force)
    store = ResultStore(default_url(work / "results"))
    report = RunReport(backbone.name, backbone.weights.status, backbone.weights.source,
                       "phantom:test", store.url)
    run_task(TASK, backbone, root, "phantom:test", store, config, report,
             evaluator=SegmentationEvaluator(settings))
    return report, store


def _brain_baseline(store: ResultStore, root: Path) -> float:
    """Dice WT of predicting the whole brain as tumour, on the same test subjects."""
    stored = store.predictions(list(store.frame().cell_id.unique()))
    subjects = sorted({sid for rows in stored.values() for sid, *_ in rows})
    scores = []
    for sid in subjects:
        case = root / "BraTS2021" / sid
        label = SegLabel(case / f"{sid}_seg.nii.gz", "brats2021")
        truth = read_regions(sid, label, {}, TASK.target)
        brain = np.asarray(nib.load(str(case / f"{sid}_t1.nii.gz")).dataobj) != 0
        guess = np.repeat(brain[None], 3, axis=0)
        scores.append(region_scores(guess, truth.masks, truth.spacing, ("WT", "TC", "ET"))["dice_wt"])
    return float(np.mean(scores))


def test_frozen_linear_head_segments_phantom_tumours_and_encoder_is_unchanged(phantoms, tmp_path):
    backbone = PatchConvBackbone()
    before = {k: v.clone() for k, v in backbone.net.state_dict().items()}
    settings = SegmentationConfig(heads=("linear",), training=TrainConfig(steps=150))
    report, store = _run(phantoms, tmp_path, backbone, settings)

    for key, value in backbone.net.state_dict().items():
        assert torch.equal(value, before[key]), f"encoder parameter {key} changed"
    frame = store.frame(task="tumor_seg")
    values = frame.set_index("metric").value
    baseline = _brain_baseline(store, phantoms)
    assert values["dice_wt"] > max(0.4, baseline + 0.2), (values["dice_wt"], baseline)
    assert values["dice_tc"] > 0.1
    assert np.isfinite([values[f"hd95_{r}"] for r in ("wt", "tc", "et")]).all()
    assert values["hd95_wt"] < diagonal_mm((88, 104, 88), (2, 2, 2)) / 2
    assert values["backbone_params"] == backbone.parameter_count()
    assert values["head_params"] == 4 * 16 * 2 + 4 * 16 * 3 + 3  # BatchNorm + 1x1 conv
    row = frame[frame.metric == "dice_wt"].iloc[0]
    assert row["head"] == "linear" and row.n_test >= 2 and row.n_train > row.n_test
    assert any("trainable parameters beside the frozen backbone's" in n for n in report.notes)

    # forced rerun: every token comes from the cache and the numbers are reproduced
    fresh = PatchConvBackbone()
    again, _ = _run(phantoms, tmp_path, fresh, settings, force=True)
    assert fresh.calls == 0 and again.extraction.cached == again.extraction.volumes > 0
    after = store.frame(task="tumor_seg").set_index("metric").value
    np.testing.assert_allclose(after[values.index].values, values.values, rtol=1e-5)


def test_multiscale_head_trains_on_four_layers_with_the_encoder_frozen(phantoms, tmp_path):
    backbone = PatchConvBackbone(size=32, slices=16, layers=4)
    before = {k: v.clone() for k, v in backbone.net.state_dict().items()}
    settings = SegmentationConfig(heads=("multiscale",), training=TrainConfig(steps=40))
    _, store = _run(phantoms, tmp_path, backbone, settings)
    for key, value in backbone.net.state_dict().items():
        assert torch.equal(value, before[key]), f"encoder parameter {key} changed"
    values = store.frame(task="tumor_seg").set_index("metric").value
    assert values["dice_wt"] > 0.3
    assert values["head_params"] > 4 * 16 * 2 + 4 * 16 * 3 + 3
    hyper = json.loads(store.frame(task="tumor_seg").hyperparameters.iloc[0])
    assert hyper["layers"] == [0, 1, 2, 3] and hyper["head"] == "multiscale"


def test_backbone_without_patch_tokens_is_reported_pending(phantoms, tmp_path):
    report, store = _run(phantoms, tmp_path, TinyBackbone(), SegmentationConfig())
    assert [t.id for t in report.pending] == ["tumor_seg"]
    assert "no patch tokens" in report.pending[0].pending_reason
    assert store.frame().empty


def _case(tmp_path: Path, labels: np.ndarray, image_shape=None, shift: float = 0.0):
    image = np.full(image_shape or labels.shape, 100)
    img = write_nifti(tmp_path / "t1.nii.gz", image)
    seg = tmp_path / "seg.nii.gz"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = shift
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), str(seg))
    return seg, {"t1": img}


def test_bad_label_maps_name_the_subject(tmp_path):
    labels = np.zeros((8, 9, 10))
    labels[2:5, 2:5, 2:5] = 2
    labels[3, 3, 3] = 4
    seg, images = _case(tmp_path / "ok", labels)
    regions = read_regions("S1", SegLabel(seg, "brats2021"), images, TASK.target)
    assert regions.masks.shape == (3, 8, 9, 10) and regions.spacing == (2.0, 2.0, 2.0)
    assert regions.masks[0].sum() == 27 and regions.masks[1].sum() == 1 == regions.masks[2].sum()

    seg, images = _case(tmp_path / "shape", labels, image_shape=(8, 9, 11))
    with pytest.raises(BenchError, match=r"subject S2: .*shape \(8, 9, 10\).*\(8, 9, 11\)"):
        read_regions("S2", SegLabel(seg, "brats2021"), images, TASK.target)
    seg, images = _case(tmp_path / "affine", labels, shift=5.0)
    with pytest.raises(BenchError, match="subject S3: .*different affines"):
        read_regions("S3", SegLabel(seg, "brats2021"), images, TASK.target)
    bad = np.where(labels == 4, 3, labels)  # ET is 4 in BraTS 2021; 3 only in the 2023 scheme
    seg, images = _case(tmp_path / "labels", bad)
    with pytest.raises(BenchError, match=r"subject S4: .*values \[3\].*brats2021"):
        read_regions("S4", SegLabel(seg, "brats2021"), images, TASK.target)
    as_2023 = read_regions("S4", SegLabel(seg, "brats2023"), images, TASK.target)
    assert as_2023.masks[2].sum() == 1  # ET = 3 there

    seg, images = _case(tmp_path / "empty", np.zeros((8, 9, 10)))
    empty = read_regions("S5", SegLabel(seg, "brats2021"), images, TASK.target)
    assert empty.empty_regions == [0, 1, 2]


def test_segmentation_target_reads_the_scheme():
    from brainbench.subjects import Subject

    target = SegmentationTarget()
    subject = Subject("BraTS-GLI-00001-000", "BraTS-GLI-00001", {}, {"seg": "/x/seg.nii.gz"},
                      {"label_scheme": "brats2023"})
    value = target.value(subject)
    assert value == SegLabel(Path("/x/seg.nii.gz"), "brats2023")
    assert target.stratum(value) == "brats2023"
    assert target.value(replace(subject, targets={})) is None
    with pytest.raises(BenchError, match="BraTS-GLI-00001-000: label_scheme='brats2019'"):
        target.value(replace(subject, meta={"label_scheme": "brats2019"}))


def test_metric_conventions_for_empty_masks():
    shape, spacing = (10, 12, 14), (2.0, 2.0, 1.0)
    empty = np.zeros((3, *shape), dtype=bool)
    cube = empty.copy()
    cube[:, 2:6, 2:6, 2:6] = True
    both_empty = region_scores(empty, empty, spacing, ("WT", "TC", "ET"))
    assert both_empty["dice_wt"] == 1.0 and both_empty["hd95_et"] == 0.0
    missed = region_scores(empty, cube, spacing, ("WT", "TC", "ET"))
    spurious = region_scores(cube, empty, spacing, ("WT", "TC", "ET"))
    for scores in (missed, spurious):
        assert scores["dice_tc"] == 0.0
        assert scores["hd95_tc"] == pytest.approx(diagonal_mm(shape, spacing))
    assert diagonal_mm((240, 240, 155), (1, 1, 1)) == pytest.approx(373.13, abs=0.01)
    shifted = np.roll(cube, 1, axis=1)  # one voxel (2 mm) along x
    scores = region_scores(shifted, cube, spacing, ("WT", "TC", "ET"))
    assert scores["dice_wt"] == pytest.approx(2 * 48 / 128)
    assert scores["hd95_wt"] == pytest.approx(2.0)


def test_slice_choice_is_foreground_aware_and_deterministic():
    area = np.zeros(16)
    area[5:9] = [3, 10, 12, 4]
    chosen = choose_slices(area, 6, 0.75, salt="S1")
    assert len(chosen) == 6 and set(range(5, 9)) <= set(chosen)  # all 4 tumour slices
    assert chosen == choose_slices(area, 6, 0.75, salt="S1")
    few = choose_slices(area, 4, 0.5, salt="S1")
    assert sum(area[list(few)] > 0) == 2 and {5, 8} <= set(few)  # spread to the borders
    assert len(choose_slices(np.zeros(16), 5, 0.75, salt="S1")) == 5  # empty mask: background


def test_heads_shapes_layers_and_parameter_counts():
    assert head_layers("multiscale", 12) == (2, 5, 8, 11)
    assert head_layers("linear", 12) == (11,)
    grids = [torch.randn(2, 4 * 768, 7, 7) for _ in range(4)]
    linear = make_head("linear", [4 * 768], 3, (112, 112), (7, 7), seed=0)
    multi = make_head("multiscale", [4 * 768] * 4, 3, (112, 112), (7, 7), seed=0)
    assert linear(grids[:1]).shape == multi(grids).shape == (2, 3, 112, 112)
    assert trainable_parameters(linear) == 2 * 4 * 768 + 4 * 768 * 3 + 3
    assert trainable_parameters(multi) < 2_000_000
    with pytest.raises(BenchError, match="unknown segmentation head 'unet'"):
        head_layers("unet", 12)


def test_heads_trained_side_by_side_are_the_heads_trained_one_after_the_other():
    """The evaluator trains a task's cells on several threads: each head must come out bit for
    bit as it does alone (own generator, one intra-op thread), results in job order, and the
    process's torch thread count restored afterwards."""
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(12, 64, 7, 7)).astype(np.float16)]
    targets = rng.random((12, 3, 112, 112)) < 0.2
    config = TrainConfig(steps=25)

    def job(seed):
        def fit():
            with HEAD_INIT_LOCK:
                head = make_head("linear", [64], 3, (112, 112), (7, 7), seed=seed)
            info = train_head(head, inputs, targets, config, seed=seed)
            return seed, info.final_loss, [p.detach().clone() for p in head.parameters()]
        return fit

    threads_before = torch.get_num_threads()
    alone = list(run_head_jobs([job(s) for s in range(4)], threads=1))
    together = list(run_head_jobs([job(s) for s in range(4)], threads=3))
    assert torch.get_num_threads() == threads_before
    assert [a[0] for a in together] == [0, 1, 2, 3]
    assert len({a[1] for a in alone}) == 4  # the seeds give different heads
    for (_, loss_a, params_a), (_, loss_b, params_b) in zip(alone, together):
        assert loss_a == loss_b
        assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert head_threads(5) == min(5, torch.get_num_threads()) and head_threads(0) == 1
    # cells whose training grids would not fit side by side train one at a time
    assert head_threads(5, job_bytes=HEAD_THREADS_MEMORY_BYTES * 0.6) == 1
    assert head_threads(5, job_bytes=1e6) == min(5, torch.get_num_threads())


def test_braindino_patch_tokens_are_final_norm_grids():
    from brainbench.backbone import create_backbone

    backbone = create_backbone("braindino", image_size=32, num_slices=4)
    batch = torch.randn(2, 3, 32, 32)
    last, early = backbone.patch_tokens(batch, [11, 2])
    assert last.shape == early.shape == (2, 768, 2, 2)
    with torch.no_grad():
        tokens = backbone.model.forward_features(batch)[:, backbone.model.num_prefix_tokens:]
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), tokens)
    assert backbone.num_patch_layers() == 12
    with pytest.raises(BenchError, match="layers"):
        backbone.patch_tokens(batch, [12])


def test_over_the_token_budget_test_subjects_stream_with_the_same_results(phantoms, tmp_path,
                                                                           monkeypatch):
    settings = SegmentationConfig(heads=("linear",), training=TrainConfig(steps=40))
    _, cached_store = _run(phantoms, tmp_path / "cached", PatchConvBackbone(), settings)
    cached_tokens = list((tmp_path / "cached" / "cache" / "patch_tokens").rglob("*.npz"))

    streamed = replace(settings, token_budget_gb=0.0)  # every test subject over the budget
    backbone = PatchConvBackbone()
    report, store = _run(phantoms, tmp_path / "streamed", backbone, streamed)
    assert any("exceed the 0 GB budget" in n for n in report.notes)
    kept = list((tmp_path / "streamed" / "cache" / "patch_tokens").rglob("*.npz"))
    frame, reference = store.frame(task="tumor_seg"), cached_store.frame(task="tumor_seg")
    n_test, n_train = int(frame.n_test.iloc[0]), int(frame.n_train.iloc[0])
    assert len(kept) == len(cached_tokens) * n_train // (n_train + n_test)  # training only
    assert not list((tmp_path / "streamed" / "cache" / "patch_tokens").glob(".stream-*"))
    assert list(frame.cell_id) == list(reference.cell_id)
    assert set(frame.cache_key) == set(reference.cache_key)  # same tokens, same digest
    np.testing.assert_allclose(frame.set_index("metric").value.sort_index().values,
                               reference.set_index("metric").value.sort_index().values,
                               rtol=1e-6)

    monkeypatch.setenv("BRAINBENCH_TOKEN_BUDGET_GB", "-1")
    with pytest.raises(BenchError, match="BRAINBENCH_TOKEN_BUDGET_GB='-1'"):
        SegmentationConfig.from_env()
    monkeypatch.setenv("BRAINBENCH_TOKEN_BUDGET_GB", "0.5")
    assert SegmentationConfig.from_env().token_budget_gb == 0.5
