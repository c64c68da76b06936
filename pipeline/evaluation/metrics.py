"""The benchmark's metrics, each defined once (see the evaluation section of the README).

All functions take batches (tensors or arrays) and return plain floats or per-row arrays, so that
every command and test uses the same definition.

Example:
    >>> import torch
    >>> mae(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]))
    0.25
    >>> round(psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4) + 0.1), 2)
    20.0
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def mae(target: ArrayLike, measured: ArrayLike) -> float:
    """Mean absolute error between targets and measurements (effectiveness of do(t), do(i))."""
    t, m = _np(target), _np(measured)
    if t.shape != m.shape:
        raise ValueError(f"target has shape {t.shape} but measured has {m.shape}")
    return float(np.mean(np.abs(t - m)))


def accuracy(predicted: ArrayLike, target: ArrayLike) -> float:
    """Fraction of predictions equal to the target class (effectiveness of do(digit))."""
    p, t = _np(predicted), _np(target)
    if p.shape != t.shape:
        raise ValueError(f"predicted has shape {p.shape} but target has {t.shape}")
    return float(np.mean(p == t))


def to_unit(x: ArrayLike) -> np.ndarray:
    """Images in [-1, 1] -> [0, 1] float64."""
    return (np.clip(_np(x), -1.0, 1.0) + 1.0) / 2.0


def l1(x: ArrayLike, y: ArrayLike, scale: float = 1.0) -> np.ndarray:
    """Per-image mean |x - y| of [-1, 1] images, measured on [0, ``scale``] (1 or 255)."""
    a, b = to_unit(x), to_unit(y)
    if a.shape != b.shape:
        raise ValueError(f"images have shapes {a.shape} and {b.shape}")
    return np.abs(a - b).reshape(len(a), -1).mean(1) * scale


def psnr(x: ArrayLike, y: ArrayLike) -> float:
    """Mean PSNR (dB) of [-1, 1] images measured on [0, 1]; identical images give +inf."""
    a, b = to_unit(x), to_unit(y)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        vals = 10.0 * np.log10(1.0 / mse)
    return float(np.mean(vals))


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID's formula).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``.
    """
    a, b = _np(feats_a), _np(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D; got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least 2 rows")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s_a)) * eps
        covmean = linalg.sqrtm((s_a + off) @ (s_b + off))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean), 0.0))
