"""A Python-file backbone is user input: `run`, `analyze` and `submit` refuse what `validate`
refuses (names), and its code's failures (import, construction, `embed`, `patch_tokens`,
also `sys.exit`) stop with exit code 2 and one message naming the file, the method and the
original exception, never a traceback, with nothing half-written in the cache or the store.
KeyboardInterrupt is never swallowed. Real runs of the tiny file SUBMITTING.md documents."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.features import (FeatureCache, PatchTokenCache, TokenRequest,
                                 extract_patch_tokens)
from brainbench.store import ResultStore, default_url
from brainbench.submission.pyfile import pyfile_backbone
from tests.helpers import random_brain, write_nifti

DOC = Path(__file__).resolve().parents[1] / "SUBMITTING.md"
EMBED = "    def embed(self, batch):\n"


def documented_file() -> str:
    (source,) = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    assert EMBED in source and 'name = "tinyconv_demo"' in source
    return source


def write_backbone(folder: Path, stem: str, *, name: str | None = None, embed: str = "",
                   init: str = "", head: str = "", tail: str = "") -> Path:
    """The documented file, named `stem` (backbone name too unless `name`), with `embed`
    lines run first in embed(), `init` first in __init__, `head` / `tail` around it."""
    name = stem if name is None else name
    source = documented_file().replace('name = "tinyconv_demo"', f"name = {name!r}")
    if embed:
        source = source.replace(EMBED, EMBED + "".join(f"        {line}\n"
                                                       for line in embed.splitlines()))
    if init:
        marker = "    def __init__(self, image_size=None, num_slices=None):\n"
        source = source.replace(marker, marker + "".join(f"        {line}\n"
                                                         for line in init.splitlines()))
    path = folder / f"{stem}.py"
    path.write_text(head + source + tail)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One phantom cache for the module (the cohorts are generated once)."""
    return tmp_path_factory.mktemp("cache")


def run_cli(path: Path, cache: Path, results: Path, capsys,
            command: str = "run") -> tuple[int, str]:
    if command == "analyze":
        argv = ["analyze", "--model", str(path)]
    else:
        argv = ["run", "--model", str(path), "--tasks", "brain_age", "--seeds", "0",
                "--fraction", "1"]
    argv += ["--profile", "tiny", "--cache", str(cache), "--results", str(results),
             "--no-progress"]
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def stored_backbones(results: Path) -> set[str]:
    if not (results / "results.db").exists():
        return set()
    frame = ResultStore(default_url(results)).frame()
    return set(frame["backbone"]) if len(frame) else set()


def assert_cache_whole(cache: Path, backbone) -> int:
    """No temporary file; every feature entry loads and fits the contract. Returns the
    number of entries."""
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]
    features = FeatureCache(cache / "features")
    entries = list((cache / "features").rglob("*.npz")) if (cache / "features").exists() else []
    for entry in entries:
        assert features.load(entry.stem, backbone.contract) is not None, entry
    return len(entries)


# ------------------------------------------------------------------------ the name rule


@pytest.mark.parametrize("bad", ["Bad Name!", "../../../escape_x", "a/b", ""])
def test_run_refuses_a_name_validate_refuses(tmp_path, cache, capsys, bad):
    path = write_backbone(tmp_path, "named", name=bad)
    code, err = run_cli(path, cache, tmp_path / "results", capsys)
    assert code == 2 and "Traceback" not in err
    assert f"backbone file {path}: name {bad!r} must be 1-64 letters" in err
    assert stored_backbones(tmp_path / "results") == set()
    assert not (tmp_path / "escape_x").exists()


def test_a_good_name_still_runs_and_stores(tmp_path, cache, capsys):
    path = write_backbone(tmp_path, "tinyconv_fine")
    code, err = run_cli(path, cache, tmp_path / "results", capsys)
    assert code == 0, err
    assert stored_backbones(tmp_path / "results") == {"tinyconv_fine"}


# ------------------------------------------------------- user code failing at load time


def test_init_raising_is_one_message(tmp_path, cache, capsys):
    path = write_backbone(tmp_path, "tinyconv_raiseinit", init="raise RuntimeError('init boom')")
    code, err = run_cli(path, cache, tmp_path / "results", capsys)
    assert code == 2 and "Traceback" not in err
    assert (f"backbone file {path}: TinyConv(...) (building the backbone) raised "
            "RuntimeError: init boom") in err
    assert stored_backbones(tmp_path / "results") == set()


def test_sys_exit_at_import_is_a_message_not_an_exit_code(tmp_path, cache, capsys):
    path = tmp_path / "exits.py"
    path.write_text("import sys\nsys.exit(3)\n")
    code, err = run_cli(path, cache, tmp_path / "results", capsys)
    assert code == 2 and "Traceback" not in err
    assert f"backbone file {path} failed to import: SystemExit (sys.exit(3))" in err
    assert not [m for m in sys.modules if m.startswith("brainbench_submission_exits_")]


def test_keyboard_interrupt_is_never_swallowed(tmp_path):
    at_import = tmp_path / "interrupted.py"
    at_import.write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        pyfile_backbone(at_import)
    assert not [m for m in sys.modules if m.startswith("brainbench_submission_interrupted_")]
    in_embed = write_backbone(tmp_path, "tinyconv_ctrlc", embed="raise KeyboardInterrupt")
    backbone = pyfile_backbone(in_embed, image_size=32, num_slices=4)
    with pytest.raises(KeyboardInterrupt):
        backbone.embed(torch.zeros(2, 1, 32, 32))


# --------------------------------------------------------- user code failing in a run


def test_embed_raising_is_one_message_in_run_and_analyze(tmp_path, cache, capsys):
    path = write_backbone(tmp_path, "tinyconv_raise", embed="raise ValueError('boom in embed')")
    for command in ("run", "analyze"):
        code, err = run_cli(path, cache, tmp_path / "results", capsys, command)
        assert code == 2 and "Traceback" not in err, (command, err)
        assert f"backbone file {path}: embed() raised ValueError: boom in embed" in err
    assert stored_backbones(tmp_path / "results") == set()


@pytest.mark.parametrize("change, expected", [
    ("return self.model(batch).mean(dim=(2, 3))",
     "embed() returned Tensor for a batch of 16 inputs; expected a dict"),
    ("return {'cls': self.model(batch).mean(dim=(2, 3))[:1]}",
     "embed() returned 'cls' of shape (1, 32) for a batch of 16 inputs; expected 16 rows"),
    ("return {'cls': self.model(batch).mean(dim=(2, 3)).numpy()}",
     "embed() returned 'cls' as ndarray; expected a torch.Tensor"),
])
def test_embed_returning_the_wrong_thing_is_named(tmp_path, cache, capsys, change, expected):
    path = write_backbone(tmp_path, "tinyconv_wrong", embed=change)
    code, err = run_cli(path, cache, tmp_path / "results", capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"backbone file {path}: {expected}" in err
    assert stored_backbones(tmp_path / "results") == set()


def test_a_failure_mid_extraction_leaves_whole_entries_and_no_rows(tmp_path, capsys):
    """brain_age at tiny: 24 volumes x 4 slices in forward calls of 16; the fourth call
    raises, so the 12 volumes of the first three calls are cached whole and nothing else."""
    cache = tmp_path / "cache"
    late = ("type(self).calls = getattr(type(self), 'calls', 0) + 1\n"
            "if type(self).calls > 3:\n    raise ValueError('late boom')")
    path = write_backbone(tmp_path, "tinyconv_late", embed=late)
    code, err = run_cli(path, cache, tmp_path / "results", capsys)
    assert code == 2 and "Traceback" not in err
    assert f"backbone file {path}: embed() raised ValueError: late boom" in err
    assert stored_backbones(tmp_path / "results") == set()
    backbone = pyfile_backbone(path, image_size=32, num_slices=4)
    assert assert_cache_whole(cache, backbone) == 12
    # the same file fixed (new sha256: new keys) runs to the end and stores its cells
    fixed = write_backbone(tmp_path, "tinyconv_late")
    code, err = run_cli(fixed, cache, tmp_path / "results", capsys)
    assert code == 0, err
    assert stored_backbones(tmp_path / "results") == {"tinyconv_late"}


PATCH_TOKENS = '''
    def num_patch_layers(self):
        return 2

    def patch_tokens(self, batch, layers):
        MODE = {mode!r}
        if MODE == "raise":
            raise IndexError("layer out of range")
        grid = self.model(batch)
        return grid if MODE == "tensor" else [grid]
'''


@pytest.mark.parametrize("mode, expected", [
    ("raise", "patch_tokens() raised IndexError: layer out of range"),
    ("tensor", "patch_tokens(batch, [0, 1]) returned Tensor; expected a list"),
    ("short", "patch_tokens(batch, [0, 1]) returned 1 item(s); expected a list"),
])
def test_patch_tokens_failures_are_named(tmp_path, mode, expected):
    path = write_backbone(tmp_path, f"tinyconv_grid_{mode}", tail=PATCH_TOKENS.format(mode=mode))
    backbone = pyfile_backbone(path, image_size=32, num_slices=4)
    image = write_nifti(tmp_path / "img" / "a.nii.gz", random_brain(0))
    cache = PatchTokenCache(tmp_path / "tokens")
    with pytest.raises(BenchError) as info:
        extract_patch_tokens(backbone, [TokenRequest(image, (0, 1))], [0, 1], cache,
                             batch_size=4, progress=False)
    assert f"backbone file {path}: {expected}" in str(info.value)
    assert not list((tmp_path / "tokens").rglob("*.npz"))
    assert not list((tmp_path / "tokens").rglob("*.tmp*"))


def test_no_patch_tokens_still_reads_as_unsupported(tmp_path):
    backbone = pyfile_backbone(write_backbone(tmp_path, "tinyconv_nogrid"), image_size=32,
                               num_slices=4)
    with pytest.raises(NotImplementedError):
        backbone.num_patch_layers()
    out = backbone.embed(torch.zeros(2, 1, 32, 32))
    assert out["cls"].shape == (2, 32) and out["cls"].dtype == torch.float32
    np.testing.assert_array_equal(out["cls"].numpy(),
                                  backbone.inner.embed(torch.zeros(2, 1, 32, 32))["cls"].numpy())


def test_a_backbone_whose_embed_hangs_fails_validation_in_bounded_time(tmp_path, monkeypatch,
                                                                         capsys):
    """`make validate` of a backbone stuck in embed() used to hang without a word."""
    import time

    from brainbench.cli import main

    path = write_backbone(tmp_path, "stuck", embed="import time; time.sleep(3600)")
    monkeypatch.setenv("BRAINBENCH_VALIDATE_TIMEOUT", "0.5")
    started = time.perf_counter()
    assert main(["validate", str(path), "--profile", "tiny"]) == 2
    assert time.perf_counter() - started < 60
    out = capsys.readouterr().out
    assert "did not return within 0.5 s a call (BRAINBENCH_VALIDATE_TIMEOUT)" in out, out
    monkeypatch.setenv("BRAINBENCH_VALIDATE_TIMEOUT", "soon")
    assert main(["validate", str(path), "--profile", "tiny"]) == 2
    assert "BRAINBENCH_VALIDATE_TIMEOUT='soon': expected seconds > 0" in capsys.readouterr().err
