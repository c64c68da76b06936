"""The Morpho-MNIST attribute SCM of docs/benchmark.md, with known and with learned mechanisms.

    thickness --> intensity        t = 0.5 + Gamma(10, 5)
    digit                          i = 64 + 191 * sigmoid(0.5 e + 2 t - 5),  e ~ N(0, 1)
    (thickness, intensity, digit --> image: not modelled by the SCM)

Ground-truth counterfactual under do(t = t'): i' = 64 + 191 * sigmoid(0.5 e + 2 t' - 5) with the
same e; do(i) leaves t alone; neither changes the digit.
"""
from __future__ import annotations

import time

import pytest
import torch
from scm_helpers import morpho_intensity, morpho_rows

from scm import SCM, AffineSigmoidMechanism, CausalGraph, GammaMechanism


def known_equations() -> dict:
    return {"thickness": GammaMechanism(10.0, 5.0, shift=0.5),
            "intensity": AffineSigmoidMechanism({"thickness": 2.0}, bias=-5.0, noise_scale=0.5,
                                                low=64.0, high=255.0)}


def test_known_equations_give_the_true_counterfactual(morpho_graph: CausalGraph) -> None:
    scm = SCM(morpho_graph, mechanisms=known_equations())
    rows, noise = morpho_rows(1000, seed=0)
    rows["image"] = torch.zeros(1000, 1, 28, 28)  # an image entry in obs is ignored
    u = scm.abduct(rows, seed=0)
    torch.testing.assert_close(u["thickness"], noise["thickness"], rtol=1e-5, atol=1e-5)
    # float32 logit of a sigmoid near 255 loses digits; the error stays small in grey levels
    t_new = torch.linspace(0.6, 5.0, 1000)
    cf = scm.counterfactual(rows, do={"thickness": t_new}, seed=0)
    torch.testing.assert_close(cf["intensity"], morpho_intensity(t_new, noise["intensity"]), rtol=0, atol=1e-2)
    assert torch.equal(cf["digit"], rows["digit"]) and torch.equal(cf["thickness"], t_new)
    assert "image" not in cf


def test_gamma_mechanism_draws_its_distribution() -> None:
    from scipy import stats

    m = GammaMechanism(10.0, 5.0, shift=0.5)
    x = m({}, m.sample_noise(20000, torch.Generator().manual_seed(0))).numpy()
    assert stats.kstest(x - 0.5, stats.gamma(a=10.0, scale=1 / 5.0).cdf).pvalue > 1e-3
    small = GammaMechanism(0.5, 1.0).sample_noise(20000, torch.Generator().manual_seed(1)).numpy()
    assert stats.kstest(small, stats.gamma(a=0.5).cdf).pvalue > 1e-3


@pytest.fixture(scope="module")
def fitted() -> tuple[SCM, float]:
    g = CausalGraph.from_dict({"nodes": {"thickness": {"kind": "positive"},
                                         "intensity": {"kind": "interval", "low": 0, "high": 255},
                                         "digit": {"kind": "categorical", "cardinality": 10},
                                         "image": {"kind": "image", "shape": [1, 28, 28]}},
                               "edges": [["thickness", "intensity"], ["thickness", "image"],
                                         ["intensity", "image"], ["digit", "image"]]})
    scm = SCM(g)
    train, _ = morpho_rows(20000, seed=0)
    start = time.perf_counter()
    history = scm.fit(train, progress=False)  # the defaults must suffice
    seconds = time.perf_counter() - start
    assert history[-1] < history[0]
    print(f"\nfit on 20,000 Morpho rows: {seconds:.1f} s, NLL {history[0]:.3f} -> {history[-1]:.3f}")
    return scm, seconds


def test_fitted_scm_counterfactual_intensity_under_do_thickness(fitted) -> None:
    scm, _ = fitted
    test, noise = morpho_rows(2000, seed=1)
    train, _ = morpho_rows(2000, seed=2)
    t_new = train["thickness"]  # intervention values drawn from the training marginal
    cf = scm.counterfactual(test, do={"thickness": t_new}, seed=0)
    truth = morpho_intensity(t_new, noise["intensity"])
    err = (cf["intensity"] - truth).abs()
    print(f"counterfactual intensity error: median {err.median():.3f}, mean {err.mean():.3f}, "
          f"p90 {err.quantile(0.9):.3f} grey levels")
    assert err.median() <= 2.0
    assert torch.equal(cf["digit"], test["digit"]) and torch.equal(cf["thickness"], t_new)


def test_fitted_scm_do_intensity_and_shift(fitted) -> None:
    scm, _ = fitted
    test, noise = morpho_rows(1000, seed=3)
    cf = scm.counterfactual(test, do={"intensity": 100.0}, seed=0)
    torch.testing.assert_close(cf["thickness"], test["thickness"])
    assert torch.all(cf["intensity"] == 100.0)
    shifted = scm.counterfactual(test, do={"thickness": lambda t: t + 0.5}, seed=0)
    truth = morpho_intensity(test["thickness"] + 0.5, noise["intensity"])
    assert (shifted["intensity"] - truth).abs().median() <= 2.0


def test_fitted_scm_matches_the_observational_distribution(fitted) -> None:
    scm, _ = fitted
    s = scm.sample(20000, seed=0)
    ref, _ = morpho_rows(20000, seed=4)
    for k in ("thickness", "intensity"):
        assert abs(s[k].mean() - ref[k].mean()) < 0.05 * ref[k].std()
        assert abs(s[k].std() / ref[k].std() - 1) < 0.05
    freq = torch.bincount(s["digit"], minlength=10).float() / 20000
    assert torch.all((freq - 0.1).abs() < 0.015)
    # E[i | do(t = 3)] - E[i | do(t = 2)] from the true equations, by Monte Carlo on e.
    e = torch.randn(200000, generator=torch.Generator().manual_seed(0))
    true_ace = (morpho_intensity(torch.tensor(3.0), e) - morpho_intensity(torch.tensor(2.0), e)).mean()
    ace = scm.average_causal_effect("intensity", {"thickness": 3.0}, {"thickness": 2.0}, n=20000, seed=0)
    assert abs(ace - true_ace) < 2.0
