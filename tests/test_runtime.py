"""The compiled runtime: ``auto`` follows the measured rule, a compiled forward pass gives the
eager features to bf16 rounding at every batch size from one graph, and compiled features are
keyed apart from eager ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from brainbench.backbone import create_backbone
from brainbench.errors import BenchError
from brainbench.features import FeatureCache, PatchTokenCache
from brainbench.precision import Capability
from brainbench.profiles import PROFILES
from brainbench.runtime import CompiledForward, check_runtime, resolve_runtime

AMX = Capability(frozenset({"amx_bf16", "avx512_bf16"}))
AVX512_BF16 = Capability(frozenset({"avx512_bf16"}))
NO_BF16 = Capability(frozenset({"avx2"}))
AVX512_NO_BF16 = Capability(frozenset({"avx2", "avx512f", "avx512_vnni"}))
TINY = PROFILES.get("tiny")


@pytest.mark.parametrize("device, precision, side, capability, expected", [
    ("cpu", "bf16", 112, AMX, "compiled"),
    ("cpu", "bf16", 224, AMX, "compiled"),
    ("cpu", "fp32", 224, AMX, "eager"),  # only bf16 was measured faster compiled
    ("cpu", "bf16", 224, AVX512_BF16, "compiled"),  # the paper profile: 1.1-1.36x
    ("cpu", "bf16", 112, AVX512_BF16, "eager"),  # <= 1.12x: less than a default run's compiles
    ("cpu", "bf16", 96, AMX, "eager"),  # smoke-test images
    ("cpu", "bf16", 224, NO_BF16, "eager"),  # (auto picks fp32 there anyway)
    ("cpu", "fp32", 224, AVX512_NO_BF16, "compiled"),  # paper profile, no bf16 path: 1.19x
    ("cpu", "fp32", 112, AVX512_NO_BF16, "eager"),  # 1.07x: less than a default run's compiles
    ("cpu", "fp32", 224, AVX512_BF16, "eager"),  # fp32 beside a bf16 path: not measured
    ("cpu", "fp32", 224, NO_BF16, "eager"),  # no AVX-512: not measured
    ("cuda", "bf16", 224, AMX, "eager"),  # not measured on a GPU
    ("cuda", "fp32", 224, AVX512_NO_BF16, "eager"),
])
def test_auto_compiles_only_where_it_measured_faster(device, precision, side, capability,
                                                      expected):
    assert resolve_runtime("auto", device=device, precision=precision, image_side=side,
                           capability=capability, has_compiler=True) == expected


def test_without_a_cpp_compiler_auto_stays_eager_and_compiled_is_refused(monkeypatch, tmp_path):
    for capability, precision, side in ((AMX, "bf16", 112), (AVX512_NO_BF16, "fp32", 224)):
        assert resolve_runtime("auto", device="cpu", precision=precision, image_side=side,
                               capability=capability, has_compiler=False) == "eager"
    with pytest.raises(BenchError, match=r"COMPILE=compiled.*C\+\+ compiler.*COMPILE=eager"):
        resolve_runtime("compiled", device="cpu", precision="fp32", image_side=224,
                        capability=AVX512_NO_BF16, has_compiler=False)
    # the lookup itself: inductor's compiler ($CXX) absent from PATH -> none found, and a
    # backbone asked to compile fails when it is built, naming the compiler
    from brainbench import runtime

    def paper_sized(compile: str):  # 224 px: `auto` compiles there on AVX-512 CPUs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_backbone("braindino", image_size=224, num_slices=4,
                                   precision="auto", compile=compile)

    real_compiler = runtime.cpp_compiler() is not None
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++ on it
    runtime.cpp_compiler.cache_clear()
    try:
        assert runtime.cpp_compiler() is None
        with pytest.raises(BenchError, match=r"C\+\+ compiler"):
            _tiny("compiled")
        assert _tiny("eager").runtime == "eager"
        backbone = paper_sized("auto")
        assert backbone.runtime == "eager"
    finally:
        monkeypatch.undo()
        runtime.cpp_compiler.cache_clear()
    if real_compiler and runtime.compile_min_image(runtime._machine_capability(),
                                                    backbone.precision) is not None:
        assert backbone.runtime == "compiled"  # the same backbone, the compiler back on PATH


def test_an_explicit_runtime_is_kept_and_a_bad_one_is_named():
    for value in ("eager", "compiled"):
        assert resolve_runtime(value.upper(), device="cpu", precision="fp32", image_side=32,
                               capability=AVX512_BF16) == value
    with pytest.raises(BenchError, match=r"COMPILE='jit'.*auto, eager, compiled"):
        check_runtime("jit")
    with pytest.raises(BenchError, match="COMPILE='jit'"):
        create_backbone("braindino", compile="jit")


def test_one_graph_serves_smaller_and_larger_batches_with_the_eager_values():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # count only this test's graphs
    net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.GELU(), torch.nn.Linear(32, 5))
    net.eval().requires_grad_(False)
    compiled = CompiledForward(lambda x: {"out": net(x), "first": x[:, 0] * 2})
    x = torch.randn(11, 12)
    with torch.inference_mode():
        eager = net(x)
        # 4, then 3 padded, then 11 chunked
        outputs = [compiled(x[:4]), compiled(x[4:7]), compiled(x)]
    assert compiled.batch == 4
    assert [o["out"].shape[0] for o in outputs] == [4, 3, 11]
    torch.testing.assert_close(outputs[0]["out"], eager[:4])
    torch.testing.assert_close(outputs[1]["out"], eager[4:7])
    torch.testing.assert_close(outputs[2]["out"], eager)
    torch.testing.assert_close(outputs[2]["first"], x[:, 0] * 2)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 1, f"{frames} graphs compiled; padding and chunking should need one"


def _tiny(compile: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init warnings
        return create_backbone("braindino", image_size=TINY.slice_size,
                               num_slices=TINY.num_slices, precision="bf16", compile=compile)


@pytest.mark.parametrize("runtime", ["eager", pytest.param("compiled", marks=pytest.mark.slow)])
def test_a_metatensor_batch_runs_as_the_plain_tensor_it_holds(runtime):
    """MONAI's MetaTensor (what its Resize returns) is stripped at the backbone's door: same
    features, plain tensors out, and no Python around every op of the forward pass."""
    backbone = _tiny(runtime)
    x = torch.randn(4, 3, TINY.slice_size, TINY.slice_size)
    plain, wrapped = backbone.embed(x), backbone.embed(MetaTensor(x.clone()))
    for name in ("cls", "patch_mean"):
        assert type(wrapped[name]) is torch.Tensor
        assert torch.equal(wrapped[name], plain[name])
    grids = backbone.patch_tokens(MetaTensor(x.clone()), [1])
    assert type(grids[0]) is torch.Tensor
    assert torch.equal(grids[0], backbone.patch_tokens(x, [1])[0])


@pytest.mark.slow
def test_compiled_braindino_matches_eager_bf16_and_is_keyed_apart(tmp_path):
    eager, compiled = _tiny("eager"), _tiny("compiled")  # seeded random init: same weights
    assert (eager.runtime, compiled.runtime) == ("eager", "compiled")
    x = torch.randn(6, 3, TINY.slice_size, TINY.slice_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = create_backbone("braindino", image_size=TINY.slice_size,
                                num_slices=TINY.num_slices)
    reference = exact.embed(x)  # fp32
    fast_eager, fast_compiled = eager.embed(x), compiled.embed(x[:4])
    fast_compiled = {k: torch.cat([v, compiled.embed(x[4:])[k]]) for k, v in fast_compiled.items()}
    for name in ("cls", "patch_mean"):
        assert fast_compiled[name].dtype == torch.float32
        assert fast_compiled[name].shape == (6, 768)
        scale = reference[name].norm()
        # compiled bf16 is as close to fp32 as eager bf16 is (both round matmuls to bf16)
        eager_error = float((fast_eager[name] - reference[name]).norm() / scale)
        compiled_error = float((fast_compiled[name] - reference[name]).norm() / scale)
        assert compiled_error < max(3 * eager_error, 1e-3), (name, eager_error, compiled_error)
        assert float((fast_compiled[name] - fast_eager[name]).norm() / scale) < 0.05
    grids = compiled.patch_tokens(x[:2], [0, 1])
    expected = eager.patch_tokens(x[:2], [0, 1])
    for got, want in zip(grids, expected):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert float((got - want).norm() / want.norm()) < 0.05
    features = FeatureCache(tmp_path)
    patches = PatchTokenCache(tmp_path)
    sha = "0" * 64
    assert "runtime" not in eager.cache_identity()
    assert compiled.cache_identity()["runtime"] == "compiled"
    assert features.key(compiled, sha) != features.key(eager, sha)
    assert patches.key(compiled, sha, (0, 1), 11) != patches.key(eager, sha, (0, 1), 11)
    wider = compiled.with_tokens(("cls_prev1",))  # protocol tokens keep the runtime
    assert wider.runtime == "compiled"
    np.testing.assert_allclose(wider.embed(x[:4])["cls"].numpy(),
                               fast_compiled["cls"][:4].numpy(), rtol=0, atol=1e-5)


def test_a_bad_compile_value_on_the_command_line_exits_2_before_anything_is_written(
        tmp_path, capsys):
    from brainbench.cli import main

    code = main(["run", "--profile", "tiny", "--tasks", "brain_age", "--compile", "jit",
                 "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "results")])
    assert code == 2
    assert "COMPILE='jit' (--compile): expected one of auto, eager, compiled" in \
        capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()
