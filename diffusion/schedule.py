"""DDPM noise schedules, in float64.

Glossary (DDPM / DDIM notation):

* ``betas[t]``: beta_t, the variance added at forward step t (t = 0..T-1).
* ``alphas_cumprod[t]``: alpha-bar_t = prod_{s<=t} (1 - beta_s), so x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

The schedules follow diffusers' ``DDPMScheduler`` (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``) but are
computed in float64 so that DDIM inversion is not limited by the schedule's rounding.

Example:
    >>> from diffusion.config import ImageModelConfig
    >>> abar = alphas_cumprod(ImageModelConfig())
    >>> abar.dtype, abar.shape, bool(abar[0] > abar[-1])
    (torch.float64, torch.Size([1000]), True)
"""
from __future__ import annotations

import math

import torch

from diffusion.config import BETA_SCHEDULES, ImageModelConfig


def betas(num_train_timesteps: int, beta_schedule: str = "linear", beta_start: float = 1e-4,
          beta_end: float = 0.02) -> torch.Tensor:
    """The float64 betas of a DDPM schedule.

    Args:
        num_train_timesteps: T.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (the cosine schedule of
            Nichol & Dhariwal 2021, betas capped at 0.999).
        beta_start: first beta (linear schedules).
        beta_end: last beta (linear schedules).

    Returns:
        A float64 tensor of shape ``(T,)``.

    Example:
        >>> [round(b, 6) for b in betas(4, "linear", 0.1, 0.4).tolist()]
        [0.1, 0.2, 0.3, 0.4]
    """
    T = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                            dtype=torch.float64)
    raise ValueError(f"beta_schedule={beta_schedule!r} is not one of {BETA_SCHEDULES}")


def alphas_cumprod(config: ImageModelConfig) -> torch.Tensor:
    """alpha-bar_t for ``t = 0..T-1`` of ``config``'s schedule, float64 on the CPU.

    Example:
        >>> from diffusion.config import ImageModelConfig
        >>> float(alphas_cumprod(ImageModelConfig())[0])
        0.9999
    """
    b = betas(config.num_train_timesteps, config.beta_schedule, config.beta_start, config.beta_end)
    return torch.cumprod(1.0 - b, dim=0)
