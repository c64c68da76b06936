"""Private helpers: batch layout of image inputs, pyramid up/down-sampling as matrices, process pools.

Glossary:
    ``x``: a batch ``(B, H, W)`` of float64 images on [0, 1] (the internal representation).
    ``S``: the upsampling factor (``scale``); hi-res images are ``(B, S*H, S*W)``.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

# ----------------------------------------------------------------------------------------------
# Input layout: numpy or torch, (H, W) | (B, H, W) | (B, 1, H, W), with a value range
# ----------------------------------------------------------------------------------------------
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
        if not (np.issubdtype(dtype, np.number) or dtype == bool):
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


# ----------------------------------------------------------------------------------------------
# skimage.transform.pyramid_expand / pyramid_reduce (order 3) as matrices: exact and batched
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def expand_matrices(size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M, G)`` with ``pyramid_expand(x, scale, order=3) == G @ clip(M @ x @ M.T) @ G.T``.

    ``M`` is the cubic-spline zoom (``scipy.ndimage.zoom``, mode 'mirror', grid mode, like
    ``skimage.transform.resize``), ``G`` the Gaussian smoothing (sigma ``2*scale/6``, mode 'reflect').
    """
    eye = np.eye(size)
    m = np.stack([ndi.zoom(eye[k], scale, order=3, mode="mirror", grid_mode=True) for k in range(size)], axis=1)
    big = size * scale
    eye_big = np.eye(big)
    g = np.stack([ndi.gaussian_filter1d(eye_big[k], 2 * scale / 6.0, mode="reflect") for k in range(big)], axis=1)
    for mat in (m, g):
        mat.setflags(write=False)
    return m, g


@functools.lru_cache(maxsize=16)
def reduce_matrices(size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(G, M)`` with ``pyramid_reduce(y, scale, order=3) == clip(M @ (G @ y @ G.T) @ M.T)``."""
    big = size * scale
    eye_big = np.eye(big)
    g = np.stack([ndi.gaussian_filter1d(eye_big[k], 2 * scale / 6.0, mode="reflect") for k in range(big)], axis=1)
    m = np.stack([ndi.zoom(eye_big[k], 1.0 / scale, order=3, mode="mirror", grid_mode=True) for k in range(big)],
                 axis=1)
    for mat in (m, g):
        mat.setflags(write=False)
    return g, m


def _sandwich(a: np.ndarray, x: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.matmul over a stack runs one GEMM per image with identical shapes, so each image's result
    # does not depend on the rest of the batch (rendering must be reproducible image by image).
    return np.matmul(np.matmul(a, x), b.T)


def upsample(x: np.ndarray, scale: int) -> np.ndarray:
    """``skimage.transform.pyramid_expand(x[k], scale, order=3)`` for every image of ``x (B, H, W)``."""
    b, h, w = x.shape
    mh, _ = expand_matrices(h, scale)
    mw, _ = (mh, None) if w == h else expand_matrices(w, scale)
    z = _sandwich(mh, x, mw)
    np.clip(z, x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True), out=z)
    # the pyramid's Gaussian, per image along rows then columns (same operator as the matrix G)
    sigma = 2 * scale / 6.0
    z = ndi.gaussian_filter1d(z, sigma, axis=1, mode="reflect")
    return ndi.gaussian_filter1d(z, sigma, axis=2, mode="reflect")


@functools.lru_cache(maxsize=16)
def reduce_operator(size: int, scale: int) -> np.ndarray:
    """``R = M @ G`` of shape ``(size, size*scale)``: ``pyramid_reduce(y) == clip(R @ y @ R.T)``."""
    g, m = reduce_matrices(size, scale)
    r = m @ g
    r.setflags(write=False)
    return r


def downsample(y: np.ndarray, scale: int) -> np.ndarray:
    """``skimage.transform.pyramid_reduce(y[k], scale, order=3)`` for every image of ``y (B, S*H, S*W)``."""
    b, big_h, big_w = y.shape
    rh = reduce_operator(big_h // scale, scale)
    rw = rh if big_w == big_h else reduce_operator(big_w // scale, scale)
    z = _sandwich(rh, y, rw)
    np.clip(z, y.min(axis=(1, 2), keepdims=True), y.max(axis=(1, 2), keepdims=True), out=z)
    return z


def mid_threshold(y: np.ndarray) -> np.ndarray:
    """Per-image binarisation at ``min + 0.5 * (max - min)`` (``>=``), the Morpho-MNIST rule."""
    lo = y.min(axis=(1, 2), keepdims=True)
    hi = y.max(axis=(1, 2), keepdims=True)
    return y >= lo + 0.5 * (hi - lo)


# ----------------------------------------------------------------------------------------------
# Process pool over chunks of a batch (fork: workers inherit the arrays, nothing is re-read)
# ----------------------------------------------------------------------------------------------
_SHARED: dict[str, Any] = {}


def resolve_jobs(n_jobs: int | None) -> int:
    """``None`` -> the CPUs this process may use; otherwise a positive int."""
    if n_jobs is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs!r} is invalid: use None (all CPUs) or a positive integer (1 = serial)")
    return int(n_jobs)


def _run_slice(bounds: tuple[int, int]) -> Any:
    fn, arrays, kwargs = _SHARED["job"]
    start, stop = bounds
    return fn(*(a[start:stop] for a in arrays), **kwargs)


def map_chunks(fn: Callable[..., Any], arrays: Sequence[np.ndarray], *, n_jobs: int | None, chunk_size: int,
               min_parallel: int, progress: bool = False, desc: str = "", **kwargs: Any) -> list[Any]:
    """Apply ``fn(*[a[start:stop] for a in arrays], **kwargs)`` over consecutive chunks, in order.

    Uses a fork pool of ``n_jobs`` processes when the batch has at least ``min_parallel`` items and
    fork is available; otherwise (or inside a daemon process, e.g. a DataLoader worker) runs serially.
    ``fn`` must be a module-level function. Each chunk's result depends only on its own items.
    """
    n = len(arrays[0])
    bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    jobs = min(resolve_jobs(n_jobs), len(bounds))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="img")
    results: list[Any] = []
    try:
        use_pool = jobs > 1 and n >= min_parallel and "fork" in multiprocessing.get_all_start_methods()
        if use_pool and multiprocessing.current_process().daemon:
            use_pool = False
        if use_pool:
            _SHARED["job"] = (fn, arrays, kwargs)
            try:
                with multiprocessing.get_context("fork").Pool(jobs) as pool:
                    for (start, stop), res in zip(bounds, pool.imap(_run_slice, bounds)):
                        results.append(res)
                        if bar is not None:
                            bar.update(stop - start)
            finally:
                _SHARED.pop("job", None)
        else:
            for start, stop in bounds:
                results.append(fn(*(a[start:stop] for a in arrays), **kwargs))
                if bar is not None:
                    bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    return results


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
