"""Device and dtype follow the model; construction is deterministic and leaves the global RNG alone.

    x (real) --> y (real);  d (categorical, 3) --> y
"""
from __future__ import annotations

import pytest
import torch

from scm import SCM, CausalGraph, LinearGaussianMechanism

GRAPH = CausalGraph.from_dict({
    "nodes": {"x": {"kind": "real"}, "d": {"kind": "categorical", "cardinality": 3}, "y": {"kind": "real"}},
    "edges": [["x", "y"], ["d", "y"]]})


def test_construction_is_seeded_and_pure() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b, c = SCM(GRAPH), SCM(GRAPH), SCM(GRAPH, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_float64_model_gives_float64_values() -> None:
    scm = SCM(GRAPH, mechanisms={"x": LinearGaussianMechanism()}).double()
    obs = scm.sample(10, seed=0)
    assert obs["x"].dtype == torch.float64 and obs["y"].dtype == torch.float64 and obs["d"].dtype == torch.int64
    cf = scm.counterfactual({k: v.float() if v.is_floating_point() else v for k, v in obs.items()},
                            do={"x": 1.0}, seed=0)
    assert cf["y"].dtype == torch.float64
    back = scm.predict(scm.abduct(obs, seed=0))
    torch.testing.assert_close(back["y"], obs["y"], rtol=0, atol=1e-10)


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    cpu = SCM(GRAPH, seed=0)
    rows = cpu.sample(64, seed=0)
    gpu = SCM(GRAPH, seed=0).to("cuda")
    cf_cpu = cpu.counterfactual(rows, do={"x": 0.5}, num_particles=2, seed=3)
    cf_gpu = gpu.counterfactual(rows, do={"x": 0.5}, num_particles=2, seed=3)  # CPU inputs are moved
    for k in cf_cpu:
        assert cf_gpu[k].device.type == "cuda"
        torch.testing.assert_close(cf_gpu[k].cpu(), cf_cpu[k], rtol=1e-4, atol=1e-4)
    gpu.fit({k: v.cuda() for k, v in rows.items()}, epochs=1, progress=False)
    assert gpu.sample(5, seed=0)["y"].device.type == "cuda"
