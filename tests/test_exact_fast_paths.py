"""The preprocessing's faster paths give what the library calls they replace give, bit for bit:
`brainbench.percentiles.percentiles` is `np.percentile` (and really selects: the fast path is
taken on a volume's voxels), `c_order` is `np.ascontiguousarray`, and the slice-major copy of a
resized grid is torch's ``permute(...).contiguous()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainbench import percentiles as percentiles_module
from brainbench.percentiles import SELECTION_MIN_VALUES, percentiles
from brainbench.backbone import InputContract
from brainbench.preprocess import c_order, volume_to_input, zscore


def _values(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "ties":  # int16 scanner values as float32: many equal values at each rank
        return rng.integers(-50, 900, n).astype(np.float32)
    if kind == "skewed":
        return (rng.exponential(1.0, n) * 1e3).astype(np.float32)
    if kind == "sorted":  # the systematic sample then lands on the ranks exactly
        return np.sort(rng.standard_normal(n)).astype(np.float32)
    if kind == "reversed":
        return np.sort(rng.standard_normal(n)).astype(np.float32)[::-1].copy()
    if kind == "float64":
        return rng.standard_normal(n)
    raise ValueError(kind)


KINDS = ("normal", "ties", "skewed", "sorted", "reversed", "float64")


@pytest.mark.parametrize("kind", KINDS)
def test_bit_for_bit_numpys_percentiles(kind):
    rng = np.random.default_rng(len(kind))
    for trial in range(12):
        n = int(rng.integers(SELECTION_MIN_VALUES, 600_000))
        values = _values(kind, n, rng)
        qs = (1.0, 99.0) if trial % 2 else (float(rng.uniform(0.05, 50)),
                                             float(rng.uniform(50, 99.95)))
        expected = np.percentile(values, list(qs))
        got = percentiles(values, qs)
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), (kind, n, qs)


def test_a_volumes_voxels_take_the_selection_path(monkeypatch):
    """The speed comes from never partitioning all values: with np.percentile unavailable to
    the module, a brain's nonzero voxels still get numpy's answer."""
    rng = np.random.default_rng(3)
    values = np.round(600 + 150 * rng.standard_normal(2_000_000)).astype(np.float32)
    expected = np.percentile(values, [1.0, 99.0])

    def refused(*args, **kwargs):
        raise AssertionError("fell back to np.percentile")

    monkeypatch.setattr(percentiles_module.np, "percentile", refused)
    assert percentiles(values, (1.0, 99.0)).tobytes() == expected.tobytes()


@pytest.mark.parametrize("case", ["nan", "ends", "small", "integers", "two-d"])
def test_what_selection_does_not_cover_is_numpys_own_answer(case):
    rng = np.random.default_rng(5)
    values = rng.standard_normal(200_000).astype(np.float32)
    qs = (1.0, 99.0)
    if case == "nan":
        values[[7, 150_000]] = np.nan
    elif case == "ends":
        qs = (0.0, 100.0)
    elif case == "small":
        values = values[: SELECTION_MIN_VALUES - 1]
    elif case == "integers":
        values = rng.integers(0, 1000, 200_000)
    elif case == "two-d":
        values = values.reshape(400, 500)
    expected = np.percentile(values, list(qs))
    got = percentiles(values, qs)
    assert got.tobytes() == expected.tobytes()
    if case == "nan":
        assert np.isnan(got).all()


@pytest.mark.parametrize("shape,order", [
    ((61, 47, 33), "F"), ((61, 47, 33), "C"), ((61, 1, 33), "F"), ((5, 48, 7), "F"),
    ((40, 30), "F"),
])
def test_c_order_is_ascontiguousarray_bit_for_bit(shape, order):
    volume = np.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32),
                        order=order)
    got = c_order(volume)
    assert got.flags.c_contiguous and got.dtype == volume.dtype
    assert np.array_equal(got, volume) and got.tobytes() == np.ascontiguousarray(volume).tobytes()


def test_c_order_of_a_strided_view():
    volume = np.asfortranarray(np.arange(24 * 30 * 10, dtype=np.float32).reshape(24, 30, 10))
    view = volume[::2, 3:, ::3]
    assert np.array_equal(c_order(view), np.ascontiguousarray(view))
    assert c_order(view).flags.c_contiguous


@pytest.mark.parametrize("size,slices", [((224, 224), 128), ((112, 112), 16), ((30, 26), 7),
                                         ((97, 61), 300)])
def test_slices_come_out_as_torchs_permuted_copy(size, slices):
    """`volume_to_input` for a 2d contract: resize, then (S, 1, H, W) slices; the blocked
    transpose (rows not a multiple of its block included) against torch's own copy."""
    from monai.transforms import Resize

    rng = np.random.default_rng(sum(size) + slices)
    volume = np.asfortranarray(rng.standard_normal((60, 50, 40), dtype=np.float32))
    contract = InputContract("2d", 1, size, slices, "zscore", ("cls",), 8)
    got = volume_to_input(volume, contract)
    resized = Resize((*size, slices), mode="trilinear")(
        torch.from_numpy(zscore(volume))[None]).as_subclass(torch.Tensor)
    expected = resized[0].permute(2, 0, 1)[:, None].contiguous()
    assert got.shape == (slices, 1, *size) and got.is_contiguous()
    assert torch.equal(got, expected)
