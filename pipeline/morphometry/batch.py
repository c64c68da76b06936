"""Image batches as the morphometry sees them: the caller's layout and value range <-> float64 ``(B, H, W)``
on [0, 1], per-image targets, and the frame shared by the ``set_<attribute>`` perturbations.

Inputs may be numpy arrays or torch tensors shaped ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; outputs come
back in the caller's type, shape and value range (:class:`Layout`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.morphometry.parallel import map_chunks

__all__ = ["Layout", "default_value_range", "as_unit_batch", "per_image", "apply_targets"]

#: fraction of the value range by which inputs may overshoot before they are rejected (then clipped)
_OVERSHOOT = 0.1


@dataclass(frozen=True)
class Layout:
    """How a user's batch was given, so that outputs can be returned the same way."""

    is_torch: bool
    shape: tuple[int, ...]
    value_range: tuple[float, float]
    dtype: Any
    device: Any = None

    def restore(self, x: np.ndarray) -> Any:
        """Map a float [0,1] batch ``(B, H, W)`` back to the caller's type, shape and range.

        Integer inputs come back rounded to the same integer dtype; float inputs keep their dtype.
        """
        lo, hi = self.value_range
        y = lo + x * (hi - lo)
        y = y.reshape(self.shape)
        if self.is_torch:
            import torch

            if self.dtype.is_floating_point:
                return torch.as_tensor(y, dtype=self.dtype, device=self.device)
            return torch.as_tensor(np.clip(np.rint(y), lo, hi), device=self.device).to(self.dtype)
        if np.issubdtype(self.dtype, np.floating):
            return y.astype(self.dtype)
        return np.clip(np.rint(y), lo, hi).astype(self.dtype)


def default_value_range(images: Any) -> tuple[float, float]:
    """The documented rule for the value range of an image batch when none is given.

    * integer or bool dtype (numpy or torch): 0..255;
    * torch floating tensor: [-1, 1] (the project's image convention);
    * numpy floating array: [0, 1], or 0..255 when any value exceeds 1.5.
    """
    if _is_torch(images):
        return (-1.0, 1.0) if images.dtype.is_floating_point else (0.0, 255.0)
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.floating):
        return (0.0, 255.0)
    finite = array[np.isfinite(array)]
    return (0.0, 255.0) if finite.size and float(finite.max()) > 1.5 else (0.0, 1.0)


def _is_torch(images: Any) -> bool:
    return type(images).__module__.startswith("torch") and hasattr(images, "detach")


def as_unit_batch(images: Any, value_range: tuple[float, float] | None = None, name: str = "images"
                  ) -> tuple[np.ndarray, Layout]:
    """Convert a batch to float64 ``(B, H, W)`` on [0, 1] and remember its layout.

    Raises:
        TypeError: not an array / tensor.
        ValueError: bad shape, non-finite values, or values outside ``value_range``.
    """
    is_torch = _is_torch(images)
    if is_torch:
        device, dtype = images.device, images.dtype
        array = images.detach().cpu().double().numpy() if dtype.is_floating_point else images.detach().cpu().numpy()
    elif isinstance(images, (np.ndarray, list, tuple)):
        array = np.asarray(images)
        device, dtype = None, array.dtype
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise TypeError(f"{name} has dtype {dtype}; pass a numeric numpy array or torch tensor")
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
    shape = tuple(array.shape)
    if array.ndim == 2:
        batch = array[None]
    elif array.ndim == 3:
        batch = array
    elif array.ndim == 4 and array.shape[1] == 1:
        batch = array[:, 0]
    else:
        raise ValueError(
            f"{name} has shape {shape}; expected (H, W), (B, H, W) or (B, 1, H, W) grey images"
        )
    if batch.shape[-1] < 3 or batch.shape[-2] < 3:
        raise ValueError(f"{name} has shape {shape}; images must be at least 3x3 pixels")
    if value_range is None:
        value_range = default_value_range(images)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range={value_range} must be (low, high) with high > low, e.g. (0, 255)")
    x = (batch.astype(np.float64) - lo) / (hi - lo)
    if x.size:
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        x_min, x_max = float(x.min()), float(x.max())
        if x_min < -_OVERSHOOT or x_max > 1 + _OVERSHOOT:
            seen = (lo + x_min * (hi - lo), lo + x_max * (hi - lo))
            raise ValueError(
                f"{name} values span {seen[0]:g}..{seen[1]:g}, outside the value range {lo:g}..{hi:g} "
                f"(default rule: integer 0..255, torch float -1..1, numpy float 0..1); pass value_range=(low, high)"
            )
        np.clip(x, 0.0, 1.0, out=x)
    return np.ascontiguousarray(x), Layout(is_torch, shape, (lo, hi), dtype, device)


def per_image(values: Any, n: int, name: str, low: float, high: float) -> np.ndarray:
    """Broadcast a number or a per-row array/tensor to a float64 ``(n,)`` array, checking its range."""
    if _is_torch(values):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n, float(array))
    array = array.reshape(-1)
    if array.shape != (n,):
        raise ValueError(f"{name} has {array.size} values for {n} images; pass one number or one value per image")
    bad = ~np.isfinite(array) | (array < low) | (array > high)
    if bad.any():
        raise ValueError(
            f"{name}={array[bad][0]:g} is out of range: allowed {low:g}..{high:g}; clip the target into that range"
        )
    return array


def apply_targets(fn: Callable[..., np.ndarray], images: Any, targets: Any, name: str, limits: tuple[float, float], *,
                  value_range: tuple[float, float] | None, n_jobs: int | None, chunk_size: int, min_parallel: int,
                  progress: bool = False, **kwargs: Any) -> Any:
    """The frame of a perturbation ``set_<name>``: the batch on [0, 1], one target per image checked against
    ``limits``, ``fn(x, target, **kwargs)`` over chunks (:func:`map_chunks`), and the result in the input's
    type, shape and value range."""
    x, layout = as_unit_batch(images, value_range)
    target = per_image(targets, len(x), name, *limits)
    parts = map_chunks(fn, [x, target], n_jobs=n_jobs, chunk_size=chunk_size, min_parallel=min_parallel,
                       progress=progress, desc=f"set_{name}", **kwargs)
    return layout.restore(np.concatenate(parts) if parts else x)
