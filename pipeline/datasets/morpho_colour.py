"""Colour Morpho-MNIST: the real Morpho-MNIST digits in colour, six attributes, exact ground-truth counterfactuals.

Every image is rendered from a real source digit and the six attributes of
:mod:`pipeline.datasets.colour_equations` (``docs/benchmark.md`` defines the benchmark), on [0, 1]:

1. ``g0 = set_intensity(set_thickness(set_slant(source, s), t), i) / 255``: the grey digit;
2. ``g = clip(g0 / (i / 255), 0, 1)``: the stroke coverage;
3. ``rgb = (1 - g) * b + g * (i / 255) * hsv_to_rgb(h, 1, 1)``.

The renderer is a deterministic function of ``(source, s, t, i, h, b)``, so the ground-truth counterfactual of
any intervention but do(digit) is a re-render with the row's own noise (:meth:`MorphoColour.true_counterfactual`).
Renders are cached like :class:`~pipeline.datasets.MorphoMNIST`'s.

Example:
    >>> from pipeline.datasets import load_mnist5k
    >>> images, _ = load_mnist5k()
    >>> x = render_colour(images[:2], {"slant": [0.0, 0.3], "thickness": [2.0, 3.0], "intensity": [200.0, 120.0],
    ...                                "hue": [0.1, 0.6], "background": [0.0, 0.3]}, n_jobs=1)
    >>> x.shape, bool(x.min() >= -1 and x.max() <= 1)
    (torch.Size([2, 3, 28, 28]), True)
"""
from __future__ import annotations

import colorsys
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.datasets import colour_equations as ceq
from pipeline.datasets.morpho import MorphoMNIST, epoch_generator

__all__ = ["MorphoColour", "render_colour", "COLOUR_RENDER_VERSION"]

#: Bumped whenever the colour renderer's output changes, so that old cache files are not reused.
COLOUR_RENDER_VERSION = 1
_RENDER_KEYS = ("slant", "thickness", "intensity", "hue", "background")
#: Allowed values of each intervened attribute (the node's support; thickness: the renderer's range).
RANGES = {"slant": ceq.SLANT_RANGE, "thickness": (0.5, 8.0), "intensity": ceq.INTENSITY_RANGE,
          "hue": ceq.HUE_RANGE, "background": ceq.BACKGROUND_RANGE}


def _pure_colour(hue: np.ndarray) -> np.ndarray:
    """``hsv_to_rgb(h, 1, 1)`` per row: ``(B, 3)``."""
    return np.array([colorsys.hsv_to_rgb(float(h), 1.0, 1.0) for h in hue], dtype=np.float64).reshape(-1, 3)


def colourise(grey: np.ndarray, intensity: np.ndarray, hue: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Steps 2 and 3 of the renderer: ``(B, H, W)`` grey digits ``g0`` on [0, 1] to ``(B, 3, H, W)`` RGB on [0, 1].

    Example:
        >>> g0 = np.zeros((1, 2, 2)); g0[0, 0, 0] = 0.8
        >>> rgb = colourise(g0, np.array([204.0]), np.array([0.0]), np.array([0.1]))
        >>> [round(float(v), 3) for v in rgb[0, :, 0, 0]], [round(float(v), 3) for v in rgb[0, :, 1, 1]]
        ([0.8, 0.0, 0.0], [0.1, 0.1, 0.1])
    """
    level = np.asarray(intensity, np.float64)[:, None, None] / 255.0
    g = np.clip(grey / level, 0.0, 1.0)
    colour = _pure_colour(np.asarray(hue, np.float64))[:, :, None, None]
    b = np.asarray(background, np.float64)[:, None, None, None]
    return (1.0 - g[:, None]) * b + g[:, None] * level[:, None] * colour


def render_colour(source_images: Any, attributes: Mapping[str, Any], n_jobs: int | None = None,
                  progress: bool = False) -> torch.Tensor:
    """Render colour Morpho-MNIST images from uint8 source digits and the five continuous attributes.

    Args:
        source_images: ``uint8`` ``(B, 28, 28)`` on 0..255.
        attributes: ``slant`` (radians), ``thickness`` (px), ``intensity`` (64..255), ``hue`` (0.05..0.70),
            ``background`` (0..0.35): numbers or one value per row.
        n_jobs: processes of the morphological steps (``None`` = all CPUs).
        progress: tqdm bars.

    Returns:
        float32 ``(B, 3, 28, 28)`` in [-1, 1]. Each row depends only on its own source and attributes.
    """
    from pipeline.morphometry import set_intensity, set_slant, set_thickness

    if isinstance(source_images, torch.Tensor):
        source_images = source_images.detach().cpu().numpy()
    source_images = np.asarray(source_images)
    if source_images.dtype != np.uint8:
        raise TypeError(f"source_images has dtype {source_images.dtype}; pass the uint8 source digits (0..255)")
    if source_images.ndim == 4:
        source_images = source_images[:, 0]
    n = len(source_images)
    missing = [k for k in _RENDER_KEYS if k not in attributes]
    if missing:
        raise ValueError(f"render_colour needs the attributes {list(_RENDER_KEYS)}; missing {missing}")
    values = {}
    for k in _RENDER_KEYS:
        v = np.broadcast_to(np.asarray(torch.as_tensor(attributes[k], dtype=torch.float64)), (n,)).copy()
        lo, hi = RANGES[k]
        bad = ~np.isfinite(v) | (v < lo) | (v > hi)
        if bad.any():
            raise ValueError(f"{k}={float(v[bad][0]):g} is out of range: colour Morpho-MNIST allows {lo:g}..{hi:g}")
        values[k] = v
    if n == 0:
        return torch.zeros(0, 3, *source_images.shape[1:])
    x = source_images.astype(np.float64) / 255.0
    x = set_slant(x, values["slant"], n_jobs=n_jobs, value_range=(0.0, 1.0), progress=progress)
    x = set_thickness(x, values["thickness"], n_jobs=n_jobs, value_range=(0.0, 1.0), progress=progress)
    g0 = set_intensity(x, values["intensity"], value_range=(0.0, 1.0))
    rgb = colourise(g0, values["intensity"], values["hue"], values["background"])
    return torch.from_numpy((2.0 * rgb - 1.0).astype(np.float32))


class MorphoColour(MorphoMNIST):
    """Colour Morpho-MNIST rendered from real digits, with the exogenous noise of every image.

    The interface of :class:`~pipeline.datasets.MorphoMNIST`: items are ``(image (3, 28, 28) in [-1, 1],
    attributes)``, with attributes ``digit`` (int64) and ``slant``, ``thickness``, ``intensity``, ``hue``,
    ``background`` (float32). The noise of row ``n`` is ``source_index`` and ``e_s, u_t, e_i, e_h, e_b``.

    Args:
        split, root, samples_per_digit, seed, redraw_each_epoch, cache_dir, cache, n_jobs, progress,
        max_sources: as for :class:`~pipeline.datasets.MorphoMNIST`.
        attribute_sampling: ``"scm"`` draws the attributes from the benchmark's SCM; ``"independent"`` draws
            them independently and more widely (:func:`colour_equations.sample_independent`), for training an
            image model on the whole product of the parents' ranges.

    Example:
        >>> ds = MorphoColour("test", max_sources=4, progress=False, cache=False, n_jobs=1)
        >>> image, attrs = ds[0]
        >>> image.shape, sorted(attrs)
        (torch.Size([3, 28, 28]), ['background', 'digit', 'hue', 'intensity', 'slant', 'thickness'])
        >>> same, x = ds.true_counterfactual(ds.noise_of([0]), {"hue": ds.attributes["hue"][:1]})
        >>> bool(torch.allclose(x, ds.images[:1], atol=1e-6))
        True
    """

    NOISE_KEYS = ceq.NOISE_NAMES
    IMAGE_SHAPE = (3, 28, 28)
    _CACHE_PREFIX = "morpho-colour"
    _LABEL = "colour Morpho-MNIST"

    def _settings(self, epoch: int) -> dict[str, Any]:
        return {**super()._settings(epoch), "render_version": COLOUR_RENDER_VERSION, "benchmark": "morpho-colour"}

    def _draw(self, epoch: int) -> dict[str, torch.Tensor]:
        index = torch.arange(len(self.source_images)).repeat_interleave(self.samples_per_digit)
        digits = torch.from_numpy(self.source_labels)[index]
        g = epoch_generator(self.seed, epoch)
        noise = ceq.sample_noise(len(index), g) if self.attribute_sampling == "scm" \
            else ceq.sample_independent(digits, g)
        noise["source_index"] = index
        return noise

    def _attributes(self, noise: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        digits = torch.from_numpy(self.source_labels)[noise["source_index"]]
        return ceq.attributes_from_noise(digits, noise)

    def _render(self, source_index: torch.Tensor, attrs: Mapping[str, torch.Tensor], progress: bool) -> torch.Tensor:
        return render_colour(self.source_images[source_index.numpy()], attrs, n_jobs=self.n_jobs, progress=progress)

    def true_counterfactual(self, noise: Mapping[str, Any], do: Mapping[str, Any]
                            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Ground-truth counterfactual attributes and images under ``do`` on any attributes but the digit.

        Abduction is given (the rows' recorded noise); action and prediction re-run the equations below the
        intervened nodes with the same noise (do(hue) changes the background through its equation), then
        render.

        Args:
            noise: ``source_index`` and ``e_s, u_t, e_i, e_h, e_b`` of ``B`` rows (e.g. :meth:`noise_of`).
            do: ``{name: value}`` over ``slant``, ``thickness``, ``intensity``, ``hue``, ``background``; a
                value is a number, a tensor with one value per row, or a callable of the factual value.

        Returns:
            ``(attributes, images)``: the six attributes ``(B,)`` and float32 images ``(B, 3, 28, 28)``.

        Raises:
            ValueError: do(digit) (no source digit exists in another class), an unknown key, a value outside
                the node's range (named with the range), or a malformed ``noise``.
        """
        if not isinstance(do, Mapping) or not do:
            raise ValueError(f"do={do!r} must be a non-empty dict, e.g. {{'hue': 0.5}}")
        if "digit" in do:
            raise ValueError("do(digit) has no ground-truth image: no source digit exists in another class; "
                             f"true_counterfactual accepts do on {list(_RENDER_KEYS)}")
        unknown = [k for k in do if k not in _RENDER_KEYS]
        if unknown:
            raise ValueError(f"do has unknown attribute(s) {unknown}: allowed are {list(_RENDER_KEYS)}")
        missing = [k for k in ("source_index",) + self.NOISE_KEYS if k not in noise]
        if missing:
            raise ValueError(f"noise lacks {missing}: pass the dict of (source_index, {', '.join(self.NOISE_KEYS)}), "
                             f"e.g. ds.noise_of(rows)")
        source_index = torch.as_tensor(noise["source_index"]).long().reshape(-1)
        n = source_index.numel()
        if n and (int(source_index.min()) < 0 or int(source_index.max()) >= len(self.source_images)):
            raise ValueError(f"noise['source_index'] must be in 0..{len(self.source_images) - 1} for this dataset")
        u = {k: torch.as_tensor(noise[k]).double().reshape(-1) for k in self.NOISE_KEYS}
        if any(v.numel() != n for v in u.values()):
            raise ValueError(f"noise entries must all have the same length (source_index has {n})")
        digits = torch.from_numpy(self.source_labels)[source_index]
        factual = ceq.attributes_from_noise(digits, u)
        values = {k: self._do_value(v, factual[k], k, *RANGES[k]) for k, v in do.items()}
        attrs = ceq.predict(digits, u, values)
        images = render_colour(self.source_images[source_index.numpy()], attrs, n_jobs=self.n_jobs)
        return {k: v if k == "digit" else v.float() for k, v in attrs.items()}, images

