"""diffusion.solvers: DDIM and diffusers' multistep solvers behind one sample / invert pair."""
from __future__ import annotations

import pytest
import torch

from diffusion.guidance import GuidedEps
from diffusion.schedule import betas
from diffusion.solvers import SOLVERS, check_solver, invert, nfe, sample, uses_refinement

ABAR = torch.cumprod(1 - betas(1000), 0)


def linear_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An eps-model whose ODE is smooth: eps = 0.1 x (each solver converges as the steps grow)."""
    return 0.1 * x


@pytest.mark.parametrize("solver", SOLVERS)
def test_round_trip_error_falls_with_the_steps(solver):
    x0 = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    errs = []
    for steps in (5, 20, 50):
        xT = invert(linear_eps, x0, ABAR, steps, solver=solver, refine_steps=2)
        assert xT.shape == x0.shape and xT.dtype == x0.dtype and torch.isfinite(xT).all()
        errs.append(float((sample(linear_eps, xT, ABAR, steps, solver=solver) - x0).abs().max()))
    # DDIM inverts its own step exactly (up to the fixed point); the multistep decoders meet an inverse that is
    # not their algebraic inverse (DPM-Solver++'s inverse scheduler, DDIM for UniPC), so they converge slower
    assert errs[2] < errs[0] and errs[2] < {"ddim": 1e-3, "dpmpp_2m": 2e-2, "unipc": 5e-2}[solver], errs


def test_ddim_is_the_ddim_module():
    from diffusion.ddim import ddim_invert, ddim_sample

    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(invert(linear_eps, x0, ABAR, 10, refine_steps=1), ddim_invert(linear_eps, x0, ABAR, 10,
                                                                                      refine_steps=1))
    assert torch.equal(sample(linear_eps, x0, ABAR, 10), ddim_sample(linear_eps, x0, ABAR, 10))


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
def test_multistep_solvers_ask_for_eps_once_per_step_at_the_trailing_grid(solver):
    seen = []

    def eps(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    sample(eps, torch.randn(2, 1, 4, 4), ABAR, 8, solver=solver)
    assert len(seen) == 8 == nfe(solver, 8)[1]
    assert seen[0] == 999 and seen == sorted(seen, reverse=True)


def test_refinement_applies_where_the_inversion_is_ddim():
    assert uses_refinement("ddim") and uses_refinement("unipc") and not uses_refinement("dpmpp_2m")
    assert nfe("ddim", 20, 1) == (40, 20) and nfe("dpmpp_2m", 20, 1) == (20, 20)


@pytest.mark.parametrize("bad", ["dpm", "DDIM", None, 3])
def test_unknown_solvers_are_refused(bad):
    with pytest.raises(ValueError, match="solver="):
        check_solver(bad)


def test_a_two_role_guidance_needs_ddim():
    two = lambda x, t: GuidedEps(torch.zeros_like(x), torch.zeros_like(x))  # noqa: E731
    with pytest.raises(ValueError, match="needs solver 'ddim'"):
        sample(two, torch.randn(1, 1, 4, 4), ABAR, 4, solver="dpmpp_2m")
