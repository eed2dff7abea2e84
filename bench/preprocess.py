"""Volume -> backbone input, following each backbone's input contract.

The BrainDINO protocol (DESIGN.md section 3): axial slices from the NIfTI's last axis in the
array order as stored, robust z-score over nonzero voxels (clip to their 1st-99th percentile,
then mean/std of nonzero voxels; background stays 0), depth resized to `num_slices` and slices
to `image_size`, grey repeated to `in_channels`.

Orientation (`reorientation`): a volume whose last array axis is already the axial one
(inferior-superior, e.g. RAS, LAS, LPS) is used as stored, as the reference did; one stored
sagittally or coronally (e.g. PIR, the way IXI T1 scans are acquired) would be sliced in the
wrong plane, so `load_volume` first reorients it to the closest canonical RAS (nibabel's
`as_closest_canonical`: an axis permutation and flips, no resampling). Label maps get the
identical transform (brainbench.segmentation.labels), and `image_sha256` marks a reoriented
file, so its cache key is not that of the features it had before this rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch

from brainbench.backbone import InputContract
from brainbench.errors import BenchError
from brainbench.percentiles import percentiles

PREPROCESS_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN/STD
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


try:  # ISA-L's inflate (python-isal): see `_inflated_voxels`
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # a platform without its wheel: nibabel's zlib reader
    _igzip = _isal_zlib = None

#: most bytes deflate can expand one compressed byte into (zlib's documented bound ~1032:1)
_MAX_DEFLATE_RATIO = 1032


def _gzipped(path: Path) -> bool:
    """Whether nibabel reads ``path`` through gzip: by its name ending in ``.gz``, in any case
    (nibabel matches extensions case-insensitively: ``IXI002-Guys-0482-T1.NII.GZ`` is gzip)."""
    return Path(path).name.lower().endswith(".gz")


def size_problem(path: Path, img=None) -> str | None:
    """Without reading voxels: does the file hold the bytes its header promises?

    The header's implied size (voxel offset + shape x item size) is compared with the data
    file's length, or for a ``.gz`` with the gzip trailer's uncompressed length (ISIZE, mod
    2**32) and with what the compressed bytes could possibly expand to. Returns the problem
    (naming the sizes known: a truncated ``.gz`` has no trailer, so its last 4 bytes are never
    reported as a length) or None; an unreadable header is left to the reader's own message.
    """
    path = Path(path)
    try:
        img = img if img is not None else nib.load(str(path))
        header = img.header
        implied = int(np.prod([int(n) for n in img.shape], dtype=object)) * \
            int(np.dtype(header.get_data_dtype()).itemsize)
        offset = int(header.get_data_offset()) if hasattr(header, "get_data_offset") else 0
        if not path.name.lower().endswith((".img", ".hdr")) and hasattr(header, "extensions"):
            # single-file NIfTI: the data follow the header and its extensions (vox_offset
            # may be 0)
            minimum = int(header.sizeof_hdr) + 4 + int(header.extensions.get_sizeondisk())
            offset = max(offset, minimum)
    except Exception:  # nibabel raises many types for damaged headers
        return None
    needed = offset + implied
    if _gzipped(path):
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                compressed = fh.tell()
                if compressed < 18:
                    return f"truncated: {compressed} bytes is no gzip stream"
                fh.seek(-4, 2)
                isize = int.from_bytes(fh.read(4), "little")  # uncompressed length mod 2**32
        except OSError as exc:
            return f"not readable ({exc})"
        if needed > compressed * _MAX_DEFLATE_RATIO + 1024:
            return (f"the header promises {needed} bytes (shape {tuple(img.shape)}, "
                    f"{header.get_data_dtype()}) but the file holds {compressed} compressed "
                    f"bytes, which expand to at most {compressed * _MAX_DEFLATE_RATIO}")
        if isize != needed % 2**32:
            # the last 4 bytes are gzip's length trailer only in an intact stream: in a
            # truncated file they are voxel data, so their value is never shown as a length
            return (f"truncated or corrupt: its gzip trailer does not give the {needed} "
                    f"bytes the header implies (shape {tuple(img.shape)}, "
                    f"{header.get_data_dtype()}; {compressed} compressed bytes on disk)")
        return None
    data_file = path if path.suffix.lower() != ".hdr" else path.with_suffix(
        ".IMG" if path.suffix.isupper() else ".img")
    try:
        size = data_file.stat().st_size
    except OSError:
        return None  # the reader names a missing file
    if size < needed:
        return (f"truncated: {size} bytes on disk, the header implies {needed} (shape "
                f"{tuple(img.shape)}, {header.get_data_dtype()})")
    return None


def _inflated_voxels(path: Path, img: "nib.spatialimages.SpatialImage") -> np.ndarray:
    """The voxels of `img` as float32. A gzipped single-file NIfTI is inflated whole by ISA-L
    (python-isal): its inflate took 32 ms for a BraTS-sized volume where Python's zlib, which
    nibabel reads through, took 50 ms, and the whole read went 59 -> 38 ms (BENCHMARKS.md
    "Decoding through ISA-L"); decoding shares the CPU with the forward pass, and on a GPU it
    sets the decode workers needed. Inflating is lossless: the voxels are nibabel's, bit for
    bit. Reading the stream to its end also checks its CRC, which nibabel (reading only the
    bytes the header asks for) never does: a damaged download is refused instead of encoded.
    Without isal (a platform lacking its wheel) nibabel's own reader runs."""
    if _igzip is None or not isinstance(img, nib.Nifti1Image) or not _gzipped(Path(path)):
        return np.asarray(img.dataobj, dtype=np.float32)
    compressed = Path(path).read_bytes()
    try:
        inflated = _igzip.decompress(compressed)
    except (OSError, EOFError, _isal_zlib.error) as exc:  # BadGzipFile is an OSError
        raise BenchError(f"cannot read image {path}: its gzip stream is damaged ({exc}); "
                         "a corrupt or truncated file: download it again") from None
    return np.asarray(type(img).from_bytes(inflated).dataobj, dtype=np.float32)


def _read(path: Path) -> tuple["nib.spatialimages.SpatialImage", np.ndarray]:
    """(image, voxels as stored): see `read_voxels`."""
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise BenchError(f"image file not found: {path}") from None
    except Exception as exc:  # nibabel raises many types for damaged headers
        raise BenchError(f"cannot read image {path}: {type(exc).__name__}: {exc} "
                         "(corrupt or truncated file?)") from None
    problem = size_problem(Path(path), img)
    if problem:
        raise BenchError(f"cannot read image {path}: {problem}")
    try:
        data = _inflated_voxels(path, img)
    except BenchError:
        raise
    except FileNotFoundError:
        raise BenchError(f"image file not found: {path}") from None
    except MemoryError:
        raise BenchError(f"cannot read image {path}: shape {tuple(img.shape)} does not fit in "
                         "memory") from None
    except Exception as exc:  # nibabel/gzip/zlib raise many types for damaged files
        raise BenchError(f"cannot read image {path}: {type(exc).__name__}: {exc} "
                         "(corrupt or truncated file?)") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    return img, data


def read_voxels(path: Path) -> np.ndarray:
    """Voxels as stored (scaled, float32, a trailing singleton 4th axis dropped; never
    reoriented: the voxel hash of brainbench.leakage reads them); damaged or missing files
    raise a BenchError naming the file. Shared by preprocessing and hashing. A header
    promising more bytes than the file holds is refused before anything is allocated."""
    return _read(path)[1]


def voxel_stats(data: np.ndarray) -> dict:
    """What validation needs to know about a volume's values, computed from the read the voxel
    hash makes anyway (brainbench.leakage): voxel count ``n``, non-finite count, count of finite
    nonzero voxels and their minimum / maximum (None without any: nothing but background).
    JSON-serialisable."""
    finite = np.isfinite(data)
    nonfinite = int(data.size - np.count_nonzero(finite))
    values = data[finite & (data != 0)]
    return {"n": int(data.size), "nonfinite": nonfinite, "nonzero": int(values.size),
            "min": float(values.min()) if values.size else None,
            "max": float(values.max()) if values.size else None}


# ------------------------------------------------------------------------------ orientation

#: the orientation a volume that is not stored axial-last is brought to before slicing
CANONICAL_ORIENTATION = "RAS"
AXIAL_CODES = ("S", "I")


def orientation_codes(affine: np.ndarray) -> str | None:
    """The axis codes of an affine ("RAS", "PIR", ...; nibabel's `aff2axcodes`), or None when
    they cannot be determined (non-finite or singular: validation refuses those files)."""
    ornt = _orientation(affine)
    return None if ornt is None else "".join(nib.orientations.ornt2axcodes(ornt))


def is_axial_last(codes: str) -> bool:
    """Whether a volume with these axis codes has its last array axis along inferior-superior,
    so that slicing the last axis gives axial slices: such a volume is used as stored."""
    return len(codes) == 3 and codes[2] in AXIAL_CODES


def _orientation(affine: np.ndarray) -> np.ndarray | None:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        return None
    ornt = nib.io_orientation(affine)
    return None if np.isnan(ornt).any() else ornt


def reorientation(affine: np.ndarray) -> np.ndarray | None:
    """The transform `load_volume` applies to the voxels of a volume with this affine: None
    when the volume is used as stored (its last axis is already axial, e.g. RAS, LAS or LPS;
    or its orientation cannot be determined), else nibabel's orientation array from the stored
    axes to the closest canonical RAS (`io_orientation`, as `as_closest_canonical` uses):
    an axis permutation and flips, no resampling."""
    ornt = _orientation(affine)  # one SVD per volume (io_orientation)
    if ornt is None or is_axial_last("".join(nib.orientations.ornt2axcodes(ornt))):
        return None
    return ornt


def reorient(data: np.ndarray, ornt: np.ndarray | None) -> np.ndarray:
    """Voxels (X, Y, Z, ...) under `reorientation`'s transform (None: unchanged, the same
    array). The result is one Fortran-ordered copy, the memory order nibabel hands out, so
    every later step (the workers' C-order copy, the device path's axis reversal) sees what
    it sees for a volume stored in RAS."""
    if ornt is None:
        return data
    return np.asfortranarray(nib.orientations.apply_orientation(data, ornt))


def reorient_zooms(zooms: tuple[float, ...], ornt: np.ndarray | None) -> tuple[float, ...]:
    """Voxel sizes (first three axes) in the order of the reoriented axes."""
    zooms = tuple(float(z) for z in zooms[:3])
    if ornt is None:
        return zooms
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = zooms[axis]
    return tuple(out)


def _reoriented_codes(path: Path) -> str | None:
    """The stored axis codes of an image `load_volume` reorients (None: used as stored, or a
    header the reader will refuse with its own message)."""
    try:
        affine = nib.load(str(path)).affine
    except Exception:  # nibabel raises many types for damaged headers; the read names it
        return None
    return orientation_codes(affine) if reorientation(affine) is not None else None


def image_files(path: Path) -> tuple[Path, ...]:
    """The files one image is stored in: an Analyze/NIfTI pair (OASIS-1 ``.img``) is read
    through its ``.hdr`` too (orientation, scaling), so both belong to the image's identity."""
    path = Path(path)
    if path.suffix.lower() != ".img":
        return (path,)
    return path, path.with_suffix(".HDR" if path.suffix.isupper() else ".hdr")


def image_sha256(path: Path) -> str:
    """Content hash of an image for cache keys: the file's sha256, or for an ``.img``/``.hdr``
    pair a digest of both files' sha256 (a changed header must not reuse cached features).

    A file that `load_volume` reorients (not stored axial-last) gets a digest of that hash and
    its stored orientation instead: its features are not those the same file had before
    reorientation existed, so it must not meet their cache entries; files used as stored (every
    phantom cohort) keep the plain hash, so their cache keys never changed."""
    from brainbench.splits import digest
    from brainbench.weights import sha256_file

    files = image_files(path)
    if len(files) == 1:
        sha = sha256_file(files[0])  # single files keep their plain sha256 (stable cache keys)
    else:
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise BenchError(f"image {path}: missing file(s) {missing} (an .img needs its .hdr)")
        sha = digest({"analyze_pair": [sha256_file(f) for f in files]})
    codes = _reoriented_codes(files[0])
    if codes is None:
        return sha
    return digest({"image": sha, "reoriented": f"{codes}->{CANONICAL_ORIENTATION}"})


def read_reoriented(path: Path) -> np.ndarray:
    """`read_voxels` brought to the orientation `load_volume` slices in (`reorientation`): for
    maps that must overlay a backbone's input voxel for voxel (masks, tissue maps)."""
    img, data = _read(path)
    return reorient(data, reorientation(img.affine))


def load_volume(path: Path) -> np.ndarray:
    """Read a 3D NIfTI as float32 for a backbone, brought to axial-last (`reorientation`; a
    volume already axial-last is the array as stored); empty, all-NaN or non-3D volumes are
    errors."""
    img, data = _read(path)
    if data.ndim != 3:
        raise BenchError(f"{path}: expected a 3D volume, got shape {data.shape}")
    finite = np.isfinite(data)
    if not finite.any():
        raise BenchError(f"{path}: volume has no finite voxels (all NaN/inf)")
    if not finite.all():  # counted and reported before any compute (brainbench.validation)
        data = np.where(finite, data, 0.0).astype(np.float32)
    if not np.any(data != 0):
        raise BenchError(f"{path}: volume is all zeros")
    return reorient(data, reorientation(img.affine))


def c_order(volume: np.ndarray) -> np.ndarray:
    """`np.ascontiguousarray`, bit for bit, about twice as fast for nibabel's Fortran-ordered
    3D volumes: numpy transposes the whole array in one strided pass whose writes miss the
    cache; two coronal planes at a time keep each pass's source and target in the cache
    (BraTS-sized: ~23 -> ~15 ms; BENCHMARKS.md "Intensity normalisation")."""
    if volume.flags.c_contiguous or volume.ndim != 3 or not volume.flags.f_contiguous:
        return np.ascontiguousarray(volume)
    out = np.empty(volume.shape, volume.dtype)
    for start in range(0, volume.shape[1], 2):
        out[:, start:start + 2] = volume[:, start:start + 2]
    return out


def robust_zscore(volume: np.ndarray) -> np.ndarray:
    """Clip nonzero voxels to their 1st-99th percentile, then z-score them; background stays 0.

    Works on the nonzero voxels alone (one gather, one scatter) and selects the percentiles
    (brainbench.percentiles) instead of partitioning every voxel: bit-for-bit what clipping
    the whole volume and then `zscore` gave, in ~35% of its time (BraTS-sized: 73 -> ~43 ms
    against ~120 ms by definition); decoding shares the CPU with the forward pass, and at the
    cpu profile on 2 cores it is as costly as the forward pass.
    """
    volume = c_order(volume)  # see `zscore`
    mask = volume != 0
    values = volume[mask]
    low, high = percentiles(values, (1.0, 99.0))  # np.percentile's, bit for bit, ~4x faster
    # clipping to the bounds rounded to float32 is clipping to float64 bounds and rounding
    # the result, bit for bit (no float32 lies strictly between a bound and its rounding),
    # without a float64 copy of every voxel (3.3 -> 0.5 ms for a BraTS-sized volume)
    clipped = np.clip(values, np.float32(low), np.float32(high))
    kept = clipped != 0  # a clip lands on 0 only where a percentile is exactly 0
    if not kept.all():
        mask[mask] = kept
        clipped = clipped[kept]
    std = float(clipped.std()) or 1.0
    out = np.zeros(volume.shape, dtype=np.float32)
    out[mask] = (clipped - float(clipped.mean())) / std
    return out


def zscore(volume: np.ndarray) -> np.ndarray:
    """Z-score of nonzero voxels, background kept at 0.

    Same result as MONAI's NormalizeIntensity(nonzero=True), which took ~100 ms per volume
    here against ~10 ms for this; preprocessing shares the CPU with the forward pass. NIfTI
    voxels come in Fortran order: masked gathers and scatters in C order over them cost
    more than one copy to C order first (BraTS-sized: 0.13 s against 0.07-0.09 s), bit for bit
    the same result.
    """
    volume = c_order(volume)
    mask = volume != 0
    values = volume[mask]
    std = float(values.std()) or 1.0
    out = np.zeros_like(volume, dtype=np.float32)
    out[mask] = (values - float(values.mean())) / std
    return out


def unit_range(volume: np.ndarray) -> np.ndarray:
    """Min-max of the nonzero voxels' 1st-99th percentile range to [0, 1] (natural-image models)."""
    mask = volume != 0
    low, high = percentiles(volume[mask], (1.0, 99.0))
    return np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


def _tensor_percentiles(values: torch.Tensor, qs: tuple[float, ...]) -> list[float]:
    """numpy's default (linear) percentiles of a 1-d tensor, on its device: the two order
    statistics around each position by selection (`torch.kthvalue`, linear time; a sort took
    3x numpy's time on a CPU, and torch.quantile refuses inputs over 2**24 elements)."""
    n = values.numel()
    out = []
    for q in qs:
        position = q / 100.0 * (n - 1)
        low = int(np.floor(position))
        kth = torch.kthvalue(values, low + 1).values
        if low + 1 >= n or int((values <= kth).sum()) > low + 1:  # the next one ties
            above = kth
        else:  # the next order statistic: the smallest value above, one cheap pass
            above = torch.where(values > kth, values, torch.inf).min()
        below = float(kth)
        out.append(below + (float(above) - below) * (position - low))
    return out


def zscore_tensor(volume: torch.Tensor) -> torch.Tensor:
    """`zscore` on the model's device (``PREPROCESS=device``): moments accumulated in float64
    over the whole grid (background adds 0), no masked gather or scatter, which are slow."""
    mask = volume != 0
    count = mask.sum()
    mean = torch.sum(volume, dtype=torch.float64) / count
    variance = torch.sum(volume * volume, dtype=torch.float64) / count - mean * mean
    std = float(variance.clamp(min=0).sqrt()) or 1.0
    return torch.where(mask, (volume - float(mean)) / std, 0.0).float()


def robust_zscore_tensor(volume: torch.Tensor) -> torch.Tensor:
    """`robust_zscore` on the model's device."""
    mask = volume != 0
    low, high = _tensor_percentiles(volume[mask], (1.0, 99.0))
    return zscore_tensor(torch.where(mask, volume.clamp(low, high), 0.0).float())


def unit_range_tensor(volume: torch.Tensor) -> torch.Tensor:
    """`unit_range` on the model's device."""
    low, high = _tensor_percentiles(volume[volume != 0], (1.0, 99.0))
    return ((volume - low) / max(high - low, 1e-6)).clamp(0.0, 1.0).float()


@dataclass(frozen=True)
class Normalisation:
    """One intensity normalisation: `scale` per volume before resizing (`scale_tensor` the
    same on the model's device), then (natural-image models) per-channel mean/std after grey
    is repeated, which needs exactly 3 channels."""

    scale: Callable[[np.ndarray], np.ndarray]
    scale_tensor: Callable[[torch.Tensor], torch.Tensor]
    channel_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def needs_three_channels(self) -> bool:
        return self.channel_stats is not None


# The one list of intensity names a contract may use; every other list derives from it.
NORMALISATIONS = {
    "robust_zscore": Normalisation(robust_zscore, robust_zscore_tensor),
    "zscore": Normalisation(zscore, zscore_tensor),
    "imagenet": Normalisation(unit_range, unit_range_tensor, (IMAGENET_MEAN, IMAGENET_STD)),
    "clip": Normalisation(unit_range, unit_range_tensor, (CLIP_MEAN, CLIP_STD)),
}
#: where z-score and resize run: in the decode workers (numpy, the default) or on the model's
#: device (torch, e.g. a GPU; the workers then only decode). Part of the backbone's cache
#: identity (feature keys, cell identity) when "device", since float rounding differs.
PREPROCESS_PLACES = ("workers", "device")
INTENSITIES = tuple(NORMALISATIONS)


def intensity_problem(intensity: object, in_channels: object) -> str | None:
    """Why a contract's intensity cannot be used with its channel count (None: it can)."""
    if not isinstance(intensity, str) or intensity not in NORMALISATIONS:
        return f"intensity must be one of {list(INTENSITIES)}, got {intensity!r}"
    if NORMALISATIONS[intensity].needs_three_channels and in_channels != 3:
        grey = " / ".join(repr(n) for n, v in NORMALISATIONS.items()
                          if not v.needs_three_channels)
        return (f"intensity {intensity!r} normalises 3 channels; set in_channels = 3 or choose "
                f"{grey} (got in_channels {in_channels})")
    return None


def normalise(volume: np.ndarray | torch.Tensor, intensity: str) -> np.ndarray | torch.Tensor:
    """The contract's per-volume scaling (channel statistics come after the resize): numpy
    for an array, torch on the tensor's device for a tensor."""
    if intensity not in NORMALISATIONS:
        raise BenchError(f"unknown intensity normalisation {intensity!r}; known: "
                         f"{list(INTENSITIES)}")
    if isinstance(volume, torch.Tensor):
        return NORMALISATIONS[intensity].scale_tensor(volume)
    return NORMALISATIONS[intensity].scale(volume)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """MONAI's Resize returns a MetaTensor, whose ``__torch_function__`` would then run Python
    around every operation of the backbone's forward pass (8% of a ViT-B/16 forward at 112 px,
    BENCHMARKS.md "Data path"): the same data as a plain tensor."""
    return tensor.as_subclass(torch.Tensor)


#: rows of the (H*W, S) resized grid transposed per pass by `_slices_first` (~1 MB: in cache)
_TRANSPOSE_ROWS = 256


def _slices_first(grid: torch.Tensor) -> torch.Tensor:
    """A resized (H, W, S) grid as contiguous (S, 1, H, W) slices, bit for bit the copy
    torch's ``permute(...).contiguous()`` makes. On the CPU the (H*W, S) -> (S, H*W)
    transpose goes a few hundred rows at a time, so source and target stay in the cache: at
    the paper profile (224x224x128) 19 -> 8 ms per volume, in the decode workers a GPU
    waits on."""
    height, width, depth = grid.shape
    if grid.device.type != "cpu" or grid.dtype != torch.float32 or not grid.is_contiguous():
        return grid.permute(2, 0, 1)[:, None].float().contiguous()
    rows = grid.numpy().reshape(height * width, depth)
    out = np.empty((depth, height * width), dtype=np.float32)
    for start in range(0, rows.shape[0], _TRANSPOSE_ROWS):
        out[:, start:start + _TRANSPOSE_ROWS] = rows[start:start + _TRANSPOSE_ROWS].T
    return torch.from_numpy(out).view(depth, 1, height, width)


def volume_to_input(volume: np.ndarray | torch.Tensor, contract: InputContract,
                    contiguous: bool = True) -> torch.Tensor:
    """(S, C, H, W) slices for a 2d contract, (1, C, D, H, W) for a 3d one. A tensor is
    preprocessed where it lies (``PREPROCESS=device``), an array in numpy (the workers).

    contiguous=False: grey repeated to C channels stays a broadcast view, for a caller that
    copies the slices anyway (the encoding loop concatenates them into its batch): one copy of
    the 3-channel slices less (~40 ms of ~300 for a BraTS volume at the paper profile),
    and a third of the bytes between decode processes and the forward pass."""
    from monai.transforms import Resize  # here: importing monai costs ~3 s, and a warm run
    # (every feature cached) never resizes

    scaled = normalise(volume, contract.intensity)
    data = (scaled if isinstance(scaled, torch.Tensor) else torch.from_numpy(scaled))[None]
    if contract.dims == "2d":
        height, width = contract.image_size
        resized = Resize((height, width, contract.num_slices), mode="trilinear")(data)
        slices = _slices_first(_plain(resized)[0])  # (S, 1, H, W)
    else:
        resized = Resize(tuple(contract.image_size), mode="trilinear")(data)
        slices = _plain(resized)[None]  # (1, 1, D, H, W)
    slices = slices.float().contiguous()
    if contract.in_channels > 1:
        slices = slices.expand(-1, contract.in_channels, *slices.shape[2:])
        if contiguous:
            slices = slices.contiguous()
    stats = NORMALISATIONS[contract.intensity].channel_stats
    if stats is not None and contract.in_channels == 3:
        shape = (1, 3) + (1,) * (slices.ndim - 2)
        channel_mean, channel_std = stats
        mean = torch.tensor(channel_mean, device=slices.device).view(shape)
        std = torch.tensor(channel_std, device=slices.device).view(shape)
        slices = (slices - mean) / std
    return slices


def preprocessing_identity(contract: InputContract) -> dict:
    """What the feature cache key must cover about preprocessing (where it ran is part of
    `Backbone.cache_identity`: ``preprocess_on``).

    "orientation" keeps its first-release text: for a volume stored axial-last it is still
    exactly what happens, and those volumes' keys must not move; a volume that is reoriented
    (`reorientation`) carries that in its per-image part of the key (`image_sha256`)."""
    return {"preprocess_version": PREPROCESS_VERSION, "contract": contract.as_dict(),
            "orientation": "array order, axial = last axis", "resize": "monai trilinear"}


def check_preprocess_place(value: object) -> str:
    """A requested preprocessing place, or a BenchError naming the value and the choices."""
    if value not in PREPROCESS_PLACES:
        raise BenchError(f"PREPROCESS={value!r} (--preprocess): expected one of "
                         f"{', '.join(PREPROCESS_PLACES)} (workers: numpy in the decode "
                         "workers, the default; device: torch on the model's device)")
    return str(value)
