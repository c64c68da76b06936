"""Discrete counterfactuals: Gumbel-max mechanisms with truncated-Gumbel abduction.

    a (binary) ----+
                   +--> y (categorical, 4) --> w (real)
    c (real) ------+
    z (real)            (unrelated)

For two classes the Gumbel-max SCM is a threshold model on a logistic noise, so the counterfactual
distribution has a closed form; for three classes it is compared with rejection sampling from the
prior (sample Gumbels, keep those that reproduce the observed class).
"""
from __future__ import annotations

import math

import pytest
import torch

from scm import SCM, CategoricalMechanism, CausalGraph, GumbelMaxMechanism, LinearGaussianMechanism


def random_discrete_scm(seed: int = 0) -> SCM:
    g = CausalGraph.from_dict({
        "nodes": {"a": {"kind": "binary"}, "c": {"kind": "real"}, "z": {"kind": "real"},
                  "y": {"kind": "categorical", "cardinality": 4}, "w": {"kind": "real"}},
        "edges": [["a", "y"], ["c", "y"], ["y", "w"]]})
    scm = SCM(g, mechanisms={"c": LinearGaussianMechanism(), "z": LinearGaussianMechanism(),
                             "w": LinearGaussianMechanism({"y": 1.5}, scale=0.1)}, seed=seed)
    with torch.no_grad():  # strong random logits, so that many classes compete
        gen = torch.Generator().manual_seed(seed)
        for p in scm.mechanisms["y"].parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return scm


@pytest.mark.parametrize("do", [
    {"z": 3.0},                          # unrelated node
    {"w": -1.0},                         # downstream of y
    {"c": "factual", "a": "factual"},    # y's parents set to their factual values
], ids=["unrelated", "downstream", "parents-unchanged"])
def test_counterfactual_stability(do: dict) -> None:
    """With nothing changed upstream, every particle reproduces the factual class."""
    scm = random_discrete_scm()
    obs = scm.sample(200, seed=1)
    assert len(set(obs["y"].tolist())) >= 3  # a non-trivial test
    do = {k: obs[k] if v == "factual" else v for k, v in do.items()}
    cf = scm.counterfactual(obs, do=do, num_particles=50, seed=2)
    assert cf["y"].shape == (50 * 200,)
    assert torch.equal(cf["y"].reshape(50, 200), obs["y"].expand(50, 200))
    assert torch.equal(cf["a"].reshape(50, 200), obs["a"].expand(50, 200))


def test_abducted_noise_reproduces_every_observed_class() -> None:
    scm = random_discrete_scm(seed=3)
    obs = scm.sample(300, seed=4)
    u = scm.abduct(obs, num_particles=20, seed=5)
    assert u["y"].shape == (20 * 300, 4) and u["y"].dtype == torch.float64
    back = scm.predict(u)
    assert torch.equal(back["y"], obs["y"].repeat(20)) and torch.equal(back["a"], obs["a"].repeat(20))


def test_changing_a_parent_changes_some_classes() -> None:
    scm = random_discrete_scm(seed=6)
    obs = scm.sample(500, seed=7)
    cf = scm.counterfactual(obs, do={"a": 1 - obs["a"]}, seed=8)
    changed = (cf["y"] != obs["y"]).float().mean().item()
    assert 0.0 < changed < 1.0
    # w follows y' through its own (exact) mechanism.
    torch.testing.assert_close(cf["w"] - obs["w"], 1.5 * (cf["y"] - obs["y"]).float(), rtol=0, atol=1e-5)


class TableLogits(GumbelMaxMechanism):
    """Logits looked up from a table by the binary parent ``a``."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__(len(table[0]))
        self.register_buffer("table", torch.tensor(table))

    def get_config(self) -> dict:
        return {"table": self.table.tolist()}

    def logits(self, parents, n):
        return self.table[parents["a"].long()]


def table_scm(table: list[list[float]]) -> SCM:
    k = len(table[0])
    g = CausalGraph.from_dict({"nodes": {"a": {"kind": "binary"}, "y": {"kind": "categorical", "cardinality": k}},
                               "edges": [["a", "y"]]})
    return SCM(g, mechanisms={"y": TableLogits(table)})


def test_two_class_counterfactual_matches_closed_form() -> None:
    """y = 1 iff L_a > eps with eps = g0 - g1 ~ Logistic, L_a = l1(a) - l0(a). Hence
    P(y'=1 | y=1, a -> a') = sigmoid(min(L_a, L_a')) / sigmoid(L_a) and
    P(y'=0 | y=0, a -> a') = (1 - sigmoid(max(L_a, L_a'))) / (1 - sigmoid(L_a))."""
    table = [[0.0, 1.0], [0.0, -0.5]]          # L_0 = 1.0, L_1 = -0.5
    scm = table_scm(table)
    sig = lambda v: 1 / (1 + math.exp(-v))      # noqa: E731
    obs = {"a": torch.tensor([0, 1]), "y": torch.tensor([1, 0])}
    expected = [sig(min(1.0, -0.5)) / sig(1.0),                  # row 0: P(y' = 1), a: 0 -> 1
                (1 - sig(max(-0.5, 1.0))) / (1 - sig(-0.5))]     # row 1: P(y' = 0), a: 1 -> 0
    p = 40000
    cf = scm.counterfactual(obs, do={"a": 1 - obs["a"]}, num_particles=p, seed=0)["y"].reshape(p, 2).float()
    got = [cf[:, 0].mean().item(), 1 - cf[:, 1].mean().item()]
    for g_, e in zip(got, expected):
        assert 0.05 < e < 0.95
        assert abs(g_ - e) < 4.5 * math.sqrt(e * (1 - e) / p)


def test_three_class_counterfactual_matches_rejection_sampling() -> None:
    table = [[0.3, -0.2, 0.8], [1.2, 0.1, -0.7]]
    scm = table_scm(table)
    logits = torch.tensor(table, dtype=torch.float64)
    # Rejection sampling from the prior: Gumbel noise that gives class k under a = 0.
    gen = torch.Generator().manual_seed(123)
    u = torch.rand(600000, 3, generator=gen, dtype=torch.float64)
    g = -torch.log(-torch.log(u))
    factual = torch.argmax(logits[0] + g, dim=-1)
    cf_prior = torch.argmax(logits[1] + g, dim=-1)
    p = 60000
    for k in range(3):
        keep = cf_prior[factual == k]
        ref = torch.bincount(keep, minlength=3).double() / keep.numel()
        obs = {"a": torch.tensor([0]), "y": torch.tensor([k])}
        ours = scm.counterfactual(obs, do={"a": 1}, num_particles=p, seed=k)["y"]
        got = torch.bincount(ours, minlength=3).double() / p
        se = torch.sqrt(ref * (1 - ref) * (1 / keep.numel() + 1 / p)).clamp_min(1e-4)
        assert torch.all((got - ref).abs() < 4.5 * se), (k, got, ref)


def test_categorical_root_sampling_follows_its_logits() -> None:
    g = CausalGraph.from_dict({"nodes": {"d": {"kind": "categorical", "cardinality": 3}}, "edges": []})
    scm = SCM(g)
    with torch.no_grad():
        scm.mechanisms["d"].root_logits.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5])))
    freq = torch.bincount(scm.sample(40000, seed=0)["d"], minlength=3).double() / 40000
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), atol=0.012)
    assert isinstance(scm.mechanisms["d"], CategoricalMechanism)
