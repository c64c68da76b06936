"""Ready-made causal graphs for the bundled benchmarks.

Example:
    >>> g = morphomnist_graph()
    >>> g.image_parents()
    ['thickness', 'intensity', 'digit']
"""
from __future__ import annotations

from typing import Any

from scm import CausalGraph

MORPHOMNIST_GRAPH: dict[str, Any] = {
    "nodes": {
        "thickness": {"kind": "positive"},
        "intensity": {"kind": "interval", "low": 0, "high": 255},
        "digit": {"kind": "categorical", "cardinality": 10},
        "image": {"kind": "image", "shape": [1, 28, 28]},
    },
    "edges": [["thickness", "intensity"], ["thickness", "image"], ["intensity", "image"],
              ["digit", "image"]],
}


def morphomnist_graph() -> CausalGraph:
    """The deepscm Morpho-MNIST graph: thickness -> intensity; (thickness, intensity, digit) -> image."""
    return CausalGraph.from_dict(MORPHOMNIST_GRAPH)
