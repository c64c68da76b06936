"""The generative SCM of the Morpho-MNIST benchmark (the deepscm equations, docs/benchmark.md).

::

    thickness  t = 0.5 + u_t,   u_t ~ Gamma(shape=10, rate=5)
    intensity  i = 64 + 191 * sigmoid(0.5 * e_i + 2 * t - 5),   e_i ~ N(0, 1)
    digit      y = label of the source digit (root)
    image      x = set_intensity(set_thickness(source, t), i)

An image's exogenous noise is ``(source_index, u_t, e_i)``. The functions work on torch tensors
(computing in float64) and on numpy arrays alike.

For the diffusion model's training set the parents are drawn *independently* of each other
(:func:`sample_independent`): ``t`` from a 50/50 mixture of the SCM marginal and Uniform(1, 5.5),
``i`` from Uniform(64, 255) (kept 0.25 inside the open interval). The noise recorded for such a
row is the one that reproduces it under the SCM: ``u_t = t - 0.5`` and ``e_i`` from
:func:`noise_from_intensity`, so counterfactuals of these rows stay well defined.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import special

from dcfg_io.checks import is_integer

__all__ = ["as_generator", "T_OFFSET", "T_SHAPE", "T_RATE", "I_LOW", "I_SPAN", "INDEPENDENT_T_UNIFORM",
           "INDEPENDENT_T_MIX", "INDEPENDENT_I_UNIFORM", "sample_noise", "thickness_from_noise", "noise_from_thickness",
           "intensity_from", "noise_from_intensity", "sample_independent"]

T_OFFSET, T_SHAPE, T_RATE = 0.5, 10.0, 5.0
I_LOW, I_SPAN = 64.0, 191.0
#: Independent sampling: Uniform range of thickness, mixed with the SCM marginal with this weight.
INDEPENDENT_T_UNIFORM = (1.0, 5.5)
INDEPENDENT_T_MIX = 0.5
#: Independent sampling: Uniform range of intensity (clamped 0.25 inside (64, 255)).
INDEPENDENT_I_UNIFORM = (64.0, 255.0)
_I_MARGIN = 0.25


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """``generator`` itself, or a CPU generator seeded with the integer ``generator``."""
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        raise TypeError("pass a torch.Generator or an integer seed (every random entry point is seeded)")
    if not is_integer(generator):
        raise TypeError(f"generator={generator!r}: pass a torch.Generator or an integer seed")
    return torch.Generator().manual_seed(int(generator))


def _gamma_icdf(u: torch.Tensor) -> torch.Tensor:
    """Gamma(T_SHAPE, T_RATE) by inverse CDF, so that a torch.Generator alone fixes the draw."""
    return torch.from_numpy(special.gammaincinv(T_SHAPE, u.numpy()) / T_RATE)


def sample_noise(n: int, generator: torch.Generator | int) -> dict[str, torch.Tensor]:
    """Draw the exogenous noise of ``n`` rows: ``{"u_t": Gamma(10, 5), "e_i": N(0, 1)}`` (float64).

    Args:
        n: number of rows.
        generator: a CPU ``torch.Generator`` or an integer seed.

    Example:
        >>> noise = sample_noise(4, torch.Generator().manual_seed(0))
        >>> sorted(noise), noise["u_t"].shape
        (['e_i', 'u_t'], torch.Size([4]))
    """
    if not is_integer(n, 0):
        raise ValueError(f"n={n!r} must be a non-negative integer")
    g = as_generator(generator)
    u = torch.rand(int(n), generator=g, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    e_i = torch.randn(int(n), generator=g, dtype=torch.float64)
    return {"u_t": _gamma_icdf(u), "e_i": e_i}


def thickness_from_noise(u_t: Any) -> Any:
    """``t = 0.5 + u_t``.

    Example:
        >>> float(thickness_from_noise(torch.tensor(2.0)))
        2.5
    """
    return T_OFFSET + u_t


def noise_from_thickness(t: Any) -> Any:
    """Inverse of :func:`thickness_from_noise`: ``u_t = t - 0.5``.

    Example:
        >>> float(noise_from_thickness(torch.tensor(2.5)))
        2.0
    """
    return t - T_OFFSET


def intensity_from(t: Any, e_i: Any) -> Any:
    """``i = 64 + 191 * sigmoid(0.5 * e_i + 2 * t - 5)`` (torch: computed in float64).

    Example:
        >>> round(float(intensity_from(torch.tensor(2.5), torch.tensor(0.0))), 1)
        159.5
    """
    if isinstance(t, torch.Tensor) or isinstance(e_i, torch.Tensor):
        t64 = torch.as_tensor(t, dtype=torch.float64)
        e64 = torch.as_tensor(e_i, dtype=torch.float64)
        return I_LOW + I_SPAN * torch.sigmoid(0.5 * e64 + 2.0 * t64 - 5.0)
    return I_LOW + I_SPAN * special.expit(0.5 * np.asarray(e_i, np.float64) + 2.0 * np.asarray(t, np.float64) - 5.0)


def noise_from_intensity(t: Any, i: Any) -> Any:
    """The ``e_i`` with ``intensity_from(t, e_i) == i``; ``i`` must lie strictly inside (64, 255).

    Example:
        >>> t, i = torch.tensor([2.0]), torch.tensor([200.0])
        >>> bool(torch.allclose(intensity_from(t, noise_from_intensity(t, i)), i.double()))
        True
    """
    is_torch = isinstance(t, torch.Tensor) or isinstance(i, torch.Tensor)
    t64 = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, np.float64)
    i64 = np.asarray(i.detach().cpu() if isinstance(i, torch.Tensor) else i, np.float64)
    if ((i64 <= I_LOW) | (i64 >= I_LOW + I_SPAN)).any():
        bad = i64[(i64 <= I_LOW) | (i64 >= I_LOW + I_SPAN)].ravel()[0]
        raise ValueError(f"intensity={bad:g} has no SCM noise: it must lie strictly inside (64, 255)")
    e_i = 2.0 * (special.logit((i64 - I_LOW) / I_SPAN) - 2.0 * t64 + 5.0)
    return torch.from_numpy(np.asarray(e_i)) if is_torch else e_i


def sample_independent(n: int, generator: torch.Generator | int) -> dict[str, torch.Tensor]:
    """Draw ``n`` rows of (t, i) independently, returning their SCM noise ``{"u_t", "e_i"}`` (float64).

    ``t``: with probability 0.5 the SCM marginal ``0.5 + Gamma(10, 5)``, else Uniform(1, 5.5);
    ``i``: Uniform(64, 255), clamped to [64.25, 254.75]. The returned noise reproduces them:
    ``thickness_from_noise(u_t) == t`` and ``intensity_from(t, e_i) == i``.

    Example:
        >>> noise = sample_independent(1000, 0)
        >>> t = thickness_from_noise(noise["u_t"]); i = intensity_from(t, noise["e_i"])
        >>> bool(t.min() > 0.5 and i.min() >= 64 and i.max() <= 255)
        True
    """
    g = as_generator(generator)
    base = sample_noise(n, g)
    pick_uniform = torch.rand(int(n), generator=g, dtype=torch.float64) < (1.0 - INDEPENDENT_T_MIX)
    lo, hi = INDEPENDENT_T_UNIFORM
    uniform_t = lo + (hi - lo) * torch.rand(int(n), generator=g, dtype=torch.float64)
    t = torch.where(pick_uniform, uniform_t, thickness_from_noise(base["u_t"]))
    i_lo, i_hi = INDEPENDENT_I_UNIFORM
    i = i_lo + (i_hi - i_lo) * torch.rand(int(n), generator=g, dtype=torch.float64)
    i = i.clamp(I_LOW + _I_MARGIN, I_LOW + I_SPAN - _I_MARGIN)
    return {"u_t": noise_from_thickness(t), "e_i": noise_from_intensity(t, i)}
