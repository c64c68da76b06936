"""Samplers and inverters of an eps-model: DDIM (this package's own, :mod:`diffusion.ddim`) and the multistep
solvers of diffusers (DPM-Solver++(2M), UniPC), behind one pair of pure functions.

The guidance stays solver-agnostic: a solver asks ``eps_fn(x, t)`` for eps and the guidance answers it
(:func:`diffusion.guidance.guided_eps_fn`). Only DDIM accepts a :class:`~diffusion.guidance.GuidedEps` with two
roles (CFG++), since its step is the only one written in those two roles.

* ``"ddim"``: :func:`~diffusion.ddim.ddim_sample` / :func:`~diffusion.ddim.ddim_invert`, the exact reverse of
  each other on the trailing grid, with optional fixed-point refinement of the inversion (``refine_steps``) started
  from an explicit or extrapolated guess (``predictor``).
* ``"dpmpp_2m"``: diffusers' ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2, lower order at the final
  step) to decode, ``DPMSolverMultistepInverseScheduler`` to invert (Lu et al. 2022, "DPM-Solver++").
* ``"unipc"``: diffusers' ``UniPCMultistepScheduler`` (order 2, bh2) to decode; it has no inverse scheduler, so
  it inverts with DDIM (``refine_steps`` applies).

The schedulers are built from the model's own ``alphas_cumprod`` (``trained_betas``) with the same trailing
timestep spacing as DDIM, and run on float64 states, like DDIM. A multistep inverse is not the algebraic inverse of
the multistep decoder (its history comes from the other end of the trajectory), so its reconstruction error is a
measured property: ``dcfg bench solvers`` and ``docs/benchmarks.md``.

Example:
    >>> import torch
    >>> from diffusion.schedule import betas
    >>> abar = torch.cumprod(1 - betas(1000), 0)
    >>> eps_fn = lambda x, t: 0.1 * x
    >>> x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    >>> xT = invert(eps_fn, x0, abar, steps=20, solver="dpmpp_2m")
    >>> bool((sample(eps_fn, xT, abar, steps=20, solver="dpmpp_2m") - x0).abs().max() < 1e-2)
    True
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dcfg_io.checks import is_integer
from diffusion.ddim import EpsFn, check_sampler_inputs, ddim_invert, ddim_invert_nfe, ddim_sample
from diffusion.guidance import GuidedEps

#: The solvers of :func:`sample` and :func:`invert`.
SOLVERS = ("ddim", "dpmpp_2m", "unipc")
#: The inverter each solver uses.
INVERTERS = {"ddim": "ddim", "dpmpp_2m": "dpmpp_2m", "unipc": "ddim"}


def check_solver(solver: Any) -> str:
    """``solver`` if it is one of :data:`SOLVERS`; ``ValueError`` naming the choices otherwise."""
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not one of {list(SOLVERS)}")
    return solver


def uses_refinement(solver: str) -> bool:
    """Whether ``refine_steps`` and the inversion's ``predictor`` affect ``solver``'s inversion (they do where the
    inversion is DDIM's)."""
    return INVERTERS[check_solver(solver)] == "ddim"


def nfe(solver: str, steps: int, refine_steps: int = 0, predictor: str = "explicit") -> tuple[int, int]:
    """Model evaluations (of one row) of ``(inversion, decoding)`` with ``steps`` steps.

    Example:
        >>> nfe("ddim", 50, 1), nfe("ddim", 30, 1, "extrapolated"), nfe("dpmpp_2m", 20, 1)
        ((100, 50), (31, 30), (20, 20))
    """
    if not uses_refinement(solver):
        return int(steps), int(steps)
    return ddim_invert_nfe(steps, refine_steps, predictor), int(steps)


def _scheduler(solver: str, abar: Tensor, steps: int, inverse: bool = False) -> Any:
    import diffusers

    betas = torch.empty_like(abar)
    betas[0] = 1.0 - abar[0]
    betas[1:] = 1.0 - abar[1:] / abar[:-1]
    common = dict(num_train_timesteps=len(abar), trained_betas=betas.cpu().numpy(), timestep_spacing="trailing",
                  prediction_type="epsilon", solver_order=2)
    if solver == "dpmpp_2m":
        klass = diffusers.DPMSolverMultistepInverseScheduler if inverse else diffusers.DPMSolverMultistepScheduler
        sched = klass(algorithm_type="dpmsolver++", lower_order_final=True, **common)
    elif solver == "unipc":
        sched = diffusers.UniPCMultistepScheduler(solver_type="bh2", lower_order_final=True, **common)
    else:  # pragma: no cover - checked by the callers
        raise ValueError(solver)
    with warnings.catch_warnings():  # numpy 2's copy-keyword notice inside diffusers' set_timesteps
        warnings.simplefilter("ignore", DeprecationWarning)
        sched.set_timesteps(steps)
    return sched


def _plain(out: "Tensor | GuidedEps", solver: str) -> Tensor:
    if isinstance(out, GuidedEps):
        raise ValueError(f"solver {solver!r} takes one eps per step; a two-role guidance (CFG++, variant 'cfgpp') "
                         f"needs solver 'ddim'")
    return out.to(torch.float64)


def _run(sched: Any, eps_fn: EpsFn, x: Tensor, dtype: torch.dtype, solver: str, progress: bool, desc: str) -> Tensor:
    for t in tqdm(sched.timesteps.tolist(), disable=not progress, desc=desc, leave=False):
        t_vec = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        eps = _plain(eps_fn(x.to(dtype), t_vec), solver)
        x = sched.step(eps, int(t), x, return_dict=False)[0].to(torch.float64)
    return x


def sample(eps_fn: EpsFn, x_T: Tensor, alphas_cumprod: Tensor, steps: int, *, solver: str = "ddim",
           progress: bool = False, power: float = 1.0) -> Tensor:
    """Decode noise ``x_T`` with ``steps`` model evaluations of ``solver`` (see the module docstring). ``power``
    is DDIM's grid exponent (:func:`~diffusion.ddim.ddim_timesteps`); the diffusers solvers keep their uniform
    trailing grid.

    Returns ``x_0`` in ``x_T``'s dtype.
    """
    check_solver(solver)
    if solver == "ddim":
        return ddim_sample(eps_fn, x_T, alphas_cumprod, steps, progress=progress, power=power)
    abar = check_sampler_inputs(x_T, alphas_cumprod, "x_T")
    _check_steps(steps)
    sched = _scheduler(solver, abar, steps)
    return _run(sched, eps_fn, x_T.to(torch.float64), x_T.dtype, solver, progress, f"{solver} sample").to(x_T.dtype)


def invert(eps_fn: EpsFn, x_0: Tensor, alphas_cumprod: Tensor, steps: int, *, solver: str = "ddim",
           refine_steps: int = 0, predictor: str = "explicit", progress: bool = False, power: float = 1.0) -> Tensor:
    """Encode images ``x_0`` into noise at the last timestep with ``solver``'s inverter (``refine_steps`` and
    ``predictor`` apply where that is DDIM, :func:`~diffusion.ddim.ddim_invert`; ``power``, the DDIM grid's
    exponent, where the solver is DDIM: UniPC's DDIM inversion keeps the uniform grid its decoder uses). Returns
    ``x_T`` in ``x_0``'s dtype."""
    check_solver(solver)
    if INVERTERS[solver] == "ddim":
        return ddim_invert(eps_fn, x_0, alphas_cumprod, steps, refine_steps=refine_steps, predictor=predictor,
                           progress=progress, power=power if solver == "ddim" else 1.0)
    abar = check_sampler_inputs(x_0, alphas_cumprod, "x_0")
    _check_steps(steps)
    sched = _scheduler(solver, abar, steps, inverse=True)
    return _run(sched, eps_fn, x_0.to(torch.float64), x_0.dtype, solver, progress, f"{solver} invert").to(x_0.dtype)


def _check_steps(steps: Any) -> None:
    if not is_integer(steps, 1, python_int=True):
        raise ValueError(f"steps={steps!r} must be a positive integer")
