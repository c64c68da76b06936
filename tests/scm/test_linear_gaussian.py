"""Closed-form checks on linear-Gaussian SCMs with user-supplied structural equations.

    chain:     x --> y --> z        y = 1 + 2x + 0.5 u_y,   z = -y + 0.3 u_z
    fork:      y <-- x --> z        y = 2x + u_y,           z = 3x - 1 + 0.2 u_z
    collider:  x --> z <-- y        z = x - 2y + 0.1 u_z
    (roots: v = u_v ~ N(0, 1))

Counterfactuals of an additive linear SCM are known exactly: the noise is kept, so a node moves by
the sum over directed paths of (edge-coefficient product) x (change of the intervened node).
"""
from __future__ import annotations

import math

import pyro.poutine as poutine
import pytest
import torch

from scm import SCM, CausalGraph, LinearGaussianMechanism, noise_site

LG = LinearGaussianMechanism
REAL = {"kind": "real"}


def chain() -> SCM:
    g = CausalGraph.from_edges([("x", "y"), ("y", "z")], {n: REAL for n in "xyz"})
    return SCM(g, {"x": LG(), "y": LG({"x": 2.0}, bias=1.0, scale=0.5), "z": LG({"y": -1.0}, scale=0.3)})


def fork() -> SCM:
    g = CausalGraph.from_edges([("x", "y"), ("x", "z")], {n: REAL for n in "xyz"})
    return SCM(g, {"x": LG(), "y": LG({"x": 2.0}), "z": LG({"x": 3.0}, bias=-1.0, scale=0.2)})


def collider() -> SCM:
    g = CausalGraph.from_edges([("x", "z"), ("y", "z")], {n: REAL for n in "xyz"})
    return SCM(g, {"x": LG(), "y": LG(), "z": LG({"x": 1.0, "y": -2.0}, scale=0.1)})


# Total causal effect of a unit change of the first node on each node (path-coefficient sums).
EFFECTS = {
    ("chain", "x"): {"x": 1.0, "y": 2.0, "z": -2.0},
    ("chain", "y"): {"x": 0.0, "y": 1.0, "z": -1.0},
    ("fork", "x"): {"x": 1.0, "y": 2.0, "z": 3.0},
    ("fork", "y"): {"x": 0.0, "y": 1.0, "z": 0.0},
    ("collider", "x"): {"x": 1.0, "y": 0.0, "z": 1.0},
    ("collider", "y"): {"x": 0.0, "y": 1.0, "z": -2.0},
}
BUILD = {"chain": chain, "fork": fork, "collider": collider}


def observations(scm: SCM, n: int = 64) -> dict[str, torch.Tensor]:
    return scm.sample(n, seed=123)


@pytest.mark.parametrize("graph, target", sorted(EFFECTS))
@pytest.mark.parametrize("form", ["number", "tensor", "shift"])
def test_counterfactual_equals_closed_form(graph: str, target: str, form: str) -> None:
    scm = BUILD[graph]()
    obs = observations(scm)
    if form == "number":
        do_value = 1.7
        delta = 1.7 - obs[target]
    elif form == "tensor":
        do_value = torch.linspace(-3, 3, obs[target].shape[0])
        delta = do_value - obs[target]
    else:
        do_value = lambda v: v + 0.8  # noqa: E731
        delta = torch.full_like(obs[target], 0.8)
    cf = scm.counterfactual(obs, do={target: do_value})
    for node, effect in EFFECTS[(graph, target)].items():
        expected = obs[node] + effect * delta
        assert cf[node].shape == obs[node].shape
        torch.testing.assert_close(cf[node], expected, rtol=0, atol=1e-5)


def test_three_steps_equal_one_call_and_noise_is_analytic() -> None:
    scm = chain()
    obs = observations(scm)
    u = scm.abduct(obs)
    torch.testing.assert_close(u["x"], obs["x"])
    torch.testing.assert_close(u["y"], (obs["y"] - 1.0 - 2.0 * obs["x"]) / 0.5, rtol=0, atol=1e-5)
    torch.testing.assert_close(u["z"], (obs["z"] + obs["y"]) / 0.3, rtol=0, atol=1e-5)
    two_calls, one_call = scm.predict(u, do={"x": 0.5}), scm.counterfactual(obs, do={"x": 0.5})
    for n in "xyz":
        assert torch.equal(two_calls[n], one_call[n])
    # Without an intervention, prediction reproduces the factual world.
    back = scm.predict(u)
    for n in "xyz":
        torch.testing.assert_close(back[n], obs[n], rtol=0, atol=1e-5)


def test_shift_on_a_descendant_uses_its_counterfactual_value() -> None:
    """do(x := 1, z := z + 1): z's pre-intervention value already reflects do(x)."""
    scm = chain()
    obs = observations(scm)
    cf = scm.counterfactual(obs, do={"x": 1.0, "z": lambda z: z + 1.0})
    torch.testing.assert_close(cf["z"], obs["z"] - 2.0 * (1.0 - obs["x"]) + 1.0, rtol=0, atol=1e-5)


def test_particles_are_particle_major() -> None:
    scm = fork()
    obs = observations(scm, n=5)
    one = scm.counterfactual(obs, do={"x": torch.arange(5.0)})
    many = scm.counterfactual(obs, do={"x": torch.arange(5.0)}, num_particles=3)
    assert one["z"].shape == (5,) and many["z"].shape == (15,)
    torch.testing.assert_close(many["z"].reshape(3, 5), one["z"].expand(3, 5))
    assert scm.abduct(obs, num_particles=4)["y"].shape == (20,)


def test_program_sites_are_node_names() -> None:
    scm = chain()
    trace = poutine.trace(scm.model).get_trace(7)
    sites = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name != "rows"]
    assert sites == ["x/u", "x", "y/u", "y", "z/u", "z"]
    assert noise_site("x") == "x/u"
    # do and condition from outside the program, as predict uses them.
    noise = {"x/u": torch.zeros(7), "y/u": torch.ones(7), "z/u": torch.zeros(7)}
    out = poutine.do(poutine.condition(scm.model, data=noise), data={"y": torch.full((7,), 2.0)})(7)
    torch.testing.assert_close(out["y"], torch.full((7,), 2.0))
    torch.testing.assert_close(out["z"], torch.full((7,), -2.0))


def test_interventional_distribution_and_ace() -> None:
    scm = chain()
    s = scm.interventional_samples({"x": 1.0}, 20000, seed=0)
    assert torch.all(s["x"] == 1.0)
    mean_z, var_z = -(2.0 * 1.0 + 1.0), 0.5**2 + 0.3**2
    se = math.sqrt(var_z / 20000)
    assert abs(s["z"].mean().item() - mean_z) < 4 * se
    assert abs(s["z"].var().item() - var_z) < 0.05 * var_z
    ace = scm.average_causal_effect("z", {"x": 1.0}, {"x": 0.0}, n=2000, seed=1)
    assert ace.shape == () and abs(ace.item() - (-2.0)) < 1e-5  # common random numbers: exact
    assert abs(scm.average_causal_effect("x", {"y": 5.0}, {"y": -5.0}, n=2000, seed=1).item()) < 1e-6


def test_log_prob_is_the_sum_of_gaussian_log_densities() -> None:
    scm = collider()
    obs = observations(scm, n=10)

    def normal(v, mean, sd):
        return -0.5 * ((v - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)

    expected = normal(obs["x"], 0, 1) + normal(obs["y"], 0, 1) + normal(obs["z"], obs["x"] - 2 * obs["y"], 0.1)
    torch.testing.assert_close(scm.log_prob(obs), expected, rtol=1e-5, atol=1e-4)


def test_seeds_reproduce_and_differ() -> None:
    scm = fork()
    a, b, c = scm.sample(50, seed=3), scm.sample(50, seed=3), scm.sample(50, seed=4)
    assert torch.equal(a["z"], b["z"]) and not torch.equal(a["z"], c["z"])
    gen1, gen2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(scm.sample(20, seed=gen1)["y"], scm.sample(20, seed=gen2)["y"])
