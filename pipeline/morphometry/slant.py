"""A perturbation that sets a digit's slant: a horizontal shear about the digit's centre row.

The slant of :func:`~pipeline.morphometry.measure_slant` is ``arctan(-mu11 / mu02)`` of the image's
central moments (rows ``i`` down, columns ``j`` right). Shearing the columns by ``s`` per row above the
centroid row ``c``, ``j' = j - s (i - c)``, leaves ``mu02`` unchanged and turns ``mu11`` into
``mu11 - s mu02``, so ``tan(slant') = tan(slant) + s``. Hence, per image:

1. Measure the slant ``a`` and the centroid row ``c`` of the digit.
2. Shear by ``s = tan(target) - tan(a)`` about ``c`` (``scipy.ndimage.affine_transform``, cubic
   spline, zero outside, clipped to the value range); the column centroid stays where it was.
3. Measure the result and correct ``s`` by ``tan(target) - tan(measured)``; repeat up to
   ``iterations`` times (interpolation and the measurement's upsampling make one shot slightly off).

A large shear can push the top or bottom of a tall digit out of the frame; :data:`SLANT_RANGE` keeps
the targets to +-45 degrees.

Example:
    >>> from pipeline.datasets import load_mnist5k
    >>> from pipeline.morphometry import measure_slant
    >>> images, _ = load_mnist5k()
    >>> leaning = set_slant(images[:4], 0.3, n_jobs=1)
    >>> bool((abs(measure_slant(leaning) - 0.3) < 0.03).all())
    True
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from dcfg_io.checks import is_integer
from pipeline.morphometry.batch import apply_targets
from pipeline.morphometry.measure import MEASURE_SCALE, is_blank, slant_of
from pipeline.morphometry.pyramid import upsample

__all__ = ["set_slant", "SLANT_RANGE", "set_slant_unit"]

#: Targets accepted by :func:`set_slant`, in radians (positive leans right).
SLANT_RANGE = (-0.785, 0.785)
_CHUNK = 64
_MIN_PARALLEL = 256


def _shear(x: np.ndarray, s: float, row: float) -> np.ndarray:
    """Output pixel ``(i, j)`` reads input ``(i, j + s (i - row))``: columns sheared about ``row``."""
    out = ndi.affine_transform(x, np.array([[1.0, 0.0], [s, 1.0]]), offset=(0.0, -s * row), order=3,
                               mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def _slant(x: np.ndarray) -> np.ndarray:
    return slant_of(upsample(x, MEASURE_SCALE))


def set_slant_unit(x: np.ndarray, target: np.ndarray, iterations: int = 2) -> np.ndarray:
    """set_slant on a chunk of [0, 1] images ``(B, H, W)``; ``target`` in radians."""
    y = x.copy()
    todo = ~is_blank(x)
    if not todo.any():
        return y
    idx = np.flatnonzero(todo)
    rows = np.arange(x.shape[1], dtype=np.float64)
    mass = x[idx].sum(axis=(1, 2))
    centre = np.einsum("bij,i->b", x[idx], rows) / mass
    shear = np.tan(target[idx]) - np.tan(_slant(x[idx]))
    best = np.full(len(idx), np.inf)
    for it in range(iterations + 1):
        trial = np.stack([_shear(x[k], float(s), float(c)) for k, s, c in zip(idx, shear, centre)])
        measured = _slant(trial)
        err = np.abs(measured - target[idx])
        better = np.isfinite(measured) & (err < best)
        y[idx[better]] = trial[better]
        best = np.where(better, err, best)
        if it < iterations:
            shear = shear + np.where(np.isfinite(measured), np.tan(target[idx]) - np.tan(measured), 0.0)
    return y


def set_slant(images: Any, slant: Any, *, iterations: int = 2, n_jobs: int | None = None,
              value_range: tuple[float, float] | None = None, progress: bool = False) -> Any:
    """Set each digit's slant (radians, positive leans right) by shearing it about its centre row.

    Args:
        images: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``, numpy or torch (value-range rule of
            :mod:`pipeline.morphometry.measure`).
        slant: target in radians, a number or one value per image, in :data:`SLANT_RANGE`.
        iterations: corrections after the first shear (0 = one shot).
        n_jobs: processes (``None`` = all CPUs; batches under 256 images run serially).
        value_range: ``(low, high)`` of the input's values, overriding the rule.
        progress: show a tqdm bar.

    Returns:
        The perturbed batch in the input's type, shape and value range (integer inputs are rounded).
        Blank images are returned unchanged.

    Example:
        >>> import numpy as np
        >>> from pipeline.morphometry import measure_slant
        >>> bar = np.zeros((1, 28, 28)); bar[0, 6:22, 13:15] = 1.0          # upright: slant 0
        >>> round(float(measure_slant(set_slant(bar, -0.4, n_jobs=1))[0]), 2)
        -0.4
    """
    if not is_integer(iterations, 0, 10):
        raise ValueError(f"iterations={iterations!r} is invalid: use an integer in 0..10 (default 2)")
    return apply_targets(set_slant_unit, images, slant, "slant", SLANT_RANGE, value_range=value_range, n_jobs=n_jobs,
                         chunk_size=_CHUNK, min_parallel=_MIN_PARALLEL, progress=progress, iterations=int(iterations))
