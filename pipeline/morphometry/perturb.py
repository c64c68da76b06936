"""Perturbations that set a digit's thickness and intensity (after Morpho-MNIST's ``SetThickness``).

``set_thickness`` follows Morpho-MNIST (docs/benchmark.md), steps numbered as in the code:

1. Measure the digit's thickness ``t`` (:func:`~pipeline.morphometry.measure_thickness`).
2. Upsample by ``scale`` (``pyramid_expand``, order 3) and binarise at the mid threshold.
3. Dilate (``t' > t``) or erode (``t' < t``) the binary digit with a disk of radius
   ``r = scale * (t' - t) / 2`` hi-res pixels. The disk may have any real radius: dilation keeps the
   pixels within ``r`` of the digit, erosion those farther than ``|r|`` from the background
   (Euclidean distance transforms), which is morphological dilation/erosion by a disk.
4. Downsample by ``scale`` (``pyramid_reduce``, order 3): a smooth, anti-aliased digit on [0, 1].
   Pixels within 1e-4 of the mid threshold are moved just below it, so that the intensity
   measurement of the result is stable under float32 rounding.
5. Measure the result and correct ``r`` by ``scale * (t' - measured) / 2``; repeat up to
   ``iterations`` times, keeping the closest result. This removes most of the error that a
   one-shot radius leaves (the disk changes a stroke's width unevenly at joints and ends).

The output keeps the digit's shape but not the source's grey texture (strokes are flat), as in
Morpho-MNIST. ``set_intensity`` then scales the image so that its measured intensity is ``i'``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from dcfg_io.checks import is_integer
from pipeline.morphometry.batch import apply_targets, as_unit_batch, per_image
from pipeline.morphometry.measure import intensity_unit, is_blank, thickness_unit
from pipeline.morphometry.pyramid import mid_threshold, reduce_operator, upsample

__all__ = ["set_thickness", "set_intensity", "THICKNESS_RANGE", "INTENSITY_RANGE", "PERTURB_SCALE",
           "set_thickness_unit", "set_intensity_unit"]

#: Targets accepted by :func:`set_thickness`, in pixels.
THICKNESS_RANGE = (0.5, 8.0)
#: Targets accepted by :func:`set_intensity`, on 0..255.
INTENSITY_RANGE = (1.0, 255.0)
#: Default upsampling factor of :func:`set_thickness` (finer radii than the measurement's 4).
PERTURB_SCALE = 8
_CHUNK = 32
_MIN_PARALLEL = 64
_MARGIN_PX = 4.5  # largest dilation, in original pixels, beyond the digit's bounding box
_TIE_MARGIN = 1e-4


def _clear_threshold(y: np.ndarray, margin: float = _TIE_MARGIN) -> np.ndarray:
    """Move pixels lying within ``margin`` of the mid threshold to just below it (in place).

    Flat strokes blurred symmetrically put edge pixels at exactly half the maximum, where the
    intensity measurement's mask (``>= min + 0.5 * (max - min)``) would flip under float32
    rounding. A shift of at most 1e-4 (0.03 grey levels) makes the measurement stable.
    """
    mid = y.min() + 0.5 * (y.max() - y.min())
    near = np.abs(y - mid) < margin
    y[near] = mid - margin
    return y


class _Digit:
    """One upsampled binary digit and its distance transforms, computed lazily on tight crops.

    Dilation by ``r`` keeps the pixels within ``r`` of the digit; they lie inside the digit's
    bounding box grown by ``r``, so the outside distance is computed on that box only (and again
    on a larger one if ``r`` grows). Radii are clamped to ``[r_min, r_max]``: erosion never
    removes the whole digit, dilation never passes ``margin - 1``.
    """

    def __init__(self, binary: np.ndarray, margin: int) -> None:
        self.binary, self.margin = binary, margin
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        self.bbox = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
        self.inner = self._box(0)
        crop = binary[self.inner]
        self.inside = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]  # beyond the frame: background
        self.r_min = -(float(self.inside.max()) - 0.5)
        self.r_max = margin - 1.0
        self._outside: tuple[int, tuple[slice, slice], np.ndarray] | None = None

    def _box(self, grow: int) -> tuple[slice, slice]:
        r0, r1, c0, c1 = self.bbox
        h, w = self.binary.shape
        return slice(max(r0 - grow, 0), min(r1 + grow, h)), slice(max(c0 - grow, 0), min(c1 + grow, w))

    def shape_at(self, r: float) -> tuple[slice, slice, np.ndarray]:
        """``(rows, cols, mask)``: the dilated (r >= 0) or eroded (r < 0) digit on a crop."""
        if r < 0:
            return self.inner[0], self.inner[1], self.inside > -r
        need = int(np.ceil(r)) + 1
        if self._outside is None or self._outside[0] < min(need, self.margin):
            grow = min(max(need, self.margin // 3), self.margin)
            box = self._box(grow)
            self._outside = (grow, box, ndi.distance_transform_edt(~self.binary[box]))
        _, box, outside = self._outside
        return box[0], box[1], outside <= r


def set_thickness_unit(x: np.ndarray, target: np.ndarray, scale: int = PERTURB_SCALE, iterations: int = 4,
                       tolerance: float = 0.02) -> np.ndarray:
    """set_thickness on a chunk of [0, 1] images ``(B, H, W)``; returns [0, 1] float64 images.

    Each image's result depends only on that image and its target (never on the rest of the chunk).
    """
    b, height, width = x.shape
    out = x.copy()
    if b == 0:
        return out
    # 1. measure
    t_source = thickness_unit(x)
    # 2. upsample + binarise
    binary = mid_threshold(upsample(x, scale))
    rh = reduce_operator(height, scale)
    rw = rh if width == height else reduce_operator(width, scale)
    margin = int(np.ceil(_MARGIN_PX * scale))
    work = {k: _Digit(binary[k], margin) for k in range(b)
            if np.isfinite(t_source[k]) and not is_blank(x[k:k + 1])[0]}  # blank images: nothing to do
    if not work:
        return out
    radius = {k: float(np.clip(scale * (target[k] - t_source[k]) / 2.0, d.r_min, d.r_max)) for k, d in work.items()}
    best_err = {k: np.inf for k in work}
    active = list(work)
    for _ in range(iterations + 1):
        # 3. dilate / erode by a disk of radius r, 4. downsample
        images = np.empty((len(active), height, width))
        for n, k in enumerate(active):
            rows, cols, digit = work[k].shape_at(radius[k])
            y = rh[:, rows] @ digit.astype(np.float64) @ rw[:, cols].T
            images[n] = _clear_threshold(np.clip(y, 0.0, 1.0))
        # 5. measure and correct
        achieved = thickness_unit(images)
        still = []
        for n, k in enumerate(active):
            err = abs(achieved[n] - target[k]) if np.isfinite(achieved[n]) else np.inf
            if err < best_err[k]:
                best_err[k] = err
                out[k] = images[n]
            if err > tolerance and np.isfinite(achieved[n]):
                new = float(np.clip(radius[k] + scale * (target[k] - achieved[n]) / 2.0, work[k].r_min, work[k].r_max))
                if new != radius[k]:
                    radius[k] = new
                    still.append(k)
        active = still
        if not active:
            break
    return out


def set_thickness(images: Any, thickness: Any, *, scale: int = PERTURB_SCALE, iterations: int = 4,
                  n_jobs: int | None = None, value_range: tuple[float, float] | None = None,
                  progress: bool = False) -> Any:
    """Set each digit's stroke thickness (in pixels), by dilating or eroding its upsampled shape.

    See the module docstring for the method. ``dcfg bench morphometry`` reports its accuracy
    (``|measured - target|`` over the benchmark's test digits; docs/benchmarks.md).

    Args:
        images: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``, numpy or torch (value-range rule of
            :mod:`pipeline.morphometry.measure`).
        thickness: target in pixels, a number or one value per image, in ``THICKNESS_RANGE``.
        scale: upsampling factor of the dilation / erosion (finer radii for larger values).
        iterations: corrections after the first try (0 = the one-shot Morpho-MNIST recipe).
        n_jobs: processes (``None`` = all CPUs; batches under 64 images run serially).
        value_range: ``(low, high)`` of the input's values, overriding the rule.
        progress: show a tqdm bar.

    Returns:
        The perturbed batch in the input's type, shape and value range (integer inputs are rounded).
        Blank images are returned unchanged.

    Example:
        >>> from pipeline.datasets import load_mnist5k
        >>> from pipeline.morphometry import measure_thickness
        >>> images, _ = load_mnist5k()
        >>> thin = set_thickness(images[:4].astype("float32") / 255, 1.5, n_jobs=1)
        >>> bool((abs(measure_thickness(thin, n_jobs=1) - 1.5) < 0.3).all())
        True
    """
    if not is_integer(scale, 2, 16):
        raise ValueError(f"scale={scale!r} is invalid: use an integer in 2..16 (default {PERTURB_SCALE})")
    if not is_integer(iterations, 0, 20):
        raise ValueError(f"iterations={iterations!r} is invalid: use an integer in 0..20 (default 4)")
    return apply_targets(set_thickness_unit, images, thickness, "thickness", THICKNESS_RANGE, value_range=value_range,
                         n_jobs=n_jobs, chunk_size=_CHUNK, min_parallel=_MIN_PARALLEL, progress=progress,
                         scale=int(scale), iterations=int(iterations))


def set_intensity_unit(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """set_intensity on [0, 1] images; ``target`` on 0..255. Returns [0, 1] float64 images."""
    current = intensity_unit(x)
    ok = np.isfinite(current) & (current > 0)
    gain = np.where(ok, target / np.where(ok, current, 1.0), 1.0)
    y = np.clip(x * gain[:, None, None], 0.0, 1.0)
    # Where clipping at 1 changed the measurement (gain > 1), bisect the gain.
    achieved = intensity_unit(y)
    fix = ok & (np.abs(achieved - target) > 0.25)
    if fix.any():
        idx = np.flatnonzero(fix)
        lo = gain[idx].copy()
        floor = np.array([x[k][mid_threshold(x[k:k + 1])[0]].min() for k in idx])
        hi = np.maximum(lo, 1.0 / np.maximum(floor, 1e-6))  # every digit pixel saturated: intensity 255
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            value = intensity_unit(np.clip(x[idx] * mid[:, None, None], 0.0, 1.0))
            below = value < target[idx]
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        y[idx] = np.clip(x[idx] * hi[:, None, None], 0.0, 1.0)
    return y


def set_intensity(images: Any, intensity: Any, *, value_range: tuple[float, float] | None = None) -> Any:
    """Scale each image so that its measured intensity (0..255) is ``intensity``, then clip.

    Args:
        images: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``, numpy or torch.
        intensity: target on 0..255, a number or one value per image, in ``INTENSITY_RANGE``.
        value_range: ``(low, high)`` of the input's values, overriding the rule.

    Returns:
        The batch in the input's type, shape and value range. Blank images are returned unchanged.

    Example:
        >>> from pipeline.datasets import load_mnist5k
        >>> from pipeline.morphometry import measure_intensity
        >>> images, _ = load_mnist5k()
        >>> dim = set_intensity(images[:3].astype("float64") / 255, 100.0)
        >>> [round(v) for v in measure_intensity(dim)]
        [100, 100, 100]
    """
    x, layout = as_unit_batch(images, value_range)
    target = per_image(intensity, len(x), "intensity", *INTENSITY_RANGE)
    return layout.restore(set_intensity_unit(x, target))
