"""Deterministic DDIM (eta = 0) sampling and inversion, as pure functions of an eps-model.

Glossary (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with sigma = 0):

* ``abar``: alpha-bar, the cumulative product of (1 - beta); ``abar[t]`` for t = 0..T-1.
* ``tau_1 < ... < tau_S``: the S sampling timesteps (``ddim_timesteps``); ``tau_0`` denotes the clean image,
  with ``abar = 1`` (diffusers' ``set_alpha_to_one``).
* ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``: the predicted clean image.
* one step from t to s: ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps``.

Both directions use the *same* grid and evaluate the model only at ``tau_1..tau_S``:

* sampling step ``tau_i -> tau_{i-1}`` uses ``eps(x_{tau_i}, tau_i)``;
* inversion step ``tau_{i-1} -> tau_i`` would need that same ``eps(x_{tau_i}, tau_i)``, whose input is still
  unknown, and approximates it by ``eps(x_{tau_{i-1}}, tau_{i-1})``: the current image at its own noise level. The
  clean image has no timestep of its own, so the first step evaluates ``eps(x_0, tau_1)``; this is the fix of
  diffusers #5145 (the earlier code queried the UNet at t = -T/S), see also #5703. Measured on a small trained
  model, evaluating at the image's own level reconstructs better than at the target level (50 steps: 0.056 vs
  0.079 mean |x - x_rec|), since the model then sees inputs at the noise level it was trained for.
* a guidance may give the two roles of eps different values (CFG++, :class:`~diffusion.guidance.GuidedEps`):
  sampling predicts ``x0_hat`` with ``denoise`` and re-noises with ``renoise``; inversion swaps them, which is
  the algebraic inverse of the sampling step (a plain tensor plays both roles).
* ``refine_steps = k`` (opt-in) then iterates ``x_{tau_i} <- step(x_{tau_{i-1}}, eps(x_{tau_i}, tau_i))`` k times
  (the corrector). A fixed point is a state that the sampling step maps exactly back onto ``x_{tau_{i-1}}``, so
  the reconstruction error falls, for k extra model calls per step.
* ``predictor`` is the first guess of ``eps(x_{tau_i}, tau_i)`` that the corrector starts from: ``"explicit"``
  (the default, above) calls the model at ``(x_{tau_{i-1}}, tau_{i-1})``; ``"extrapolated"`` calls nothing and
  extrapolates linearly from the last corrector evaluations of the two previous steps, ``2 e_{i-1} - e_{i-2}``
  (the first step calls the model, the second reuses ``e_1``). Near the clean image the corrector map is barely
  contractive, so the guess it starts from decides the error: with one corrector per step the extrapolated guess
  reconstructs better than the explicit one at half the calls (``1 + k S`` against ``(1 + k) S``).

``power = p > 1`` (opt-in) spaces the grid as ``tau_i = round(T (i / S)^p) - 1`` instead of uniformly: more steps at
low noise, where the image's details are decided, and where the inversion's fixed point is hardest to reach (the
corrector is barely contractive there). With few steps this cuts both the reconstruction and the
counterfactual's error (``docs/solvers.md``).

The update arithmetic is float64 (the state is carried in float64; the model sees the input's dtype). Nothing is
clipped, so the maps stay invertible. ``spacing="trailing"`` (default) puts ``tau_S = T - 1`` so that sampling
starts from pure noise (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2).

Example:
    >>> import torch
    >>> from diffusion.schedule import betas
    >>> abar = torch.cumprod(1 - betas(1000), 0)
    >>> eps_fn = lambda x, t: 0.1 * x  # any callable (x, t) -> eps
    >>> x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    >>> xT = ddim_invert(eps_fn, x0, abar, steps=50, refine_steps=3)
    >>> bool((ddim_sample(eps_fn, xT, abar, steps=50) - x0).abs().max() < 1e-4)
    True
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dcfg_io.checks import is_integer, is_number
from diffusion.guidance import GuidedEps

EpsFn = Callable[[Tensor, Tensor], "Tensor | GuidedEps"]
SPACINGS = ("trailing", "leading", "linspace")
#: first guesses of the inversion's implicit eps (see the module docstring)
PREDICTORS = ("explicit", "extrapolated")


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str = "trailing", power: float = 1.0) -> Tensor:
    """The S sampling timesteps ``tau_1 < ... < tau_S`` (int64, ascending).

    Args:
        num_train_timesteps: T.
        steps: S, between 1 and T.
        spacing: ``"trailing"`` (``round(i T / S) - 1``, ends at T - 1), ``"leading"`` (``i * (T // S)``,
            starts at 0, as in the DDIM paper and diffusers' default) or ``"linspace"``
            (``round(linspace(0, T-1, S))``).
        power: the trailing grid's exponent p: ``tau_i = round(T (i / S)^p) - 1`` (raised where needed to
            keep the grid strictly increasing). 1 is uniform; p > 1 puts more steps at low noise, where the
            image's details are decided and the inversion's error is made (the DDIM paper's "quadratic"
            grid is p = 2). Only the trailing spacing takes a power other than 1.

    Example:
        >>> ddim_timesteps(1000, 4).tolist()
        [249, 499, 749, 999]
        >>> ddim_timesteps(1000, 4, "leading").tolist()
        [0, 250, 500, 750]
        >>> ddim_timesteps(1000, 4, power=1.5).tolist()
        [124, 353, 649, 999]
    """
    T = int(num_train_timesteps)
    if not is_integer(steps, 1, T):
        raise ValueError(f"steps={steps!r} must be an integer in [1, {T}] (the number of training timesteps)")
    check_power(power)
    if power != 1.0:
        if spacing != "trailing":
            raise ValueError(f"power={power!r} needs spacing='trailing' (got {spacing!r})")
        ts = np.round(T * (np.arange(1, steps + 1) / steps) ** float(power)).astype(np.int64) - 1
        ts = np.maximum(ts, 0)
        for i in range(1, len(ts)):  # strictly increasing: where rounding ties, the next timestep
            ts[i] = max(ts[i], ts[i - 1] + 1)
        if ts[-1] > T - 1:
            raise ValueError(f"steps={steps} at power={power!r} does not fit T={T} distinct timesteps; use "
                             f"fewer steps or a smaller power")
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64)[::-1] - 1
    elif spacing == "leading":
        ts = np.arange(steps, dtype=np.int64) * (T // steps)
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    else:
        raise ValueError(f"spacing={spacing!r} is not one of {SPACINGS}")
    return torch.from_numpy(np.ascontiguousarray(ts))


def check_power(power: object) -> float:
    """``power`` as a float if it is a finite number in [1, 4] (the grid exponent of :func:`ddim_timesteps`);
    ``ValueError`` otherwise."""
    if not is_number(power) or not 1.0 <= float(power) <= 4.0:
        raise ValueError(f"power={power!r:.80} must be a number in [1, 4] (1: uniform timesteps)")
    return float(power)


def ddim_eval_timesteps(num_train_timesteps: int, steps: int, spacing: str = "trailing", *, invert: bool = False,
                        refine_steps: int = 0, predictor: str = "explicit", power: float = 1.0) -> list[int]:
    """The timestep of every ``eps_fn`` call of :func:`ddim_sample` (or :func:`ddim_invert` with ``invert=True``,
    its ``refine_steps`` and ``predictor``), in call order: what a guidance whose cost depends on ``t`` costs.

    Example:
        >>> ddim_eval_timesteps(1000, 4), ddim_eval_timesteps(1000, 2, invert=True, refine_steps=1)
        ([999, 749, 499, 249], [499, 499, 499, 999])
        >>> ddim_eval_timesteps(1000, 3, invert=True, refine_steps=1, predictor="extrapolated")
        [332, 332, 666, 999]
    """
    check_inversion(refine_steps, predictor)
    ts = ddim_timesteps(num_train_timesteps, steps, spacing, power).tolist()
    if not invert:
        return ts[::-1]
    out: list[int] = []
    for i, t in enumerate(ts):
        if predictor == "explicit" or i == 0:
            out.append(ts[max(i - 1, 0)])
        out += [t] * int(refine_steps)
    return out


def ddim_invert_nfe(steps: int, refine_steps: int = 0, predictor: str = "explicit") -> int:
    """Model calls of one :func:`ddim_invert`: ``(1 + k) S`` with the explicit predictor, ``1 + k S`` with the
    extrapolated one (``k = refine_steps``).

    Example:
        >>> ddim_invert_nfe(50, 1), ddim_invert_nfe(30, 1, "extrapolated"), ddim_invert_nfe(20)
        (100, 31, 20)
    """
    check_inversion(refine_steps, predictor)
    if predictor == "explicit":
        return (1 + int(refine_steps)) * int(steps)
    return 1 + int(refine_steps) * int(steps)


def check_inversion(refine_steps: object, predictor: object) -> None:
    """``ValueError`` unless ``refine_steps`` is an integer >= 0 and ``predictor`` one of :data:`PREDICTORS` (the
    extrapolated predictor needs at least one corrector: it calls the model nowhere else)."""
    if not is_integer(refine_steps, 0, python_int=True):
        raise ValueError(f"refine_steps={refine_steps!r} must be a non-negative integer (0 = plain inversion)")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor={predictor!r} is not one of {list(PREDICTORS)}")
    if predictor == "extrapolated" and refine_steps < 1:
        raise ValueError("predictor='extrapolated' needs refine_steps >= 1: the extrapolated guess calls no model, so "
                         "the corrector is the inversion's only look at the image")


def _roles(out: "Tensor | GuidedEps") -> tuple[Tensor, Tensor]:
    """``(denoise, renoise)`` eps of one ``eps_fn`` answer, in float64."""
    if isinstance(out, GuidedEps):
        return out.denoise.to(torch.float64), out.renoise.to(torch.float64)
    e = out.to(torch.float64)
    return e, e


def check_sampler_inputs(x: Tensor, alphas_cumprod: Tensor, name: str) -> Tensor:
    """The schedule ``alphas_cumprod`` as float64 on ``x``'s device, after checking that ``x`` (called ``name`` in
    errors) is a floating-point ``(B, ...)`` tensor and the schedule 1-D in (0, 1]."""
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() < 2:
        raise TypeError(f"{name} must be a floating-point tensor (B, ...), got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    abar = torch.as_tensor(alphas_cumprod)
    if abar.dim() != 1 or len(abar) < 1 or not bool(((abar > 0) & (abar <= 1)).all()):
        raise ValueError("alphas_cumprod must be a 1-D tensor of values in (0, 1] (e.g. model.alphas_cumprod)")
    return abar.to(device=x.device, dtype=torch.float64)


def _ddim_step(x: Tensor, eps: Tensor, abar_from: Tensor | float, abar_to: Tensor | float,
               renoise: Tensor | None = None) -> Tensor:
    """One deterministic DDIM move from noise level ``abar_from`` to ``abar_to`` (float64 in, float64 out);
    ``eps`` predicts the clean image, ``renoise`` (default ``eps``) re-noises it."""
    x0_hat = (x - (1.0 - abar_from) ** 0.5 * eps) / abar_from ** 0.5   # 1. predicted clean image
    return abar_to ** 0.5 * x0_hat + (1.0 - abar_to) ** 0.5 * (eps if renoise is None else renoise)  # 2. re-noise


def ddim_sample(eps_fn: EpsFn, x_T: Tensor, alphas_cumprod: Tensor, steps: int, *, spacing: str = "trailing",
                clip_denoised: bool = False, progress: bool = False, return_trajectory: bool = False,
                power: float = 1.0) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Decode noise ``x_T`` into images with S deterministic DDIM steps.

    Args:
        eps_fn: ``eps_fn(x, t) -> eps``, ``t`` an int64 tensor ``(B,)`` (a closure over the conditioning, e.g.
            :func:`diffusion.guidance.guided_eps_fn`); or a :class:`~diffusion.guidance.GuidedEps` pair
            ``(denoise, renoise)``.
        x_T: the noise at ``tau_S``, ``(B, C, H, W)``.
        alphas_cumprod: alpha-bar of the model's schedule (``model.alphas_cumprod``).
        steps: S, the number of model evaluations.
        spacing: the timestep grid (see :func:`ddim_timesteps`); use the same one as for :func:`ddim_invert`.
        power: the grid's exponent (:func:`ddim_timesteps`); the same as for :func:`ddim_invert`.
        clip_denoised: clamp every predicted clean image ``x0_hat`` to [-1, 1] and re-derive eps from it
            (diffusers' ``clip_sample``). It steadies generation from pure noise with a weak model, but the map
            is then no longer the inverse of :func:`ddim_invert`: leave it off to decode inverted noise.
        progress: show a tqdm bar.
        return_trajectory: also return ``[x_{tau_S}, ..., x_{tau_1}, x_0]``.

    Returns:
        ``x_0`` in ``x_T``'s dtype (and the trajectory if asked).

    Example:
        >>> import torch
        >>> from diffusion.schedule import betas
        >>> abar = torch.cumprod(1 - betas(1000), 0)
        >>> ddim_sample(lambda x, t: torch.zeros_like(x), torch.randn(1, 1, 2, 2), abar, 10).shape
        torch.Size([1, 1, 2, 2])
    """
    abar = check_sampler_inputs(x_T, alphas_cumprod, "x_T")
    ts = ddim_timesteps(len(abar), steps, spacing, power).flip(0).tolist()  # tau_S, ..., tau_1
    x = x_T.to(torch.float64)
    traj = [x_T.clone()] if return_trajectory else []
    for i, t in enumerate(tqdm(ts, disable=not progress, desc="ddim sample", leave=False)):
        t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps, renoise = _roles(eps_fn(x.to(x_T.dtype), t_vec))
        abar_prev = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        if clip_denoised:
            x0_hat = ((x - (1.0 - abar[t]) ** 0.5 * eps) / abar[t] ** 0.5).clamp(-1.0, 1.0)
            same = renoise is eps
            eps = (x - abar[t] ** 0.5 * x0_hat) / (1.0 - abar[t]) ** 0.5
            renoise = eps if same else renoise
        x = _ddim_step(x, eps, abar[t], abar_prev, None if renoise is eps else renoise)
        if return_trajectory:
            traj.append(x.to(x_T.dtype))
    out = x.to(x_T.dtype)
    return (out, traj) if return_trajectory else out


def ddim_invert(eps_fn: EpsFn, x_0: Tensor, alphas_cumprod: Tensor, steps: int, *, spacing: str = "trailing",
                refine_steps: int = 0, predictor: str = "explicit", progress: bool = False,
                return_trajectory: bool = False, power: float = 1.0) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Encode images ``x_0`` into DDIM noise ``x_T`` (the exact reverse of :func:`ddim_sample`'s grid).

    Args:
        eps_fn: ``eps_fn(x, t) -> eps``, the same closure (same conditioning, no guidance) that will decode; a
            :class:`~diffusion.guidance.GuidedEps` answer is used with its roles swapped (``renoise`` predicts
            the clean image, ``denoise`` re-noises it), so that sampling with the same closure retraces it.
        x_0: images ``(B, C, H, W)`` in [-1, 1].
        alphas_cumprod: alpha-bar of the model's schedule.
        steps: S.
        spacing: the timestep grid; must match the decoding call.
        power: the grid's exponent (:func:`ddim_timesteps`); must match the decoding call.
        refine_steps: fixed-point iterations per step (0 = plain DDIM inversion); each costs one more model call
            per step and makes the sampling step map back onto the previous state more exactly.
        predictor: the corrector's first guess, ``"explicit"`` (a model call at the current state) or
            ``"extrapolated"`` (no call; needs ``refine_steps >= 1``); see the module docstring.
        progress: show a tqdm bar.
        return_trajectory: also return ``[x_0, x_{tau_1}, ..., x_{tau_S}]``.

    Returns:
        ``x_T`` (at ``tau_S``) in ``x_0``'s dtype (and the trajectory if asked).

    Example:
        >>> import torch
        >>> from diffusion.schedule import betas
        >>> abar = torch.cumprod(1 - betas(1000), 0)
        >>> ddim_invert(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1, 2, 2), abar, 10).abs().max().item()
        0.0
    """
    abar = check_sampler_inputs(x_0, alphas_cumprod, "x_0")
    check_inversion(refine_steps, predictor)
    ts = ddim_timesteps(len(abar), steps, spacing, power).tolist()  # tau_1, ..., tau_S
    x = x_0.to(torch.float64)
    traj = [x_0.clone()] if return_trajectory else []
    abar_prev: Tensor | float = 1.0  # the clean image
    t_prev = ts[0]  # the clean image is evaluated at tau_1 (diffusers #5145)
    history: list[tuple[Tensor, Tensor]] = []  # the last corrector's (eps, renoise) of the previous two steps
    for i, t in enumerate(tqdm(ts, disable=not progress, desc="ddim invert", leave=False)):
        # 1. the predictor: eps of the current image at its own noise level (a model call), or the extrapolation
        #    of the previous steps' eps; then the DDIM move up to tau_i
        if predictor == "explicit" or i == 0:
            t_vec = torch.full((x.shape[0],), t_prev, dtype=torch.long, device=x.device)
            eps, renoise = _roles(eps_fn(x.to(x_0.dtype), t_vec))
        elif i == 1:
            eps, renoise = history[-1]
        else:
            (e2, r2), (e1, r1) = history[-2:]
            eps = 2.0 * e1 - e2
            renoise = eps if (r1 is e1 and r2 is e2) else 2.0 * r1 - r2
        x_next = _ddim_step(x, renoise, abar_prev, abar[t], None if renoise is eps else eps)
        # 2. the corrector (fixed-point refinement): make the sampling step from x_next land back on x
        t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        for _ in range(refine_steps):
            eps, renoise = _roles(eps_fn(x_next.to(x_0.dtype), t_vec))
            x_next = _ddim_step(x, renoise, abar_prev, abar[t], None if renoise is eps else eps)
        if predictor == "extrapolated":
            history = [*history[-1:], (eps, renoise)]
        x, abar_prev, t_prev = x_next, abar[t], t
        if return_trajectory:
            traj.append(x.to(x_0.dtype))
    out = x.to(x_0.dtype)
    return (out, traj) if return_trajectory else out
