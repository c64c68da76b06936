"""Maximum-likelihood fitting: data forms, determinism, and recovery of simple known distributions.

    x (real) --> b (binary)      x ~ N(2, 0.5^2),  P(b = 1 | x) = sigmoid(3 (x - 2))
    k (categorical, 3)           P(k) = (0.2, 0.3, 0.5)
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from scm import SCM, CausalGraph, LinearGaussianMechanism

GRAPH = CausalGraph.from_dict({
    "nodes": {"x": {"kind": "real"}, "b": {"kind": "binary"}, "k": {"kind": "categorical", "cardinality": 3}},
    "edges": [["x", "b"]]})


def data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2.0 + 0.5 * torch.randn(n, generator=g)
    b = (torch.rand(n, generator=g) < torch.sigmoid(3.0 * (x - 2.0))).long()
    k = torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), n, replacement=True, generator=g)
    return {"x": x, "b": b, "k": k}


def true_log_prob(d: dict[str, torch.Tensor]) -> torch.Tensor:
    lx = -0.5 * ((d["x"] - 2.0) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
    p1 = torch.sigmoid(3.0 * (d["x"] - 2.0))
    lb = torch.where(d["b"] == 1, torch.log(p1), torch.log1p(-p1))
    lk = torch.log(torch.tensor([0.2, 0.3, 0.5]))[d["k"]]
    return lx + lb + lk


def test_fit_recovers_the_data_distribution() -> None:
    scm = SCM(GRAPH, seed=0)
    hist = scm.fit(data(8000, seed=0), epochs=15, progress=False)
    assert len(hist) == 15 and hist[-1] < hist[0]
    test = data(4000, seed=1)
    gap = (true_log_prob(test) - scm.log_prob(test)).mean().item()  # ~ KL(true || model) >= 0
    assert -0.03 < gap < 0.03
    s = scm.sample(20000, seed=2)
    assert abs(s["x"].mean() - 2.0) < 0.02 and abs(s["x"].std() - 0.5) < 0.02
    freq = torch.bincount(s["k"], minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.02)
    ace = scm.average_causal_effect("b", {"x": 2.5}, {"x": 1.5}, n=20000, seed=0)
    truth = torch.sigmoid(torch.tensor(1.5)) - torch.sigmoid(torch.tensor(-1.5))
    assert abs(ace - truth) < 0.06
    k_ace = scm.average_causal_effect("k", {"x": 2.5}, {"x": 1.5}, n=2000, seed=0)
    assert k_ace.shape == (3,) and k_ace.abs().max() < 1e-6  # k is not a descendant of x


def test_dataframe_and_dict_fit_identically() -> None:
    d = data(700, seed=3)
    a, b = SCM(GRAPH, seed=1), SCM(GRAPH, seed=1)
    ha = a.fit(d, epochs=2, batch_size=128, seed=7, progress=False)
    hb = b.fit(pd.DataFrame({k: v.numpy() for k, v in d.items()}), epochs=2, batch_size=128, seed=7,
               progress=False)
    assert ha == hb
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = SCM(GRAPH, seed=1)
    hc = c.fit(d, epochs=2, batch_size=128, seed=8, progress=False)
    assert hc != ha


def test_fit_without_parameters_returns_the_nll() -> None:
    g = CausalGraph.from_dict({"nodes": {"x": {"kind": "real"}}, "edges": []})
    scm = SCM(g, mechanisms={"x": LinearGaussianMechanism()})
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    (nll,) = scm.fit({"x": x}, progress=False)
    assert abs(nll - (-scm.log_prob({"x": x}).mean().item())) < 1e-6


def test_second_fit_continues_without_reinitialising() -> None:
    scm = SCM(GRAPH, seed=0)
    scm.fit(data(500, seed=0), epochs=1, progress=False)
    loc = scm.mechanisms["x"].standardize.loc.clone()
    scm.fit({k: v + (3.0 if k == "x" else 0) for k, v in data(500, seed=1).items()}, epochs=1, progress=False)
    assert torch.equal(scm.mechanisms["x"].standardize.loc, loc)
