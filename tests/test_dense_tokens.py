"""Patch tokens of the baselines (issue #8): each wired backbone's last-block grid is the patch
part of its final-norm tokens, intermediate blocks go through the same norm, prefix tokens are
left out, bad layers are named; a submitted timm ViT card gets them too; tumor_seg runs end to
end on a non-BrainDINO backbone."""

from __future__ import annotations

import dataclasses
import functools
import textwrap
import warnings

import numpy as np
import pytest
import torch

from brainbench.backbone import create_backbone
from brainbench.baselines import clip
from brainbench.errors import BenchError
from brainbench.profiles import PROFILES
from brainbench.segmentation.heads import make_head
from brainbench.evaluators.segmentation import unsupported_reason
from tests.phantom_cohorts import phantoms  # noqa: F401  (fixture)

TINY = PROFILES.get("tiny")
SIZE = 112  # the cpu profile's slice size: 8x8 patches of 14, 7x7 of 16


@functools.lru_cache(maxsize=None)  # each ViT-B is built once for this file
def _build(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init: no weights on this machine
        if name == "biomedclip":  # registered only when its weights are cached
            return clip.make_biomedclip(image_size=SIZE, num_slices=4)
        return create_backbone(name, image_size=SIZE, num_slices=4)


def _final_tokens(backbone, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, N, D) tokens as the features read them (after the final norm) and the prefix count."""
    model = backbone.model
    with torch.inference_mode():
        if backbone.name == "clip":
            captured = []
            handle = model.ln_post.register_forward_hook(lambda _m, _i, out: captured.append(out))
            model(x)
            handle.remove()
            return captured[0], 1
        return model.forward_features(x), model.num_prefix_tokens


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, patch, prefix", [
    ("dinov2", 14, 1), ("dinov2_reg", 14, 5), ("random2d", 14, 1), ("dinov3", 16, 5),
    ("clip", 16, 1), ("biomedclip", 16, 1)])  # braindino / random: test_segmentation
def test_last_block_grid_is_the_patch_part_of_the_final_tokens(name, patch, prefix, batch):
    backbone = _build(name)
    assert backbone.num_patch_layers() == 12 and unsupported_reason(backbone) == ""
    (grid,) = backbone.patch_tokens(batch, [11])
    side = SIZE // patch
    assert grid.shape == (2, 768, side, side) and grid.dtype == torch.float32
    assert not grid.is_inference() and not grid.requires_grad
    tokens, n_prefix = _final_tokens(backbone, batch)
    assert n_prefix == prefix and tokens.shape[1] == prefix + side * side
    expected = tokens[:, prefix:].reshape(2, side, side, 768).permute(0, 3, 1, 2)
    torch.testing.assert_close(grid, expected, rtol=1e-4, atol=1e-4)
    # the pooled feature is the mean of that grid: class / register tokens are not in it
    torch.testing.assert_close(backbone.embed(batch)["patch_mean"], grid.mean((2, 3)),
                               rtol=1e-4, atol=1e-4)


@pytest.fixture
def dinov2_reg_with_visible_blocks():
    """dinov2_reg with LayerScale 0.5 instead of timm's 1e-5 init, so each block changes the
    tokens enough to tell the layers apart (restored afterwards)."""
    backbone = _build("dinov2_reg")
    gammas = [p for n, p in backbone.model.named_parameters() if n.endswith("gamma")]
    saved = [g.clone() for g in gammas]
    with torch.no_grad():
        for g in gammas:
            g.fill_(0.5)
    yield backbone
    with torch.no_grad():
        for g, value in zip(gammas, saved):
            g.copy_(value)


def test_intermediate_blocks_go_through_the_final_norm_once_each(
        dinov2_reg_with_visible_blocks, batch):
    backbone = dinov2_reg_with_visible_blocks
    model = backbone.model
    with torch.inference_mode():
        x = model.norm_pre(model._pos_embed(model.patch_embed(batch)))
        for block in model.blocks[:3]:
            x = block(x)
        expected = model.norm(x)[:, 5:].reshape(2, 8, 8, 768).permute(0, 3, 1, 2)
    asked = []
    dense = backbone.dense
    backbone.dense = dataclasses.replace(
        dense, grids=lambda m, t, layers: asked.append(list(layers)) or dense.grids(m, t, layers))
    try:
        last, early, last_again = backbone.patch_tokens(batch, [11, 2, 11])
    finally:
        backbone.dense = dense
    assert asked == [[2, 11]]  # one pass, each block once, in block order
    torch.testing.assert_close(early, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_again, rtol=0, atol=0)
    assert not torch.allclose(early, last, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # features never depend on autocast
        (again,) = backbone.patch_tokens(batch.double(), [2])
    torch.testing.assert_close(again, early, rtol=0, atol=0)
    assert asked == [[2, 11]]  # the wrapper was taken off again


def test_bad_layers_and_batches_are_named(batch):
    backbone = _build("dinov3")
    for layers in ([12], [-1], [], [0, 99], ["2"], [1.5]):
        with pytest.raises(BenchError, match=r"dinov3\.patch_tokens: layers .*0\.\.11"):
            backbone.patch_tokens(batch, layers)
    with pytest.raises(BenchError, match=r"dinov3\.patch_tokens expects a batch shaped "
                                         r"\(B, 3, 112, 112\), got \(2, 1, 112, 112\)"):
        backbone.patch_tokens(batch[:, :1], [11])
    with pytest.raises(BenchError, match="floating-point"):
        backbone.patch_tokens(batch.to(torch.uint8), [11])


def test_3d_backbones_stay_unsupported_and_say_why():
    backbone = _build("swinunetr_ssl")
    reason = unsupported_reason(backbone)
    assert "3d encoder" in reason and "unsupported" in reason and "slice" in reason
    with pytest.raises(NotImplementedError, match="does not provide patch tokens"):
        backbone.num_patch_layers()


@pytest.mark.parametrize("grid, size", [((8, 8), 112), ((2, 2), 28), ((7, 7), 112), ((3, 5), 48)])
def test_heads_cope_with_any_patch_grid(grid, size):
    grids = [torch.randn(2, 6, *grid) for _ in range(4)]
    for kind, inputs in (("linear", grids[:1]), ("multiscale", grids)):
        head = make_head(kind, [6] * len(inputs), 3, (size, size), grid, seed=0)
        assert head(inputs).shape == (2, 3, size, size), kind


def _card(path, architecture: str, kwargs: str, dim: int):
    path.write_text(textwrap.dedent(f"""\
        name = "card_{architecture.split('_')[0]}"
        family = "timm"
        architecture = "{architecture}"
        [kwargs]
        {kwargs}
        [contract]
        dims = "2d"
        in_channels = 3
        image_size = [32, 32]
        num_slices = 4
        intensity = "robust_zscore"
        tokens = ["cls", "patch_mean"]
        feature_dim = {dim}
        """))
    return path


def test_a_timm_vit_card_gets_patch_tokens_and_validate_says_so(tmp_path):
    from brainbench.submission.validate import validate

    card = _card(tmp_path / "vit.toml", "vit_tiny_patch16_224", "img_size = 32\ndepth = 3", 192)
    report = validate(card, TINY)
    assert report.ok, report.render()
    (check,) = [c for c in report.checks if c.name == "patch tokens"]
    assert "(4, 192, 2, 2)" in check.detail and "tumor_seg can run" in check.detail
    backbone = create_backbone(str(card), image_size=32, num_slices=4)
    x = torch.randn(2, 3, 32, 32)
    (grid,) = backbone.patch_tokens(x, [2])
    with torch.inference_mode():
        tokens = backbone.model.forward_features(x)[:, 1:]
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens, rtol=1e-4, atol=1e-4)

    cnn = _card(tmp_path / "cnn.toml", "resnet18", "", 512)  # stages differ in size: none
    report = validate(cnn, TINY)
    assert not [c for c in report.checks if c.name == "patch tokens"]
    assert any("tumor_seg will be reported as unsupported" in n for n in report.notes)


@pytest.mark.slow
def test_tumor_seg_runs_end_to_end_on_dinov2(phantoms, tmp_path):  # noqa: F811
    from brainbench.runner import RunConfig, run
    from brainbench.store import ResultStore, default_url

    # a small label fraction: few training subjects to encode (the test split is always whole)
    config = RunConfig(model="dinov2", fractions=(0.1,), seeds=(0,), profile=TINY,
                       cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                       data_dir=phantoms, tasks=("tumor_seg",),
                       progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = run(config)
    assert report.pending == [] and [c.computed for c in report.cells] == [True]
    frame = ResultStore(default_url(tmp_path / "results")).frame(task="tumor_seg")
    values = frame.set_index("metric").value
    assert set(frame.backbone) == {"dinov2"} and set(frame.weights_status) == {"random-init"}
    for region in ("wt", "tc", "et"):
        assert 0 <= values[f"dice_{region}"] <= 1 and np.isfinite(values[f"hd95_{region}"])
    assert values["backbone_params"] == _build("dinov2").parameter_count()
    assert report.extraction.items_encoded > 0
