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


MORPHO_COLOUR_GRAPH: dict[str, Any] = {
    "nodes": {
        "digit": {"kind": "categorical", "cardinality": 10},
        "slant": {"kind": "real"},
        "thickness": {"kind": "positive"},
        "intensity": {"kind": "interval", "low": 64, "high": 255},
        "hue": {"kind": "interval", "low": 0.05, "high": 0.70},
        "background": {"kind": "interval", "low": 0.0, "high": 0.35},
        "image": {"kind": "image", "shape": [3, 28, 28]},
    },
    "edges": [["digit", "slant"], ["thickness", "intensity"], ["hue", "background"],
              *[[a, "image"] for a in ("digit", "slant", "thickness", "intensity", "hue", "background")]],
}


def morpho_colour_graph() -> CausalGraph:
    """The colour Morpho-MNIST graph: digit -> slant, thickness -> intensity, hue -> background; all six -> image.

    Example:
        >>> sorted(morpho_colour_graph().descendants("hue"))
        ['background', 'image']
    """
    return CausalGraph.from_dict(MORPHO_COLOUR_GRAPH)
