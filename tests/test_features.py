"""Feature cache: content-addressed, warm reruns do no forward pass, nothing half-written."""

from pathlib import Path

import numpy as np
import pytest

from brainbench.errors import BenchError
from brainbench.features import FeatureCache, extract_features
from tests.helpers import TinyBackbone, random_brain, write_nifti


@pytest.fixture()
def volumes(tmp_path: Path) -> list[Path]:
    return [write_nifti(tmp_path / "img" / f"v{i}.nii.gz", random_brain(i)) for i in range(5)]


def test_cold_then_warm_run_does_zero_forward_passes(tmp_path, volumes):
    cache = FeatureCache(tmp_path / "cache")
    backbone = TinyBackbone(slices=6)
    cold, stats = extract_features(backbone, volumes, cache, batch_size=4, progress=False)
    assert stats.computed == 5 and stats.cached == 0
    assert stats.items_encoded == 5 * 6
    assert backbone.calls == stats.forward_calls == 8  # 30 slices in batches of 4: 7 full + 1
    assert all(v["cls"].shape == (6, 8) for v in cold.values())

    fresh = TinyBackbone(slices=6)
    warm, stats = extract_features(fresh, volumes, cache, batch_size=4, progress=False)
    assert fresh.calls == 0 and stats.cached == 5 and stats.computed == 0
    for path in volumes:
        np.testing.assert_array_equal(cold[path]["cls"], warm[path]["cls"])


def test_batching_across_volumes_matches_one_volume_at_a_time(tmp_path, volumes):
    together, _ = extract_features(TinyBackbone(slices=6), volumes, FeatureCache(tmp_path / "a"),
                                   batch_size=4, progress=False)
    for path in volumes:
        alone, _ = extract_features(TinyBackbone(slices=6), [path], FeatureCache(tmp_path / "b"),
                                    batch_size=6, progress=False)
        np.testing.assert_allclose(together[path]["cls"], alone[path]["cls"], rtol=1e-5,
                                   atol=1e-6)


def test_key_covers_weights_preprocessing_and_image_content(tmp_path, volumes):
    cache = FeatureCache(tmp_path / "cache")
    base = TinyBackbone()
    key = cache.key(base, "a" * 64)
    assert key == cache.key(TinyBackbone(), "a" * 64)
    assert key != cache.key(TinyBackbone(seed=1), "a" * 64)  # other weights
    assert key != cache.key(TinyBackbone(slices=8), "a" * 64)  # other preprocessing
    assert key != cache.key(base, "b" * 64)  # other image
    extract_features(base, volumes[:1], cache, progress=False)
    write_nifti(volumes[0], random_brain(99))  # same path, new content
    again = TinyBackbone()
    _, stats = extract_features(again, volumes[:1], cache, progress=False)
    assert stats.computed == 1 and again.calls == 1


def test_crash_leaves_only_complete_entries(tmp_path, volumes):
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(TinyBackbone(slices=4, fail_after=2), volumes, cache, batch_size=4,
                         progress=False)
    entries = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in entries if p.name.endswith(".tmp.npz")]
    assert len([p for p in entries if p.suffix == ".npz"]) == 2  # the two finished volumes
    resumed = TinyBackbone(slices=4)
    _, stats = extract_features(resumed, volumes, cache, batch_size=4, progress=False)
    assert stats.cached == 2 and stats.computed == 3


def test_wrong_feature_shape_is_rejected_before_caching(tmp_path, volumes):
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(BenchError, match="contract declares dim 8"):
        extract_features(TinyBackbone(bad_dim=True), volumes[:1], cache, progress=False)
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_corrupt_and_nan_volumes_name_the_file(tmp_path, volumes):
    cache = FeatureCache(tmp_path / "cache")
    truncated = tmp_path / "bad" / "truncated.nii.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(volumes[0].read_bytes()[:200])
    with pytest.raises(BenchError, match="truncated.nii.gz"):
        extract_features(TinyBackbone(), [truncated], cache, progress=False)
    import nibabel as nib

    nan_path = tmp_path / "bad" / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), str(nan_path))
    with pytest.raises(BenchError, match="nan.nii.gz.*no finite voxels"):
        extract_features(TinyBackbone(), [nan_path], cache, progress=False)
    with pytest.raises(BenchError, match="not found"):
        extract_features(TinyBackbone(), [tmp_path / "missing.nii.gz"], cache, progress=False)
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_analyze_pair_key_covers_the_header(tmp_path, volumes):
    """OASIS-1 ships .img/.hdr pairs: the header (scaling, orientation) changes what is read,
    so a changed .hdr with the same .img must be re-encoded, not served from the cache."""
    import nibabel as nib

    from brainbench.preprocess import image_sha256
    from brainbench.weights import sha256_file

    assert image_sha256(volumes[0]) == sha256_file(volumes[0])  # single files: plain sha256
    img = tmp_path / "oasis" / "scan.img"
    img.parent.mkdir()
    data = random_brain(7).astype(np.int16)
    nib.save(nib.AnalyzeImage(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(img))
    cache = FeatureCache(tmp_path / "cache")
    first, _ = extract_features(TinyBackbone(slices=6), [img], cache, progress=False)
    key_before = image_sha256(img)
    image_bytes = img.read_bytes()

    # the same voxel bytes read through a header with other dimensions: another volume
    other_dims = nib.AnalyzeImage(np.zeros((28, 24, 20), np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    other_dims.to_filename(str(tmp_path / "other.img"))
    img.with_suffix(".hdr").write_bytes((tmp_path / "other.hdr").read_bytes())
    assert img.read_bytes() == image_bytes  # voxels on disk unchanged, header changed
    assert image_sha256(img) != key_before

    backbone = TinyBackbone(slices=6)
    second, stats = extract_features(backbone, [img], cache, progress=False)
    assert stats.computed == 1 and backbone.calls > 0
    assert not np.array_equal(first[img]["cls"], second[img]["cls"])

    img.with_suffix(".hdr").unlink()
    with pytest.raises(BenchError, match=r"scan\.hdr"):
        image_sha256(img)


def test_backbone_max_batch_caps_items_per_forward_call(tmp_path, volumes):
    """A memory-heavy encoder (swinunetr_ssl: 2 volumes) caps the profile's batch size;
    features do not depend on the batching."""
    capped = TinyBackbone(slices=6)
    capped.max_batch = 4
    small, stats = extract_features(capped, volumes, FeatureCache(tmp_path / "a"),
                                    batch_size=16, progress=False)
    assert stats.forward_calls == capped.calls == 8  # 30 slices, at most 4 per call
    full, _ = extract_features(TinyBackbone(slices=6), volumes, FeatureCache(tmp_path / "b"),
                               batch_size=16, progress=False)
    for path in volumes:
        np.testing.assert_allclose(small[path]["cls"], full[path]["cls"], rtol=1e-5, atol=1e-6)


def test_swinunetr_ssl_declares_a_small_batch():
    from brainbench.backbone import create_backbone

    assert create_backbone("swinunetr_ssl").max_batch == 2


def test_cached_entries_of_another_dtype_are_recomputed_with_a_note(tmp_path, volumes, caplog):
    """The cache writes float32: an entry of any other dtype (float64, whose finite 1e39
    overflows float32; float16) is a logged miss, recomputed and rewritten as float32 under
    the same key; valid float32 entries are served bit-identical, without a forward pass."""
    import logging

    from brainbench.features import FEATURE_DTYPE
    from brainbench.preprocess import image_sha256

    cache = FeatureCache(tmp_path / "cache")
    backbone = TinyBackbone(slices=4)
    cold, _ = extract_features(backbone, volumes, cache, batch_size=4, progress=False)
    keys = {path: cache.key(backbone, image_sha256(path)) for path in volumes}
    assert all(np.load(cache.path(k))["cls"].dtype == np.float32 for k in keys.values())
    assert FEATURE_DTYPE == np.float32
    planted = {
        volumes[0]: {n: v.astype(np.float64) for n, v in cold[volumes[0]].items()},
        volumes[1]: {"cls": np.full_like(cold[volumes[1]]["cls"], 1e39, dtype=np.float64),
                     "patch_mean": cold[volumes[1]]["patch_mean"].astype(np.float64)},
        volumes[2]: {n: v.astype(np.float16) for n, v in cold[volumes[2]].items()},
    }
    for path, tokens in planted.items():
        cache.save(keys[path], tokens)
    rerun = TinyBackbone(slices=4)
    with caplog.at_level(logging.WARNING, logger="brainbench"):
        warm, stats = extract_features(rerun, volumes, cache, batch_size=4, progress=False)
    assert stats.computed == 3 and stats.cached == 2 and rerun.calls == 3  # 12 slices / 4
    for path, dtype in zip(planted, ("float64", "float64", "float16")):
        assert f"feature cache entry {cache.path(keys[path])} holds cls of dtype {dtype}, " \
               "expected float32" in caplog.text and "recomputing" in caplog.text
    for path in volumes:  # recomputed or served: the float32 features of the cold run, exactly
        assert cache.key(rerun, image_sha256(path)) == keys[path]  # the key is unchanged
        for name in ("cls", "patch_mean"):
            assert warm[path][name].dtype == np.float32
            np.testing.assert_array_equal(warm[path][name], cold[path][name])
            np.testing.assert_array_equal(np.load(cache.path(keys[path]))[name],
                                          cold[path][name])
    assert np.abs(warm[volumes[1]]["cls"]).max() < 1e6  # not the planted 1e39
    caplog.clear()
    again = TinyBackbone(slices=4)
    _, stats = extract_features(again, volumes, cache, batch_size=4, progress=False)
    assert again.calls == 0 and stats.cached == 5 and "recomputing" not in caplog.text


class _WrongOutputs(TinyBackbone):
    def embed(self, batch):
        out = super().embed(batch)
        return list(out.values()) if self.calls > 1 else out


def test_forward_outputs_that_are_not_named_rows_stop_the_run_before_caching(tmp_path,
                                                                              volumes):
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(BenchError, match=r"backbone tiny: embed\(\) returned list for a batch "
                                         r"of 4 inputs; expected a dict"):
        extract_features(_WrongOutputs(slices=4), volumes, cache, batch_size=4, progress=False)
    entries = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in entries if ".tmp" in p.name]
    assert len([p for p in entries if p.suffix == ".npz"]) == 1  # the volume of call 1 only


def test_a_truncated_gzip_is_not_reported_with_its_last_bytes_as_a_length(tmp_path, volumes):
    """A truncated .nii.gz has no gzip trailer: its last 4 bytes are compressed voxels, so
    the message never presents their value as the stream's length."""
    import nibabel as nib

    data = volumes[0].read_bytes()
    header = nib.load(str(volumes[0])).header
    # a single-file NIfTI-1: the 348-byte header and 4 extension bytes, then the voxels
    needed = 352 + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    cut = next(n for n in range(len(data) // 2, len(data) - 8)
               if len(str(int.from_bytes(data[n - 4:n], "little"))) >= 8)
    garbage = int.from_bytes(data[cut - 4:cut], "little")
    truncated = tmp_path / "bad" / "cut.nii.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(data[:cut])
    with pytest.raises(BenchError) as info:
        extract_features(TinyBackbone(), [truncated], FeatureCache(tmp_path / "cache"),
                         progress=False)
    message = str(info.value)
    assert str(truncated) in message and "truncated or corrupt" in message
    assert f"gzip trailer does not give the {needed} bytes the header implies" in message
    assert str(garbage) not in message
    assert not list((tmp_path / "cache").rglob("*.npz"))
