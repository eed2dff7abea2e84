"""The numpy robust z-score is bit-for-bit its definition: clip the whole volume's nonzero voxels
to their 1st-99th percentile, then z-score the nonzero voxels (background 0)."""

from __future__ import annotations

import numpy as np
import pytest

from brainbench.preprocess import robust_zscore, zscore


def by_definition(volume: np.ndarray) -> np.ndarray:
    mask = volume != 0
    low, high = np.percentile(volume[mask], [1.0, 99.0])
    return zscore(np.where(mask, np.clip(volume, low, high), 0.0).astype(np.float32))


def brain(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in (48, 40, 30)],
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
