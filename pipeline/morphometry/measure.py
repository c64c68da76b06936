"""Morphometry of digit images after Morpho-MNIST (Castro et al., 2019): thickness, intensity, slant.

Definitions (docs/benchmark.md), on an image ``x`` on [0, 1]:

1. Upsample ``x`` by ``scale = 4`` with ``skimage.transform.pyramid_expand(order=3)`` (a cubic spline
   followed by the pyramid's Gaussian, sigma ``2*scale/6``), as the Morpho-MNIST code does.
2. Binarise at ``min + 0.5 * (max - min)`` of the upsampled image.
3. **thickness** = 2 x the mean Euclidean distance-to-background over the medial-axis pixels, / scale.
4. **intensity** = the median, on 0..255, of the pixels of ``x`` at or above ``min + 0.5 * (max - min)``.
5. **slant** = ``arctan(-mu11 / mu02)`` of the central moments of the upsampled grey image (radians;
   positive leans right).

:func:`reference_thickness` runs ``skimage.morphology.medial_axis`` image by image (the Morpho-MNIST
code path). :func:`measure_thickness` computes the same medial axis with the
same rule (pixels removed in order of distance, then cornerness, with skimage's lookup table), but
builds the tables once, crops each digit to its bounding box and runs many digits in one pass, in
parallel processes. The only difference is the order among exact ties, which the reference breaks at
random; here ties are broken by a fixed field over pixel positions, so each image's measurement does
not depend on the rest of its batch.

Images may be numpy arrays or torch tensors shaped ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``.
Without ``value_range``, integer dtypes are read as 0..255, torch floats as [-1, 1] (the project's
convention) and numpy floats as [0, 1] (0..255 if any value exceeds 1.5).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from pipeline.morphometry.batch import as_unit_batch
from pipeline.morphometry.parallel import map_chunks
from pipeline.morphometry.pyramid import mid_threshold, upsample

__all__ = ["measure", "measure_thickness", "measure_intensity", "measure_slant", "reference_thickness",
           "MEASURE_SCALE", "is_blank", "thickness_unit", "intensity_unit", "slant_of"]

#: Upsampling factor of the thickness and slant measurements (Morpho-MNIST uses 4).
MEASURE_SCALE = 4
_CHUNK = 64
_MIN_PARALLEL = 256
_TIE_SEED = 20190101

try:  # skimage's compiled inner loop of medial_axis (the only non-public name used; see _medial_axis)
    from skimage.morphology._skeletonize_various_cy import _skeletonize_loop as _SKIMAGE_LOOP
except ImportError:  # pragma: no cover - depends on the installed skimage
    _SKIMAGE_LOOP = None


# ----------------------------------------------------------------------------------------------
# Medial axis, as skimage.morphology.medial_axis, with cached tables and a position-based tiebreak
# ----------------------------------------------------------------------------------------------
def _pattern(index: int) -> np.ndarray:
    return np.array([bool(index & (1 << k)) for k in range(9)]).reshape(3, 3)


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """skimage's medial-axis lookup tables: keep-table and cornerness, indexed by the 3x3 pattern."""
    eight = np.ones((3, 3), bool)
    keep = np.zeros(512, np.uint8)
    corner = np.zeros(512, np.int64)
    for index in range(512):
        pattern = _pattern(index)
        corner[index] = 9 - pattern.sum()
        if not index & 16:
            continue
        changes_topology = ndi.label(pattern, eight)[1] != ndi.label(_pattern(index & ~16), eight)[1]
        keep[index] = changes_topology or pattern.sum() < 3
    return keep, corner


def _neighbourhood_index(mask: np.ndarray) -> np.ndarray:
    """3x3 pattern index of every pixel (bits numbered 0 1 2 / 3 4 5 / 6 7 8, as skimage)."""
    m = mask.astype(np.int32)
    idx = m * 16
    idx[1:, 1:] += m[:-1, :-1] * 1
    idx[1:, :] += m[:-1, :] * 2
    idx[1:, :-1] += m[:-1, 1:] * 4
    idx[:, 1:] += m[:, :-1] * 8
    idx[:, :-1] += m[:, 1:] * 32
    idx[:-1, 1:] += m[1:, :-1] * 64
    idx[:-1, :] += m[1:, :] * 128
    idx[:-1, :-1] += m[1:, 1:] * 256
    return idx


def _medial_axis(mask: np.ndarray, distance: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Medial axis of a 2-d boolean mask, given its distance transform and a tiebreak field."""
    keep, corner = _tables()
    fg = mask.astype(bool)
    ii, jj = np.nonzero(fg)
    # skimage orders by (distance, cornerness, tiebreak) with np.lexsort; one sort of a combined key
    # gives the same order: squared distances are integers, cornerness is 0..9, tiebreak in [0, 1).
    squared = np.rint(distance[fg] ** 2)
    key = (squared * 10.0 + corner[_neighbourhood_index(fg)[fg]]) + 0.999 * tiebreak[fg]
    order = np.argsort(key).astype(np.int32)
    result = np.ascontiguousarray(fg, dtype=np.uint8)
    _SKIMAGE_LOOP(result, ii.astype(np.intp), jj.astype(np.intp), np.ascontiguousarray(order), keep)
    return result.astype(bool)


@functools.lru_cache(maxsize=8)
def _tie_field(height: int, width: int) -> np.ndarray:
    field = np.random.default_rng(_TIE_SEED).random((height, width))
    field.setflags(write=False)
    return field


def _thickness_of_binary(binary: np.ndarray, scale: int) -> np.ndarray:
    """Mean thickness ``2 * mean(dist[skeleton]) / scale`` of each hi-res binary image ``(B, h, w)``."""
    b, height, width = binary.shape
    out = np.full(b, np.nan)
    rows, cols = binary.any(axis=2), binary.any(axis=1)
    valid = rows.any(axis=1) & ~binary.all(axis=(1, 2))
    if not valid.any():
        return out
    r0 = rows.argmax(axis=1)
    r1 = height - rows[:, ::-1].argmax(axis=1)
    c0 = cols.argmax(axis=1)
    c1 = width - cols[:, ::-1].argmax(axis=1)
    keep = np.flatnonzero(valid)
    th = int((r1 - r0)[keep].max()) + 2
    tw = int((c1 - c0)[keep].max()) + 2
    # Mosaic: each digit cropped to its bounding box inside a one-pixel background frame, stacked
    # vertically. Frames keep tiles independent for the distance transform and the 3x3 thinning.
    tiles = np.zeros((len(keep), th, tw), bool)
    ties = np.zeros((len(keep), th, tw))
    field = _tie_field(height, width)
    for n, k in enumerate(keep):
        h, w = r1[k] - r0[k], c1[k] - c0[k]
        tiles[n, 1:1 + h, 1:1 + w] = binary[k, r0[k]:r1[k], c0[k]:c1[k]]
        ties[n, 1:1 + h, 1:1 + w] = field[r0[k]:r1[k], c0[k]:c1[k]]
    mosaic = tiles.reshape(-1, tw)
    distance = ndi.distance_transform_edt(mosaic)
    if _SKIMAGE_LOOP is not None:
        skeleton = _medial_axis(mosaic, distance, ties.reshape(-1, tw)).reshape(tiles.shape)
    else:  # pragma: no cover - public, slower path: one skimage call per image
        from skimage.morphology import medial_axis

        skeleton = np.stack([medial_axis(t, rng=0) for t in tiles])
    distance = distance.reshape(tiles.shape)
    total = (distance * skeleton).sum(axis=(1, 2))
    count = skeleton.sum(axis=(1, 2))
    out[keep] = 2.0 * total / np.maximum(count, 1) / scale
    return out


def is_blank(x: np.ndarray) -> np.ndarray:
    """Per image of a [0, 1] batch ``(B, H, W)``: whether it is constant (nothing to measure or perturb)."""
    return (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) < 1e-6


def thickness_unit(x: np.ndarray, scale: int = MEASURE_SCALE) -> np.ndarray:
    """Thickness of a chunk of [0, 1] images ``(B, H, W)``; NaN for blank (constant) images."""
    out = _thickness_of_binary(mid_threshold(upsample(x, scale)), scale)
    out[is_blank(x)] = np.nan
    return out


def intensity_unit(x: np.ndarray) -> np.ndarray:
    """Intensity of a chunk of [0, 1] images ``(B, H, W)``: the median on 0..255 of the pixels at or above the
    mid threshold, per image."""
    mask = mid_threshold(x)
    values = np.where(mask, x * 255.0, np.nan).reshape(len(x), -1)
    return np.nanmedian(values, axis=1) if len(x) else np.zeros(0)


def slant_of(y: np.ndarray) -> np.ndarray:
    """Slant ``arctan(-mu11 / mu02)`` (radians) of each image of ``y (B, H, W)`` from its central moments."""
    b, h, w = y.shape
    cols = np.arange(w, dtype=np.float64)
    rows = np.arange(h, dtype=np.float64)
    m00 = y.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        m10 = np.einsum("bij,j->b", y, cols) / m00
        m01 = np.einsum("bij,i->b", y, rows) / m00
        m11 = np.einsum("bij,i,j->b", y, rows, cols) / m00
        m02 = np.einsum("bij,i->b", y, rows**2) / m00
        mu11 = m11 - m10 * m01
        mu02 = m02 - m01**2
        return np.arctan(-mu11 / mu02)


def _all_unit(x: np.ndarray, scale: int = MEASURE_SCALE) -> np.ndarray:
    up = upsample(x, scale)
    blank = is_blank(x)
    thickness = _thickness_of_binary(mid_threshold(up), scale)
    slant = slant_of(up)
    thickness[blank] = np.nan
    slant[blank] = np.nan
    return np.stack([thickness, intensity_unit(x), slant], axis=1)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def measure_thickness(images: Any, n_jobs: int | None = None, *, value_range: tuple[float, float] | None = None,
                      progress: bool = False) -> np.ndarray:
    """Mean stroke thickness in pixels, per image (fast, parallel; agrees with :func:`reference_thickness`).

    Args:
        images: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` numpy array or torch tensor (see the
            module docstring for the value-range rule).
        n_jobs: processes; ``None`` uses every CPU available, 1 is serial. Batches under 256
            images always run serially.
        value_range: ``(low, high)`` of the input's values, overriding the rule.
        progress: show a tqdm bar.

    Returns:
        float64 ``(B,)`` thickness in pixels of the original image (NaN for a blank image).

    Example:
        >>> from pipeline.datasets import load_mnist5k
        >>> images, _ = load_mnist5k()
        >>> t = measure_thickness(images[:8], n_jobs=1)
        >>> t.shape, bool(((t > 1) & (t < 6)).all())
        ((8,), True)
    """
    x, _ = as_unit_batch(images, value_range)
    parts = map_chunks(thickness_unit, [x], n_jobs=n_jobs, chunk_size=_CHUNK, min_parallel=_MIN_PARALLEL,
                       progress=progress, desc="thickness")
    return np.concatenate(parts) if parts else np.zeros(0)


def measure_intensity(images: Any, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Stroke intensity on 0..255: the median of the pixels at or above ``min + 0.5 * (max - min)``.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((1, 28, 28), np.uint8); x[0, 10:18, 12:15] = 200
        >>> measure_intensity(x).tolist()
        [200.0]
    """
    x, _ = as_unit_batch(images, value_range)
    return intensity_unit(x)


def measure_slant(images: Any, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Slant in radians, ``arctan(-mu11 / mu02)`` of the upsampled image's central moments.

    Positive values lean right (top of the digit to the right). NaN for a blank image.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((1, 28, 28)); x[0, 6:22, 13:15] = 1.0    # a vertical bar
        >>> abs(float(measure_slant(x)[0])) < 1e-6
        True
    """
    x, _ = as_unit_batch(images, value_range)
    out = slant_of(upsample(x, MEASURE_SCALE)) if len(x) else np.zeros(0)
    out[is_blank(x)] = np.nan
    return out


def measure(images: Any, n_jobs: int | None = None, *, value_range: tuple[float, float] | None = None,
            progress: bool = False) -> dict[str, np.ndarray]:
    """All morphometrics of a batch: ``{"thickness", "intensity", "slant"}`` -> float64 ``(B,)``.

    Example:
        >>> from pipeline.datasets import load_mnist5k
        >>> images, _ = load_mnist5k()
        >>> sorted(measure(images[:4], n_jobs=1))
        ['intensity', 'slant', 'thickness']
    """
    x, _ = as_unit_batch(images, value_range)
    parts = map_chunks(_all_unit, [x], n_jobs=n_jobs, chunk_size=_CHUNK, min_parallel=_MIN_PARALLEL,
                       progress=progress, desc="morphometry")
    table = np.concatenate(parts) if parts else np.zeros((0, 3))
    return {"thickness": table[:, 0], "intensity": table[:, 1], "slant": table[:, 2]}


def reference_thickness(images: Any, *, value_range: tuple[float, float] | None = None, scale: int = MEASURE_SCALE,
                        progress: bool = False) -> np.ndarray:
    """Reference thickness: the Morpho-MNIST recipe, one ``skimage.morphology.medial_axis`` call per image.

    ``pyramid_expand(x, scale, order=3)``, binarise at ``min + 0.5 * (max - min)``,
    ``medial_axis(..., return_distance=True, rng=0)``, thickness ``2 * mean(dist[skeleton]) / scale``.
    Slow (tens of ms an image); used to check :func:`measure_thickness`.

    Example:
        >>> from pipeline.datasets import load_mnist5k
        >>> images, _ = load_mnist5k()
        >>> import numpy as np
        >>> bool(np.abs(reference_thickness(images[:3]) - measure_thickness(images[:3], n_jobs=1)).max() < 0.2)
        True
    """
    from skimage.morphology import medial_axis
    from skimage.transform import pyramid_expand

    x, _ = as_unit_batch(images, value_range)
    out = np.full(len(x), np.nan)
    iterator = range(len(x))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="reference thickness", unit="img")
    for k in iterator:
        if is_blank(x[k:k + 1])[0]:
            continue
        up = pyramid_expand(x[k], upscale=scale, order=3)
        binary = up >= up.min() + 0.5 * (up.max() - up.min())
        skeleton, distance = medial_axis(binary, return_distance=True, rng=0)
        out[k] = 2.0 * distance[skeleton].mean() / scale
    return out
