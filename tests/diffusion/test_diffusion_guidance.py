"""CFG and DCFG: the formula, one batched forward, the one-group case, and every validation."""
from __future__ import annotations

import pytest
import torch

from diffusion import ConditionalUNet, cfg, dcfg, guided_eps_fn

from diffusion_helpers import random_attrs, tiny_config


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
    from diffusion import TrainConfig, ddim_sample, train
    from diffusion_helpers import ToyImages

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
