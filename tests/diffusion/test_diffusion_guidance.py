"""CFG and DCFG: the formula, one batched forward, the one-group case, and every validation."""
from __future__ import annotations

import pytest
import torch
from diffusion_helpers import random_attrs, tiny_config

from diffusion import ConditionalUNet, cfg, dcfg, guided_eps_fn


class Counting:
    """Wraps an eps-model and records the batch size of every call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t, attrs, keep_mask):
        self.calls.append(x.shape[0])
        return self.model.eps(x, t, attrs, keep_mask)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = ConditionalUNet(tiny_config()).eval()
    with torch.no_grad():  # larger conditioning weights so that the attributes visibly matter
        model.embedding.proj.weight.mul_(5)
    return model


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 1, 8, 8, generator=g), torch.tensor([10, 200, 500, 900]), random_attrs(4, seed=4)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, -0.5])
def test_dcfg_with_one_group_equals_cfg(net, batch, w):
    x, t, attrs = batch
    with torch.no_grad():
        a = cfg(net.eps, x, t, attrs, w)
        b = dcfg(net.eps, x, t, attrs, [list(attrs)], [w])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_cfg_limits(net, batch):
    x, t, attrs = batch
    with torch.no_grad():
        torch.testing.assert_close(cfg(net.eps, x, t, attrs, 1.0), net.eps(x, t, attrs), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cfg(net.eps, x, t, attrs, 0.0), net.eps(x, t, {}), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups, weights", [
    ([["thickness", "intensity"], ["digit"]], [3.0, 1.0]),
    ([["thickness"], ["intensity"], ["digit"]], [2.0, 0.5, 4.0]),
    ([["digit", "thickness"], ["intensity"]], [1.0, 1.0]),
])
def test_dcfg_matches_the_formula_and_uses_one_forward(net, batch, groups, weights):
    x, t, attrs = batch
    counting = Counting(net)
    with torch.no_grad():
        out = dcfg(counting, x, t, attrs, groups, weights)
        # reference: separate unbatched evaluations of eps(null) and eps(c^(m))
        e_null = net.eps(x, t, {})
        ref = e_null + sum(w * (net.eps(x, t, {k: attrs[k] for k in g}) - e_null) for g, w in zip(groups, weights))
    assert counting.calls == [(len(groups) + 1) * 4]  # all M + 1 evaluations in ONE batched forward
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # the guidance is not trivial: it differs from plain conditioning
    assert not torch.allclose(out, net.eps(x, t, attrs), atol=1e-3)


def test_cfg_uses_one_forward(net, batch):
    x, t, attrs = batch
    counting = Counting(net)
    with torch.no_grad():
        cfg(counting, x, t, attrs, 2.0)
    assert counting.calls == [8]


def test_dcfg_scalar_timestep(net, batch):
    x, _, attrs = batch
    with torch.no_grad():
        a = dcfg(net.eps, x, 300, attrs, [["digit"], ["thickness", "intensity"]], [2.0, 1.0])
        b = dcfg(net.eps, x, torch.full((4,), 300), attrs, [["digit"], ["thickness", "intensity"]], [2.0, 1.0])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_guided_eps_fn_modes(net, batch):
    x, t, attrs = batch
    groups = [["thickness"], ["intensity", "digit"]]
    with torch.no_grad():
        torch.testing.assert_close(guided_eps_fn(net, attrs)(x, t), net.eps(x, t, attrs))
        torch.testing.assert_close(guided_eps_fn(net, attrs, "cfg", scale=2.5)(x, t), cfg(net.eps, x, t, attrs, 2.5))
        torch.testing.assert_close(guided_eps_fn(net, attrs, "dcfg", 2.0, groups, [3.0, 1.0])(x, t),
                                   dcfg(net.eps, x, t, attrs, groups, [3.0, 1.0]))
        # weights default to the scale for every group
        torch.testing.assert_close(guided_eps_fn(net, attrs, "dcfg", 2.0, groups)(x, t),
                                   dcfg(net.eps, x, t, attrs, groups, [2.0, 2.0]))


@pytest.mark.parametrize("groups, weights, exc, match", [
    ([["thickness"], ["digit"]], [1.0, 1.0], ValueError, r"\['intensity'\] are in no group"),
    ([["thickness", "intensity"], ["digit", "thickness"]], [1.0, 1.0], ValueError,
     r"\['thickness'\] appear in several groups"),
    ([["thickness", "intensity", "digit", "slant"]], [1.0], ValueError,
     r"groups name \['slant'\], which are not among the conditioned attributes"),
    ([["thickness", "intensity", "digit"], []], [1.0, 1.0], ValueError, "contain an empty group"),
    ([["thickness", "intensity", "digit"]], [1.0, 2.0], ValueError, "got 2 weights for 1 groups"),
    ([["thickness", "intensity", "digit"]], [float("inf")], ValueError, r"weights\[0\]=inf must be a finite number"),
    (["thickness"], [1.0], TypeError, "each group must be a list of attribute names"),
])
def test_dcfg_validation(net, batch, groups, weights, exc, match):
    x, t, attrs = batch
    with pytest.raises(exc, match=match):
        dcfg(net.eps, x, t, attrs, groups, weights)
    with pytest.raises(exc, match=match):  # the closure validates up front, before any model call
        guided_eps_fn(net, attrs, "dcfg", groups=groups, weights=weights)


@pytest.mark.parametrize("kwargs, match", [
    (dict(guidance="cfgg"), "guidance='cfgg' is not one of"),
    (dict(guidance="dcfg"), "guidance='dcfg' needs groups"),
    (dict(guidance="cfg", groups=[["digit"]]), "groups/weights only apply to guidance='dcfg'"),
    (dict(guidance="cfg", scale=float("nan")), "scale=nan must be a finite number"),
])
def test_guided_eps_fn_validation(net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        guided_eps_fn(net, random_attrs(2), **kwargs)


def test_dcfg_on_a_subset_of_attributes(net, batch):
    """Attributes left out of attrs are unconditioned; the groups then partition only the rest."""
    x, t, attrs = batch
    sub = {k: attrs[k] for k in ("digit", "thickness")}
    with torch.no_grad():
        out = dcfg(net.eps, x, t, sub, [["digit"], ["thickness"]], [1.0, 1.0])
        e_null = net.eps(x, t, {})
        ref = net.eps(x, t, {"digit": sub["digit"]}) + net.eps(x, t, {"thickness": sub["thickness"]}) - e_null
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- DCFG anchored at the full condition
@pytest.mark.parametrize("groups, weights", [
    ([["thickness"], ["intensity"], ["digit"]], [3.0, 1.0, 1.0]),   # do(thickness), descendant at weight 1
    ([["thickness"], ["intensity"], ["digit"]], [2.0, 0.5, 4.0]),   # every group amplified or damped
    ([["digit"], ["thickness", "intensity"]], [2.0, 1.5]),
])
def test_full_anchor_matches_its_formula_in_one_forward(net, batch, groups, weights):
    """eps = eps(c) + sum_m (w_m - 1) (eps(c) - eps(c^-m)), one forward of (1 + #{w_m != 1}) B rows."""
    x, t, attrs = batch
    counting = Counting(net)
    with torch.no_grad():
        out = dcfg(counting, x, t, attrs, groups, weights, anchor="full")
        e_full = net.eps(x, t, attrs)
        ref = e_full + sum((w - 1.0) * (e_full - net.eps(x, t, {k: v for k, v in attrs.items() if k not in g}))
                           for g, w in zip(groups, weights))
    assert counting.calls == [(1 + sum(w != 1.0 for w in weights)) * 4]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # it is not the paper's equation on this (non-factorising) network
    assert not torch.allclose(out, dcfg(net.eps, x, t, attrs, groups, weights), atol=1e-3)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, -0.5])
def test_full_anchor_with_one_group_equals_cfg(net, batch, w):
    x, t, attrs = batch
    with torch.no_grad():
        torch.testing.assert_close(dcfg(net.eps, x, t, attrs, [list(attrs)], [w], anchor="full"),
                                   cfg(net.eps, x, t, attrs, w), rtol=1e-4, atol=1e-5)


def test_full_anchor_at_weight_one_is_the_plain_conditional(net, batch):
    x, t, attrs = batch
    counting = Counting(net)
    with torch.no_grad():
        out = dcfg(counting, x, t, attrs, [["thickness"], ["intensity"], ["digit"]], [1.0, 1.0, 1.0], anchor="full")
        torch.testing.assert_close(out, net.eps(x, t, attrs), rtol=0, atol=1e-6)
        # while the paper's equation at weight 1 is the product of the groups' experts, not eps(c)
        paper = dcfg(net.eps, x, t, attrs, [["thickness"], ["intensity"], ["digit"]], [1.0, 1.0, 1.0])
    assert counting.calls == [4]
    assert not torch.allclose(paper, net.eps(x, t, attrs), atol=1e-3)


def test_the_two_anchors_agree_when_the_model_factorises():
    """An eps that is a sum of per-attribute terms (p(x | c) = product of the groups' experts): same guidance."""
    g = torch.Generator().manual_seed(0)
    coef = {"a": torch.randn(1, 1, 3, 3, generator=g), "b": torch.randn(1, 1, 3, 3, generator=g)}

    def additive(x, t, attrs, keep_mask):
        out = 0.5 * x
        for k, v in attrs.items():
            kept = torch.ones_like(v, dtype=torch.bool) if keep_mask is None else keep_mask[k]
            out = out + (v * kept)[:, None, None, None] * coef[k]
        return out

    x = torch.randn(5, 1, 3, 3, generator=g)
    attrs = {"a": torch.randn(5, generator=g), "b": torch.randn(5, generator=g)}
    for weights in ([3.0, 1.0], [0.5, 2.0], [1.0, 1.0]):
        torch.testing.assert_close(dcfg(additive, x, 7, attrs, [["a"], ["b"]], weights, anchor="full"),
                                   dcfg(additive, x, 7, attrs, [["a"], ["b"]], weights), rtol=1e-5, atol=1e-6)


def test_dcfg_rows_counts_the_row_blocks():
    from diffusion import dcfg_rows

    assert dcfg_rows([["t", "i"], ["y"]], [3.0, 1.0]) == 3
    assert dcfg_rows([["t"], ["i"], ["y"]], [3.0, 1.0, 1.0], "full") == 2
    assert dcfg_rows([["t"], ["i"], ["y"]], [1.0, 1.0, 1.0], "full") == 1
    with pytest.raises(ValueError, match="anchor='nul' must be 'null'"):
        dcfg_rows([["t"]], [1.0], "nul")


@pytest.mark.parametrize("anchor", ["nul", "", None, 1])
def test_bad_anchor_is_refused_before_any_model_call(net, batch, anchor):
    x, t, attrs = batch
    counting = Counting(net)
    with pytest.raises(ValueError, match=r"anchor=.* must be 'null' \(the paper's DCFG"):
        dcfg(counting, x, t, attrs, [list(attrs)], [2.0], anchor=anchor)
    with pytest.raises(ValueError, match=r"anchor=.* must be 'null'"):
        guided_eps_fn(net, attrs, "dcfg", groups=[list(attrs)], weights=[2.0], anchor=anchor)
    assert counting.calls == []


def test_guided_eps_fn_passes_the_anchor(net, batch):
    x, t, attrs = batch
    groups = [["thickness"], ["intensity", "digit"]]
    with torch.no_grad():
        torch.testing.assert_close(guided_eps_fn(net, attrs, "dcfg", 2.0, groups, [3.0, 1.0], anchor="full")(x, t),
                                   dcfg(net.eps, x, t, attrs, groups, [3.0, 1.0], anchor="full"))


@pytest.mark.slow
def test_guidance_strengthens_a_learned_condition(tmp_path):
    """Toy data: `digit % 4` picks the quadrant of a bright square. After training, samples follow the digit,
    and CFG / DCFG on the digit follow it more often (measured: 0.80 -> 0.97 / 0.98 with seed 0)."""
    from diffusion_helpers import ToyImages

    from diffusion import TrainConfig, ddim_sample, train

    torch.manual_seed(0)
    res = train(tiny_config(), TrainConfig(steps=2000, batch_size=32, lr=2e-3, warmup=20, ema_decay=0.99,
                                           ckpt_every=10_000), ToyImages(256), tmp_path, progress=False)
    n = 64
    attrs = {"thickness": torch.full((n,), 3.0), "intensity": torch.full((n,), 230.0),
             "digit": torch.arange(n) % 4}
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def accuracy(guidance, **kw):
        with torch.no_grad():
            x = ddim_sample(guided_eps_fn(res.model, attrs, guidance, **kw), x_T, res.model.alphas_cumprod, 20,
                            clip_denoised=True)
        quadrants = torch.stack([x[:, 0, :4, :4], x[:, 0, :4, 4:], x[:, 0, 4:, :4], x[:, 0, 4:, 4:]], 1)
        return (quadrants.mean((2, 3)).argmax(1) == attrs["digit"]).float().mean().item()

    plain = accuracy("none")
    assert plain >= 0.6  # chance is 0.25
    assert accuracy("cfg", scale=3.0) >= plain + 0.1
    assert accuracy("dcfg", groups=[["digit"], ["thickness", "intensity"]], weights=[3.0, 1.0]) >= plain + 0.1


# ---------------------------------------------------------------- variants: CFG++, APG, guidance interval
def toy_eps(x, t, attrs, keep_mask):
    """The module doctest's toy model: eps = x + sum of the kept attribute values."""
    kept = sum(v * (torch.ones_like(v, dtype=torch.bool) if keep_mask is None else keep_mask[k])
               for k, v in attrs.items())
    return x + kept[:, None, None, None]


TOY_ATTRS = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([10.0, 10.0])}
TOY_ABAR = torch.linspace(0.999, 0.01, 100, dtype=torch.float64)


@pytest.mark.parametrize("guidance, kw, denoise, renoise", [
    # eps(null) = 0, eps(a) = 1, eps(b) = 10, eps(c) = 11
    ("cfg", dict(scale=2.0), 22.0, 0.0),                                       # 0 + 2 * 11 ; eps(null)
    ("dcfg", dict(groups=[["a"], ["b"]], weights=[3.0, 0.5]), 8.0, 0.0),       # 0 + 3 * 1 + 0.5 * 10 ; eps(null)
    ("dcfg", dict(groups=[["a"], ["b"]], weights=[3.0, 0.5], anchor="full"), 8.0, 11.0),  # 11 + 2 * 1 - 0.5 * 10
    ("dcfg", dict(groups=[["a"], ["b"]], weights=[1.0, 1.0], anchor="full"), 11.0, 11.0),  # plain DDIM
])
def test_cfgpp_pair_hand_computed(guidance, kw, denoise, renoise):
    from diffusion import GuidedEps

    x = torch.zeros(2, 1, 1, 1)
    out = guided_eps_fn(toy_eps, TOY_ATTRS, guidance, variant="cfgpp", **kw)(x, torch.tensor([5, 5]))
    assert isinstance(out, GuidedEps)
    assert out.denoise.flatten().tolist() == [denoise] * 2 and out.renoise.flatten().tolist() == [renoise] * 2


def test_cfgpp_sampling_step_uses_both_roles():
    """One DDIM step x_s = sqrt(abar_s) x0_hat(denoise) + sqrt(1 - abar_s) renoise, against the hand formula."""
    from diffusion import GuidedEps, ddim_sample, ddim_timesteps

    x = torch.full((1, 1, 1, 1), 0.3, dtype=torch.float64)
    fn = lambda x, t: GuidedEps(torch.full_like(x, 2.0), torch.full_like(x, -1.0))  # noqa: E731
    out = ddim_sample(fn, x, TOY_ABAR, steps=1)
    a_t = TOY_ABAR[int(ddim_timesteps(100, 1)[0])]
    x0 = (0.3 - (1 - a_t).sqrt() * 2.0) / a_t.sqrt()
    assert torch.allclose(out.flatten(), (1.0 * x0 + 0.0 * -1.0).flatten())  # to abar = 1: the x0 prediction
    two = ddim_sample(fn, x, TOY_ABAR, steps=2)
    ts = ddim_timesteps(100, 2).tolist()
    a1, a0 = TOY_ABAR[ts[1]], TOY_ABAR[ts[0]]
    x_mid = a0.sqrt() * (0.3 - (1 - a1).sqrt() * 2.0) / a1.sqrt() + (1 - a0).sqrt() * -1.0
    assert torch.allclose(two.flatten(), ((x_mid - (1 - a0).sqrt() * 2.0) / a0.sqrt()).flatten())


def test_cfgpp_invert_then_sample_reconstructs():
    """The inversion swaps the roles: it is the exact inverse of the sampling step (with fixed-point refinement)."""
    from diffusion import GuidedEps, ddim_invert, ddim_sample
    from diffusion.schedule import betas

    abar = torch.cumprod(1 - betas(1000), 0)
    fn = lambda x, t: GuidedEps(0.1 * x + 0.05, -0.05 * x)  # noqa: E731
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x_T = ddim_invert(fn, x0, abar, steps=50, refine_steps=8)
    assert (ddim_sample(fn, x_T, abar, steps=50) - x0).abs().max() < 1e-4
    # with the roles not swapped (the plain inversion of the denoise eps) it does not reconstruct
    wrong = ddim_invert(lambda x, t: 0.1 * x + 0.05, x0, abar, steps=50, refine_steps=8)
    assert (ddim_sample(fn, wrong, abar, steps=50) - x0).abs().max() > 1e-2


def test_cfgpp_closure_invert_then_sample_reconstructs():
    """guided_eps_fn(..., variant='cfgpp') at weight 1: inverting and sampling with the same closure round-trips."""
    from diffusion import ddim_invert, ddim_sample
    from diffusion.schedule import betas

    abar = torch.cumprod(1 - betas(1000), 0)
    smooth = lambda x, t, a, m: 0.1 * toy_eps(x, t, a, m) - 0.09 * x  # noqa: E731  (0.01 x + kept / 10)
    attrs = {"a": torch.tensor([0.1, -0.2]), "b": torch.tensor([0.3, 0.05])}
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for guidance, kw in (("cfg", {}), ("dcfg", dict(groups=[["a"], ["b"]], weights=[1.0, 1.0]))):
        fn = guided_eps_fn(smooth, attrs, guidance, scale=1.0, variant="cfgpp", **kw)
        x_T = ddim_invert(fn, x0, abar, steps=20, refine_steps=6)
        assert (ddim_sample(fn, x_T, abar, steps=20) - x0).abs().max() < 1e-4


@pytest.mark.parametrize("guidance, kw", [
    ("cfg", dict(scale=3.0)),
    ("dcfg", dict(groups=[["thickness"], ["intensity", "digit"]], weights=[3.0, 0.5])),
    ("dcfg", dict(groups=[["thickness"], ["intensity", "digit"]], weights=[3.0, 0.5], anchor="full")),
])
def test_apg_with_eta_one_and_nothing_else_is_the_base_guidance(net, batch, guidance, kw):
    x, t, attrs = batch
    with torch.no_grad():
        apg = guided_eps_fn(net, attrs, guidance, variant="apg", apg_eta=1.0, apg_threshold=None, apg_momentum=0.0,
                            **kw)(x, t)
        base = guided_eps_fn(net, attrs, guidance, **kw)(x, t)
    torch.testing.assert_close(apg, base, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("anchor", ["null", "full"])
def test_apg_with_eta_zero_removes_the_parallel_part(net, batch, anchor):
    """eta = 0: each direction's denoised-space update is orthogonal to its conditional prediction."""
    from diffusion import dcfg_parts

    x, t, attrs = batch
    groups, weights = [["thickness"]], [3.0]
    sub = {"thickness": attrs["thickness"]}
    with torch.no_grad():
        eps = guided_eps_fn(net, sub, "dcfg", groups=groups, weights=weights, anchor=anchor, variant="apg",
                            apg_eta=0.0, apg_threshold=None, apg_momentum=0.0)(x, t)
        parts = dcfg_parts(net.eps, x, t, sub, groups, weights, anchor)
    a = net.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    d_new = (eps.double() - parts.conditional().double()) / (weights[0] - 1.0)   # eps = eps_1 + (w - 1) d'
    delta_new = -((1 - a) / a).sqrt() * d_new                                 # to the denoised space
    V = (x.double() - (1 - a).sqrt() * parts.conds[0].double()) / a.sqrt()
    cos = (delta_new * V).sum((1, 2, 3)) / (delta_new.flatten(1).norm(dim=1) * V.flatten(1).norm(dim=1))
    assert cos.abs().max() < 1e-4
    delta_old = -((1 - a) / a).sqrt() * parts.diffs[0].double()
    cos_old = (delta_old * V).sum((1, 2, 3)) / (delta_old.flatten(1).norm(dim=1) * V.flatten(1).norm(dim=1))
    assert cos_old.abs().max() > 1e-2  # the plain difference did have a parallel part


def test_apg_update_orthogonality_threshold_and_momentum_by_hand():
    from diffusion import apg_update

    g = torch.Generator().manual_seed(0)
    d, v = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    out, r = apg_update(d, v, eta=0.0)
    assert (out * v).sum((1, 2, 3)).abs().max() < 1e-5 and torch.equal(r, d)
    # eta in between: d_orth + eta d_par
    par = ((d * v).sum((1, 2, 3), keepdim=True) / (v * v).sum((1, 2, 3), keepdim=True)) * v
    torch.testing.assert_close(apg_update(d, v, eta=0.3)[0], d - par + 0.3 * par)
    # the threshold caps each image's norm and leaves smaller ones alone
    capped, _ = apg_update(d, v, eta=1.0, threshold=2.0)
    norms = d.flatten(1).norm(dim=1)
    assert torch.allclose(capped.flatten(1).norm(dim=1), norms.clamp(max=2.0), atol=1e-5)
    small, _ = apg_update(d, v, eta=1.0, threshold=1e6)
    torch.testing.assert_close(small, d)
    # momentum over two steps, by hand: r1 = d1; r2 = d2 + beta r1; the update is r2
    d1, d2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 3.0]])
    e = torch.tensor([[0.0, 1.0]])
    u1, r1 = apg_update(d1, e, eta=1.0, momentum=-0.5)
    u2, r2 = apg_update(d2, e, eta=1.0, momentum=-0.5, state=r1)
    assert u1.tolist() == [[2.0, 0.0]] and u2.tolist() == [[0.0, 3.0]] and r2.tolist() == [[0.0, 3.0]]
    u2, _ = apg_update(d2, e, eta=0.0, momentum=-0.5, state=r1)
    assert u2.tolist() == [[0.0, 0.0]]  # (0, 3) is parallel to e: removed


def test_apg_momentum_is_carried_by_the_closure_and_restarts():
    """Two steps of the closure against the hand sequence; a new sampling run (t not decreasing) starts afresh."""
    from diffusion import apg_update, cfg_parts

    x = torch.tensor([[[[0.5, -0.25]]]])
    attrs = {"a": torch.tensor([2.0])}
    fn = guided_eps_fn(toy_eps, attrs, "cfg", scale=3.0, variant="apg", apg_eta=0.5, apg_threshold=None,
                       apg_momentum=-0.5, alphas_cumprod=TOY_ABAR)

    def by_hand(xs, ts):
        state, outs = None, []
        for xi, ti in zip(xs, ts):
            p = cfg_parts(toy_eps, xi, ti, attrs, 3.0)
            a = TOY_ABAR[ti].double()
            k = ((1 - a) / a).sqrt()
            V = (xi.double() - (1 - a).sqrt() * p.conds[0].double()) / a.sqrt()
            delta, state = apg_update(-k * p.diffs[0].double(), V, 0.5, None, -0.5, state)
            outs.append(p.conds[0].double() + 2.0 * (-delta / k))
        return outs

    x2 = x * 0.5
    ref = by_hand([x, x2], [80, 40])
    got = [fn(x, torch.tensor([80])), fn(x2, torch.tensor([40]))]
    for g_, r_ in zip(got, ref):
        torch.testing.assert_close(g_.double(), r_, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[1].double(), by_hand([x2], [40])[0])  # the momentum did act
    # a new run: t = 80 again -> no momentum from the previous run
    torch.testing.assert_close(fn(x, torch.tensor([80])).double(), ref[0], rtol=1e-5, atol=1e-6)


def test_apg_threshold_caps_the_update(net, batch):
    x, t, attrs = batch
    with torch.no_grad():
        free = guided_eps_fn(net, attrs, "cfg", scale=3.0, variant="apg", apg_threshold=None, apg_momentum=0.0)(x, t)
        capped = guided_eps_fn(net, attrs, "cfg", scale=3.0, variant="apg", apg_threshold=1e-3,
                               apg_momentum=0.0)(x, t)
        cond = net.eps(x, t, attrs)
    a = net.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    # eps = eps(c) + 2 d' and ||Delta'|| <= 1e-3 in the denoised space
    delta = -((1 - a) / a).sqrt() * (capped.double() - cond.double()) / 2.0
    assert delta.flatten(1).norm(dim=1).max() < 1e-3 + 1e-5
    assert not torch.allclose(free, capped, atol=1e-4)


def test_interval_inside_is_the_guidance_and_outside_the_conditional(net):
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    attrs = random_attrs(3, seed=1)
    counting = Counting(net)
    fn = guided_eps_fn(counting, attrs, "cfg", scale=3.0, interval=(200, 600), alphas_cumprod=net.alphas_cumprod)
    with torch.no_grad():
        inside = fn(x, torch.full((3,), 400))
        outside = fn(x, torch.full((3,), 800))
        edge = fn(x, torch.full((3,), 600))     # lo <= t <= hi: the bounds are inside
        mixed = fn(x, torch.tensor([100, 400, 900]))
        ref_in = cfg(net.eps, x, torch.full((3,), 400), attrs, 3.0)
        ref_out = net.eps(x, torch.full((3,), 800), attrs)
        ref_edge = cfg(net.eps, x, torch.full((3,), 600), attrs, 3.0)
        t_mix = torch.tensor([100, 400, 900])
        ref_mix = torch.stack([net.eps(x, t_mix, attrs)[0], cfg(net.eps, x, t_mix, attrs, 3.0)[1],
                               net.eps(x, t_mix, attrs)[2]])
    assert counting.calls[:3] == [6, 3, 6]  # outside: one row block
    torch.testing.assert_close(inside, ref_in, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outside, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(edge, ref_edge, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, ref_mix, rtol=1e-5, atol=1e-5)


def test_interval_with_dcfg_and_cfgpp_toy():
    from diffusion import GuidedEps

    x = torch.zeros(2, 1, 1, 1)
    for anchor, inside in (("null", 8.0), ("full", 8.0)):
        fn = guided_eps_fn(toy_eps, TOY_ATTRS, "dcfg", groups=[["a"], ["b"]], weights=[3.0, 0.5], anchor=anchor,
                           interval=(10, 50), alphas_cumprod=TOY_ABAR)
        assert fn(x, torch.tensor([20, 20])).flatten().tolist() == [inside] * 2
        assert fn(x, torch.tensor([60, 60])).flatten().tolist() == [11.0] * 2  # eps(c)
    fn = guided_eps_fn(toy_eps, TOY_ATTRS, "cfg", scale=2.0, variant="cfgpp", interval=(10, 50),
                       alphas_cumprod=TOY_ABAR)
    assert isinstance(fn(x, torch.tensor([20, 20])), GuidedEps)
    assert fn(x, torch.tensor([60, 60])).flatten().tolist() == [11.0] * 2  # outside: plain DDIM, both roles


def test_nfe_counts_of_the_variants_match_the_calls(net):
    """guided_rows over ddim_eval_timesteps = the rows the closure really evaluates, with an interval."""
    from diffusion import ddim_eval_timesteps, ddim_invert, ddim_sample, guided_rows

    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    attrs = random_attrs(2, seed=1)
    groups, weights = [["thickness"], ["intensity", "digit"]], [3.0, 1.0]
    for variant in (None, "apg", "cfgpp"):
        counting = Counting(net)
        fn = guided_eps_fn(counting, attrs, "dcfg", groups=groups, weights=weights, variant=variant,
                           interval=(300, 700), alphas_cumprod=net.alphas_cumprod)
        with torch.no_grad():
            ddim_sample(fn, x, net.alphas_cumprod, steps=8)
        want = sum(guided_rows("dcfg", groups, weights, "null", t, (300, 700)) for t in ddim_eval_timesteps(1000, 8))
        assert sum(counting.calls) == want * 2
        assert want < 8 * 3  # the steps outside the interval cost one row block
    counting = Counting(net)
    fn = guided_eps_fn(counting, attrs, "cfg", scale=1.0, variant="cfgpp", interval=(300, 700),
                       alphas_cumprod=net.alphas_cumprod)
    with torch.no_grad():
        ddim_invert(fn, x, net.alphas_cumprod, steps=6, refine_steps=2)
    want = sum(guided_rows("cfg", t=t, interval=(300, 700))
               for t in ddim_eval_timesteps(1000, 6, invert=True, refine_steps=2))
    assert sum(counting.calls) == want * 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(guidance="none", variant="apg"), r"variant='apg' modifies guidance, but guidance='none'"),
    (dict(guidance="none", variant="cfgpp"), r"variant='cfgpp' modifies guidance, but guidance='none'"),
    (dict(guidance="none", interval=(1, 5)), r"interval=\(1, 5\) modifies guidance"),
    (dict(guidance="cfg", variant="apgg"), r"variant='apgg' must be None, 'apg'"),
    (dict(guidance="cfg", interval=(-1, 500)), r"interval=\(-1, 500\) is outside \[0, 1000\]"),
    (dict(guidance="cfg", interval=(10, 1001)), r"interval=\(10, 1001\) is outside \[0, 1000\]"),
    (dict(guidance="cfg", interval=(500, 500)), r"interval=\(500, 500\) must be \(lo, hi\) with lo < hi"),
    (dict(guidance="cfg", interval=(700, 200)), r"interval=\(700, 200\) must be \(lo, hi\) with lo < hi"),
    (dict(guidance="cfg", interval=(True, 5)), r"interval=\(True, 5\) must be two numbers"),
    (dict(guidance="cfg", interval=(1, 2, 3)), r"interval=\(1, 2, 3\) must be two numbers"),
    (dict(guidance="cfg", interval="1,5"), r"interval='1,5' must be two numbers"),
    (dict(guidance="cfg", variant="apg", apg_eta=1.5), r"apg_eta=1.5 must be a number in \[0, 1\]"),
    (dict(guidance="cfg", variant="apg", apg_eta=-0.1), r"apg_eta=-0.1 must be a number in \[0, 1\]"),
    (dict(guidance="cfg", variant="apg", apg_threshold=-1.0), r"apg_threshold=-1.0 must be a non-negative"),
    (dict(guidance="cfg", variant="apg", apg_momentum=1.0), r"apg_momentum=1.0 must be a number in \(-1, 1\)"),
])
def test_variant_validation_is_up_front(net, kwargs, match):
    counting = Counting(net)
    counting.alphas_cumprod = net.alphas_cumprod
    with pytest.raises(ValueError, match=match):
        guided_eps_fn(counting, random_attrs(2), **kwargs)
    assert counting.calls == []


def test_apg_and_interval_need_the_schedule():
    with pytest.raises(ValueError, match="variant=apg needs the schedule"):
        guided_eps_fn(toy_eps, TOY_ATTRS, "cfg", scale=2.0, variant="apg")
    with pytest.raises(ValueError, match=r"interval=\(1, 2\) needs the schedule"):
        guided_eps_fn(toy_eps, TOY_ATTRS, "cfg", scale=2.0, interval=(1, 2))
