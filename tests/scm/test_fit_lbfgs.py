"""The default fit (full-batch L-BFGS), its settings, and a failed fit that leaves the SCM as it was (issue 18).

    x (real) --> y (real)      x ~ N(1, 2^2),  y = 0.5 + 2 x + 0.3 u,  u ~ N(0, 1)
"""
from __future__ import annotations

import pyro
import pytest
import torch
from scm_helpers import morpho_rows

from scm import SCM, CausalGraph, LinearGaussianMechanism, Mechanism

LINEAR = CausalGraph.from_dict({"nodes": {"x": {"kind": "real"}, "y": {"kind": "real"}}, "edges": [["x", "y"]]})
A, B, SIGMA = 0.5, 2.0, 0.3


def linear_rows(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 1.0 + 2.0 * torch.randn(n, generator=g)
    return {"x": x, "y": A + B * x + SIGMA * torch.randn(n, generator=g)}


def state(scm: SCM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in scm.state_dict(keep_vars=True).items()}


def assert_same(scm: SCM, before: dict[str, torch.Tensor]) -> None:
    after = scm.state_dict(keep_vars=True)
    assert sorted(after) == sorted(before)
    changed = [k for k in before if not torch.equal(after[k].detach(), before[k])]
    assert not changed, f"changed by the failed fit: {changed}"
    assert all(p.grad is None for p in scm.parameters())


def test_default_fit_recovers_a_linear_gaussian_scm() -> None:
    scm = SCM(LINEAR, seed=0)
    hist = scm.fit(linear_rows(4000, seed=0), progress=False)
    assert hist[-1] < hist[0]
    test = linear_rows(2000, seed=1)
    true_lp = (torch.distributions.Normal(1.0, 2.0).log_prob(test["x"])
               + torch.distributions.Normal(A + B * test["x"], SIGMA).log_prob(test["y"]))
    assert abs((true_lp - scm.log_prob(test)).mean().item()) < 0.01  # ~ KL(true || model)
    # the coefficient: do(x := x + 1) moves every counterfactual y by B
    cf = scm.counterfactual(test, do={"x": lambda x: x + 1.0})
    shift = cf["y"] - test["y"] - B
    assert abs(shift.mean()) < 0.01 and shift.abs().mean() < 0.05 and shift.abs().quantile(0.99) < 0.12
    # the intercept and the noise scale: y | do(x = 0) ~ N(A, SIGMA^2)
    s = scm.interventional_samples({"x": 0.0}, 20000, seed=0)["y"]
    assert abs(s.mean().item() - A) < 0.02 and abs(s.std().item() - SIGMA) < 0.02


def test_least_squares_start_is_the_ols_fit() -> None:
    scm = SCM(LINEAR, seed=0)
    rows = linear_rows(3000, seed=2)
    mech = scm.mechanisms["y"]
    mech.initialize(rows["y"], {"x": rows["x"]})
    with torch.no_grad():
        u = mech.abduct(rows["y"], {"x": rows["x"]})   # the flow is the OLS linear-Gaussian model now
    x1 = torch.stack([rows["x"], torch.ones(3000)], 1).double()
    beta = torch.linalg.lstsq(x1, rows["y"].double().unsqueeze(1)).solution.squeeze(1)
    resid = rows["y"].double() - x1 @ beta
    torch.testing.assert_close(u.double(), resid / resid.std(), atol=2e-4, rtol=0)


def test_fit_is_deterministic_given_the_seed() -> None:
    rows = linear_rows(1500, seed=3)
    a, b, c = SCM(LINEAR, seed=1), SCM(LINEAR, seed=1), SCM(LINEAR, seed=1)
    ha, hb = a.fit(rows, seed=5, progress=False), b.fit(rows, seed=5, progress=False)
    assert ha == hb and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert c.fit(rows, seed=6, progress=False) != ha  # another validation split


def test_auto_method_and_settings() -> None:
    rows = linear_rows(600, seed=4)
    assert len(SCM(LINEAR).fit(rows, epochs=2, progress=False)) == 2            # Adam settings given: Adam
    assert len(SCM(LINEAR).fit(rows, lr=1e-3, method="adam", progress=False)) == 30
    hist = SCM(LINEAR).fit(rows, epochs=40, val_fraction=0.2, patience=1, progress=False)
    assert 1 <= len(hist) <= 40
    threads = torch.get_num_threads()   # no parameters to fit: nothing runs on the extra thread
    SCM(LINEAR, {"x": LinearGaussianMechanism(), "y": LinearGaussianMechanism({"x": 2.0})}).fit(
        rows, progress=False, threads=threads + 1)
    assert torch.get_num_threads() == threads
    for kwargs, match in (({"method": "sgd"}, "method must be"),
                          ({"method": "lbfgs", "epochs": 3}, "epochs and batch_size are Adam settings"),
                          ({"val_fraction": 1.0}, "val_fraction must be"),
                          ({"patience": 0}, "patience must be"),
                          ({"max_iter": 0}, "max_iter must be"),
                          ({"tol": -1.0}, "tol must be"),
                          ({"threads": 0}, "threads must be"),
                          ({"weight_decay": -1.0}, "weight_decay must be")):
        with pytest.raises(ValueError, match=match):
            SCM(LINEAR).fit(rows, progress=False, **kwargs)


# ------------------------------------------------------------------------ a failed fit restores the SCM
def test_adam_with_a_huge_lr_raises_and_restores_every_parameter(morpho_graph: CausalGraph) -> None:
    """Issue 18: lr that makes the loss non-finite after steps have run, on a fresh and on a fitted SCM."""
    rows, _ = morpho_rows(1000, seed=0)
    scm = SCM(morpho_graph, seed=0)
    fresh = state(scm)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        scm.fit(rows, lr=1e9, progress=False)
    assert_same(scm, fresh)
    assert not any(bool(m.initialized) for m in scm.mechanisms.values())
    scm.fit(rows, progress=False)
    fitted = state(scm)
    obs = {k: v[:5] for k, v in rows.items()}
    cf = scm.counterfactual(obs, do={"thickness": 3.0}, seed=0)["intensity"]
    with pytest.raises(FloatingPointError):
        scm.fit(rows, lr=1e9, progress=False)
    assert_same(scm, fitted)
    assert torch.equal(scm.counterfactual(obs, do={"thickness": 3.0}, seed=0)["intensity"], cf)


class _Trap(Mechanism):
    """y = x + w + u, with a learnable w; ``log_prob`` misbehaves from its ``after``-th call on."""

    def __init__(self, after: int, how: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.after, self.how = after, how

    def sample_noise(self, n, generator=None):
        return torch.randn(n, generator=generator)

    def forward(self, parents, noise):
        return parents["x"] + self.w + noise

    def abduct(self, value, parents, generator=None):
        return value - parents["x"] - self.w

    def initialize(self, value, parents):
        with torch.no_grad():
            self.w.fill_(0.25)  # data-dependent set-up that a failed fit must undo too

    def log_prob(self, value, parents):
        self.calls += 1
        lp = (torch.distributions.Normal(parents["x"] + self.w, 1.0, validate_args=False).log_prob(value)
              - (self.w - 1.0) ** 2)
        if int(self.calls) >= self.after:
            if self.how == "nan":
                return lp * torch.nan
            pyro.param("keep").data.add_(1.0)
            pyro.param("junk", torch.ones(1))
            raise (KeyboardInterrupt if self.how == "interrupt" else RuntimeError)("boom")
        return lp


@pytest.mark.parametrize("how,method,error", [("raise", "lbfgs", RuntimeError), ("raise", "adam", RuntimeError),
                                              ("interrupt", "lbfgs", KeyboardInterrupt),
                                              ("nan", "lbfgs", FloatingPointError)])
def test_any_failure_restores_parameters_buffers_and_the_param_store(how, method, error) -> None:
    pyro.clear_param_store()
    try:
        pyro.param("keep", torch.zeros(2))
        scm = SCM(LINEAR, mechanisms={"y": _Trap(after=4, how=how)}, seed=0)
        before = state(scm)
        rows = linear_rows(300, seed=5)
        kwargs = {"epochs": 3, "batch_size": 50} if method == "adam" else {"method": "lbfgs"}
        with pytest.raises(error):
            scm.fit(rows, progress=False, **kwargs)
        assert_same(scm, before)   # also the trap's call counter and the flow of x
        assert torch.equal(pyro.param("keep").detach(), torch.zeros(2))
        assert "junk" not in pyro.get_param_store()
        assert scm.training
    finally:
        pyro.clear_param_store()


@pytest.mark.parametrize("spec,parents", [({"kind": "real"}, {}), ({"kind": "positive"}, {}),
                                          ({"kind": "interval", "low": 0, "high": 255}, {"t": {"kind": "positive"}}),
                                          ({"kind": "real"}, {"a": {"kind": "real"}, "b": {"kind": "binary"},
                                                              "c": {"kind": "categorical", "cardinality": 3}})])
def test_flow_log_prob_is_the_density_of_its_transforms(spec, parents) -> None:
    """FlowMechanism.log_prob (computed directly, for speed) against Pyro's TransformedDistribution of the same
    transforms that forward and abduct use: values and gradients, inside and outside the spline's bound."""
    from pyro.distributions import TransformedDistribution

    from scm import FlowMechanism

    g = torch.Generator().manual_seed(0)
    m = FlowMechanism(spec, parents)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    n = 3000
    par = {k: (torch.randint(0, 3 if s["kind"] == "categorical" else 2, (n,), generator=g)
               if s["kind"] in ("binary", "categorical") else 3 * torch.rand(n, generator=g))
           for k, s in parents.items()}
    v = {"real": 3 * torch.randn(n, generator=g), "positive": 5 * torch.rand(n, generator=g) + 1e-3,
         "interval": 255 * torch.rand(n, generator=g)}[spec["kind"]]
    m.initialize(v, par)
    with torch.no_grad():
        m.standardize.scale.mul_(0.4)   # a tenth or so of the rows fall outside [-bound, bound]
    y = m._clamp(v).unsqueeze(-1)
    ref = TransformedDistribution(m._base(n, y), m._transforms(par)).log_prob(y)
    new = m.log_prob(v, par)
    torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-3)
    params = [p for p in m.parameters()]
    g_ref = torch.autograd.grad(ref.mean(), params, allow_unused=True)
    g_new = torch.autograd.grad(new.mean(), params, allow_unused=True)
    for a, b in zip(g_ref, g_new):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=5e-3, atol=1e-4)  # float32 sums over 3000 rows
