"""``skimage.transform.pyramid_expand`` / ``pyramid_reduce`` (order 3) as matrices, exact and batched, and the
Morpho-MNIST mid threshold.

Glossary:
    ``x``: a batch ``(B, H, W)`` of float64 images on [0, 1].
    ``S``: the upsampling factor (``scale``); hi-res images are ``(B, S*H, S*W)``.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

__all__ = ["expand_matrices", "reduce_matrices", "upsample", "reduce_operator", "downsample", "mid_threshold"]


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
