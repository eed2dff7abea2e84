"""The numpy robust z-score is bit-for-bit its definition: clip the whole volume's nonzero voxels
to their 1st-99th percentile, then z-score the nonzero voxels (background 0)."""

from __future__ import annotations

import numpy as np
import pytest

from brainbench.percentiles import SELECTION_MIN_VALUES
from brainbench.preprocess import robust_zscore, zscore


def by_definition(volume: np.ndarray) -> np.ndarray:
    mask = volume != 0
    low, high = np.percentile(volume[mask], [1.0, 99.0])
    return zscore(np.where(mask, np.clip(volume, low, high), 0.0).astype(np.float32))


def brain(seed: int, shape: tuple[int, int, int] = (48, 40, 30)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape],
                        indexing="ij")
    inside = sum(g**2 for g in grids) < 0.7
    return np.where(inside, 600 + 200 * grids[0] + 60 * rng.standard_normal(inside.shape),
                    0).astype(np.float32)


@pytest.mark.parametrize("volume", [
    brain(0),
    np.random.default_rng(1).standard_normal((20, 30, 10)).astype(np.float32),  # negatives
    # 25 voxels of -2, 25 of -1 and one of 1: the 99th percentile is exactly 0, so the clip
    # turns the 1 into background, which the z-score must then leave out
    np.concatenate([np.full(25, -2.0), -np.ones(25), np.ones(1), np.zeros(30)]
                   ).astype(np.float32).reshape(9, 9),
])
def test_robust_zscore_is_its_definition_bit_for_bit(volume):
    expected = by_definition(volume.copy())
    got = robust_zscore(volume.copy())
    assert got.dtype == np.float32 and got.shape == volume.shape
    assert np.array_equal(got, expected)
    assert np.count_nonzero(got) <= np.count_nonzero(volume)


def test_the_zero_percentile_case_really_drops_a_voxel():
    volume = np.concatenate([np.full(25, -2.0), -np.ones(25), np.ones(1), np.zeros(30)]
                            ).astype(np.float32)
    assert np.percentile(volume[volume != 0], 99.0) == 0.0
    assert np.count_nonzero(robust_zscore(volume.copy())) == 50


@pytest.mark.parametrize("normalise", [robust_zscore, zscore])
def test_fortran_ordered_volumes_give_the_c_order_result_bit_for_bit(normalise):
    """nibabel hands voxels in Fortran order; the numpy normalisations copy them to C order
    first (faster than gathering across strides) and must still reduce in C order: on this
    volume a mean over the voxels in memory order differs in float32, so reducing in the
    wrong order would show."""
    volume = brain(0)
    fortran = np.asfortranarray(volume)
    mask = volume != 0
    assert volume[mask].mean() != fortran.T[mask.T].mean()  # the order is visible here
    got = normalise(fortran)
    assert got.flags.c_contiguous and got.dtype == np.float32
    assert np.array_equal(got, normalise(volume.copy()))
    if normalise is robust_zscore:
        assert np.array_equal(got, by_definition(volume.copy()))


@pytest.mark.parametrize("integers", [False, True])
def test_a_scanner_sized_volume_is_its_definition_bit_for_bit(integers):
    """Big enough (~230k brain voxels) for the percentile selection and the plane-wise C-order
    copy to run, Fortran-ordered as nibabel hands it; integer-valued like int16 scans (ties at
    every rank) or not."""
    volume = brain(4, (96, 96, 80))
    if integers:
        volume = np.round(volume)
    assert np.count_nonzero(volume) > SELECTION_MIN_VALUES
    expected = by_definition(volume.copy())
    got = robust_zscore(np.asfortranarray(volume))
    assert got.flags.c_contiguous and np.array_equal(got, expected)


def test_clipping_to_float32_bounds_is_clipping_to_float64_ones_then_rounding():
    """robust_zscore clips float32 voxels to its float64 percentiles rounded to float32; that
    is exact only because no float32 lies strictly between a bound and its rounding. Bounds
    are drawn next to the voxel values, where a rounding would show."""
    rng = np.random.default_rng(9)
    values = np.round(rng.standard_normal(50_000) * 300).astype(np.float32) / np.float32(7)
    for _ in range(200):
        low, high = np.sort(rng.choice(values, 2).astype(np.float64)
                            + rng.uniform(-1e-4, 1e-4, 2))
        expected = np.clip(values, low, high).astype(np.float32)
        got = np.clip(values, np.float32(low), np.float32(high))
        assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
