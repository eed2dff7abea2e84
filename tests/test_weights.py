"""brainbench.weights: checkpoints load strictly, and every failure names the file and the keys."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from brainbench.errors import BenchError
from brainbench.weights import (
    LoadReport,
    load_checkpoint,
    load_state_strict,
    sha256_file,
    state_dict_sha256,
)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.register_buffer("scale", torch.ones(3))
        self.register_buffer("cache", torch.zeros(2), persistent=False)


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in Tiny().state_dict().items()}


# ---- sha256_file / load_checkpoint -------------------------------------------------------


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # crosses chunk boundaries
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sha256_file_missing(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        sha256_file(tmp_path / "nope.pt")


def test_load_checkpoint_roundtrip(tmp_path):
    path = tmp_path / "ok.pt"
    state = tiny_state()
    torch.save({"teacher": state, "iteration": 3}, path)
    ckpt = load_checkpoint(path)
    assert set(ckpt) == {"teacher", "iteration"}
    assert torch.equal(ckpt["teacher"]["encoder.weight"], state["encoder.weight"])


def test_load_checkpoint_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "ok.safetensors"
    state = tiny_state()
    save_file(state, str(path))
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["norm.bias"], state["norm.bias"])


def _bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        torch.save(tiny_state(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("directory", "is a directory"),
        ("empty", "is empty"),
        ("text", "not a PyTorch checkpoint"),
        ("truncated", "truncated"),
        ("tensor", "not a dict"),
    ],
)
def test_load_checkpoint_errors_name_file_and_expectation(tmp_path, kind, message):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(BenchError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "expected" in str(info.value)


class NotAllowed:  # a class torch.load(weights_only=True) refuses to unpickle
    pass


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"state": tiny_state(), "config": NotAllowed()}, path)
    with pytest.raises(BenchError, match="weights_only") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_load_checkpoint_unreadable(tmp_path):
    path = tmp_path / "secret.pt"
    torch.save(tiny_state(), path)
    path.chmod(0)
    try:
        with pytest.raises(BenchError, match="cannot read"):
            load_checkpoint(path)
    finally:
        path.chmod(0o600)


# ---- load_state_strict ---------------------------------------------------------------------


def test_strict_load_copies_everything():
    model, state = Tiny(), tiny_state(1)
    report = load_state_strict(model, state, source="mem")
    assert isinstance(report, LoadReport)
    assert report.loaded == len(state) == 5
    assert not report.skipped_missing and not report.skipped_unexpected
    assert report.file_dtypes == {"float32": 5}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def _assert_unchanged(model, before):
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed although the load failed"


def test_missing_key_fails_before_loading():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = tiny_state(1)
    del state["norm.bias"]
    with pytest.raises(BenchError, match=r"1 missing key.*norm\.bias") as info:
        load_state_strict(model, state, source="/data/w.pt")
    assert "/data/w.pt" in str(info.value)
    _assert_unchanged(model, before)


def test_unexpected_key_fails():
    state = tiny_state(1)
    state["head.weight"] = torch.zeros(2)
    with pytest.raises(BenchError, match=r"1 unexpected key.*head\.weight"):
        load_state_strict(Tiny(), state, source="w.pt")


def test_shape_mismatch_fails_and_is_never_allowed():
    state = tiny_state(1)
    state["encoder.bias"] = torch.zeros(5)
    with pytest.raises(BenchError, match=r"encoder\.bias file \(5,\) vs model \(3,\)"):
        load_state_strict(
            Tiny(), state, source="w.pt", allowed_missing={"*": "x"}, allowed_unexpected={"*": "x"}
        )


def test_non_tensor_and_non_finite_values_fail():
    state = tiny_state(1)
    state["scale"] = [1.0, 2.0, 3.0]
    with pytest.raises(BenchError, match="not tensors: scale"):
        load_state_strict(Tiny(), state, source="w.pt")
    state = tiny_state(1)
    state["norm.weight"][1] = float("nan")
    with pytest.raises(BenchError, match=r"NaN or inf.*norm\.weight"):
        load_state_strict(Tiny(), state, source="w.pt")


def test_listing_is_truncated_with_count():
    state = tiny_state(1)
    for i in range(25):
        state[f"extra.{i:02d}"] = torch.zeros(1)
    with pytest.raises(BenchError) as info:
        load_state_strict(Tiny(), state, source="w.pt")
    text = str(info.value)
    assert "25 unexpected key(s)" in text
    assert "extra.09" in text and "extra.10" not in text
    assert "and 15 more" in text


def test_allowed_keys_are_reported_with_reasons():
    model = Tiny()
    fresh_bias = model.norm.bias.detach().clone()
    state = tiny_state(1)
    del state["norm.bias"]
    state["dino_head.mlp.0.weight"] = torch.zeros(2, 2)
    state["dino_head.last_layer.weight"] = torch.zeros(2)
    state["mask_token"] = torch.zeros(1, 3)
    report = load_state_strict(
        model,
        state,
        allowed_missing={"norm.bias": "not trained"},
        allowed_unexpected={"dino_head.*": "training head", "mask_token": "pretraining only"},
        source="w.pt",
    )
    assert report.loaded == 4
    assert report.skipped_missing == {"norm.bias": "not trained"}
    assert report.skipped_unexpected == {
        "dino_head.last_layer.weight": "training head",
        "dino_head.mlp.0.weight": "training head",
        "mask_token": "pretraining only",
    }
    assert torch.equal(model.norm.bias, fresh_bias)
    assert torch.equal(model.encoder.weight, state["encoder.weight"])
    text = str(report)
    assert "dino_head.mlp.0.weight: training head" in text and "norm.bias: not trained" in text
    assert report.as_dict()["loaded"] == 4


def test_pattern_does_not_over_match():
    state = tiny_state(1)
    state["dino_headless"] = torch.zeros(1)
    with pytest.raises(BenchError, match="dino_headless"):
        load_state_strict(Tiny(), state, source="w.pt", allowed_unexpected={"dino_head.*": "h"})


def test_key_names_annotate_errors():
    state = tiny_state(1)
    del state["norm.weight"]
    with pytest.raises(BenchError, match=r"norm\.weight \(file: backbone\.norm\.gamma\)"):
        load_state_strict(
            Tiny(), state, source="w.pt", key_names={"norm.weight": "backbone.norm.gamma"}
        )


def test_lower_precision_file_is_cast_and_reported():
    model = Tiny()
    state = {k: v.to(torch.bfloat16) for k, v in tiny_state(1).items()}
    report = load_state_strict(model, state, source="w.pt")
    assert report.file_dtypes == {"bfloat16": 5}
    assert model.encoder.weight.dtype == torch.float32


# ---- state_dict_sha256 ---------------------------------------------------------------------


def test_state_dict_sha256_is_deterministic_and_sensitive():
    a, b = Tiny(), Tiny()
    load_state_strict(a, tiny_state(3), source="m")
    load_state_strict(b, tiny_state(3), source="m")
    digest = state_dict_sha256(a)
    assert len(digest) == 64 and digest == state_dict_sha256(b)

    with torch.no_grad():
        b.encoder.weight[0, 0] += 1e-6
    assert state_dict_sha256(b) != digest

    c = Tiny()
    load_state_strict(c, tiny_state(3), source="m")
    c.cache.fill_(7.0)  # non-persistent buffers are not weights
    assert state_dict_sha256(c) == digest
    assert state_dict_sha256(c.to(torch.float64)) != digest  # dtype is part of the identity
