"""Property-based tests (hypothesis) of the public API's boundary: good inputs work, bad ones are refused clearly.

Every property draws inputs whose verdict is known from how they were drawn (a good value, or one bad key /
value / shape among good ones). A bad input must raise ``ValueError`` or ``TypeError`` whose message names the
offending key or argument, never an error from deep inside torch or pyro; a good input must not raise, and its
result must be finite and in the nodes' supports. Example counts come from the hypothesis profile in
``tests/conftest.py`` (``ci``: 500 per property).

The SCM and pipeline properties use one toy graph (kinds of every sort, one non-image-parent root):

    r (real) --> p (positive) --> i (interval [0, 255]) --+
                     \\-------------------------------------+--> image (1x8x8)
    b (binary) --> c (categorical, 5 classes) -------------+
         \\-------------------------------------------------+
"""
from __future__ import annotations

import math
import string
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st
from tiny_unet import tiny_unet_config

from diffusion import AttributeSpec, ConditionalUNet
from pipeline.core import CounterfactualPipeline, PipelineConfig
from pipeline.parsing import parse_assignments, parse_do
from scm import SCM, CausalGraph, NodeSpec

torch.set_num_threads(1)

B = 3  # rows of the SCM queries
GRAPH = {
    "nodes": {"r": {"kind": "real"}, "p": {"kind": "positive"},
              "i": {"kind": "interval", "low": 0, "high": 255}, "b": {"kind": "binary"},
              "c": {"kind": "categorical", "cardinality": 5}, "image": {"kind": "image", "shape": [1, 8, 8]}},
    "edges": [["r", "p"], ["p", "i"], ["b", "c"], ["p", "image"], ["i", "image"], ["b", "image"],
              ["c", "image"]],
}
ATTRS = ["r", "p", "i", "b", "c"]
KIND = {n: GRAPH["nodes"][n]["kind"] for n in ATTRS}
CARD = {"b": 2, "c": 5}


def rows(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Observational rows of the toy graph (what the SCM is fitted on)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, generator=g)
    p = torch.exp(0.3 * r + 0.2 * torch.randn(n, generator=g))
    i = 255 * torch.sigmoid(p - 1 + 0.5 * torch.randn(n, generator=g))
    b = torch.randint(0, 2, (n,), generator=g)
    c = (2 * b + torch.randint(0, 3, (n,), generator=g)) % 5
    return {"r": r, "p": p, "i": i, "b": b, "c": c}


@pytest.fixture(scope="module")
def graph() -> CausalGraph:
    return CausalGraph.from_dict(GRAPH)


@pytest.fixture(scope="module")
def scm(graph) -> SCM:
    model = SCM(graph, hidden=(8,), count_bins=4, seed=0)
    model.fit(rows(512, seed=0), epochs=3, progress=False, seed=0)
    return model


@pytest.fixture(scope="module")
def obs() -> dict[str, torch.Tensor]:
    return rows(B, seed=1)


@pytest.fixture(scope="module")
def pipe(graph, scm) -> CounterfactualPipeline:
    cfg = tiny_unet_config(AttributeSpec("p", "continuous", mean=1.0, std=0.5),
                           AttributeSpec("i", "continuous", mean=150.0, std=50.0),
                           AttributeSpec("b", "categorical", cardinality=2),
                           AttributeSpec("c", "categorical", cardinality=5), block_out_channels=(8, 8))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConditionalUNet(cfg).eval()
    return CounterfactualPipeline(graph, scm, model, PipelineConfig(steps=1, refine_steps=0))


def mentions(message: str, key) -> bool:
    """Whether ``message`` names ``key`` as Python writes it (``'i'``, ``0``, ``None``), or names an argument
    (``scale``, ``images``) as it is. A bare ``i`` or ``''`` would be found in almost any message."""
    return repr(key) in message or (isinstance(key, str) and key in ARGUMENTS and key in message)


PACKAGES = [Path(__file__).resolve().parents[1] / p for p in ("dcfg_io", "scm", "diffusion", "pipeline")]


def assert_refused(call, key) -> str:
    """``call()`` must raise ValueError/TypeError naming ``key``, from the project's own checks (not from inside
    torch, pyro or numpy); returns the message."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert mentions(message, key), f"the error does not name {key!r}: {message}"
    origin = Path(str(info.traceback[-1].path)).resolve()
    assert any(origin.is_relative_to(p) for p in PACKAGES), f"raised inside {origin}: {message}"
    return message


def assert_in_support(values: dict[str, torch.Tensor], n: int) -> None:
    for node in ATTRS:
        v = values[node]
        assert v.shape == (n,), (node, v.shape)
        if node in CARD:
            assert v.dtype == torch.int64 and bool(((v >= 0) & (v < CARD[node])).all()), (node, v)
            continue
        assert bool(torch.isfinite(v).all()), (node, v)
        if KIND[node] == "positive":
            assert bool((v > 0).all()), (node, v)
        if KIND[node] == "interval":
            assert bool(((v >= 0) & (v <= 255)).all()), (node, v)


# ------------------------------------------------------------------------------------------- value strategies
def _good_scalar(node: str) -> st.SearchStrategy:
    kind = KIND[node]
    if kind == "real":
        return st.floats(-100, 100) | st.integers(-100, 100)
    if kind == "positive":
        return st.floats(0.01, 100) | st.integers(1, 100)
    if kind == "interval":
        return st.floats(0, 255) | st.integers(0, 255)
    classes = st.integers(0, CARD[node] - 1)
    return classes | classes.map(float) | (st.booleans() if node == "b" else classes)


def _shift(node: str) -> st.SearchStrategy:
    """Callables that keep every value of the node in its support."""
    kind = KIND[node]
    if kind == "real":
        return st.floats(-10, 10).map(lambda d: lambda x: x + d)
    if kind == "positive":
        return st.floats(0.1, 10).map(lambda f: lambda x: x * f)
    if kind == "interval":
        return st.floats(-50, 50).map(lambda d: lambda x: (x + d).clamp(0, 255))
    k = CARD[node]
    return st.integers(0, k - 1).map(lambda s: lambda x: (x + s) % k)


DO_FORMS = ("number", "numpy scalar", "0-d tensor", "tensor", "list", "array", "callable")
ROW_FORMS = ("tensor", "list", "array")  # what observations take


@st.composite
def good_value(draw, node: str, n: int, forms: tuple[str, ...] = DO_FORMS):
    """``(value, expected)``: a value in one of the accepted forms; ``expected`` (n,), or None for a callable."""
    form = draw(st.sampled_from(forms))
    dtype = torch.int64 if node in CARD else torch.float32
    if form == "callable":
        return draw(_shift(node)), None
    if form in ("number", "numpy scalar", "0-d tensor"):
        v = draw(_good_scalar(node))
        value = {"number": v, "numpy scalar": np.float64(v), "0-d tensor": torch.tensor(float(v))}[form]
        return value, torch.full((n,), float(v), dtype=torch.float64)
    vs = draw(st.lists(_good_scalar(node), min_size=n, max_size=n))
    expected = torch.tensor([float(v) for v in vs], dtype=torch.float64)
    if form == "tensor":
        return expected.to(dtype), expected
    if form == "array":
        return np.asarray([float(v) for v in vs]), expected
    return vs, expected


def _out_of_support(node: str) -> st.SearchStrategy:
    kind = KIND[node]
    if kind == "real":
        return st.sampled_from([1e39, -1e39])  # finite, but not in float32
    if kind == "positive":
        return st.floats(-100, 0) | st.sampled_from([1e-50, 1e39])  # 1e-50 -> 0, 1e39 -> inf in float32
    if kind == "interval":
        return st.floats(-100, -1e-3) | st.floats(255.001, 1e4)
    k = CARD[node]
    return st.integers(-100, -1) | st.integers(k, 100) | st.floats(0.1, 0.9).map(lambda f: f + k // 2)


@st.composite
def bad_value(draw, node: str, n: int):
    """A value the node must refuse, and what is wrong with it (for the failure report)."""
    what = draw(st.sampled_from(["non-finite", "out of support", "text", "none", "object", "complex", "ragged",
                                 "2-D", "wrong length", "empty", "bad callable"]))
    if what == "non-finite":
        return draw(st.sampled_from([math.nan, math.inf, -math.inf])), what
    if what == "out of support":
        v = draw(_out_of_support(node))
        as_tensor = draw(st.booleans())
        if as_tensor:  # one bad row among good ones
            good = [float(x) for x in draw(st.lists(_good_scalar(node), min_size=n, max_size=n))]
            good[draw(st.integers(0, n - 1))] = float(v)
            return torch.tensor(good, dtype=torch.float64), what
        return v, what
    if what == "text":
        return draw(st.sampled_from(["1.0", "abc", ""])), what
    if what == "none":
        return None, what
    if what == "object":
        return draw(st.sampled_from([{}, object(), {1, 2}])), what
    if what == "complex":
        return draw(st.sampled_from([1 + 2j, torch.ones(n, dtype=torch.complex64)])), what
    if what == "ragged":
        return [1.0, [2.0, 3.0]] + [1.0] * (n - 2), what
    if what == "2-D":
        return torch.ones(n, draw(st.integers(2, 3))), what
    if what == "wrong length":
        return torch.ones(draw(st.sampled_from([1, n + 1, 2 * n]))), what
    if what == "empty":
        return torch.ones(0), what
    how = draw(st.sampled_from(["raises", "nan", "text", "shape", "out of support"]))
    out_val = {"real": math.nan, "positive": -1.0, "interval": 1000.0}.get(KIND[node], 100)
    return {"raises": lambda x: 1 / 0, "nan": lambda x: x * math.nan, "text": lambda x: "x",
            "shape": lambda x: x[:1], "out of support": lambda x: torch.full_like(x, out_val)}[how], what + " " + how


BAD_KEYS = st.sampled_from(["image", "zz", "", "R", 0, 3.5, ("p",), None]) | st.text(min_size=1, max_size=5).filter(
    lambda s: s not in GRAPH["nodes"])


@st.composite
def do_query(draw, n: int):
    """``(do, expected, bad)``: good entries on distinct nodes, plus at most one bad entry ``bad = (key, why)``."""
    nodes = ATTRS
    keys = draw(st.lists(st.sampled_from(nodes), unique=True, max_size=len(nodes)))
    items, expected = [], {}
    for k in keys:
        value, exp = draw(good_value(k, n))
        items.append((k, value))
        expected[k] = exp
    bad = None
    if draw(st.booleans()):
        if draw(st.booleans()):
            key = draw(BAD_KEYS)
            items.append((key, draw(_good_scalar("p"))))
            bad = (key, "bad key")
        else:
            key = draw(st.sampled_from(nodes))
            value, why = draw(bad_value(key, n))
            items = [(k, v) for k, v in items if k != key] + [(key, value)]
            bad = (key, why)
        items = draw(st.permutations(items))
    return dict(items), expected, bad


def check_constants(result: dict[str, torch.Tensor], expected: dict[str, torch.Tensor | None]) -> None:
    for k, exp in expected.items():
        if exp is not None:
            torch.testing.assert_close(result[k].to(torch.float64), exp, rtol=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------------------ CausalGraph
NAMES = st.text(min_size=1, max_size=6).filter(lambda s: "/" not in s)


@st.composite
def attribute_spec(draw) -> dict:
    kind = draw(st.sampled_from(["real", "positive", "interval", "binary", "categorical"]))
    if kind == "interval":
        low = draw(st.floats(-1e6, 1e6))
        return {"kind": kind, "low": low, "high": low + draw(st.floats(1e-3, 1e6))}
    if kind == "categorical":
        return {"kind": kind, "cardinality": draw(st.integers(2, 50))}
    if kind == "binary" and draw(st.booleans()):
        return {"kind": kind, "cardinality": 2}
    return {"kind": kind}


@st.composite
def dag(draw) -> tuple[dict, list[str], list[tuple[str, str]]]:
    """A random DAG as a from_dict dict: edges only go forward in a hidden random order; maybe one image sink."""
    names = draw(st.lists(NAMES, min_size=1, max_size=7, unique=True))
    order = draw(st.permutations(names))
    pairs = [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    nodes = {n: draw(attribute_spec()) for n in names}
    if draw(st.booleans()):
        image = order[-1]  # a sink: nothing comes after it
        nodes[image] = {"kind": "image", "shape": draw(st.lists(st.integers(1, 64), min_size=1, max_size=4))}
    return {"nodes": nodes, "edges": [list(e) for e in edges]}, names, edges


@given(dag())
def test_random_dags_build_and_round_trip(drawn):
    d, names, edges = drawn
    g = CausalGraph.from_dict(d)
    ref = nx.DiGraph(edges)
    ref.add_nodes_from(names)
    pos = {n: i for i, n in enumerate(g.nodes)}
    assert sorted(g.nodes) == sorted(names)
    assert all(pos[a] < pos[b] for a, b in edges)  # a topological order
    for n in names:
        assert set(g.parents(n)) == set(ref.predecessors(n))
        assert set(g.descendants(n)) == nx.descendants(ref, n)
        assert set(g.ancestors(n)) == nx.ancestors(ref, n)
    images = [n for n, s in d["nodes"].items() if s["kind"] == "image"]
    assert g.image_node == (images[0] if images else None)
    assert set(g.attribute_nodes()) == set(names) - set(images)
    assert CausalGraph.from_dict(g.to_dict()) == g
    assert CausalGraph.from_networkx(g.to_networkx()) == g


@given(dag(), st.data())
def test_cycles_and_self_loops_are_refused(drawn, data):
    d, names, edges = drawn
    ref = nx.DiGraph(edges)
    ref.add_nodes_from(names)
    reachable = [(a, b) for a in names for b in nx.descendants(ref, a)]
    if reachable and data.draw(st.booleans()):
        a, b = data.draw(st.sampled_from(reachable))
        closing = [b, a]  # b -> a closes the path a -> ... -> b
    else:
        a = data.draw(st.sampled_from(names))
        closing = [a, a]
    d["edges"] = d["edges"] + [closing]
    with pytest.raises(ValueError) as info:
        CausalGraph.from_dict(d)
    message = str(info.value)
    if closing[0] == closing[1]:
        assert "self-loop" in message and repr(closing[0]) in message, message
    else:  # the cycle is written as a path through the closing edge
        assert "cycle" in message and f"{closing[0]} -> {closing[1]}" in message, message


SPEC_ERRORS = {
    "no kind": lambda d: {k: v for k, v in d.items() if k != "kind"},
    "unknown kind": lambda d: {**d, "kind": "reals"},
    "kind not text": lambda d: {**d, "kind": 3},
    "extra field": lambda d: {**d, "colour": "red"},
    "spec not a dict": lambda d: [d.get("kind")],
}
INTERVAL_ERRORS = {
    "low >= high": lambda d: {**d, "low": d["high"], "high": d["low"]},
    "low missing": lambda d: {k: v for k, v in d.items() if k != "low"},
    "non-numeric high": lambda d: {**d, "high": "big"},
    "non-finite low": lambda d: {**d, "low": -math.inf},
    "nan high": lambda d: {**d, "high": math.nan},
}
CARD_ERRORS = {
    "cardinality 1": lambda d: {**d, "cardinality": 1},
    "cardinality float": lambda d: {**d, "cardinality": 3.0},
    "cardinality bool": lambda d: {**d, "cardinality": True},
    "cardinality text": lambda d: {**d, "cardinality": "10"},
}
SHAPE_ERRORS = {
    "empty shape": [], "zero side": [1, 0, 28], "negative side": [1, -28, 28], "float side": [1, 28.0, 28],
    "bool side": [True, 28, 28], "shape text": "1x28x28", "shape missing": None,
}


@st.composite
def node_spec_case(draw):
    """``(name, spec, why)``: a spec dict and, when it is invalid, why (None when valid)."""
    name = draw(NAMES)
    spec = draw(attribute_spec() | st.lists(st.integers(1, 64), min_size=1, max_size=4).map(
        lambda s: {"kind": "image", "shape": s}))
    if draw(st.booleans()):
        return name, spec, None
    choices = list(SPEC_ERRORS)
    if spec["kind"] == "interval":
        choices += list(INTERVAL_ERRORS)
    if spec["kind"] in ("categorical", "binary"):
        choices += list(CARD_ERRORS) + (["binary with 3 classes"] if spec["kind"] == "binary" else [])
    if spec["kind"] == "image":
        choices += list(SHAPE_ERRORS)
    why = draw(st.sampled_from(choices))
    if why in SHAPE_ERRORS:
        bad = {"kind": "image"} if SHAPE_ERRORS[why] is None else {"kind": "image", "shape": SHAPE_ERRORS[why]}
    elif why == "binary with 3 classes":
        bad = {"kind": "binary", "cardinality": 3}
    else:
        bad = {**SPEC_ERRORS, **INTERVAL_ERRORS, **CARD_ERRORS}[why](spec)
    return name, bad, why


@given(node_spec_case())
def test_random_node_specs(case):
    name, spec, why = case
    note(f"{why}: {spec!r}")
    if why is None:
        parsed = NodeSpec.from_dict(name, spec)
        assert NodeSpec.from_dict(name, parsed.to_dict()) == parsed
        assert isinstance(parsed.describe(), str)
        return
    assert_refused(lambda: NodeSpec.from_dict(name, spec), name)
    # the same spec inside a graph is refused with the same clear error
    assert_refused(lambda: CausalGraph.from_dict({"nodes": {name: spec}, "edges": []}), name)


STRUCTURE_ERRORS = ["edge to unknown node", "edge not a pair", "edges not a list", "bad node name",
                    "two image nodes", "image with children", "nodes missing", "extra graph key"]


@given(dag(), st.sampled_from(STRUCTURE_ERRORS), st.data())
def test_malformed_graphs_are_refused(drawn, why, data):
    d, names, _ = drawn
    d = {"nodes": dict(d["nodes"]), "edges": list(d["edges"])}
    if why == "edge to unknown node":
        stranger = data.draw(NAMES.filter(lambda s: s not in names))
        d["edges"].append(data.draw(st.permutations([data.draw(st.sampled_from(names)), stranger])))
        key = stranger
    elif why == "edge not a pair":
        key = data.draw(st.sampled_from([[names[0]], [names[0]] * 3, names[0]]))
        d["edges"].append(key)
    elif why == "edges not a list":
        key = d["edges"] = data.draw(st.sampled_from([5, "a->b", {"a": "b"}]))
    elif why == "bad node name":
        key = data.draw(st.sampled_from(["", "a/u", 7]))
        d["nodes"][key] = {"kind": "real"}
    elif why in ("two image nodes", "image with children"):
        assume(len(names) >= 2)
        img = [n for n, s in d["nodes"].items() if s["kind"] == "image"]
        first = img[0] if img else names[-1]
        d["nodes"][first] = {"kind": "image", "shape": [1, 4, 4]}
        other = data.draw(st.sampled_from([n for n in names if n != first]))
        if why == "two image nodes":
            d["nodes"][other] = {"kind": "image", "shape": [1, 4, 4]}
            d["edges"] = [e for e in d["edges"] if e[0] not in (first, other)]
            key = other
        else:
            d["edges"] = [e for e in d["edges"] if e[0] != first and e[1] != first] + [[first, other]]
            key = first
    elif why == "nodes missing":
        del d["nodes"]
        key = "nodes"
    else:
        key = data.draw(st.sampled_from(["Nodes", "edge", "meta"]))
        d[key] = []
    note(f"{why}: {d!r}")
    assert_refused(lambda: CausalGraph.from_dict(d), key)


# ------------------------------------------------------------------------------------------------------- SCM
@given(do_query(B))
def test_scm_counterfactual_do(scm, obs, query):
    do, expected, bad = query
    note(f"do={do!r} bad={bad!r}")
    if bad is not None:
        assert_refused(lambda: scm.counterfactual(obs, do=do, seed=0), bad[0])
        return
    cf = scm.counterfactual(obs, do=do, seed=0)
    assert_in_support(cf, B)
    check_constants(cf, expected)
    # nodes neither intervened on nor downstream of an intervention keep their factual values
    changed = set(do) | {d for k in do for d in scm.graph.descendants(k)}
    for node in set(ATTRS) - changed:
        torch.testing.assert_close(cf[node].to(torch.float64), obs[node].to(torch.float64), rtol=1e-4, atol=1e-3)


@given(do_query(B))
def test_scm_predict_do(scm, obs, query):
    do, expected, bad = query
    noise = scm.abduct(obs, seed=0)
    if bad is not None:
        assert_refused(lambda: scm.predict(noise, do=do), bad[0])
        return
    out = scm.predict(noise, do=do)
    assert_in_support(out, B)
    check_constants(out, expected)


OBS_ERRORS = ["missing node", "unknown node", "bad value", "batch mismatch"]


@given(st.tuples(*[good_value(k, B, ROW_FORMS) for k in ATTRS]), st.sampled_from(OBS_ERRORS + ["good"]), st.data())
def test_scm_observations(scm, values, why, data):
    obs = {k: v for k, (v, _) in zip(ATTRS, values)}
    key = data.draw(st.sampled_from(ATTRS))
    if why == "missing node":
        del obs[key]
    elif why == "unknown node":
        key = data.draw(BAD_KEYS.filter(lambda k: k != "image"))
        obs[key] = torch.ones(B)
    elif why == "bad value":
        value, what = data.draw(bad_value(key, B).filter(
            lambda vw: not vw[1].startswith(("bad callable", "wrong length", "empty"))))
        note(what)
        obs[key] = value if not (np.isscalar(value) or value is None) else [value] * B
    elif why == "batch mismatch":
        obs[key] = torch.as_tensor(obs[key])[:1]
    note(f"{why}: {obs!r}")
    if why != "good":
        assert_refused(lambda: scm.abduct(obs, seed=0), key)
        assert_refused(lambda: scm.counterfactual(obs, do={}, seed=0), key)
        return
    noise = scm.abduct(obs, seed=0)
    assert set(noise) == set(ATTRS) and all(v.shape[0] == B for v in noise.values())
    back = scm.predict(noise)  # the null intervention reproduces the observation
    assert_in_support(back, B)
    for k in ATTRS:
        torch.testing.assert_close(back[k].to(torch.float64), torch.as_tensor(obs[k]).to(torch.float64).reshape(-1),
                                   rtol=1e-4, atol=1e-3)


# -------------------------------------------------------------------------------------------------- pipeline
PB = 2  # images per pipeline query


@pytest.fixture(scope="module")
def batch(pipe) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(PB, 1, 8, 8, generator=g) * 2 - 1, rows(PB, seed=4)


def check_result(res, images: torch.Tensor) -> None:
    assert res.image.shape == images.shape
    assert bool(torch.isfinite(res.image).all()) and float(res.image.abs().max()) <= 1.0
    assert_in_support(res.parents, images.shape[0])


@given(do_query(PB))
def test_pipeline_counterfactual_do(pipe, batch, query):
    x, parents = batch
    do, expected, bad = query
    note(f"do={do!r} bad={bad!r}")
    if bad is not None:
        assert_refused(lambda: pipe.counterfactual(x, parents, do=do, steps=1), bad[0])
        return
    res = pipe.counterfactual(x, parents, do=do, steps=1)
    check_result(res, x)
    check_constants(res.parents, expected)


@st.composite
def image_case(draw):
    """``(images, why)``: a tensor (or not) for ``images``; ``why`` is None when it is valid."""
    n = draw(st.integers(1, 3))
    why = draw(st.sampled_from([None, None, "ndim", "channels", "size", "empty", "int dtype", "non-finite",
                                "out of range", "not a tensor"]))
    shape = [n, 1, 8, 8]
    if why == "ndim":
        shape = draw(st.sampled_from([[1, 8, 8], [8, 8], [n, 1, 1, 8, 8], [64]]))
    elif why == "channels":
        shape[1] = draw(st.sampled_from([2, 3]))
    elif why == "size":
        shape[draw(st.sampled_from([2, 3]))] = draw(st.sampled_from([4, 7, 9, 28]))
    elif why == "empty":
        shape[0] = 0
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    if why == "int dtype":
        dtype = draw(st.sampled_from([torch.uint8, torch.int64, torch.bool]))
    seed = draw(st.integers(0, 2 ** 16))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    if why == "non-finite" or why == "out of range":
        flat = x.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = (draw(st.sampled_from([math.nan, math.inf, -math.inf]))
                                                         if why == "non-finite" else
                                                         draw(st.floats(1.01, 300) | st.floats(-300, -1.01)))
    x = x.to(dtype)
    if why == "not a tensor":
        x = draw(st.sampled_from([x.float().numpy(), x.tolist(), None, "image.png"]))
    return x, why


@given(image_case())
def test_pipeline_images(pipe, case):
    x, why = case
    n = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] > 0 else 1
    parents = rows(n, seed=5)
    note(f"{why}: {getattr(x, 'shape', None)} {getattr(x, 'dtype', type(x))}")
    if why is not None:
        assert_refused(lambda: pipe.counterfactual(x, parents, do={"p": 2.0}, steps=1), "image")
        return
    res = pipe.counterfactual(x, parents, do={"p": 2.0}, steps=1)
    check_result(res, x)


@given(st.sampled_from(ATTRS), st.sampled_from(["missing", "unknown", "bad value", "length", "good"]), st.data())
def test_pipeline_parents(pipe, batch, key, why, data):
    x, parents = batch
    parents = dict(parents)
    if why == "missing":
        del parents[key]
    elif why == "unknown":
        key = data.draw(BAD_KEYS)
        parents[key] = torch.ones(PB)
    elif why == "bad value":
        value, what = data.draw(bad_value(key, PB).filter(lambda vw: not vw[1].startswith("bad callable")))
        note(what)
        parents[key] = value
    elif why == "length":
        parents[key] = parents[key][:1] if data.draw(st.booleans()) else torch.cat([parents[key]] * 2)
    else:
        parents[key], _ = data.draw(good_value(key, PB, ROW_FORMS + ("number", "0-d tensor")))
    note(f"{why}: {parents!r}")
    if why != "good":
        assert_refused(lambda: pipe.counterfactual(x, parents, do={"b": 1}, steps=1), key)
        return
    res = pipe.counterfactual(x, parents, do={"b": 1}, steps=1)
    check_result(res, x)


GUIDANCE_ARGS = {
    "guidance": (st.sampled_from(["dcfg", "cfg", "none", None]), st.sampled_from(["DCFG", "", "cfg ", 3])),
    "scale": (st.floats(0, 10) | st.integers(0, 5) | st.none(),
              st.sampled_from([math.nan, math.inf, "3", True, -0.5, -5])),
    "invariant_weight": (st.floats(0, 3), st.sampled_from([math.nan, -math.inf, "1", [1.0]])),
    "steps": (st.integers(1, 2), st.sampled_from([0, -1, 1.5, 2000, "2", True])),
    "chunk_size": (st.integers(1, 4), st.sampled_from([0, -2, 1.0, "8", True])),
    "weights": (st.just([2.0, 1.0]), st.sampled_from([[math.nan, 1.0], ["2", 1.0], [1.0], "2,1", 3])),
    "groups": (st.sampled_from(["dag", "per_attribute", None]), st.sampled_from(
        ["tree", [["p"], ["i"]], [["p", "i", "b", "c", "p"]], [["zz"], ["p", "i", "b", "c"]], 5,
         [["p", "i", "b"], "c"]])),
}

#: Argument names a message may name without quotes (node names and bad keys must be quoted).
ARGUMENTS = {"image", "nodes", *GUIDANCE_ARGS}


@given(st.sampled_from(sorted(GUIDANCE_ARGS)), st.booleans(), st.data())
def test_pipeline_guidance_arguments(pipe, batch, arg, good, data):
    x, parents = batch
    good_s, bad_s = GUIDANCE_ARGS[arg]
    value = data.draw(good_s if good else bad_s)
    kwargs = {"steps": 1, arg: value}
    if arg == "weights":  # explicit weights need explicit groups (and DCFG)
        kwargs["groups"] = [["p", "i"], ["b", "c"]]
    if arg in ("groups", "weights") or (arg == "invariant_weight"):
        kwargs["guidance"] = "dcfg"
    note(repr(kwargs))
    if not good:
        assert_refused(lambda: pipe.counterfactual(x, parents, do={"p": 2.0}, **kwargs), arg)
        return
    res = pipe.counterfactual(x, parents, do={"p": 2.0}, **kwargs)
    check_result(res, x)


# --------------------------------------------------------------------------------------------------- parsing
CLI_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
FINITE = st.integers(-10 ** 6, 10 ** 6) | st.floats(allow_nan=False, allow_infinity=False, width=64)
SPACE = st.sampled_from(["", " ", "  "])


@given(st.dictionaries(CLI_NAMES, FINITE, min_size=1, max_size=5), st.data())
def test_parse_round_trip(values, data):
    text = ",".join(f"{data.draw(SPACE)}{k}{data.draw(SPACE)}={data.draw(SPACE)}{v!r}{data.draw(SPACE)}"
                    for k, v in values.items())
    parsed = parse_assignments(text)
    assert parsed == values
    assert all(type(parsed[k]) is type(v) for k, v in values.items())  # ints stay ints
    assert parse_do(text) == values  # constants; a leading '-' is a negative constant, not a shift


@given(st.dictionaries(CLI_NAMES, st.tuples(st.sampled_from(["+=", "-=", "=+"]),
                                            st.floats(0, 1e6) | st.integers(0, 10 ** 6)), min_size=1, max_size=5))
def test_parse_do_shifts(shifts):
    text = ",".join(f"{k}{op}{d!r}" for k, (op, d) in shifts.items())
    do = parse_do(text)
    x = torch.tensor([0.5, 2.0], dtype=torch.float64)
    for k, (op, d) in shifts.items():
        assert callable(do[k])
        torch.testing.assert_close(do[k](x), x - d if op == "-=" else x + d)
    with pytest.raises(ValueError, match="--parents"):  # --parents takes no shifts
        parse_assignments(text.replace("=+", "+="))


MALFORMED = {
    "missing '='": lambda name: name,
    "empty value": lambda name: f"{name}=",
    "not a number": lambda name: f"{name}=abc",
    "nan": lambda name: f"{name}=nan",
    "inf": lambda name: f"{name}=-inf",
    "overflow": lambda name: f"{name}=1e999",
    "bad name": lambda name: f"{name} x=1",
    "double '='": lambda name: f"{name}==1",
}


@given(st.lists(st.tuples(CLI_NAMES, st.integers(0, 9)), unique_by=lambda t: t[0], max_size=3),
       st.sampled_from(sorted(MALFORMED) + ["empty item", "duplicate", "empty text"]), CLI_NAMES,
       st.sampled_from([("--parents", parse_assignments), ("--do", parse_do)]), st.data())
def test_parse_malformed(good, why, name, parser, data):
    source, parse = parser
    assume(name not in {k for k, _ in good})
    items = [f"{k}={v}" for k, v in good]
    if why == "empty text":
        text, key = data.draw(st.sampled_from(["", " ", ",", "\t"])), source
    elif why == "empty item":
        text, key = ",".join(items + [f"{name}=1", ""]), "empty item"
        if data.draw(st.booleans()):
            text = ",".join([f"{name}=1", "", *items])
    elif why == "duplicate":
        text, key = ",".join(items + [f"{name}=1", f"{name}=2"]), name
    else:
        bad = MALFORMED[why](name)
        position = data.draw(st.integers(0, len(items)))
        text, key = ",".join(items[:position] + [bad] + items[position:]), name
    note(repr(text))
    with pytest.raises(ValueError) as info:
        parse(text, source)
    message = str(info.value)
    named = key in message if why in ("empty text", "empty item") else f"'{key}" in message  # quoted: 'a', 'a x'
    assert message.startswith(source) and named, message


@given(st.text(alphabet=string.ascii_letters[:6] + "0123456789 =+-.,eEnaif_", max_size=30))
def test_parse_arbitrary_text(text):
    for source, parse in (("--parents", parse_assignments), ("--do", parse_do)):
        try:
            out = parse(text, source)
        except ValueError as e:
            assert str(e).startswith(source), str(e)
            continue
        assert out and all(isinstance(k, str) and k.strip() == k for k in out)
        for v in out.values():
            assert callable(v) or (isinstance(v, (int, float)) and math.isfinite(v))
