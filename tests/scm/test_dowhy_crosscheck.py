"""Cross-check against dowhy.gcm.counterfactual_samples on additive-noise SCMs.

    x --> y --> z        x ~ N(0, 1),  y = 1.5 x + 0.5 u_y,  z = 2 - y + 0.3 u_z

1. Same equations: dowhy's fitted linear additive-noise models, copied into our known-equation
   mechanisms, must give the same counterfactuals to float precision.
2. Learned independently: our spline flows and dowhy's auto-assigned models, each fitted on the
   same rows, must agree within a small tolerance (and both match the truth).
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from scm import SCM, CausalGraph, LinearGaussianMechanism

gcm = pytest.importorskip("dowhy.gcm")


def rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 1.5 * x + 0.5 * rng.normal(size=n)
    z = 2.0 - y + 0.3 * rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": y, "z": z})


GRAPH = CausalGraph.from_edges([("x", "y"), ("y", "z")], {n: {"kind": "real"} for n in "xyz"})
INTERVENTIONS = [("x", 1.0), ("x", "shift"), ("y", -0.5)]


def _dowhy_do(node, value):
    return {node: (lambda v: v + 1.0) if value == "shift" else (lambda v: value)}


def _our_do(node, value):
    return {node: (lambda v: v + 1.0) if value == "shift" else value}


@pytest.fixture(scope="module")
def dowhy_linear():
    gcm.config.disable_progress_bars()
    model = gcm.InvertibleStructuralCausalModel(nx.DiGraph([("x", "y"), ("y", "z")]))
    model.set_causal_mechanism("x", gcm.EmpiricalDistribution())
    model.set_causal_mechanism("y", gcm.AdditiveNoiseModel(gcm.ml.create_linear_regressor()))
    model.set_causal_mechanism("z", gcm.AdditiveNoiseModel(gcm.ml.create_linear_regressor()))
    gcm.fit(model, rows(3000, seed=0))
    return model


@pytest.mark.parametrize("node, value", INTERVENTIONS)
def test_same_equations_give_the_same_counterfactuals(dowhy_linear, node, value) -> None:
    def copied(name: str, parent: str) -> LinearGaussianMechanism:
        reg = dowhy_linear.causal_mechanism(name).prediction_model.sklearn_model
        return LinearGaussianMechanism({parent: float(reg.coef_[0])}, bias=float(reg.intercept_), scale=1.0)

    ours = SCM(GRAPH, mechanisms={"x": LinearGaussianMechanism(), "y": copied("y", "x"), "z": copied("z", "y")})
    obs = rows(500, seed=1)
    theirs = gcm.counterfactual_samples(dowhy_linear, _dowhy_do(node, value), observed_data=obs)
    cf = ours.counterfactual({k: torch.tensor(obs[k].to_numpy(), dtype=torch.float32) for k in "xyz"},
                             do=_our_do(node, value))
    for k in "xyz":
        np.testing.assert_allclose(cf[k].numpy(), theirs[k].to_numpy(), rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def both_learned():
    gcm.config.disable_progress_bars()
    train = rows(6000, seed=2)
    model = gcm.InvertibleStructuralCausalModel(nx.DiGraph([("x", "y"), ("y", "z")]))
    np.random.seed(0)
    gcm.auto.assign_causal_mechanisms(model, train)
    gcm.fit(model, train)
    ours = SCM(GRAPH, seed=0)
    ours.fit({k: torch.tensor(train[k].to_numpy(), dtype=torch.float32) for k in "xyz"}, epochs=20,
             progress=False)
    return model, ours


@pytest.mark.parametrize("node, value", INTERVENTIONS)
def test_learned_models_agree(both_learned, node, value) -> None:
    model, ours = both_learned
    obs = rows(1000, seed=3)
    obs = obs[(obs["x"].abs() < 2.0)]  # stay where both models have seen data
    theirs = gcm.counterfactual_samples(model, _dowhy_do(node, value), observed_data=obs)
    cf = ours.counterfactual({k: torch.tensor(obs[k].to_numpy(), dtype=torch.float32) for k in "xyz"},
                             do=_our_do(node, value))
    # The truth, from the generating equations with the true (additive) noise.
    x = obs["x"].to_numpy()
    u_y, u_z = obs["y"].to_numpy() - 1.5 * x, obs["z"].to_numpy() - 2.0 + obs["y"].to_numpy()
    x_cf = x + 1.0 if value == "shift" else (np.full_like(x, value) if node == "x" else x)
    y_cf = 1.5 * x_cf + u_y if node == "x" else np.full_like(x, value)
    z_cf = 2.0 - y_cf + u_z
    for k, truth in (("y", y_cf), ("z", z_cf)):
        a, b = cf[k].numpy(), theirs[k].to_numpy()
        assert np.median(np.abs(a - b)) < 0.05, k
        assert np.quantile(np.abs(a - b), 0.95) < 0.15, k
        assert np.median(np.abs(a - truth)) < 0.05 and np.median(np.abs(b - truth)) < 0.05, k
