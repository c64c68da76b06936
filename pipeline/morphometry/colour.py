"""Measurement of colour Morpho-MNIST images: the grey digit inside an RGB image, its hue and its background.

A colour image is rendered (``docs/benchmark.md``) as ``rgb = (1 - g) * b + g * (i / 255) * hsv_to_rgb(h, 1, 1)``
with ``g`` the stroke coverage, so per pixel

* the **saturation** ``max - min`` over the channels is ``g * i / 255``: the grey Morpho-MNIST digit, clipped at
  its intensity, on which thickness, intensity, slant and the digit classifier are measured unchanged
  (:func:`saturation`);
* the HSV **hue** of every stroke pixel is ``h`` (adding the same grey to all channels keeps the hue): the
  hue is the saturation-weighted circular mean of the hue over the pixels at or above the saturation's mid
  threshold (:func:`measure_hue`);
* the **minimum channel** where the coverage is 0 is ``b``: the background is the median of the minimum channel
  over the pixels whose saturation is below 5% of the image's largest (:func:`measure_background`).

Images are ``(B, 3, H, W)``, torch or numpy, in [-1, 1] (the models' range) unless ``value_range`` says
otherwise.

Example:
    >>> import numpy as np
    >>> x = np.zeros((1, 3, 28, 28)); x[:] = 0.2                       # background 0.2 everywhere
    >>> x[0, :, 8:20, 12:16] = np.array([0.2, 0.9, 0.2])[:, None, None]  # a green bar: hue 1/3
    >>> (round(float(measure_hue(x, value_range=(0, 1))[0]), 3),
    ...  round(float(measure_background(x, value_range=(0, 1))[0]), 3))
    (0.333, 0.2)
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from pipeline.morphometry.pyramid import mid_threshold

__all__ = ["saturation", "measure_hue", "measure_background", "hsv_hue", "BACKGROUND_FRACTION"]

#: Pixels whose saturation is below this fraction of the image's largest count as background.
BACKGROUND_FRACTION = 0.05


def _unit_rgb(images: Any, value_range: tuple[float, float] | None) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"colour images must have shape (B, 3, H, W), got {tuple(np.shape(images))}")
    lo, hi = value_range if value_range is not None else (-1.0, 1.0)
    if not hi > lo:
        raise ValueError(f"value_range={value_range!r} must be (low, high) with high > low")
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def saturation(images: Any, *, value_range: tuple[float, float] | None = None) -> Any:
    """``max - min`` over the channels: the grey digit ``(B, 1, H, W)``, in the input's value range and type.

    Example:
        >>> x = torch.full((1, 3, 2, 2), -1.0); x[0, 0] = 1.0   # pure red on black
        >>> saturation(x)[0, 0]
        tensor([[1., 1.],
                [1., 1.]])
    """
    x = _unit_rgb(images, value_range)
    sat = x.max(axis=1, keepdims=True) - x.min(axis=1, keepdims=True)
    lo, hi = value_range if value_range is not None else (-1.0, 1.0)
    out = lo + (hi - lo) * sat
    if isinstance(images, torch.Tensor):
        return torch.from_numpy(out).to(dtype=images.dtype if images.is_floating_point() else torch.float32,
                                        device=images.device)
    return out


def hsv_hue(x: np.ndarray) -> np.ndarray:
    """The HSV hue in [0, 1) of ``(B, 3, H, W)`` unit RGB images, per pixel ``(B, H, W)`` (0 where grey)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = x.max(axis=1), x.min(axis=1)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return np.where(c > 0, h / 6.0, 0.0)


def measure_hue(images: Any, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """The stroke's hue per image (``(B,)`` float64 in [0, 1); NaN for an image without colour).

    The saturation-weighted circular mean of the pixels' HSV hue over the pixels at or above the saturation's
    mid threshold (the stroke, as for the intensity).
    """
    x = _unit_rgb(images, value_range)
    sat = x.max(axis=1) - x.min(axis=1)
    mask = mid_threshold(sat) & (sat > 0)
    angle = 2.0 * np.pi * hsv_hue(x)
    w = np.where(mask, sat, 0.0)
    c = (w * np.cos(angle)).sum(axis=(1, 2))
    s = (w * np.sin(angle)).sum(axis=(1, 2))
    out = (np.arctan2(s, c) / (2.0 * np.pi)) % 1.0
    return np.where(w.sum(axis=(1, 2)) > 0, out, np.nan)


def measure_background(images: Any, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """The background's grey level per image (``(B,)`` float64 on [0, 1]): the median of the minimum channel
    over the pixels whose saturation is below :data:`BACKGROUND_FRACTION` of the image's largest."""
    x = _unit_rgb(images, value_range)
    sat = x.max(axis=1) - x.min(axis=1)
    low = x.min(axis=1)
    peak = sat.reshape(len(x), -1).max(axis=1)
    mask = sat <= BACKGROUND_FRACTION * peak[:, None, None]
    values = np.where(mask, low, np.nan).reshape(len(x), -1)
    with warnings.catch_warnings():  # an image with no background pixel gives NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=1) if len(x) else np.zeros(0)
