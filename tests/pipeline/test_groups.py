"""DCFG groups derived from the DAG.

Toy graph (4 attribute nodes + image):

    a --> b --> c
          |     |
          v     v
    d --> image <-- (b, c, d)

do(a) touches b and c downstream (a itself is not an image parent); do(b) -> {b, c}; do(d) -> {d}.
"""
import pytest

from pipeline.groups import GuidanceGroups, derive_groups, resolve_guidance
from scm import CausalGraph

GRAPH = {
    "nodes": {"a": {"kind": "real"}, "b": {"kind": "real"}, "c": {"kind": "positive"},
              "d": {"kind": "categorical", "cardinality": 3},
              "image": {"kind": "image", "shape": [1, 8, 8]}},
    "edges": [["a", "b"], ["b", "c"], ["b", "image"], ["c", "image"], ["d", "image"]],
}


@pytest.fixture(scope="module")
def graph():
    return CausalGraph.from_dict(GRAPH)


@pytest.mark.parametrize("do, affected, invariant", [
    ([], (), ("b", "c", "d")),
    (["a"], ("b", "c"), ("d",)),
    (["b"], ("b", "c"), ("d",)),
    (["c"], ("c",), ("b", "d")),
    (["d"], ("d",), ("b", "c")),
    (["c", "d"], ("c", "d"), ("b",)),
])
def test_groups_follow_descendants(graph, do, affected, invariant):
    assert derive_groups(graph, do) == GuidanceGroups(affected, invariant)


def test_unknown_and_image_nodes_are_rejected(graph):
    with pytest.raises(ValueError, match="unknown node 'zz'"):
        derive_groups(graph, ["zz"])
    with pytest.raises(ValueError, match="image node 'image'"):
        derive_groups(graph, ["image"])


def test_resolve_guidance_modes(graph):
    assert resolve_guidance(graph, ["b"], "dcfg", 3.0) == ([["b", "c"], ["d"]], [3.0, 1.0])
    assert resolve_guidance(graph, ["b"], "cfg", 2.0) == ([["b", "c", "d"]], [2.0])
    assert resolve_guidance(graph, ["b"], "none", 5.0) == ([["b", "c", "d"]], [1.0])
    assert resolve_guidance(graph, [], "dcfg", 3.0) == ([["b", "c", "d"]], [1.0])
    assert resolve_guidance(graph, ["c"], "dcfg", 4.0, groups="per_attribute") == (
        [["b"], ["c"], ["d"]], [1.0, 4.0, 1.0])
    assert resolve_guidance(graph, ["c"], "dcfg", 4.0, groups=[["b", "d"], ["c"]],
                            weights=[1.5, 2.5]) == ([["b", "d"], ["c"]], [1.5, 2.5])


@pytest.mark.parametrize("kwargs, match", [
    (dict(guidance="dcfg", groups=[["b"], ["c"]]), "partition"),
    (dict(guidance="dcfg", groups=[["b", "c"], ["c", "d"]]), "partition"),
    (dict(guidance="dcfg", groups=[["b", "zz"], ["c", "d"]]), "not parents of the image"),
    (dict(guidance="dcfg", groups=[["b", "c"], ["d"]], weights=[1.0]), "one weight per group"),
    (dict(guidance="dcfg", groups="everything"), "not understood"),
    (dict(guidance="cfg", groups=[["b", "c", "d"]]), "only apply to guidance='dcfg'"),
    (dict(guidance="magic"), "not one of"),
    (dict(guidance="dcfg", scale=float("nan")), "finite"),
])
def test_resolve_guidance_errors(graph, kwargs, match):
    kwargs.setdefault("scale", 3.0)
    with pytest.raises(ValueError, match=match):
        resolve_guidance(graph, ["b"], **kwargs)


def test_descendant_weight_splits_the_affected_group(graph):
    # do(b): b is intervened on, c is its descendant; d is invariant
    assert resolve_guidance(graph, ["b"], "dcfg", 3.0, descendant_weight=1.0) == (
        [["b"], ["c"], ["d"]], [3.0, 1.0, 1.0])
    assert resolve_guidance(graph, ["b"], "dcfg", 3.0, invariant_weight=0.5, descendant_weight=2.0) == (
        [["b"], ["c"], ["d"]], [3.0, 2.0, 0.5])
    # "scale" is the paper's grouping: descendants share the intervention's scale
    assert resolve_guidance(graph, ["b"], "dcfg", 3.0, descendant_weight="scale") == ([["b", "c"], ["d"]], [3.0, 1.0])
    # no descendants among the image's parents: nothing to split
    assert resolve_guidance(graph, ["c"], "dcfg", 3.0, descendant_weight=1.0) == ([["c"], ["b", "d"]], [3.0, 1.0])
    # a non-parent intervention (a -> b -> c): every affected parent is a descendant
    assert resolve_guidance(graph, ["a"], "dcfg", 3.0, descendant_weight=1.5) == ([["b", "c"], ["d"]], [1.5, 1.0])
    assert resolve_guidance(graph, ["b"], "dcfg", 4.0, groups="per_attribute", descendant_weight=1.0) == (
        [["b"], ["c"], ["d"]], [4.0, 1.0, 1.0])
    # an explicit group holding an intervened node gets the scale; one with only descendants their weight
    assert resolve_guidance(graph, ["b"], "dcfg", 4.0, groups=[["b", "d"], ["c"]], descendant_weight=1.5) == (
        [["b", "d"], ["c"]], [4.0, 1.5])
    # CFG and none ignore it (one group)
    assert resolve_guidance(graph, ["b"], "cfg", 2.0, descendant_weight=1.0) == ([["b", "c", "d"]], [2.0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", True])
def test_descendant_weight_must_be_a_finite_number(graph, bad):
    with pytest.raises(ValueError, match="descendant_weight"):
        resolve_guidance(graph, ["b"], "dcfg", 3.0, descendant_weight=bad)
