"""The dowhy bridge: effect estimates with known answers, refuters, graph round trips, DAG falsification,
and every validation error.

The confounded toy graph (linear-Gaussian, true effect of t on y is 2.0)::

        z                z ~ N(0, 1)
       / \\               t = 0.8 z + e_t
      v   v              y = 2.0 t + 1.5 z + e_y
      t -> y

Regressing y on t alone is biased by 1.5 cov(z, t) / var(t) = 1.5 * 0.8 / 1.64 = 0.732.

The chain used for falsification: a -> b -> c. It implies a ⊥ c | b and nothing else; a fork
a -> b, a -> c implies b ⊥ c | a, a collider a -> b <- c implies a ⊥ c, and dropping b -> c implies
c ⊥ a, c ⊥ b.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch
from scm_helpers import MORPHO_GRAPH, morpho_rows

import scm.dowhy as scm_dowhy
from scm import SCM, CausalGraph, NodeSpec
from scm.effects import (
    EffectEstimate,
    FalsificationReport,
    estimate_effect,
    falsify_graph,
    gcm_frame,
    graph_from_dowhy,
    graph_from_gcm,
    to_dowhy,
    to_gcm,
)

dowhy = pytest.importorskip("dowhy")
pytestmark = pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")  # inside dowhy, with pandas 3
gcm = pytest.importorskip("dowhy.gcm")

REAL = {"kind": "real"}
TRUE_EFFECT = 2.0
NAIVE_BIAS = 1.5 * 0.8 / (0.8**2 + 1.0)

CONFOUNDED = CausalGraph.from_edges([("z", "t"), ("z", "y"), ("t", "y")], {v: REAL for v in "zty"})
NO_ADJUSTMENT = CausalGraph.from_edges([("z", "y"), ("t", "y")], {v: REAL for v in "zty"})  # forgets z -> t


def confounded_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    t = 0.8 * z + rng.normal(size=n)
    y = TRUE_EFFECT * t + 1.5 * z + rng.normal(size=n)
    return {"z": z, "t": t, "y": y}


def chain_rows(n: int, seed: int, linear: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    if linear:
        b = a + rng.normal(size=n)
        c = b + rng.normal(size=n)
    else:
        b = np.tanh(2 * a) + 0.3 * rng.normal(size=n)
        c = b**2 + 0.3 * rng.normal(size=n)
    return {"a": a, "b": b, "c": c}


def abc(edges: list[tuple[str, str]]) -> CausalGraph:
    return CausalGraph.from_edges(edges, {v: REAL for v in "abc"})


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return confounded_rows(3000, seed=0)


@pytest.fixture(scope="module")
def adjusted(data) -> EffectEstimate:
    return estimate_effect(CONFOUNDED, data, "t", "y", control_value=0.0, treatment_value=1.0)


# ====================================================================== effect estimation
def test_backdoor_estimate_recovers_the_effect(adjusted: EffectEstimate) -> None:
    lo, hi = adjusted.confidence_interval
    assert lo < TRUE_EFFECT < hi
    assert abs(adjusted.value - TRUE_EFFECT) < 0.1
    assert hi - lo < 0.2  # an informative interval, not a vacuous one
    assert adjusted.adjustment_set == ("z",)
    assert adjusted.method == "backdoor.linear_regression"
    assert (adjusted.treatment, adjusted.outcome) == ("t", "y")
    assert (adjusted.control_value, adjusted.treatment_value) == (0.0, 1.0)
    assert "backdoor" in adjusted.estimand and "z" in adjusted.estimand
    assert adjusted.identified_estimand.get_adjustment_set() == ["z"]
    assert float(adjusted.dowhy_estimate.value) == adjusted.value


def test_naive_estimate_is_biased(data, adjusted: EffectEstimate) -> None:
    naive = estimate_effect(NO_ADJUSTMENT, data, "t", "y", control_value=0.0, treatment_value=1.0, refuters=None)
    assert naive.adjustment_set == ()
    assert abs(naive.value - (TRUE_EFFECT + NAIVE_BIAS)) < 0.1
    assert not naive.confidence_interval[0] < TRUE_EFFECT < naive.confidence_interval[1]
    assert naive.value - adjusted.value > 0.5


def test_refuters_run_and_pass(adjusted: EffectEstimate) -> None:
    assert list(adjusted.refutations) == ["placebo_treatment_refuter", "random_common_cause"]
    placebo = adjusted.refutations["placebo_treatment_refuter"]
    common = adjusted.refutations["random_common_cause"]
    assert abs(placebo.new_effect) < 0.1                    # a permuted treatment has no effect
    assert abs(common.new_effect - adjusted.value) < 0.02  # an independent extra cause changes nothing
    for r in (placebo, common):
        assert r.estimated_effect == pytest.approx(adjusted.value)
        assert r.p_value is not None and r.passed == (r.p_value > 0.05)
        assert r.passed
        assert r.result is not None
    assert adjusted.passed
    text = str(adjusted)
    assert "placebo_treatment_refuter" in text and "passed" in text


def test_default_treatment_values(data) -> None:
    res = estimate_effect(CONFOUNDED, data, "t", "y", refuters=None)
    median = float(np.median(data["t"]))
    assert res.control_value == pytest.approx(median)
    assert res.treatment_value == pytest.approx(median + 1.0)
    assert abs(res.value - TRUE_EFFECT) < 0.1


def test_refutations_follow_the_seed(data) -> None:
    def placebo(seed: int) -> float:
        res = estimate_effect(CONFOUNDED, data, "t", "y", refuters=["placebo_treatment_refuter"],
                              num_simulations=5, confidence_intervals=False, seed=seed)
        assert res.confidence_interval is None
        return res.refutations["placebo_treatment_refuter"].new_effect

    state = np.random.get_state()[1].copy()
    assert placebo(1) == placebo(1)
    assert placebo(1) != placebo(2)
    assert np.array_equal(np.random.get_state()[1], state)  # the global generator is restored


def test_fitted_scm_agrees_with_dowhy(data, adjusted: EffectEstimate) -> None:
    scm = SCM(CONFOUNDED, seed=0)
    scm.fit({k: torch.tensor(v, dtype=torch.float32) for k, v in data.items()}, epochs=20, progress=False)
    ace = float(scm.average_causal_effect("y", {"t": 1.0}, {"t": 0.0}, n=20000, seed=0))
    assert abs(ace - adjusted.value) < 0.1
    assert abs(ace - TRUE_EFFECT) < 0.15


def test_binary_treatment_with_propensity_weighting_and_placebo() -> None:
    """dowhy's propensity estimators store the score in the data; a placebo that reused it failed."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=2000)
    b = (x + rng.normal(size=2000) > 0).astype(np.int64)
    y = 2.0 * b + x + rng.normal(size=2000)
    frame = pd.DataFrame({"x": x, "b": b, "y": y})
    g = CausalGraph.from_edges([("x", "b"), ("x", "y"), ("b", "y")],
                               {"x": REAL, "b": {"kind": "binary"}, "y": REAL})
    res = estimate_effect(g, frame, "b", "y", method="backdoor.propensity_score_weighting", num_simulations=20)
    assert (res.control_value, res.treatment_value) == (0, 1)
    assert abs(res.value - TRUE_EFFECT) < 0.3  # inverse weighting is noisier than regression
    assert abs(res.refutations["placebo_treatment_refuter"].new_effect) < 0.3
    assert res.passed
    assert list(frame.columns) == ["x", "b", "y"]  # the caller's frame is untouched


def test_no_directed_path_warns_and_returns_zero() -> None:
    rows = chain_rows(500, seed=0)
    with pytest.warns(UserWarning, match="no directed path from 'b' to 'c'"):
        res = estimate_effect(abc([("a", "b"), ("a", "c")]), rows, "b", "c")
    assert res.value == 0.0 and res.confidence_interval is None and dict(res.refutations) == {}


def test_instrumental_variable_in_a_chain() -> None:
    """a -> b -> c: a is an instrument for b -> c, whose effect is 1."""
    res = estimate_effect(abc([("a", "b"), ("b", "c")]), chain_rows(3000, seed=0), "b", "c",
                          method="iv.instrumental_variable", refuters=None, confidence_intervals=False,
                          control_value=0.0, treatment_value=1.0)
    assert abs(res.value - 1.0) < 0.1 and res.adjustment_set == ()


# ====================================================================== conversions
def test_to_dowhy_drops_the_image_and_keeps_classes(morpho_graph: CausalGraph) -> None:
    rows, _ = morpho_rows(400, seed=0)
    rows["image"] = torch.zeros(400, 1, 28, 28)  # ignored
    model = to_dowhy(morpho_graph, rows, "thickness", "intensity")
    assert isinstance(model, dowhy.CausalModel)
    assert set(model._graph._graph.nodes) == {"thickness", "intensity", "digit"}
    assert model._data["digit"].dtype == np.int64 and model._data["thickness"].dtype == np.float64
    assert list(model._data.columns) == ["thickness", "intensity", "digit"]
    estimand = model.identify_effect()
    assert estimand.get_adjustment_set() == []
    est = model.estimate_effect(estimand, method_name="backdoor.linear_regression")
    assert float(est.value) > 0  # thicker strokes are brighter


def attribute_graph(g: CausalGraph) -> CausalGraph:
    return CausalGraph({n: g.spec(n) for n in g.attribute_nodes()},
                       [(a, b) for a, b in g.to_networkx().edges() if g.image_node not in (a, b)])


RICH = CausalGraph.from_dict({
    "nodes": {"digit": {"kind": "categorical", "cardinality": 10}, "slant": REAL,
              "thickness": {"kind": "positive"}, "intensity": {"kind": "interval", "low": 0, "high": 255},
              "flag": {"kind": "binary"}, "image": {"kind": "image", "shape": [1, 28, 28]}},
    "edges": [["digit", "slant"], ["slant", "thickness"], ["thickness", "intensity"], ["digit", "flag"],
              ["thickness", "image"], ["intensity", "image"], ["slant", "image"]]})


@pytest.mark.parametrize("via", ["CausalModel", "dowhy CausalGraph", "gcm", "networkx", "gml"])
def test_round_trip_keeps_nodes_edges_and_kinds(via: str) -> None:
    want = attribute_graph(RICH)
    if via in ("CausalModel", "dowhy CausalGraph"):
        rng = np.random.default_rng(0)
        rows = {"digit": rng.integers(0, 10, 50), "slant": rng.normal(size=50), "thickness": rng.uniform(1, 3, 50),
                "intensity": rng.uniform(0, 255, 50), "flag": rng.integers(0, 2, 50)}
        model = to_dowhy(RICH, rows, "slant", "intensity")
        back = graph_from_dowhy(model if via == "CausalModel" else model._graph)
    elif via == "gcm":
        back = graph_from_gcm(to_gcm(RICH))
    elif via == "networkx":
        back = graph_from_dowhy(scm_dowhy.attribute_digraph(RICH))
    else:
        back = graph_from_dowhy("\n".join(nx.generate_gml(scm_dowhy.attribute_digraph(RICH))))
    assert back == want
    assert set(back.nodes) == set(want.nodes) and back.to_dict()["nodes"] == want.to_dict()["nodes"]
    assert sorted(back.to_dict()["edges"]) == sorted(want.to_dict()["edges"])


@pytest.mark.parametrize("column, kind, cardinality", [
    (np.array([0.5, 1.0, 2.0]), "positive", None),
    (np.array([-0.5, 1.0, 2.0]), "real", None),
    (np.array([0.0, 1.0, 2.0]), "real", None),     # a float zero is not > 0
    (np.array([0, 1, 1]), "binary", 2),
    (np.array([True, False, True]), "binary", 2),
    (np.array([0, 4, 2]), "categorical", 5),
    (np.array([-1, 4, 2]), "real", None),          # negative integers are not class indices
    (np.array(["0", "3", "1"], dtype=object), "categorical", 4),  # gcm's form of classes
])
def test_kind_inference_rule(column, kind, cardinality) -> None:
    g = graph_from_dowhy(nx.DiGraph([("p", "q")]), specs={"q": REAL}, data={"p": column, "q": np.zeros(3)})
    assert g.spec("p").kind == kind and g.spec("p").cardinality == cardinality


def test_specs_override_attributes_and_data() -> None:
    h = scm_dowhy.attribute_digraph(CONFOUNDED)
    g = graph_from_dowhy(h, specs={"t": NodeSpec("positive"), "y": {"kind": "interval", "low": 0, "high": 1}})
    assert [g.spec(n).kind for n in g.nodes] == ["real", "positive", "interval"]


def test_to_gcm_picks_the_model_class_and_fits() -> None:
    assert type(to_gcm(CONFOUNDED)) is gcm.InvertibleStructuralCausalModel
    assert type(to_gcm(RICH)) is gcm.StructuralCausalModel  # the binary child flag needs a classifier
    model = to_gcm(CONFOUNDED, confounded_rows(1000, seed=1), seed=0)
    np.random.seed(0)
    ate = gcm.average_causal_effect(model, "y", interventions_alternative={"t": lambda v: 1.0},
                                    interventions_reference={"t": lambda v: 0.0}, num_samples_to_draw=4000)
    assert abs(ate - TRUE_EFFECT) < 0.15


def test_to_gcm_with_a_categorical_child() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    d = np.digitize(x + 0.3 * rng.normal(size=1000), [-0.5, 0.5])  # classes 0, 1, 2, ordered by x
    g = CausalGraph.from_edges([("x", "d")], {"x": REAL, "d": {"kind": "categorical", "cardinality": 3}})
    model = to_gcm(g, {"x": x, "d": d})
    assert isinstance(model.causal_mechanism("d"), gcm.ClassifierFCM)
    np.random.seed(0)
    drawn = gcm.interventional_samples(model, {"x": lambda v: 2.0}, num_samples_to_draw=200)
    classes = drawn["d"].astype(int)
    assert classes.between(0, 2).all() and (classes == 2).mean() > 0.9
    assert gcm_frame(g, {"x": x[:3], "d": d[:3]})["d"].tolist() == [str(v) for v in d[:3]]


# ====================================================================== falsification
@pytest.mark.parametrize("method", ["partial_correlation", "kernel"])
def test_falsify_passes_the_true_chain(method: str) -> None:
    rows = chain_rows(300 if method == "kernel" else 2000, seed=0, linear=method != "kernel")
    report = falsify_graph(abc([("a", "b"), ("b", "c")]), rows, method=method)
    assert isinstance(report, FalsificationReport)
    assert [(t.x, t.y, t.given) for t in report.tests] == [("c", "a", ("b",))]
    assert not report.rejected and report.violations == ()
    assert report.tests[0].p_value > 0.05
    assert "0 of 1" in report.summary and "consistent" in report.summary


WRONG = {
    "no b -> c": ([("a", "b")], {"a ⊥ c", "c ⊥ b"}),
    "fork at a": ([("a", "b"), ("a", "c")], {"b ⊥ c | a"}),
    "collider at b": ([("a", "b"), ("c", "b")], {"a ⊥ c"}),
}


@pytest.mark.parametrize("method", ["partial_correlation", "kernel"])
@pytest.mark.parametrize("wrong", list(WRONG))
def test_falsify_flags_wrong_graphs(method: str, wrong: str) -> None:
    edges, must_fail = WRONG[wrong]
    rows = chain_rows(300 if method == "kernel" else 2000, seed=0, linear=method != "kernel")
    report = falsify_graph(abc(edges), rows, method=method)
    assert report.rejected
    assert must_fail <= {str(t) for t in report.violations}
    assert "contradict" in report.summary
    frame = report.to_frame()
    assert list(frame.columns) == ["x", "y", "given", "p_value", "p_adjusted", "rejected"]
    assert (frame["p_adjusted"] >= frame["p_value"]).all() and frame["rejected"].any()


@pytest.mark.parametrize("method", ["approx_kernel", "regression"])
def test_other_dowhy_tests_pass_the_chain_and_flag_the_fork(method: str) -> None:
    rows = chain_rows(300, seed=0, linear=False)
    assert not falsify_graph(abc([("a", "b"), ("b", "c")]), rows, method=method).rejected
    assert falsify_graph(abc([("a", "b"), ("a", "c")]), rows, method=method).rejected


def test_falsify_on_the_morpho_graph(morpho_graph: CausalGraph) -> None:
    """The image node is dropped; digit is independent of the stroke, intensity depends on thickness."""
    rows = morpho_data(500)
    report = falsify_graph(morpho_graph, rows)
    assert not report.rejected
    assert {(frozenset((t.x, t.y)), t.given) for t in report.tests} == {
        (frozenset(("thickness", "digit")), ()), (frozenset(("intensity", "digit")), ()),
        (frozenset(("intensity", "digit")), ("thickness",))}
    cut = CausalGraph.from_edges([], {n: morpho_graph.spec(n) for n in morpho_graph.attribute_nodes()})
    bad = falsify_graph(cut, rows)
    assert len(bad.tests) == 3
    assert {frozenset((t.x, t.y)) for t in bad.violations} == {frozenset(("thickness", "intensity"))}


def test_markov_equivalent_graph_is_not_flagged() -> None:
    """a <- b -> c implies the chain's independence a ⊥ c | b: no CI test can tell them apart."""
    report = falsify_graph(abc([("b", "a"), ("b", "c")]), chain_rows(2000, seed=0), method="partial_correlation")
    assert not report.rejected and {str(t) for t in report.tests} <= {"a ⊥ c | b", "c ⊥ a | b"}


def test_nonlinear_dependence_needs_the_kernel_test() -> None:
    """c = b^2 is uncorrelated with b: partial correlation misses what KCI catches."""
    rows = chain_rows(300, seed=0, linear=False)
    no_edge = abc([("a", "b")])
    assert not falsify_graph(no_edge, rows, method="partial_correlation").rejected
    assert falsify_graph(no_edge, rows, method="kernel").rejected


def test_corrections_and_row_subset() -> None:
    rows = chain_rows(2000, seed=0)
    g = abc([("a", "b")])
    none = falsify_graph(g, rows, method="partial_correlation", correction="none", max_rows=None)
    bonf = falsify_graph(g, rows, method="partial_correlation", correction="bonferroni", max_rows=None)
    assert none.n_rows == 2000 and falsify_graph(g, rows, method="partial_correlation").n_rows == 1000
    m = len(none.tests)
    for a, b in zip(none.tests, bonf.tests):
        assert a.p_adjusted == a.p_value and b.p_adjusted == pytest.approx(min(1.0, m * a.p_value))


def test_complete_graph_implies_nothing(data) -> None:
    report = falsify_graph(CONFOUNDED, data, method="partial_correlation")
    assert report.tests == () and not report.rejected and "no conditional independence" in report.summary


def test_categorical_node_in_kernel_test() -> None:
    rng = np.random.default_rng(0)
    d = rng.integers(0, 3, 300)
    x = np.array([-2.0, 0.0, 2.0])[d] + 0.5 * rng.normal(size=300)
    y = rng.normal(size=300)
    specs = {"d": {"kind": "categorical", "cardinality": 3}, "x": REAL, "y": REAL}
    rows = {"d": d, "x": x, "y": y}
    assert not falsify_graph(CausalGraph.from_edges([("d", "x")], specs), rows).rejected
    assert falsify_graph(CausalGraph.from_edges([("d", "y")], specs), rows).rejected


def test_permutation_test_cannot_falsify_a_three_node_chain() -> None:
    """A third of the 3! node permutations of a chain share its Markov equivalence class."""
    report = falsify_graph(abc([("a", "b")]), chain_rows(1000, seed=0), method="partial_correlation",
                           permutation_test=True)
    assert report.rejected                      # the local tests catch the missing edge ...
    assert report.falsifiable is False and report.falsified is False  # ... dowhy's global test cannot
    assert report.evaluation is not None and "not falsifiable" in report.summary


# ====================================================================== validation errors
@pytest.fixture
def rows() -> dict[str, np.ndarray]:
    return confounded_rows(50, seed=0)


def morpho_data(n: int = 50) -> dict[str, torch.Tensor]:
    return morpho_rows(n, seed=0)[0]


ESTIMATE_ERRORS = [
    # (graph, data override, kwargs, error, match)
    ("conf", None, {"treatment": "q"}, ValueError, r"unknown treatment 'q'.*\['z', 't', 'y'\]"),
    ("conf", None, {"outcome": "q"}, ValueError, r"unknown outcome 'q'"),
    ("conf", None, {"treatment": 3}, TypeError, r"treatment must be one node name"),
    ("conf", None, {"outcome": "t"}, ValueError, r"treatment and outcome are the same node 't'"),
    ("morpho", None, {"treatment": "image", "outcome": "intensity"}, ValueError,
     r"treatment 'image' is the image node"),
    ("morpho", None, {"treatment": "thickness", "outcome": "image"}, ValueError, r"outcome 'image' is the image node"),
    ("conf", [1, 2], {}, TypeError, r"data must be a dict node -> \(N,\) values or a pandas DataFrame"),
    ("conf", "drop z", {}, ValueError, r"data is missing column\(s\) \['z'\]"),
    ("conf", "extra w", {}, ValueError, r"data has unknown column\(s\) \['w'\]"),
    ("conf", "nan", {}, ValueError, r"node 'y': data value nan at row 0 is not finite"),
    ("conf", "short", {}, ValueError, r"columns of different lengths"),
    ("conf", "two rows", {}, ValueError, r"data has 2 row\(s\)"),
    ("morpho", "negative thickness", {"treatment": "thickness", "outcome": "intensity"}, ValueError,
     r"node 'thickness': data value -1.0 at row 0 is outside the support"),
    ("conf", None, {"method": "linear_regression"}, ValueError, r"method must be '<identifier>.<estimator>'"),
    ("conf", None, {"method": "sideways.linear_regression"}, ValueError, r"unknown identifier 'sideways'"),
    ("conf", None, {"method": "backdoor.magic"}, ValueError, r"dowhy has no estimator 'magic'"),
    ("conf", None, {"method": "iv.instrumental_variable"}, ValueError, r"needs a 'iv' estimand.*\['backdoor'"),
    ("conf", None, {"refuters": ["bogus"]}, ValueError, r"unknown refuter 'bogus'; allowed"),
    ("conf", None, {"refuters": ["random_common_cause"] * 2}, ValueError, r"lists a refuter twice"),
    ("conf", None, {"refuters": [], "refuter_params": {"random_common_cause": {}}}, ValueError,
     r"refuter_params has refuter 'random_common_cause', which is not in refuters"),
    ("conf", None, {"refuter_params": {"random_common_cause": 3}}, TypeError,
     r"refuter_params\['random_common_cause'\]"),
    ("conf", None, {"control_value": 0.0}, ValueError, r"pass both control_value and treatment_value for 't'"),
    ("conf", None, {"control_value": 1.0, "treatment_value": 1.0}, ValueError, r"both 1.0"),
    ("conf", None, {"control_value": "low", "treatment_value": 1.0}, TypeError, r"control_value must be a number"),
    ("morpho", None, {"treatment": "digit", "outcome": "intensity", "control_value": 0, "treatment_value": 12},
     ValueError, r"treatment_value 12 is not a valid value of treatment 'digit'.*0\.\.9"),
    ("interval", None, {"treatment": "i", "outcome": "y"}, ValueError,
     r"default treatment values .* of interval node 'i' leave its support"),
    ("conf", None, {"num_simulations": 1}, ValueError, r"num_simulations must be an integer >= 2"),
    ("conf", None, {"significance_level": 1.5}, ValueError, r"significance_level must be a number in \(0, 1\)"),
    ("conf", None, {"confidence_level": 0}, ValueError, r"confidence_level must be a number in \(0, 1\)"),
    ("conf", None, {"seed": 1.5}, TypeError, r"seed must be a non-negative int"),
    ("conf", None, {"method_params": 3}, TypeError, r"method_params must be a dict"),
]


def _case(graph_key: str, override, rows):
    if graph_key == "morpho":
        g, d = CausalGraph.from_dict(MORPHO_GRAPH), morpho_data()
        if override == "negative thickness":
            d = dict(d, thickness=torch.cat([torch.tensor([-1.0]), d["thickness"][1:]]))
        return g, d, {"treatment": "thickness", "outcome": "intensity"}
    if graph_key == "interval":
        g = CausalGraph.from_edges([("i", "y")], {"i": {"kind": "interval", "low": 0, "high": 1}, "y": REAL})
        return g, {"i": np.linspace(0.5, 1.0, 50), "y": np.zeros(50)}, {}
    d = dict(rows)
    if override == "drop z":
        del d["z"]
    elif override == "extra w":
        d["w"] = d["z"]
    elif override == "nan":
        d["y"] = np.where(np.arange(50) == 0, np.nan, d["y"])
    elif override == "short":
        d["y"] = d["y"][:40]
    elif override == "two rows":
        d = {k: v[:2] for k, v in d.items()}
    elif override is not None:
        d = override
    return CONFOUNDED, d, {"treatment": "t", "outcome": "y"}


@pytest.mark.parametrize("graph_key, override, kwargs, error, match", ESTIMATE_ERRORS,
                         ids=[m[:40] for *_, m in ESTIMATE_ERRORS])
def test_estimate_effect_errors(rows, graph_key, override, kwargs, error, match) -> None:
    g, d, base = _case(graph_key, override, rows)
    args = {**base, **kwargs}
    with pytest.raises(error, match=match):
        estimate_effect(g, d, args.pop("treatment"), args.pop("outcome"), **args)


def test_graph_type_and_empty_graph_errors(rows) -> None:
    with pytest.raises(TypeError, match="graph must be a scm.CausalGraph, got DiGraph"):
        estimate_effect(nx.DiGraph([("t", "y")]), rows, "t", "y")
    only_image = CausalGraph.from_dict({"nodes": {"img": {"kind": "image", "shape": [1, 2, 2]}}, "edges": []})
    with pytest.raises(ValueError, match="no attribute"):
        to_gcm(only_image)
    with pytest.raises(TypeError, match="graph must be a scm.CausalGraph"):
        falsify_graph("a -> b", rows)


def test_to_dowhy_validates_like_estimate_effect(rows) -> None:
    with pytest.raises(ValueError, match="treatment and outcome are the same node 'z'"):
        to_dowhy(CONFOUNDED, rows, "z", "z")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['t'\]"):
        to_dowhy(CONFOUNDED, {"z": rows["z"], "y": rows["y"]}, "z", "y")


def test_to_gcm_errors(rows) -> None:
    with pytest.raises(ValueError, match=r"unknown quality 'perfect'; allowed: \['good', 'better', 'best'\]"):
        to_gcm(CONFOUNDED, rows, quality="perfect")
    with pytest.raises(TypeError, match="seed must be a non-negative int"):
        to_gcm(CONFOUNDED, rows, seed=-1)


def test_graph_from_dowhy_errors() -> None:
    with pytest.raises(TypeError, match="cannot read a graph from list"):
        graph_from_dowhy([("a", "b")])
    with pytest.raises(ValueError, match=r"specs has unknown node\(s\) \['q'\]"):
        graph_from_dowhy(nx.DiGraph([("a", "b")]), specs={"q": REAL, "a": REAL, "b": REAL})
    with pytest.raises(ValueError, match=r"node 'a' has no kind.*pass specs=\{'a': \{'kind': 'real'\}\}"):
        graph_from_dowhy(nx.DiGraph([("a", "b")]))
    with pytest.raises(ValueError, match=r"node 'b' has no kind.*the data has no column 'b'"):
        graph_from_dowhy(nx.DiGraph([("a", "b")]), data={"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"cannot infer the kind of node 'a' from its column of dtype"):
        graph_from_dowhy(nx.DiGraph([("a", "b")]), specs={"b": REAL}, data={"a": np.array(["x", "y"], dtype=object)})
    with pytest.raises(ValueError, match=r"cannot infer the kind of node 'a': its column has NaN/inf values"):
        graph_from_dowhy(nx.DiGraph([("a", "b")]), specs={"b": REAL}, data={"a": np.array([1.0, np.nan])})
    with pytest.raises(ValueError, match=r"could not parse the graph text as GML"):
        graph_from_dowhy("digraph { a -> b }")
    with pytest.raises(ValueError, match="the graph has a cycle"):
        graph_from_dowhy(nx.DiGraph([("a", "b"), ("b", "a")]), specs={"a": REAL, "b": REAL})
    with pytest.raises(TypeError, match="graph_from_gcm needs a dowhy.gcm causal model"):
        graph_from_gcm(nx.DiGraph([("a", "b")]))


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "pearson"}, r"unknown independence test method 'pearson'; allowed: \['kernel'"),
    ({"correction": "fdr"}, r"unknown correction 'fdr'; allowed: \['holm', 'bonferroni', 'none'\]"),
    ({"significance_level": 0.0}, r"significance_level must be a number in \(0, 1\)"),
    ({"max_rows": 5}, r"max_rows must be an integer >= 10 or None"),
    ({"n_permutations": 0}, r"n_permutations must be an integer >= 1 or None"),
])
def test_falsify_graph_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        falsify_graph(abc([("a", "b"), ("b", "c")]), chain_rows(50, seed=0), **kwargs)
