"""Precision is part of the backbone contract: both precisions encode, keys tell them apart
(fp32 keys unchanged), ``auto`` follows the hardware, and decode workers never change features."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from brainbench.backbone import create_backbone
from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.features import FeatureCache, PatchTokenCache, extract_features
from brainbench.precision import Capability, cpu_flags, resolve_precision
from brainbench.profiles import PROFILES
from tests.helpers import random_brain, write_nifti
from tests.test_end_to_end import PINNED_FILE_SHA256, cpu_pins

TINY = PROFILES.get("tiny")


def build(name: str = "braindino", precision: str = "fp32"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init warnings
        return create_backbone(name, image_size=TINY.slice_size, num_slices=TINY.num_slices,
                               precision=precision)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("img")
    return [write_nifti(root / f"v{i}.nii.gz", random_brain(i)) for i in range(3)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_precisions_give_float32_features_of_the_contract_shape(tmp_path, volumes,
                                                                     precision):
    backbone = build(precision=precision)
    assert backbone.precision == precision
    tokens, stats = extract_features(backbone, volumes, FeatureCache(tmp_path), progress=False,
                                     batch_size=TINY.batch_size, workers=0)
    assert stats.computed == len(volumes)
    for path in volumes:
        assert set(tokens[path]) == {"cls", "patch_mean"}
        for value in tokens[path].values():
            assert value.dtype == np.float32 and value.shape == (TINY.num_slices, 768)
            assert np.isfinite(value).all()


def test_bf16_features_are_close_to_fp32_but_not_equal(volumes, tmp_path):
    """bf16 really runs (the features move) and stays near the exact ones."""
    exact, _ = extract_features(build(), volumes[:1], FeatureCache(tmp_path / "a"),
                                progress=False, workers=0)
    fast, _ = extract_features(build(precision="bf16"), volumes[:1],
                               FeatureCache(tmp_path / "b"), progress=False, workers=0)
    for name in ("cls", "patch_mean"):
        a, b = exact[volumes[0]][name], fast[volumes[0]][name]
        error = np.linalg.norm(b - a) / np.linalg.norm(a)
        assert 0 < error < 0.05, (name, error)


def test_cache_keys_differ_by_precision_and_fp32_keys_are_the_first_release_ones(tmp_path):
    fp32, bf16 = build(), build(precision="bf16")
    features = FeatureCache(tmp_path)
    patches = PatchTokenCache(tmp_path)
    pins = cpu_pins()
    assert features.key(fp32, PINNED_FILE_SHA256) == pins["feature_key"]
    assert patches.key(fp32, PINNED_FILE_SHA256, (0, 1), 11) == pins["patch_key"]
    assert "precision" not in fp32.cache_identity()
    assert bf16.cache_identity()["precision"] == "bf16"  # probe cell ids differ too
    assert features.key(bf16, PINNED_FILE_SHA256) != pins["feature_key"]
    assert patches.key(bf16, PINNED_FILE_SHA256, (0, 1), 11) != pins["patch_key"]
    wider = bf16.with_tokens(("cls_prev1",))  # protocol tokens keep the precision
    assert wider.precision == "bf16"


@pytest.mark.parametrize("name", ["intensity", "oracle"])
def test_controls_without_a_network_record_fp32(tmp_path, name):
    asked = build(name, "bf16")
    assert asked.precision == "fp32"
    assert FeatureCache(tmp_path).key(asked, "a" * 64) == FeatureCache(tmp_path).key(
        build(name), "a" * 64)


@pytest.mark.parametrize("flags, cuda, device, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, False, "cpu", "bf16"),  # e.g. AMD Zen 4
    ({"avx2", "amx_bf16", "amx_tile"}, False, "cpu", "bf16"),  # Xeon with AMX
    ({"avx2", "fma", "avx512f"}, False, "cpu", "fp32"),  # no bf16 matrix path
    (set(), False, "cpu", "fp32"),  # flags unknown (no /proc/cpuinfo)
    (set(), True, "cuda", "bf16"),
    ({"avx512_bf16"}, False, "cuda", "fp32"),  # the CPU's flags say nothing about the GPU
])
def test_auto_resolves_by_the_detected_capability(flags, cuda, device, expected):
    capability = Capability(frozenset(flags), cuda_bf16=cuda)
    assert resolve_precision("auto", device, capability) == expected
    for asked in ("fp32", "bf16"):  # an explicit choice is kept whatever the hardware
        assert resolve_precision(asked, device, capability) == asked


def test_bf16_asked_on_a_cpu_without_a_bf16_path_warns_once(monkeypatch):
    from brainbench import precision

    monkeypatch.setattr(precision, "_warned_slow_bf16", False)
    slow = Capability(frozenset({"avx2", "avx512f"}))
    with pytest.warns(UserWarning, match=r"PRECISION=bf16 on a CPU without a bf16 matrix "
                                         r"path.*5x slower.*PRECISION=auto runs fp32"):
        assert resolve_precision("bf16", "cpu", slow) == "bf16"  # still what was asked
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, and never where bf16 is fast
        resolve_precision("bf16", "cpu", slow)
        monkeypatch.setattr(precision, "_warned_slow_bf16", False)
        for quiet in (Capability(frozenset({"avx2", "amx_bf16"})),  # the fast path
                      Capability(frozenset()),  # flags unknown (no /proc/cpuinfo)
                      Capability(frozenset({"fp", "asimd", "bf16"}))):  # aarch64: unmeasured
            resolve_precision("bf16", "cpu", quiet)
        resolve_precision("bf16", "cuda", slow)  # the CPU's flags say nothing about a GPU
        resolve_precision("auto", "cpu", slow)  # auto picks fp32 there: nothing to warn of


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_bad_precision_is_refused_naming_the_value():
    with pytest.raises(BenchError, match=r"bf16.*'fp16'"):
        create_backbone("braindino", precision="fp16")
    with pytest.raises(BenchError, match="fp16"):
        resolve_precision("fp16")


@pytest.mark.parametrize("option, value, needle", [
    ("--precision", "fp16", "PRECISION='fp16'"),
    ("--workers", "-1", "WORKERS='-1'"),
    ("--workers", "many", "WORKERS='many'"),
    ("--preprocess", "gpu", "PREPROCESS='gpu'"),
])
def test_cli_bad_precision_or_workers_exits_2_with_a_message(tmp_path, capsys, option, value,
                                                             needle):
    code = main(["run", "--profile", "tiny", "--cache", str(tmp_path / "c"),
                 "--results", str(tmp_path / "r"), option, value])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_worker_pool_gives_the_features_of_one_process(tmp_path, volumes):
    backbone = build()
    alone, _ = extract_features(backbone, volumes, FeatureCache(tmp_path / "a"), batch_size=3,
                                progress=False, workers=0)
    pooled, stats = extract_features(backbone, volumes, FeatureCache(tmp_path / "b"),
                                     batch_size=3, progress=False, workers=2)
    assert stats.computed == len(volumes)
    for path in volumes:
        for name in ("cls", "patch_mean"):
            np.testing.assert_array_equal(pooled[path][name], alone[path][name])  # bit-identical


@pytest.mark.parametrize("intensity, channels", [
    ("robust_zscore", 1), ("zscore", 3), ("imagenet", 3), ("clip", 3)])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_device_preprocessing_is_the_workers_preprocessing_in_torch(intensity, channels, dims):
    """PREPROCESS=device: the same z-score, percentile clip and MONAI resize on a tensor."""
    import torch

    from brainbench.backbone import InputContract
    from brainbench.preprocess import volume_to_input

    size = (32, 32) if dims == "2d" else (16, 16, 16)
    contract = InputContract(dims, channels, size, 8 if dims == "2d" else None, intensity,
                             ("cls",), 8)
    for seed in range(3):
        volume = random_brain(seed).astype(np.float32)
        expected = volume_to_input(volume, contract)
        got = volume_to_input(torch.from_numpy(volume.copy()), contract)
        assert got.shape == expected.shape and got.dtype == torch.float32
        # plain tensors, not MONAI's MetaTensor: its __torch_function__ would run Python
        # around every op of the backbone's forward pass
        assert type(expected) is torch.Tensor and type(got) is torch.Tensor
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=5e-6)


def test_device_preprocessing_gives_close_features_under_their_own_keys(tmp_path, volumes):
    workers = build()
    device = create_backbone("braindino", image_size=TINY.slice_size,
                             num_slices=TINY.num_slices, preprocess_on="device")
    assert "preprocess_on" not in workers.cache_identity()  # first-release keys unchanged
    cache = FeatureCache(tmp_path)
    assert cache.key(device, "a" * 64) != cache.key(workers, "a" * 64)
    exact, _ = extract_features(workers, volumes, cache, progress=False, workers=0)
    for decode_workers in (0, 2):  # a thread, or processes that only decode
        moved, stats = extract_features(device, volumes,
                                        FeatureCache(tmp_path / f"w{decode_workers}"),
                                        progress=False, workers=decode_workers)
        assert stats.computed == len(volumes)
        for path in volumes:
            for name in ("cls", "patch_mean"):
                a, b = exact[path][name], moved[path][name]
                assert np.linalg.norm(b - a) / np.linalg.norm(a) < 1e-4, (name, decode_workers)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(volumes[0].read_bytes()[:200])
    with pytest.raises(BenchError, match="broken.nii.gz"):
        extract_features(device, [volumes[1], broken], FeatureCache(tmp_path / "d"),
                         progress=False, workers=0)


def test_decode_only_workers_hand_nibabel_order_and_the_device_gets_the_c_order_volume(volumes):
    """PREPROCESS=device: the decode workers send nibabel's Fortran-ordered voxels as one
    contiguous block with the axes reversed (no C-order copy on the CPU; pinning copies a
    block), and the device reverses them and makes the copy: its input is bit for bit the
    C-ordered volume's."""
    import torch

    from brainbench.features import _on_device, _Volumes
    from brainbench.preprocess import load_volume, volume_to_input

    device = create_backbone("braindino", image_size=TINY.slice_size,
                             num_slices=TINY.num_slices, preprocess_on="device")
    dataset = _Volumes([(path, path.name) for path in volumes], device.contract,
                       decode_only=True)
    decoded = [dataset[i] for i in range(len(dataset))]
    prepared = dict(_on_device(iter(decoded), device.contract, "cpu"))
    for (key, tensor), path in zip(decoded, volumes):
        voxels = load_volume(path)
        assert voxels.flags.f_contiguous and not voxels.flags.c_contiguous  # nibabel's order
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
        assert tensor.shape == voxels.shape[::-1]
        c_order = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))
        assert torch.equal(tensor.permute(2, 1, 0), c_order)
        expected = volume_to_input(c_order, device.contract, contiguous=False)
        assert torch.equal(prepared[key], expected)


def test_a_bad_file_in_a_worker_names_the_file(tmp_path, volumes):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(volumes[0].read_bytes()[:200])
    with pytest.raises(BenchError, match="broken.nii.gz"):
        extract_features(build(), [volumes[1], broken], FeatureCache(tmp_path / "c"),
                         progress=False, workers=2)


def test_bf16_is_exactly_autocast_over_the_fp32_model():
    """The pre-cast bf16 copy is only a speed-up: bit-identical to plain autocast."""
    import torch

    backbone = build(precision="bf16")
    x = torch.randn(2, 3, TINY.slice_size, TINY.slice_size,
                    generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = backbone.features(backbone.model, x)
    fast = backbone.embed(x)
    for name in ("cls", "patch_mean"):
        assert torch.equal(fast[name], reference[name].float())
    assert next(backbone.model.parameters()).dtype == torch.float32  # fp32 model untouched
