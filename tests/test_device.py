"""`DEVICE=auto|cpu|cuda[:N]`: where the encoder runs, checked before anything starts, and
applied by the one build path (create_backbone) that the local runner and Ray share."""

from __future__ import annotations

import warnings

import pytest
import torch

import brainbench.device as device_mod
from brainbench.backbone import create_backbone
from brainbench.cli import main
from brainbench.deferred import build_key
from brainbench.device import place, resolve_device
from brainbench.errors import BenchError


def _cuda(monkeypatch, available: bool, count: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_the_first_gpu_where_torch_sees_one_else_the_cpu(monkeypatch):
    _cuda(monkeypatch, False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("CPU") == "cpu"
    _cuda(monkeypatch, True, 2)
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"


def test_a_device_the_machine_lacks_is_refused_with_what_it_has(monkeypatch):
    _cuda(monkeypatch, True, 2)
    with pytest.raises(BenchError, match=r"'cuda:2'.*2 CUDA device\(s\), indices 0 to 1"):
        resolve_device("cuda:2")
    _cuda(monkeypatch, False)
    with pytest.raises(BenchError, match=r"'cuda'.*sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(BenchError, match=r"'tpu'.*expected one of auto, cpu, cuda"):
        resolve_device("tpu")


class _Network:
    """A backbone with a network: records where it was moved."""

    name = "net"
    weights = None

    def __init__(self) -> None:
        self.moved_to: list[str] = []

    def to(self, device):
        self.moved_to.append(device)
        return self


def test_placing_on_a_gpu_moves_the_network_and_switches_tf32_off():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        net = _Network()
        assert place(net, "cpu") is net and net.moved_to == []
        assert torch.backends.cuda.matmul.allow_tf32 is True  # the CPU changes nothing
        place(net, "cuda:1")
        assert net.moved_to == ["cuda:1"]
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_control_stays_on_the_cpu_silently_and_other_backbones_without_to_warn():
    control = create_backbone("intensity", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert place(control, "cuda:0") is control

    class NoTo:
        name = "mine"
        weights = None

    with pytest.warns(UserWarning, match="'mine' has no .to\\(device\\) method"):
        place(NoTo(), "cuda:0")


def test_the_device_is_part_of_a_deferred_build_record_key(tmp_path):
    options = {"model": "braindino", "precision": "auto", "device": "cpu"}
    assert build_key(options) != build_key({**options, "device": "cuda:0"})
    assert build_key(options) == build_key(dict(options))


def test_run_with_a_gpu_the_machine_lacks_stops_before_anything_is_written(tmp_path, capsys,
                                                                          monkeypatch):
    _cuda(monkeypatch, False)
    results = tmp_path / "results"
    code = main(["run", "--model", "intensity", "--profile", "tiny", "--tasks", "brain_age",
                 "--device", "cuda", "--cache", str(tmp_path / "cache"),
                 "--results", str(results), "--no-progress"])
    text = capsys.readouterr().err
    assert code == 2, text
    assert "DEVICE='cuda' (--device)" in text and "Traceback" not in text
    assert not results.exists() and not (tmp_path / "cache").exists()


def test_the_run_line_names_the_device(tmp_path, capsys, monkeypatch):
    _cuda(monkeypatch, False)
    code = main(["run", "--model", "intensity", "--profile", "tiny", "--tasks", "brain_age",
                 "--fraction", "1", "--seeds", "0", "--device", "auto",
                 "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "results"),
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "precision fp32; runtime eager; device cpu" in out
    assert device_mod.describe("cpu") == "cpu"


# ---------------------------------------------------------------- parallelism from the machine


def _cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(device_mod.os, "sched_getaffinity", lambda pid: set(range(n)))


def test_available_cores_follow_the_affinity_mask_up_to_a_cap(monkeypatch):
    from brainbench.features import default_workers

    _cores(monkeypatch, 3)
    assert device_mod.available_cores() == 3
    assert default_workers("cpu") == 0  # a CPU model: the forward pass owns the cores
    assert default_workers("cuda:0") == 2  # a GPU model: every core but the feeding one
    _cores(monkeypatch, 64)
    assert device_mod.available_cores() == 16 and device_mod.available_cores(cap=32) == 32
    assert default_workers("cuda:0") == 16


def test_voxel_hashing_reads_on_every_available_core_by_default(monkeypatch, tmp_path):
    import brainbench.leakage as leakage
    from brainbench.leakage import HashCache
    from tests.helpers import random_brain, write_nifti

    seen = []
    real = leakage.ThreadPoolExecutor

    def recording(max_workers):
        seen.append(max_workers)
        return real(max_workers=max_workers)

    monkeypatch.setattr(leakage, "ThreadPoolExecutor", recording)
    monkeypatch.setattr(device_mod, "available_cores", lambda cap=16: 5)
    path = write_nifti(tmp_path / "a.nii.gz", random_brain(0))
    hashes, errors = HashCache(None).try_hashes([path])
    assert seen == [5] and path in hashes and not errors
    HashCache(None).try_hashes([path], workers=1)
    assert seen == [5, 1]


def test_phantom_generation_renders_on_every_available_core_by_default(monkeypatch, tmp_path):
    from brainbench.phantoms import generate as gen_mod
    from brainbench.phantoms import generate_phantoms

    calls = []
    real = gen_mod.render_scan

    def in_this_process(spec, dest):
        calls.append(spec)
        return real(spec, dest)

    monkeypatch.setattr(gen_mod, "render_scan", in_this_process)
    monkeypatch.setattr(device_mod, "available_cores", lambda cap=16: 1)  # one core: no pool
    root = generate_phantoms(tmp_path / "one", {"ixi": 2}, seed=0, progress=False)
    manifest = __import__("json").loads((root / "_phantom.json").read_text())
    assert manifest["workers"] == 1 and len(calls) == manifest["datasets"]["ixi"]["n_scans"]


MOVABLE = '''
import torch
from brainbench.backbone import Backbone, InputContract, WeightsInfo

class Movable(Backbone):
    name = "movable"
    moved_to = None
    def __init__(self):
        self.contract = InputContract("2d", 1, (32, 32), 4, "zscore", ("cls",), 8)
        self.weights = WeightsInfo("random-init", "seed 0", "0" * 64)
    def embed(self, batch):
        return {"cls": batch.mean(dim=(2, 3)).repeat(1, 8)}
    def architecture(self):
        return {"model": "mean"}
    def parameter_count(self):
        return 0
'''


def test_a_submitted_python_file_moves_when_its_backbone_can(tmp_path):
    from brainbench.submission.pyfile import pyfile_backbone

    movable = tmp_path / "movable.py"
    movable.write_text(MOVABLE + "    def to(self, device):\n        self.moved_to = device\n"
                       "        return self\n")
    backbone = pyfile_backbone(movable)
    place(backbone, "cuda:0")
    assert backbone.inner.moved_to == "cuda:0"

    fixed = tmp_path / "fixed.py"
    fixed.write_text(MOVABLE.replace('"movable"', '"fixed"'))
    with pytest.warns(UserWarning, match=r"'fixed' \(file fixed.py\) has no .to\(device\)"):
        place(pyfile_backbone(fixed), "cuda:0")
    # a backbone that says nothing of its device is where it was built, and `auto` resolves
    built = create_backbone(str(fixed), precision="auto", device="cpu")
    assert built.device == "cpu" and built.precision == "fp32"  # it declares no bf16


def test_an_explicit_device_with_ray_is_refused_not_silently_overridden(tmp_path, capsys):
    code = main(["run", "--model", "intensity", "--profile", "tiny", "--tasks", "brain_age",
                 "--executor", "ray", "--device", "cpu", "--cache", str(tmp_path / "cache"),
                 "--results", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "applies to the local executor" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


ALLOCATIONS = '''
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from brainbench.device import tune_host_allocator
    assert tune_host_allocator()
def forward():  # activation-like buffers of 6-30 MB, two alive at a time
    held = []
    for mb in (30, 20, 25, 12, 28, 6):
        a = np.empty(mb * 2**20, dtype=np.uint8)
        a[::4096] = 1  # touch every page
        held.append(a)
        if len(held) > 2:
            held.pop(0)
forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    forward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def test_the_tuned_allocator_reuses_buffers_instead_of_faulting_them_in_again():
    """glibc by default returns large freed buffers to the kernel, so each forward call pays
    page faults and zeroing again; tuned, a repeated pattern of allocations faults nothing."""
    import subprocess
    import sys

    if not device_mod.tune_host_allocator():
        pytest.skip("not glibc: mallopt is unavailable")
    faults = {mode: int(subprocess.run([sys.executable, "-c", ALLOCATIONS, mode], check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("default", "tuned")}
    assert faults["default"] > 1000, faults  # ~35,000 on the development machine
    assert faults["tuned"] < faults["default"] / 20, faults
