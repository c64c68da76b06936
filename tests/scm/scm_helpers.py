"""Helpers of the scm tests: the Morpho-MNIST attribute equations of docs/benchmark.md (they belong to
the tests, not to the ``scm`` package)."""
from __future__ import annotations

import torch

MORPHO_GRAPH = {
    "nodes": {"thickness": {"kind": "positive"},
              "intensity": {"kind": "interval", "low": 0, "high": 255},
              "digit": {"kind": "categorical", "cardinality": 10},
              "image": {"kind": "image", "shape": [1, 28, 28]}},
    "edges": [["thickness", "intensity"], ["thickness", "image"], ["intensity", "image"], ["digit", "image"]],
}


def morpho_intensity(t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """docs/benchmark.md: i = 64 + 191 * sigmoid(0.5 * e + 2 * t - 5)."""
    return 64.0 + 191.0 * torch.sigmoid(0.5 * e + 2.0 * t - 5.0)


def morpho_rows(n: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """n rows of the Morpho-MNIST attribute SCM (docs/benchmark.md) and their true noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u_t = torch.distributions.Gamma(10.0, 5.0).sample((n,))   # Gamma(shape=10, rate=5)
        e = torch.randn(n)
        y = torch.randint(0, 10, (n,))
    t = 0.5 + u_t
    return {"thickness": t, "intensity": morpho_intensity(t, e), "digit": y}, {"thickness": u_t, "intensity": e}
