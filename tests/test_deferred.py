"""Deferred backbones (brainbench.deferred): a warm run builds no network, and the record it
uses is trusted only while everything the build read still holds."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import brainbench.backbone as backbone_module
import brainbench.runner as runner_module
from brainbench.deferred import (MEMO_FILE, BackboneIdentity, BuildMemo, DeferredBackbone,
                                 _recording_environment)
from brainbench.errors import BenchError
from brainbench.profiles import PROFILES
from brainbench.runconfig import RunConfig
from brainbench.runner import run
from brainbench.store import ResultStore, default_url
from brainbench.weight_search import CachedFile, WeightsSpec, recording_resolutions, resolve


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deferred")


def config(workspace: Path, **changes) -> RunConfig:
    base = dict(model="braindino", fractions=(0.5,), seeds=(0,), tasks=("brain_age",),
                profile=PROFILES.get("tiny"), precision="fp32", cache_dir=workspace / "cache",
                results_dir=workspace / "results", progress=False)
    return RunConfig(**{**base, **changes})


def rows(workspace: Path):
    return ResultStore(default_url(workspace / "results")).frame()


@pytest.fixture(scope="module")
def cold(workspace):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = run(config(workspace))
    assert all(c.computed for c in report.cells) and report.extraction.forward_calls > 0
    return report


def memo_entries(workspace: Path) -> dict:
    return json.loads((workspace / "cache" / MEMO_FILE).read_text())["entries"]


def test_the_first_build_is_recorded(cold, workspace):
    (entry,) = memo_entries(workspace).values()
    identity = entry["identity"]
    assert identity["name"] == "braindino"
    assert identity["weights"]["status"] == "random-init"
    assert identity["cache_identity"]["weights_sha256"] == identity["weights"]["sha256"]
    assert identity["patch_layers"] == 12 and identity["parameters"] > 80_000_000
    # the weights search it made: BRAINDINO_WEIGHTS unset, nothing found
    (search,) = entry["resolutions"]
    assert search["spec"]["env_var"] == "BRAINDINO_WEIGHTS" and search["path"] is None
    assert "BRAINDINO_WEIGHTS" in entry["environment"]


def test_a_warm_run_builds_no_network_and_still_warns(cold, workspace, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the warm run built a backbone")

    monkeypatch.setattr(runner_module, "create_backbone", no_build)
    monkeypatch.setattr(backbone_module, "_warned", set())  # once per process: a new process
    with pytest.warns(UserWarning, match="RANDOM INITIALISATION"):
        warm = run(config(workspace))
    assert warm.cells and not any(c.computed for c in warm.cells)
    assert warm.weights_status == "random-init" and warm.precision == "fp32"
    assert {c.cell_id for c in warm.cells} == {c.cell_id for c in cold.cells}


def test_a_cache_miss_builds_the_network_with_identical_results(cold, workspace):
    before = rows(workspace).set_index(["cell_id", "metric"]).value
    shutil.rmtree(workspace / "cache" / "features")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forced = run(config(workspace, force=True))
    assert forced.extraction.forward_calls > 0  # the deferred backbone built and encoded
    after = rows(workspace).set_index(["cell_id", "metric"]).value
    np.testing.assert_allclose(after.loc[before.index].values, before.values, equal_nan=True)


def test_weights_that_appear_are_not_hidden_by_the_record(cold, workspace, monkeypatch,
                                                          tmp_path):
    # a file now found through the environment variable: the record's search no longer holds,
    # so the backbone is built and the (bad) file is read instead of random init reused
    bogus = tmp_path / "teacher_checkpoint.pth"
    bogus.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("BRAINDINO_WEIGHTS", str(bogus))
    with pytest.raises(BenchError, match="teacher_checkpoint.pth"):
        run(config(workspace))


def test_a_build_that_disagrees_with_its_record_stops_and_forgets_it(cold, workspace):
    path = workspace / "cache" / MEMO_FILE
    saved = path.read_text()
    data = json.loads(saved)
    (key,) = data["entries"]
    tampered = data["entries"][key]["identity"]
    tampered["weights"]["sha256"] = tampered["cache_identity"]["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    stored = len(rows(workspace))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(BenchError, match="another identity than the one recorded"):
                run(config(workspace))  # new cell ids: the cells need features -> a build
        assert key not in memo_entries(workspace)
        assert len(rows(workspace)) == stored  # nothing was stored under the wrong identity
    finally:
        path.write_text(saved)


def test_identity_round_trips_through_json(cold, workspace):
    (entry,) = memo_entries(workspace).values()
    identity = BackboneIdentity.from_json(entry["identity"])
    assert BackboneIdentity.from_json(json.loads(json.dumps(identity.as_json()))) == identity
    assert identity.contract.image_size == (32, 32) and isinstance(identity.contract.tokens,
                                                                  tuple)


def test_environment_reads_of_brainbench_code_are_recorded(monkeypatch):
    from brainbench.baselines.clip import TAG_ENV, clip_tag

    monkeypatch.delenv(TAG_ENV, raising=False)
    with _recording_environment() as environment:
        clip_tag()
        os.environ.get("SOME_LIBRARY_SETTING")  # this test's own read: not brainbench code
    assert environment.reads == {TAG_ENV: None} and not environment.whole
    assert os.environ.__class__.__name__ == "_Environ"  # restored


def test_a_changed_environment_variable_invalidates_the_record(tmp_path, monkeypatch):
    from brainbench.baselines.clip import TAG_ENV

    identity = BackboneIdentity.of(_tiny_backbone())
    memo = BuildMemo(tmp_path)
    monkeypatch.delenv(TAG_ENV, raising=False)
    memo.record("k", identity, [], {TAG_ENV: None})
    assert memo.lookup("k")[0].matches(identity)
    monkeypatch.setenv(TAG_ENV, "openai")
    assert memo.lookup("k") is None


def test_a_weights_search_holds_until_its_file_changes(tmp_path, monkeypatch):
    spec = WeightsSpec("x", "X_TEST_WEIGHTS", "a file", (CachedFile("x.pth", "org/x"),))
    monkeypatch.delenv("X_TEST_WEIGHTS", raising=False)
    with recording_resolutions() as found:
        from brainbench.weight_search import record_resolution

        record_resolution(spec, None, resolve(spec, None))
    (nothing,) = found
    assert nothing.path is None and nothing.still_holds()
    weights = tmp_path / "x.pth"
    weights.write_bytes(b"1234")
    monkeypatch.setenv("X_TEST_WEIGHTS", str(weights))
    assert not nothing.still_holds()  # a file is found now
    with recording_resolutions() as found:
        record_resolution(spec, None, resolve(spec, None))
    (file,) = found
    assert file.path == str(weights) and file.still_holds()
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not file.still_holds()  # same path, rewritten


def test_the_network_is_built_once_on_first_use(tmp_path):
    built = []

    def build():
        built.append(1)
        return _tiny_backbone()

    identity = BackboneIdentity.of(_tiny_backbone())
    deferred = DeferredBackbone(identity, build, BuildMemo(tmp_path), "k")
    assert deferred.cache_identity() == identity.cache_identity and not built
    assert deferred.num_patch_layers.__self__ is deferred  # planning never builds
    import torch

    out = deferred.embed(torch.zeros(2, 3, 16, 16))
    assert out["cls"].shape == (2, 8) and built == [1]
    deferred.embed(torch.zeros(1, 3, 16, 16))
    assert built == [1] and deferred.calls == 2  # attributes come from the built network


def _tiny_backbone():
    from tests.helpers import TinyBackbone

    return TinyBackbone()


def test_a_damaged_record_is_ignored_and_rewritten(tmp_path):
    memo = BuildMemo(tmp_path)
    memo.record("k", BackboneIdentity.of(_tiny_backbone()), [], {})
    data = json.loads(memo.path.read_text())
    data["entries"]["k"]["identity"]["contract"] = "not a contract"
    memo.path.write_text(json.dumps(data))
    assert memo.lookup("k") is None
    memo.path.write_text("{ truncated")
    assert memo.lookup("k") is None
    memo.record("k", BackboneIdentity.of(_tiny_backbone()), [], {})  # replaced atomically
    assert memo.lookup("k") is not None and not list(tmp_path.glob(".*.partial"))


def test_the_record_key_does_not_import_the_compiler_stack():
    """A warm run reads the record key and compiles nothing: looking up the C++ compiler for
    COMPILE=auto must not import torch._dynamo / inductor (~2 s of a 5 s warm-run budget)."""
    import subprocess
    import sys

    code = ("import sys; from brainbench.deferred import build_key; build_key({'model': 'x'}); "
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_listing_backbones_again_builds_no_network(tmp_path, monkeypatch, capsys):
    """`brainbench list backbones` builds each network once per cache; a second listing reads
    the records and prints the same table (parameters, weights status, input contract)."""
    from brainbench.backbone import BACKBONES
    from brainbench.cli import main

    monkeypatch.setenv("BRAINBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(BACKBONES, "names", lambda: ["braindino", "intensity"])  # test time
    assert main(["list", "backbones"]) == 0
    first = capsys.readouterr().out
    assert "85.6M" in first and "random-init" in first and "control" in first
    assert len(json.loads((tmp_path / "cache" / MEMO_FILE).read_text())["entries"]) == 2

    def no_build(*args, **kwargs):
        raise AssertionError("a listed backbone was built again")

    monkeypatch.setattr(backbone_module, "create_backbone", no_build)
    assert main(["list", "backbones"]) == 0
    assert capsys.readouterr().out == first
