"""The baseline registry (issue 8): checkpoints in each upstream project's own key layout load
strictly through the same resolve -> torch.load(weights_only) -> loader path as a user's file;
wrong or truncated files fail naming the offending keys; every registered backbone encodes a
phantom-like volume into finite features of its declared dimension."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from brainbench.backbone import BACKBONES, create_backbone
from brainbench.baselines import brainiac, clip, dinov2, dinov3_natural, swinunetr_ssl
from brainbench.baselines._resolve import build_with_weights, check_size
from brainbench.errors import BenchError
from brainbench.features import FeatureCache, extract_features
from brainbench.weights import sha256_file
from tests.helpers import random_brain, write_nifti


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _load(spec, path, build, load):
    """The factories' own path: resolve the explicit file, torch.load(weights_only), load."""
    return build_with_weights(spec, weights=path, require_weights=True, build=build, load=load,
                              init="test")


def _equal_params(model, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


# ------------------------------------------------------------------ tiny upstream-layout models

TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def tiny_dinov2(registers=False):
    return dinov2.build_dinov2(registers, img_size=56, **TINY_VIT)


def dinov2_release_state(registers: bool) -> tuple[dict, torch.nn.Module]:
    """A DINOv2 release file (facebookresearch naming) made from a tiny timm model."""
    torch.manual_seed(1)
    ref = tiny_dinov2(registers)
    for p in ref.parameters():
        p.data.normal_()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 32)
    if registers:
        state["register_tokens"] = state.pop("reg_token")
        cls_pos = torch.randn(1, 1, 32)
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_pos  # so the fold restores ref's token
    return state, ref


@pytest.mark.parametrize("registers", [False, True])
def test_dinov2_release_layout_loads_and_matches(tmp_path, registers):
    state, ref = dinov2_release_state(registers)
    path = _save(tmp_path / dinov2.META_FILES[registers], state)
    built = _load(dinov2.spec("dinov2", registers), path, lambda: tiny_dinov2(registers),
                  dinov2.load_dinov2_weights)
    assert built.weights.status == "pretrained" and built.weights.sha256 == sha256_file(path)
    assert "mask_token" in built.report.skipped_unexpected
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(built.model.forward_features(x), ref.eval().forward_features(x),
                              atol=1e-5)


def test_dinov2_timm_safetensors_layout_loads(tmp_path):
    from safetensors.torch import save_file

    ref = tiny_dinov2(True)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    built = _load(dinov2.spec("dinov2_reg", True), path, lambda: tiny_dinov2(True),
                  dinov2.load_dinov2_weights)
    _equal_params(built.model, ref.state_dict())


def tiny_dinov3():
    return dinov3_natural.build_dinov3_qkvb(img_size=32, **TINY_VIT)


def dinov3_release_state(mask: bool = True, k_bias: float = 0.5) -> dict:
    """DINOv3 release naming with a q/k/v bias and its k mask, built from timm's key list."""
    torch.manual_seed(2)
    ref = tiny_dinov3()
    state = {}
    for key, value in ref.state_dict().items():
        value = torch.randn_like(value)
        if key.endswith(("q_bias", "v_bias")):
            continue
        key = key.replace("reg_token", "storage_tokens")
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        state[key] = value
    q, k, v = torch.randn(32), torch.full((32,), k_bias), torch.randn(32)
    state["blocks.0.attn.qkv.bias"] = torch.cat([q, k, v])
    if mask:
        state["blocks.0.attn.qkv.bias_mask"] = torch.cat([torch.ones(32), torch.zeros(32),
                                                          torch.ones(32)])
    state["rope_embed.periods"] = ref.rope.periods.clone()
    state["mask_token"] = torch.zeros(1, 32)
    return state


def test_dinov3_release_keeps_qv_biases_and_checks_k(tmp_path):
    state = dinov3_release_state()
    path = _save(tmp_path / "dinov3.pth", state)
    built = _load(dinov3_natural.SPEC, path, tiny_dinov3, dinov3_natural.load_dinov3_weights)
    model_state = built.model.state_dict()
    assert torch.equal(model_state["blocks.0.attn.q_bias"], state["blocks.0.attn.qkv.bias"][:32])
    assert torch.equal(model_state["blocks.0.attn.v_bias"], state["blocks.0.attn.qkv.bias"][64:])
    assert torch.equal(model_state["reg_token"], state["storage_tokens"])
    assert torch.equal(model_state["blocks.0.gamma_1"], state["blocks.0.ls1.gamma"])
    assert "blocks.0.attn.qkv.bias_mask" in built.report.skipped_unexpected
    assert any("k part" in n for n in built.report.notes)
    # without the mask a non-zero k bias cannot be dropped silently
    path = _save(tmp_path / "nomask.pth", dinov3_release_state(mask=False))
    with pytest.raises(BenchError, match=r"blocks\.0\.attn\.qkv\.bias has a non-zero k part"):
        _load(dinov3_natural.SPEC, path, tiny_dinov3, dinov3_natural.load_dinov3_weights)
    # a zero k bias without mask is fine (the distilled releases)
    path = _save(tmp_path / "zero.pth", dinov3_release_state(mask=False, k_bias=0.0))
    _load(dinov3_natural.SPEC, path, tiny_dinov3, dinov3_natural.load_dinov3_weights)


def tiny_clip_cfg():
    return {"width": 64, "layers": 1, "patch_size": 16, "head_width": 32}


def tiny_clip_model():
    import open_clip

    return open_clip.CLIP(embed_dim=16, vision_cfg={**tiny_clip_cfg(), "image_size": 32},
                          text_cfg={"context_length": 8, "vocab_size": 50, "width": 32,
                                    "heads": 2, "layers": 1})


def test_clip_open_clip_state_dict_loads_and_matches(tmp_path):
    torch.manual_seed(3)
    full = tiny_clip_model().eval()
    path = _save(tmp_path / "open_clip_pytorch_model.bin", full.state_dict())
    build = lambda: clip.build_clip_tower(32, vision_cfg=tiny_clip_cfg(), embed_dim=16)  # noqa: E731
    built = _load(clip.clip_spec(clip.DEFAULT_TAG), path, build, clip.load_clip_weights)
    assert "logit_scale" in built.report.skipped_unexpected
    assert any(k.startswith("transformer.") for k in built.report.skipped_unexpected)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(built.model(x), full.visual(x), atol=1e-5)
        ours = clip._clip_features(built.model, x)["cls"]
        assert ours.shape == (2, 64) and torch.isfinite(ours).all()
    # a tower built at another size resamples the position grid with open_clip and says so
    built = _load(clip.clip_spec(clip.DEFAULT_TAG), path,
                  lambda: clip.build_clip_tower(64, vision_cfg=tiny_clip_cfg(), embed_dim=16),
                  clip.load_clip_weights)
    assert any("resize_pos_embed" in n for n in built.report.notes)


def test_biomedclip_layout_and_conditional_registration(tmp_path):
    trunk = clip.build_biomedclip_trunk(img_size=32, **TINY_VIT)
    state = {"visual.trunk." + k: v for k, v in trunk.state_dict().items()}
    state |= {"visual.head.proj.weight": torch.randn(16, 32), "logit_scale": torch.tensor(1.0),
              "text.transformer.embeddings.word_embeddings.weight": torch.randn(10, 8)}
    path = _save(tmp_path / clip.BIOMEDCLIP_FILE, state)
    built = _load(clip.BIOMEDCLIP_SPEC, path,
                  lambda: clip.build_biomedclip_trunk(img_size=32, **TINY_VIT),
                  clip.load_biomedclip_weights)
    _equal_params(built.model, trunk.state_dict())
    assert "visual.head.proj.weight" in built.report.skipped_unexpected

    registered = "biomedclip" in BACKBONES
    cache = tmp_path / "hf"
    assert clip.register_biomedclip_if_cached(cache) is registered  # empty cache: unchanged
    repo = cache / ("models--" + clip.BIOMEDCLIP_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / clip.BIOMEDCLIP_FILE).write_bytes(path.read_bytes())
    try:
        assert clip.register_biomedclip_if_cached(cache) is True
        assert "biomedclip" in BACKBONES
    finally:
        if not registered:
            BACKBONES._entries.pop("biomedclip", None)


TINY_MONAI_VIT = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 1, "num_heads": 4}


def tiny_brainiac():
    return brainiac.build_brainiac_vit((32, 32, 32), **TINY_MONAI_VIT)


def brainiac_lightning_ckpt() -> tuple[dict, torch.nn.Module]:
    """BrainIAC's SimCLR LightningModule layout: {'state_dict': {'backbone.*', head}, ...}, saved
    by an older MONAI whose blocks have no norm_cross_attn."""
    torch.manual_seed(4)
    module = torch.nn.Module()
    module.backbone = tiny_brainiac()
    module.projection_head = torch.nn.Linear(48, 8)
    state = {k: v for k, v in module.state_dict().items() if "norm_cross_attn" not in k}
    return {"state_dict": state, "epoch": 18, "global_step": 100}, module.backbone


def test_brainiac_lightning_checkpoint_loads_first_token(tmp_path):
    ckpt, ref = brainiac_lightning_ckpt()
    path = _save(tmp_path / "brainiac.ckpt", ckpt)
    built = _load(brainiac.SPEC, path, tiny_brainiac, brainiac.load_brainiac_weights)
    report = built.report
    assert "projection_head.weight" in report.skipped_unexpected
    assert "blocks.0.norm_cross_attn.weight" in report.skipped_missing
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        out = brainiac._features(built.model, x)
        assert torch.allclose(out["cls"], ref.eval()(x)[0][:, 0], atol=1e-5)


def tiny_swin():
    return swinunetr_ssl.build_swin_encoder(embed_dim=12, depths=(1, 1, 1, 1),
                                            num_heads=(1, 1, 1, 1))


def test_swinunetr_released_layout_loads(tmp_path):
    torch.manual_seed(5)
    ref = tiny_swin()
    state = {"module." + k.replace("mlp.linear", "mlp.fc"): v  # the release's Swin naming
             for k, v in ref.state_dict().items()}
    state["module.rotation_head.weight"] = torch.randn(4, 8)
    path = _save(tmp_path / "model_swinvit.pt", {"state_dict": state})
    built = _load(swinunetr_ssl.SPEC, path, tiny_swin, swinunetr_ssl.load_swin_weights)
    _equal_params(built.model, ref.state_dict())
    assert "rotation_head.weight" in built.report.skipped_unexpected
    # MONAI's own loader reads the same layout (it is the upstream format)
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1),
                    num_heads=(1, 1, 1, 1))
    net.load_from({"state_dict": state})
    assert torch.equal(net.swinViT.layers2[0].blocks[0].attn.qkv.weight,
                       built.model.layers2[0].blocks[0].attn.qkv.weight)


# ------------------------------------------------------------------ wrong and truncated files

def _cases():
    d2, _ = dinov2_release_state(False)
    bi, _ = brainiac_lightning_ckpt()
    sw = {"state_dict": {"module." + k.replace("mlp.linear", "mlp.fc"): v
                         for k, v in tiny_swin().state_dict().items()}}
    cl = tiny_clip_model().state_dict()
    return {
        "dinov2": (dinov2.spec("dinov2", False), lambda: tiny_dinov2(False),
                   dinov2.load_dinov2_weights, d2, "blocks.0.attn.qkv.weight"),
        "dinov3": (dinov3_natural.SPEC, tiny_dinov3, dinov3_natural.load_dinov3_weights,
                   dinov3_release_state(), "blocks.0.mlp.fc1.weight"),
        "clip": (clip.clip_spec(clip.DEFAULT_TAG),
                 lambda: clip.build_clip_tower(32, vision_cfg=tiny_clip_cfg(), embed_dim=16),
                 clip.load_clip_weights, cl, "visual.ln_post.weight"),
        "brainiac": (brainiac.SPEC, tiny_brainiac, brainiac.load_brainiac_weights, bi,
                     "backbone.blocks.0.attn.qkv.weight"),
        "swinunetr_ssl": (swinunetr_ssl.SPEC, tiny_swin, swinunetr_ssl.load_swin_weights, sw,
                          "module.layers3.0.blocks.0.mlp.fc1.weight"),
    }


def _without(ckpt: dict, key: str) -> dict:
    inner = "state_dict" if "state_dict" in ckpt else None
    state = dict(ckpt[inner]) if inner else dict(ckpt)
    del state[key]
    return {**ckpt, inner: state} if inner else state


def _with(ckpt: dict, key: str) -> dict:
    inner = "state_dict" if "state_dict" in ckpt else None
    state = dict(ckpt[inner]) if inner else dict(ckpt)
    state[key] = torch.zeros(3)
    return {**ckpt, inner: state} if inner else state


@pytest.mark.parametrize("name", ["dinov2", "dinov3", "clip", "brainiac", "swinunetr_ssl"])
def test_wrong_or_truncated_checkpoints_fail_naming_keys(tmp_path, name):
    spec, build, load, ckpt, key = _cases()[name]
    # a missing key is named (in the file's naming where it differs)
    path = _save(tmp_path / "missing.pth", _without(ckpt, key))
    with pytest.raises(BenchError, match="missing key") as err:
        _load(spec, path, build, load)
    short = key.split(".", 1)[1] if key.startswith(("backbone.", "module.", "visual.")) else key
    assert short in str(err.value)
    # an unknown key is named
    extra = key.rsplit(".", 1)[0] + ".surprise"
    path = _save(tmp_path / "extra.pth", _with(ckpt, extra))
    with pytest.raises(BenchError, match="unexpected key") as err:
        _load(spec, path, build, load)
    assert "surprise" in str(err.value)
    # a truncated file names the file
    good = _save(tmp_path / "good.pth", ckpt)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BenchError, match="truncated") as err:
        _load(spec, cut, build, load)
    assert str(cut) in str(err.value)


# ------------------------------------------------------------------ resolution policy

def test_resolution_order_env_then_hf_cache_and_require(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    import brainbench.backbone as backbone_module

    spec = dinov2.spec("dinov2", False)
    monkeypatch.delenv(spec.env_var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    # the random-init warning is once per process: another test may have used it up
    monkeypatch.setattr(backbone_module, "_warned", set())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    build = lambda: tiny_dinov2(False)  # noqa: E731
    with pytest.raises(BenchError, match=f"needs trained weights.*{spec.env_var}"):
        build_with_weights(spec, weights=None, require_weights=True, build=build,
                           load=dinov2.load_dinov2_weights, init="test")
    with pytest.warns(UserWarning, match="RANDOM INITIALISATION"):
        random = build_with_weights(spec, weights=None, require_weights=False, build=build,
                                    load=dinov2.load_dinov2_weights, init="test")
    assert random.weights.is_random
    # a file in the local HF cache (timm's repo for the model) is found offline
    state, _ = dinov2_release_state(False)
    repo = tmp_path / "hf" / "models--timm--vit_base_patch14_dinov2.lvd142m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    cached = _save(repo / "snapshots" / ("a" * 40) / "pytorch_model.bin", state)
    found = build_with_weights(spec, weights=None, require_weights=True, build=build,
                               load=dinov2.load_dinov2_weights, init="test")
    assert found.weights.source == str(cached) and not found.weights.is_random
    # the environment variable wins over the cache
    env_file = _save(tmp_path / "env.pth", state)
    monkeypatch.setenv(spec.env_var, str(env_file))
    found = build_with_weights(spec, weights=None, require_weights=True, build=build,
                               load=dinov2.load_dinov2_weights, init="test")
    assert found.weights.source == str(env_file)
    monkeypatch.setenv(spec.env_var, str(tmp_path / "nope.pth"))
    with pytest.raises(BenchError, match="nope.pth .*does not exist"):
        build_with_weights(spec, weights=None, require_weights=True, build=build,
                           load=dinov2.load_dinov2_weights, init="test")


def test_patch14_sizes_follow_the_profile():
    assert [check_size("s", v, 224, 14, round_to_multiple=True) for v in (112, 224, 32)] == \
        [112, 224, 28]
    with pytest.raises(BenchError):
        create_backbone("random3d", weights="x.pth")


# ------------------------------------------------------------------ every backbone, full size

@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_nifti(tmp_path_factory.mktemp("vol") / "brain.nii.gz", random_brain(0))


# the oracle reads phantom ground truth, not volumes (tests/test_controls.py)
# (braindino and random: tests/test_precision.py); both precisions, as issue 15 asks
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(set(BACKBONES.names()) - {"braindino", "random", "oracle"}))
def test_every_backbone_encodes_a_phantom_volume(tmp_path, phantom, name, precision):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init; bf16 on a CPU without a bf16 path
        backbone = create_backbone(name, image_size=32, num_slices=4, precision=precision)
    # controls compute no network: always fp32, and say so
    assert backbone.precision == ("fp32" if backbone.weights.is_control else precision)
    contract = backbone.contract
    tokens, stats = extract_features(backbone, [phantom], FeatureCache(tmp_path), batch_size=4,
                                     progress=False)
    items = 4 if contract.dims == "2d" else 1
    assert stats.items_encoded == items
    for token in contract.tokens:
        value = tokens[phantom][token]
        assert value.shape == (items, contract.feature_dim)
        assert np.isfinite(value).all() and np.abs(value).sum() > 0
    if contract.dims == "2d":
        assert contract.image_size[0] % backbone.architecture()["patch_size"] == 0
    # no weights on this machine: marked, never hidden (controls have none by design)
    assert backbone.weights.is_random or backbone.weights.is_control


def test_dinov3_missing_keys_are_named_as_in_the_release_file(tmp_path):
    state = dinov3_release_state()
    for key in ("blocks.0.ls1.gamma", "blocks.0.attn.qkv.bias", "storage_tokens"):
        if key != "storage_tokens":
            del state[key]
    path = _save(tmp_path / "dinov3.pth", state)
    with pytest.raises(BenchError, match="missing key") as err:
        _load(dinov3_natural.SPEC, path, tiny_dinov3, dinov3_natural.load_dinov3_weights)
    message = str(err.value)
    assert "blocks.0.ls1.gamma" in message and "blocks.0.attn.qkv.bias" in message


def test_swin_patch_merging_uses_the_pre_monai_15_order():
    """The released SwinUNETR SSL weights were trained with MONAI < 1.5's 3-D merging order
    (offsets 000,100,010,001,101,010,001,111); features must not follow the installed MONAI."""
    merge = swinunetr_ssl.LegacyPatchMerging(dim=1)
    with torch.no_grad():
        merge.norm = torch.nn.Identity()
        merge.reduction = torch.nn.Identity()
    x = torch.zeros(1, 2, 2, 2, 1)
    for d in range(2):
        for h in range(2):
            for w in range(2):
                x[0, d, h, w, 0] = 100 * d + 10 * h + w
    got = merge(x).flatten().tolist()
    assert got == [100 * d + 10 * h + w for d, h, w in swinunetr_ssl.LEGACY_MERGE_ORDER]
    assert got == [0, 100, 10, 1, 101, 10, 1, 111]
    model = tiny_swin()
    assert all(isinstance(layer[0].downsample, swinunetr_ssl.LegacyPatchMerging)
               for layer in (model.layers1, model.layers2, model.layers3, model.layers4))
