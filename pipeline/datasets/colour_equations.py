"""The generative SCM of the colour Morpho-MNIST benchmark (six attributes, RGB; see ``docs/benchmark.md``).

::

    digit       d = label of the source digit (root, 10 classes)
    slant       s = 0.06 * (d - 4.5) + 0.2 * e_s                      e_s ~ N(0, 1) truncated to [-2.5, 2.5]
    thickness   t = 0.5 + u_t                                         u_t ~ Gamma(10, rate 5)
    intensity   i = 64 + 191 * sigmoid(0.5 * e_i + 2 t - 5)           e_i ~ N(0, 1)
    hue         h = 0.05 + 0.65 * sigmoid(1.5 * e_h)                  e_h ~ N(0, 1)
    background  b = 0.35 * sigmoid(4 h - 1.4 + 0.7 * e_b)             e_b ~ N(0, 1)

``e_s`` is truncated (1.2% of its mass lies outside) so that every slant lies inside the shear's range
``|s| <= 0.785`` (45 degrees), where :func:`~pipeline.morphometry.set_slant` keeps a digit in the frame.

An image's exogenous noise is ``(source_index, e_s, u_t, e_i, e_h, e_b)``; thickness and intensity use the
Morpho-MNIST equations of :mod:`pipeline.datasets.morpho_equations` unchanged. The functions work on torch
tensors (float64) and return float64 tensors.

For the image model's training set the parents are drawn *independently* of each other
(:func:`sample_independent`), each from a 50/50 mixture of its SCM marginal and a uniform over a wide range,
and the recorded noise is the one that reproduces the row under the SCM.
"""
from __future__ import annotations

from typing import Any

import torch
from scipy import special

from pipeline.datasets import morpho_equations as morpho

__all__ = ["NOISE_NAMES", "ATTRIBUTES", "SLANT_RANGE", "HUE_RANGE", "BACKGROUND_RANGE", "INTENSITY_RANGE",
           "E_S_TRUNCATION", "sample_noise", "attributes_from_noise", "slant_from", "noise_from_slant", "hue_from",
           "noise_from_hue", "background_from", "noise_from_background", "sample_independent", "predict"]

#: Exogenous noise of one image, besides its source digit's index.
NOISE_NAMES = ("e_s", "u_t", "e_i", "e_h", "e_b")
#: The six attributes, in the graph's order.
ATTRIBUTES = ("digit", "slant", "thickness", "intensity", "hue", "background")
SLANT_RANGE = (-0.785, 0.785)
HUE_RANGE = (0.05, 0.70)
BACKGROUND_RANGE = (0.0, 0.35)
INTENSITY_RANGE = (64.0, 255.0)
#: ``e_s`` is drawn from N(0, 1) truncated to this interval.
E_S_TRUNCATION = 2.5
#: Independent sampling: the uniform parts of the mixtures (slant, hue, background; thickness and intensity
#: follow :func:`pipeline.datasets.morpho_equations.sample_independent`).
INDEPENDENT_SLANT_UNIFORM = (-0.6, 0.6)
_MARGIN = 1e-3  # keeps sampled interval values strictly inside their open intervals


def _as64(value: Any) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64)


def slant_from(digit: Any, e_s: Any) -> torch.Tensor:
    """``s = 0.06 * (digit - 4.5) + 0.2 * e_s``.

    Example:
        >>> round(float(slant_from(9, 1.0)), 3)
        0.47
    """
    return 0.06 * (_as64(digit) - 4.5) + 0.2 * _as64(e_s)


def noise_from_slant(digit: Any, s: Any) -> torch.Tensor:
    """Inverse of :func:`slant_from` in ``e_s``.

    Example:
        >>> float(noise_from_slant(9, slant_from(9, 1.0)))
        1.0
    """
    return (_as64(s) - 0.06 * (_as64(digit) - 4.5)) / 0.2


def hue_from(e_h: Any) -> torch.Tensor:
    """``h = 0.05 + 0.65 * sigmoid(1.5 * e_h)``.

    Example:
        >>> round(float(hue_from(0.0)), 12)
        0.375
    """
    return HUE_RANGE[0] + (HUE_RANGE[1] - HUE_RANGE[0]) * torch.sigmoid(1.5 * _as64(e_h))


def noise_from_hue(h: Any) -> torch.Tensor:
    """Inverse of :func:`hue_from`; ``h`` must lie strictly inside (0.05, 0.70).

    Example:
        >>> round(float(noise_from_hue(0.375)), 12)
        0.0
    """
    h = _as64(h)
    _check_open("hue", h, HUE_RANGE)
    return torch.logit((h - HUE_RANGE[0]) / (HUE_RANGE[1] - HUE_RANGE[0])) / 1.5


def background_from(h: Any, e_b: Any) -> torch.Tensor:
    """``b = 0.35 * sigmoid(4 h - 1.4 + 0.7 * e_b)``.

    Example:
        >>> float(background_from(0.35, 0.0))
        0.175
    """
    return BACKGROUND_RANGE[1] * torch.sigmoid(4.0 * _as64(h) - 1.4 + 0.7 * _as64(e_b))


def noise_from_background(h: Any, b: Any) -> torch.Tensor:
    """Inverse of :func:`background_from` in ``e_b``; ``b`` must lie strictly inside (0, 0.35).

    Example:
        >>> round(float(noise_from_background(0.35, 0.175)), 12)
        0.0
    """
    b = _as64(b)
    _check_open("background", b, BACKGROUND_RANGE)
    return (torch.logit(b / BACKGROUND_RANGE[1]) - 4.0 * _as64(h) + 1.4) / 0.7


def _check_open(name: str, value: torch.Tensor, bounds: tuple[float, float]) -> None:
    bad = ~((value > bounds[0]) & (value < bounds[1]))
    if bool(bad.any()):
        raise ValueError(f"{name}={float(value[bad].reshape(-1)[0]):g} has no SCM noise: it must lie strictly inside "
                         f"({bounds[0]:g}, {bounds[1]:g})")


def _truncated_normal(n: int, bound: float, g: torch.Generator) -> torch.Tensor:
    lo, hi = special.ndtr(-bound), special.ndtr(bound)
    u = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.from_numpy(special.ndtri(u.numpy()))


def sample_noise(n: int, generator: torch.Generator | int) -> dict[str, torch.Tensor]:
    """Draw the exogenous noise of ``n`` rows (float64): ``e_s`` (truncated normal), ``u_t``, ``e_i``, ``e_h``,
    ``e_b``.

    Example:
        >>> sorted(sample_noise(3, 0))
        ['e_b', 'e_h', 'e_i', 'e_s', 'u_t']
    """
    g = morpho.as_generator(generator)
    base = morpho.sample_noise(n, g)
    e_s = _truncated_normal(int(n), E_S_TRUNCATION, g)
    e_h = torch.randn(int(n), generator=g, dtype=torch.float64)
    e_b = torch.randn(int(n), generator=g, dtype=torch.float64)
    return {"e_s": e_s, "u_t": base["u_t"], "e_i": base["e_i"], "e_h": e_h, "e_b": e_b}


def attributes_from_noise(digit: Any, noise: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Run the equations: the six attributes (float64; ``digit`` int64) from the digits and the noise.

    Example:
        >>> a = attributes_from_noise(torch.tensor([3]), {k: torch.zeros(1) for k in NOISE_NAMES})
        >>> round(float(a["slant"]), 3), float(a["thickness"]), round(float(a["hue"]), 3)
        (-0.09, 0.5, 0.375)
    """
    return predict(digit, noise, {})


def predict(digit: Any, noise: dict[str, Any], do: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Action and prediction: the equations in topological order with ``do`` values replacing the intervened
    nodes' equations (``digit`` may be intervened on: the slant then follows the new digit)."""
    d = torch.as_tensor(do["digit"] if "digit" in do else digit).long()
    s = _as64(do["slant"]) if "slant" in do else slant_from(d, noise["e_s"])
    t = _as64(do["thickness"]) if "thickness" in do else morpho.thickness_from_noise(_as64(noise["u_t"]))
    i = _as64(do["intensity"]) if "intensity" in do else morpho.intensity_from(t, _as64(noise["e_i"]))
    h = _as64(do["hue"]) if "hue" in do else hue_from(noise["e_h"])
    b = _as64(do["background"]) if "background" in do else background_from(h, noise["e_b"])
    n = len(_as64(noise["u_t"]).reshape(-1))
    return {"digit": d.expand(n).clone() if d.ndim == 0 else d, **{
        k: v.expand(n).clone() if v.ndim == 0 else v
        for k, v in (("slant", s), ("thickness", t), ("intensity", i), ("hue", h), ("background", b))}}


def sample_independent(digit: Any, generator: torch.Generator | int) -> dict[str, torch.Tensor]:
    """Draw every continuous attribute independently of the others for rows of the given digits, and return
    the noise that reproduces them under the SCM (float64).

    Each attribute is, with probability 0.5, drawn from its SCM marginal, and else uniformly: slant on
    (-0.6, 0.6), hue on (0.05, 0.70), background on (0, 0.35) (each kept 0.001 inside); thickness and intensity
    as :func:`pipeline.datasets.morpho_equations.sample_independent`.

    Example:
        >>> noise = sample_independent(torch.arange(10).repeat(100), 0)
        >>> a = attributes_from_noise(torch.arange(10).repeat(100), noise)
        >>> bool(a["background"].min() > 0 and a["hue"].max() < 0.70)
        True
    """
    g = morpho.as_generator(generator)
    d = torch.as_tensor(digit).long().reshape(-1)
    n = len(d)
    base = sample_noise(n, g)
    ti = morpho.sample_independent(n, g)

    def mixed(marginal: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        pick = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
        uniform = (lo + _MARGIN) + (hi - lo - 2 * _MARGIN) * torch.rand(n, generator=g, dtype=torch.float64)
        return torch.where(pick, uniform, marginal)

    marg = attributes_from_noise(d, base)
    s = mixed(marg["slant"], *INDEPENDENT_SLANT_UNIFORM).clamp(SLANT_RANGE[0] + _MARGIN, SLANT_RANGE[1] - _MARGIN)
    h = mixed(marg["hue"], *HUE_RANGE).clamp(HUE_RANGE[0] + _MARGIN, HUE_RANGE[1] - _MARGIN)
    b = mixed(marg["background"], *BACKGROUND_RANGE).clamp(BACKGROUND_RANGE[0] + _MARGIN,
                                                           BACKGROUND_RANGE[1] - _MARGIN)
    return {"e_s": noise_from_slant(d, s), "u_t": ti["u_t"], "e_i": ti["e_i"], "e_h": noise_from_hue(h),
            "e_b": noise_from_background(h, b)}
