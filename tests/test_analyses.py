"""Representation analyses (issue 18): the CLI end to end on tiny phantoms, the patch probes on a
random-init ViT's real patch tokens, and the similarity measures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from brainbench.analyses import measures
from brainbench.analyses.run import AnalyzeConfig, AnalyzeReport, lesion_analyses, prepare, \
    tissue_analyses
from brainbench.backbone import create_backbone
from brainbench.cli import main
from brainbench.profiles import Profile
from brainbench.store import ResultStore, default_url
from tests.phantom_cohorts import phantoms  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def analyzed(phantoms, tmp_path_factory):  # noqa: F811
    """`make analyze MODELS=random,intensity PROFILE=tiny DATA=<phantom cohorts>` (the shared
    test cohorts, so nothing is generated here)."""
    root = tmp_path_factory.mktemp("analyze")
    args = ["analyze", "--models", "random,intensity", "--profile", "tiny", "--data",
            str(phantoms), "--cache", str(root / "cache"), "--results", str(root / "results"),
            "--bootstrap", "200", "--no-progress"]
    return root, args, main(args)


def test_cli_writes_figures_store_rows_and_pages(analyzed, capsys):
    root, args, code = analyzed
    assert code == 0
    results = root / "results"
    rows = ResultStore(default_url(results)).analyses()
    status = {r.backbone: r.weights_status for r in rows}
    assert status == {"random": "random-init", "intensity": "control"}
    assert all(r.data_source.startswith("real:") and r.profile == "tiny" for r in rows)
    kinds = {(r.backbone, r.analysis) for r in rows}
    # the 3d hand-crafted control has no patch tokens: volume analyses only
    assert ("random", "pca_map") in kinds and ("intensity", "pca_map") not in kinds
    for backbone in ("random", "intensity"):
        assert {(backbone, "site_probe"), (backbone, "cka"), (backbone, "knn_agreement")} <= kinds
    site = [r for r in rows if r.analysis == "site_probe" and r.metric == "balanced_accuracy"]
    assert site and all(0 <= r.value <= 1 and r.chance == pytest.approx(
        1 / len(r.details["classes"])) and r.lower <= r.value <= r.upper for r in site)
    pca = next(r for r in rows if r.analysis == "pca_map")
    figure = results / pca.details["figure"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 0 < pca.value <= 1
    # CKA matrix: 1 on the diagonal, symmetric
    cka = {(r.backbone, r.metric.split(":")[1], r.dataset): r.value for r in rows
           if r.analysis == "cka"}
    for (a, b, dataset), value in cka.items():
        assert cka[(b, a, dataset)] == pytest.approx(value, abs=1e-9)
        if a == b:
            assert value == pytest.approx(1.0, abs=1e-9)
        else:
            assert 0 < value < 1
    pages = results / "site"
    index = (pages / "analyses.html").read_text()
    assert "analysis-compare.html" in index
    random_page = next(pages.glob("analysis-random-*.html")).read_text()
    assert "RANDOM-INIT" in random_page and "site_probe" in random_page
    assert re.search(r'<img src="figures/analysis/[^"]+\.png"', random_page)
    assert "CONTROL" in next(pages.glob("analysis-intensity-*.html")).read_text()
    compare = (pages / "analysis-compare.html").read_text()
    assert "Linear CKA" in compare and "1.000" in compare
    # a second call is served from the caches: no backbone forward pass
    capsys.readouterr()
    assert main(args) == 0
    assert "backbone forward passes: 0;" in capsys.readouterr().out


def test_bad_model_list_is_refused_with_a_message(capsys, tmp_path):
    assert main(["analyze", "--model", "random", "--models", "random,intensity",
                 "--results", str(tmp_path)]) == 2
    assert "--model or --models" in capsys.readouterr().err


PROBE_PROFILE = Profile("analysis-test", "64 px slices: a 4x4 patch grid", slice_size=64,
                        num_slices=8, batch_size=16, phantom_subjects=14)


@pytest.fixture(scope="module")
def probes(phantoms, tmp_path_factory):  # noqa: F811
    """Tissue and lesion probes on a random-init ViT-B's patch tokens (the real architecture)."""
    root = tmp_path_factory.mktemp("probes")
    config = AnalyzeConfig(models=("random",), profile=PROBE_PROFILE, cache_dir=root / "cache",
                           results_dir=root / "results", data_dir=phantoms, progress=False,
                           n_boot=200)
    ctx = prepare(config, AnalyzeReport())
    backbone = create_backbone("random", image_size=64, num_slices=8)
    rows = tissue_analyses(backbone, ctx) + lesion_analyses(backbone, ctx)
    return {(r.analysis, r.metric): r for r in rows}, ctx.report.notes


def test_tissue_probe_beats_chance_and_shuffled_labels_do_not(probes):
    rows, notes = probes
    real = rows[("tissue_probe", "balanced_accuracy")]
    shuffled = rows[("tissue_probe", "balanced_accuracy:shuffled")]
    assert real.details["n_people"] >= 10 and real.details["n_items"] > 500, notes
    assert real.value > real.chance + 0.25 and real.lower > real.chance + 0.15
    assert abs(shuffled.value - shuffled.chance) < 0.12


def test_lesion_probe_beats_chance_and_shuffled_labels_do_not(probes):
    rows, notes = probes
    real = rows[("lesion_probe", "auc")]
    shuffled = rows[("lesion_probe", "auc:shuffled")]
    assert real.details["classes"]["lesion"] > 20, notes
    assert real.value > 0.8 and real.lower > 0.6 and real.chance == 0.5
    assert abs(shuffled.value - 0.5) < 0.15


def test_linear_cka_properties():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 12))
    rotation, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert measures.linear_cka(a, a) == pytest.approx(1.0)
    assert measures.linear_cka(a, 3.0 * a @ rotation + 5.0) == pytest.approx(1.0)
    b = rng.standard_normal((40, 7))
    assert measures.linear_cka(a, b) == pytest.approx(measures.linear_cka(b, a))
    assert measures.linear_cka(a, b) < 0.6
    agreement, chance, k = measures.knn_agreement(a, a @ rotation, 5)
    assert agreement == pytest.approx(1.0) and chance == pytest.approx(5 / 39) and k == 5


def test_leaderboard_index_links_the_analysis_pages(analyzed, tmp_path):
    from brainbench.leaderboard.analysis import load_analysis
    from brainbench.leaderboard.site import build_site
    from tests.test_stats import build_store

    root, _, code = analyzed
    assert code == 0
    rows = ResultStore(default_url(root / "results")).analyses()
    store = build_store(tmp_path / "r.db", backbones=("base", "rand"))
    index = build_site(load_analysis(store, n_boot=50), tmp_path / "site", analyses=rows,
                       results_dir=root / "results").read_text()
    assert "Representation analyses" in index and 'href="analysis-compare.html"' in index
    page = next(re.finditer(r'href="(analysis-random-[^"]+\.html)"', index)).group(1)
    assert (tmp_path / "site" / page).is_file()
    assert list((tmp_path / "site" / "figures" / "analysis").glob("*.png"))
