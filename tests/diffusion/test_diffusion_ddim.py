"""DDIM sampling and inversion: the grid, analytic Gaussian checks, and invert-then-decode on a trained model."""
from __future__ import annotations

import pytest
import torch
from diffusion_helpers import ToyImages, tiny_config

from diffusion import (
    TrainConfig,
    ddim_eval_timesteps,
    ddim_invert,
    ddim_invert_nfe,
    ddim_sample,
    ddim_timesteps,
    guided_eps_fn,
    train,
)
from diffusion.schedule import betas

ABAR = torch.cumprod(1 - betas(1000), 0)


def gaussian_eps(mu: float, s: float):
    """The exact eps-model of data ~ N(mu, s^2): E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""
    def eps_fn(x, t):
        a = ABAR.to(x.device)[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s ** 2 + 1 - a)
    return eps_fn


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_timestep_grid(spacing, steps):
    ts = ddim_timesteps(1000, steps, spacing)
    assert ts.dtype == torch.int64 and len(ts) == steps
    assert bool((ts[1:] > ts[:-1]).all()) and 0 <= ts[0] and ts[-1] <= 999
    if spacing == "trailing":
        assert ts[-1] == 999  # sampling starts from pure noise
    if spacing == "leading":
        assert ts[0] == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), r"steps=0 must be an integer in \[1, 1000\]"),
    (dict(steps=1001), r"steps=1001 must be an integer in \[1, 1000\]"),
    (dict(steps=10, spacing="uniform"), "spacing='uniform' is not one of"),
])
def test_grid_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim_sample(lambda x, t: x, torch.zeros(1, 1, 2, 2), ABAR, **kwargs)


def test_invert_refine_errors():
    with pytest.raises(ValueError, match="refine_steps=-1 must be a non-negative integer"):
        ddim_invert(lambda x, t: x, torch.zeros(1, 1, 2, 2), ABAR, 10, refine_steps=-1)
    with pytest.raises(TypeError, match="x_0 must be a floating-point tensor"):
        ddim_invert(lambda x, t: x, torch.zeros(1, 1, 2, 2, dtype=torch.long), ABAR, 10)


def test_sampling_with_exact_gaussian_eps_converges_to_the_data_distribution():
    mu, s = 0.3, 0.2
    x_T = torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    std_err = []
    for steps in (10, 100, 1000):
        x0 = ddim_sample(gaussian_eps(mu, s), x_T, ABAR, steps=steps)
        assert x0.mean().item() == pytest.approx(mu, abs=0.01)
        std_err.append(abs(x0.std().item() - s))
    assert std_err[0] > std_err[1] > std_err[2]  # the ODE discretisation error shrinks with the steps
    assert std_err[2] < 0.01 * s


def test_invert_then_sample_is_exact_with_refinement_in_float64():
    x0 = 0.3 + 0.2 * torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = gaussian_eps(0.3, 0.2)
    errs = []
    for k in (0, 2, 8, 32):
        xT = ddim_invert(fn, x0, ABAR, 20, refine_steps=k)
        errs.append((ddim_sample(fn, xT, ABAR, 20) - x0).abs().max().item())
    assert errs[0] > 1e-2  # plain inversion is only approximate at 20 steps ...
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-10  # ... the fixed point is exact up to float64 rounding
    # with enough steps the encoded noise is standard normal, as x_T should be (with few steps it is the exact
    # preimage of the coarse sampler, whose output is too narrow, so it comes out too wide)
    x0 = 0.3 + 0.2 * torch.randn(4096, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xT = ddim_invert(fn, x0, ABAR, 200, refine_steps=3)
    assert xT.mean().item() == pytest.approx(0.0, abs=0.05) and xT.std().item() == pytest.approx(1.0, rel=0.05)


def test_trajectories_and_dtype():
    fn = gaussian_eps(0.0, 0.5)
    x0 = torch.randn(3, 1, 2, 2)
    xT, fwd = ddim_invert(fn, x0, ABAR, 5, return_trajectory=True)
    back, rev = ddim_sample(fn, xT, ABAR, 5, return_trajectory=True)
    assert len(fwd) == len(rev) == 6 and xT.dtype == back.dtype == torch.float32
    assert torch.equal(fwd[0], x0) and torch.equal(fwd[-1], xT) and torch.equal(rev[0], xT)
    assert torch.equal(rev[-1], back)


def test_eps_fn_sees_the_grid_and_input_dtype():
    seen = []

    def fn(x, t):
        seen.append((t.clone(), x.dtype))
        return torch.zeros_like(x)
    ddim_invert(fn, torch.zeros(2, 1, 2, 2), ABAR, 4)
    ddim_sample(fn, torch.zeros(2, 1, 2, 2), ABAR, 4)
    ts = [int(t[0]) for t, _ in seen]
    assert ts == [249, 249, 499, 749] + [999, 749, 499, 249]  # inversion evaluates x_0 at tau_1
    assert all(t.dtype == torch.int64 and t.shape == (2,) and d == torch.float32 for t, d in seen)


# ---------------------------------------------------------------------------------------------------- trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ~40k-parameter UNet trained for 600 steps on 256 toy images (about 15 s on one core)."""
    data = ToyImages(256)
    res = train(tiny_config(), TrainConfig(steps=600, batch_size=32, lr=2e-3, warmup=20, ema_decay=0.99,
                                           ckpt_every=10_000), data, tmp_path_factory.mktemp("run"), progress=False)
    return res.model, data


def recon_error(model, data, steps, refine_steps=0, n=16):
    x0, attrs = data.images[:n], {k: v[:n] for k, v in data.attrs.items()}
    fn = guided_eps_fn(model, attrs)  # invert and decode under the same condition, no guidance
    with torch.no_grad():
        xT = ddim_invert(fn, x0, model.alphas_cumprod, steps, refine_steps=refine_steps)
        return (ddim_sample(fn, xT, model.alphas_cumprod, steps) - x0).abs().mean().item()


def test_invert_then_decode_reconstructs_on_a_trained_model(trained):
    model, data = trained
    plain = {s: recon_error(model, data, s) for s in (10, 20, 50, 100)}
    assert plain[10] > plain[20] > plain[50] > plain[100]
    assert plain[100] <= 0.02
    assert recon_error(model, data, 50, refine_steps=1) <= 0.02  # the bar, with one refinement
    assert recon_error(model, data, 50, refine_steps=1) < plain[50] / 1.5


def test_clip_denoised_bounds_the_prediction():
    wild = lambda x, t: -5.0 * torch.ones_like(x)  # noqa: E731 - an eps-model that predicts far out of range
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    free = ddim_sample(wild, x_T, ABAR, 10)
    clipped = ddim_sample(wild, x_T, ABAR, 10, clip_denoised=True)
    assert free.abs().max() > 2 and clipped.abs().max() <= 1.0
    # with a well-behaved model whose predictions stay in range, clipping changes nothing
    fn = gaussian_eps(0.0, 0.1)
    torch.testing.assert_close(ddim_sample(fn, x_T, ABAR, 10, clip_denoised=True), ddim_sample(fn, x_T, ABAR, 10))


# ---------------------------------------------------------------------------------------------------- predictor
@pytest.mark.parametrize("steps, k", [(1, 1), (4, 1), (6, 2)])
def test_the_extrapolated_predictor_calls_the_model_once_plus_k_per_step(steps, k):
    seen = []

    def fn(x, t):
        seen.append(int(t[0]))
        return 0.1 * x
    ddim_invert(fn, torch.randn(2, 1, 2, 2), ABAR, steps, refine_steps=k, predictor="extrapolated")
    assert len(seen) == 1 + k * steps == ddim_invert_nfe(steps, k, "extrapolated")
    assert seen == ddim_eval_timesteps(1000, steps, invert=True, refine_steps=k, predictor="extrapolated")
    grid = ddim_timesteps(1000, steps).tolist()
    assert seen[0] == grid[0] and seen[1:] == [t for t in grid for _ in range(k)]  # x_0 at tau_1, then correctors


def test_both_predictors_reach_the_same_exact_fixed_point():
    """The predictor is only the corrector's starting point: iterated to convergence, both invert exactly."""
    x0 = 0.3 + 0.2 * torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = gaussian_eps(0.3, 0.2)
    xs = {p: ddim_invert(fn, x0, ABAR, 20, refine_steps=32, predictor=p) for p in ("explicit", "extrapolated")}
    assert (xs["explicit"] - xs["extrapolated"]).abs().max() < 1e-10
    assert (ddim_sample(fn, xs["extrapolated"], ABAR, 20) - x0).abs().max() < 1e-10


def test_the_extrapolated_guess_is_exact_for_eps_linear_in_the_step():
    """``2 e_{i-1} - e_{i-2}`` is the next value of an eps that moves linearly along the (uniform) grid, so with
    such an eps one corrector lands on the fixed point that many correctors reach."""
    def fn(x, t):  # depends on the state weakly and on t linearly
        return 1e-3 * t.to(x.dtype).view(-1, 1, 1, 1) + 1e-6 * x
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    exact = ddim_invert(fn, x0, ABAR, 10, refine_steps=40)
    one = {p: (ddim_invert(fn, x0, ABAR, 10, refine_steps=1, predictor=p) - exact).abs().max().item()
           for p in ("explicit", "extrapolated")}
    assert one["extrapolated"] < one["explicit"] / 10, one


@pytest.mark.parametrize("kwargs, match", [
    (dict(refine_steps=0, predictor="extrapolated"), "needs refine_steps >= 1"),
    (dict(refine_steps=1, predictor="implicit"), r"predictor='implicit' is not one of \['explicit', 'extrapolated'\]"),
])
def test_bad_predictors_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim_invert(lambda x, t: x, torch.zeros(1, 1, 2, 2), ABAR, 10, **kwargs)
    with pytest.raises(ValueError, match=match):
        ddim_invert_nfe(10, **kwargs)


# ---------------------------------------------------------------------------------------------------- grid power
@pytest.mark.parametrize("steps", [1, 4, 28, 200, 1000])
@pytest.mark.parametrize("power", [1.0, 1.5, 2.0, 3.0])
def test_a_powered_grid_is_strictly_increasing_and_ends_at_pure_noise(steps, power):
    ts = ddim_timesteps(1000, steps, power=power)
    assert len(ts) == steps and bool((ts[1:] > ts[:-1]).all()) and ts[0] >= 0 and ts[-1] == 999
    if power == 1.0:
        assert torch.equal(ts, ddim_timesteps(1000, steps))


def test_a_larger_power_puts_more_steps_at_low_noise():
    below = {p: int((ddim_timesteps(1000, 28, power=p) < 300).sum()) for p in (1.0, 1.5, 2.0)}
    assert below[1.0] < below[1.5] < below[2.0]
    assert ddim_timesteps(1000, 4, power=2.0).tolist() == [62 - 1, 250 - 1, 562 - 1, 999]  # round(1000 (i/4)^2) - 1


def test_invert_then_sample_on_a_powered_grid_is_exact_at_the_fixed_point():
    x0 = 0.3 + 0.2 * torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fn = gaussian_eps(0.3, 0.2)
    seen = []
    xT = ddim_invert(lambda x, t: seen.append(int(t[0])) or fn(x, t), x0, ABAR, 12, refine_steps=32, power=1.5)
    assert sorted(set(seen)) == ddim_timesteps(1000, 12, power=1.5).tolist()
    assert (ddim_sample(fn, xT, ABAR, 12, power=1.5) - x0).abs().max() < 1e-10
    # decoding on another grid than the inversion's is not the inverse
    assert (ddim_sample(fn, xT, ABAR, 12) - x0).abs().max() > 1e-4


@pytest.mark.parametrize("kwargs, match", [
    (dict(power=0.5), r"power=0.5 must be a number in \[1, 4\]"),
    (dict(power=float("nan")), r"power=nan must be a number in \[1, 4\]"),
    (dict(power="2"), r"power='2' must be a number in \[1, 4\]"),
    (dict(power=2.0, spacing="leading"), "power=2.0 needs spacing='trailing'"),
])
def test_bad_grid_powers_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim_timesteps(1000, 10, **kwargs)
