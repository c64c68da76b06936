"""CausalGraph: construction, round trips, structure queries, drawing, and every validation error.

The toy graph used throughout (the Morpho-MNIST one):

    thickness --> intensity
        \\            |
         \\           v
          +------> image <-- digit
"""
from __future__ import annotations

import copy

import networkx as nx
import pytest
from scm_helpers import MORPHO_GRAPH

from scm import CausalGraph, NodeSpec


def test_structure_queries(morpho_graph: CausalGraph) -> None:
    g = morpho_graph
    assert g.nodes == ["thickness", "intensity", "digit", "image"]
    assert g.topological_order() == g.nodes
    assert g.parents("intensity") == ["thickness"]
    assert g.parents("image") == ["thickness", "intensity", "digit"]
    assert g.children("thickness") == ["intensity", "image"]
    assert g.descendants("thickness") == ["intensity", "image"]
    assert g.descendants("digit") == ["image"]
    assert g.ancestors("image") == ["thickness", "intensity", "digit"]
    assert g.image_node == "image"
    assert g.image_parents() == ["thickness", "intensity", "digit"]
    assert g.attribute_nodes() == ["thickness", "intensity", "digit"]
    assert g.spec("intensity") == NodeSpec("interval", low=0.0, high=255.0)
    assert g.spec("digit").cardinality == 10
    assert g.spec("image").shape == (1, 28, 28)


def test_topological_order_respects_edges_not_declaration() -> None:
    g = CausalGraph.from_edges([("c", "a"), ("a", "b")], {n: {"kind": "real"} for n in "abc"})
    assert g.nodes == ["c", "a", "b"]


@pytest.mark.parametrize("build", ["dict", "networkx", "edges"])
def test_round_trips(morpho_graph: CausalGraph, build: str) -> None:
    if build == "dict":
        back = CausalGraph.from_dict(morpho_graph.to_dict())
    elif build == "networkx":
        nxg = morpho_graph.to_networkx()
        assert isinstance(nxg, nx.DiGraph)
        assert nxg.nodes["intensity"] == {"kind": "interval", "low": 0.0, "high": 255.0}
        back = CausalGraph.from_networkx(nxg)
    else:
        specs = {n: morpho_graph.spec(n) for n in morpho_graph.nodes}
        back = CausalGraph.from_edges([tuple(e) for e in morpho_graph.to_dict()["edges"]], specs)
    assert back == morpho_graph
    assert back.to_dict() == morpho_graph.to_dict()


def test_to_networkx_is_a_copy(morpho_graph: CausalGraph) -> None:
    nxg = morpho_graph.to_networkx()
    nxg.add_edge("digit", "thickness")
    assert morpho_graph.parents("thickness") == []


def test_binary_node_has_cardinality_two() -> None:
    g = CausalGraph.from_dict({"nodes": {"s": {"kind": "binary"}}, "edges": []})
    assert g.spec("s").cardinality == 2 and g.spec("s").is_discrete


def test_draw_writes_png(tmp_path, morpho_graph: CausalGraph) -> None:
    out = morpho_graph.draw(tmp_path / "sub" / "dag.png", title="morpho")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["dag.png"]  # no temporary file left


def _with(**changes):
    d = copy.deepcopy(MORPHO_GRAPH)
    for key, value in changes.items():
        if key == "edges":
            d["edges"] = value
        else:
            d["nodes"][key] = value
    return d


@pytest.mark.parametrize("graph, match", [
    (_with(edges=[["thickness", "intensity"], ["intensity", "digit"], ["digit", "thickness"]]),
     r"cycle: (thickness -> intensity -> digit -> thickness|intensity -> digit -> thickness -> intensity|"
     r"digit -> thickness -> intensity -> digit)"),
    (_with(edges=[["thickness", "thickness"]]), r"self-loop on node 'thickness'"),
    (_with(edges=[["thickness", "slant"]]), r"unknown node 'slant'"),
    (_with(slant={}), r"node 'slant' has no kind"),
    (_with(slant={"low": 0}), r"node 'slant' has no kind"),
    (_with(slant={"kind": "ordinal"}), r"node 'slant' has unknown kind 'ordinal'"),
    (_with(digit={"kind": "categorical", "cardinality": 1}), r"node 'digit' has a bad cardinality 1"),
    (_with(digit={"kind": "categorical", "cardinality": 2.5}), r"node 'digit' has a bad cardinality 2.5"),
    (_with(digit={"kind": "categorical"}), r"node 'digit' has a bad cardinality None"),
    (_with(digit={"kind": "binary", "cardinality": 3}), r"binary node 'digit' has cardinality 3"),
    (_with(intensity={"kind": "interval", "low": 255, "high": 0}), r"node 'intensity' has a bad interval \[255, 0\]"),
    (_with(intensity={"kind": "interval", "low": 0, "high": float("inf")}), r"node 'intensity' has a bad interval"),
    (_with(intensity={"kind": "interval", "low": 0}), r"interval node 'intensity' needs numeric 'low' and 'high'"),
    (_with(thickness={"kind": "positive", "low": 0}), r"node 'thickness' of kind 'positive' has unexpected field"),
    (_with(image={"kind": "image", "shape": [1, 0, 28]}), r"image node 'image' has a bad shape"),
    (_with(edges=[["image", "digit"]]), r"image node 'image' has children \['digit'\]"),
    (_with(mask={"kind": "image", "shape": [1, 4, 4]}), r"more than one image node"),
    (_with(**{"a/b": {"kind": "real"}}), r"bad node name 'a/b'"),
])
def test_validation_errors_name_the_culprit(graph, match) -> None:
    with pytest.raises(ValueError, match=match):
        CausalGraph.from_dict(graph)


@pytest.mark.parametrize("low, high", [("0", "255"), (0, "255"), ("0", 255), (True, 255), (0, True),
                                       (False, 1), (0, b"255")])
def test_interval_bounds_must_be_numbers_not_strings_or_bools(low, high) -> None:
    """Before: interval bounds given as strings or True were accepted (turned into floats). Now: refused, naming
    the node and the bounds given; numbers of any type (int, float) are still accepted."""
    spec = {"kind": "interval", "low": low, "high": high}
    with pytest.raises(ValueError, match=rf"interval node 'intensity' needs numeric 'low' and 'high' "
                                         rf"\(got low={low!r}, high={high!r}\)"):
        CausalGraph.from_dict(_with(intensity=spec))
    assert NodeSpec.from_dict("intensity", {"kind": "interval", "low": 0, "high": 255.0}).high == 255.0


def test_from_networkx_validates_too() -> None:
    h = nx.DiGraph()
    h.add_node("x", kind="real")
    h.add_node("y")  # no kind
    h.add_edge("x", "y")
    with pytest.raises(ValueError, match="node 'y' has no kind"):
        CausalGraph.from_networkx(h)
    with pytest.raises(TypeError, match="networkx.DiGraph"):
        CausalGraph.from_networkx(nx.Graph())  # type: ignore[arg-type]


def test_unknown_node_queries_raise(morpho_graph: CausalGraph) -> None:
    with pytest.raises(ValueError, match=r"unknown node 'slant'"):
        morpho_graph.parents("slant")
