"""The bridge to dowhy: effect estimation, refutation and DAG checks on a :class:`~scm.CausalGraph`.

dowhy knows nothing about image nodes, so every function here works on the *attribute graph*: the
graph with its image node (if any) dropped. Node kinds travel with the graph as node attributes
(``kind``, ``low``, ``high``, ``cardinality``), so a dowhy or gcm graph made here converts back
without losing them.

==========================  ======================================================================
function                    what it does
==========================  ======================================================================
:func:`to_dowhy`            ``dowhy.CausalModel`` over the attribute graph and the data
:func:`to_gcm`              ``dowhy.gcm`` structural causal model (optionally fitted on data)
:func:`gcm_frame`           the data in gcm's form (discrete classes as strings)
:func:`graph_from_dowhy`    a dowhy / gcm / networkx / GML graph back to a :class:`~scm.CausalGraph`
:func:`estimate_effect`     identify, estimate and refute in one call -> :class:`EffectEstimate`
:func:`falsify_graph`       CI tests of the graph's local Markov conditions -> :class:`FalsificationReport`
==========================  ======================================================================

Data are a dict node -> ``(N,)`` tensor/array, or a pandas DataFrame, with one column per attribute
node (an image entry is ignored). Values are checked against each node's support; categorical and
binary columns stay integers (``int64``), continuous ones become ``float64``.

Example (the toy graph used throughout: a confounder ``z`` of the effect of ``t`` on ``y``)::

        z
       / \\
      v   v
      t -> y          t = z + e_t,   y = 2 t + 1.5 z + e_y

    >>> import numpy as np
    >>> from scm import CausalGraph
    >>> g = CausalGraph.from_edges([("z", "t"), ("z", "y"), ("t", "y")], {v: {"kind": "real"} for v in "zty"})
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=2000); t = z + rng.normal(size=2000); y = 2 * t + 1.5 * z + rng.normal(size=2000)
    >>> res = estimate_effect(g, {"z": z, "t": t, "y": y}, "t", "y", num_simulations=20)
    >>> round(res.value, 1), res.passed
    (2.0, True)
"""
from __future__ import annotations

import contextlib
import math
import numbers
import random
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import networkx as nx
import numpy as np
import pandas as pd
import torch

from scm.graph import CausalGraph, NodeSpec
from scm.support import as_values

if TYPE_CHECKING:  # dowhy is imported lazily: it takes seconds to import
    import dowhy

__all__ = [
    "EffectEstimate",
    "FalsificationReport",
    "IndependenceResult",
    "Refutation",
    "estimate_effect",
    "falsify_graph",
    "gcm_frame",
    "graph_from_dowhy",
    "graph_from_gcm",
    "to_dowhy",
    "to_gcm",
]

IDENTIFIERS: tuple[str, ...] = ("backdoor", "iv", "frontdoor", "general_adjustment")
REFUTERS: tuple[str, ...] = ("placebo_treatment_refuter", "random_common_cause", "data_subset_refuter",
                             "bootstrap_refuter")
CI_TESTS: tuple[str, ...] = ("kernel", "approx_kernel", "regression", "gcm", "partial_correlation")
CORRECTIONS: tuple[str, ...] = ("holm", "bonferroni", "none")
_SPEC_FIELDS = ("kind", "low", "high", "cardinality", "shape")


# ================================================================================ result types
@dataclass(frozen=True)
class Refutation:
    """The outcome of one dowhy refuter.

    Attributes:
        name: the refuter (e.g. ``"placebo_treatment_refuter"``).
        estimated_effect: the estimate that was refuted.
        new_effect: the mean effect over the refuter's simulated data sets (about 0 for a placebo).
        p_value: dowhy's significance test of the refuter (None if it reports none).
        passed: True when the refuter finds no problem, i.e. dowhy's test is not significant
            (``p_value > significance_level``): for the placebo refuter, 0 lies inside the placebo
            effects; for the others, the estimate lies inside the re-estimated effects.
        result: the ``dowhy`` ``CausalRefutation`` object.
    """

    name: str
    estimated_effect: float
    new_effect: float
    p_value: float | None
    passed: bool
    result: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class EffectEstimate:
    """One causal effect: ``E[outcome | do(treatment = treatment_value)] - E[... control_value]``.

    Attributes:
        treatment: the treatment node.
        outcome: the outcome node.
        value: the estimated effect.
        confidence_interval: ``(low, high)`` at ``confidence_level`` (None when not computed).
        confidence_level: level of the interval (e.g. 0.95).
        control_value: the reference treatment value.
        treatment_value: the alternative treatment value.
        method: the dowhy estimation method, e.g. ``"backdoor.linear_regression"``.
        estimand: the identified estimand, as dowhy prints it.
        adjustment_set: the backdoor adjustment set dowhy used (empty for other identifiers).
        refutations: refuter name -> :class:`Refutation`.
        identified_estimand: the ``dowhy`` ``IdentifiedEstimand`` object.
        dowhy_estimate: the ``dowhy`` ``CausalEstimate`` object.
        causal_model: the ``dowhy.CausalModel`` (for further ``refute_estimate`` calls).
    """

    treatment: str
    outcome: str
    value: float
    confidence_interval: tuple[float, float] | None
    confidence_level: float
    control_value: float
    treatment_value: float
    method: str
    estimand: str
    adjustment_set: tuple[str, ...]
    refutations: Mapping[str, Refutation]
    identified_estimand: Any = field(default=None, repr=False, compare=False)
    dowhy_estimate: Any = field(default=None, repr=False, compare=False)
    causal_model: Any = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        """True when every refuter passed (vacuously True without refuters)."""
        return all(r.passed for r in self.refutations.values())

    def __str__(self) -> str:
        ci = ("" if self.confidence_interval is None else
              f", {self.confidence_level:.0%} CI [{self.confidence_interval[0]:.4g}, "
              f"{self.confidence_interval[1]:.4g}]")
        lines = [f"effect of do({self.treatment}: {self.control_value:g} -> {self.treatment_value:g}) on "
                 f"{self.outcome}: {self.value:.4g}{ci}  ({self.method}, adjusting for "
                 f"{list(self.adjustment_set)})"]
        for r in self.refutations.values():
            p = "n/a" if r.p_value is None else f"{r.p_value:.3g}"
            lines.append(f"  {r.name}: new effect {r.new_effect:.4g}, p = {p}, "
                         f"{'passed' if r.passed else 'FAILED'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class IndependenceResult:
    """One independence the graph implies, ``x ⊥ y | given``, and its test on the data.

    Attributes:
        x: a node.
        y: a non-descendant of ``x`` that is not a parent of ``x``.
        given: the parents of ``x`` (the local Markov condition), possibly empty.
        p_value: the test's p-value (null hypothesis: the independence holds).
        p_adjusted: ``p_value`` after the multiple-testing correction.
        rejected: ``p_adjusted <= significance_level``: the data contradict this independence.
    """

    x: str
    y: str
    given: tuple[str, ...]
    p_value: float
    p_adjusted: float
    rejected: bool

    def __str__(self) -> str:
        given = f" | {', '.join(self.given)}" if self.given else ""
        return f"{self.x} ⊥ {self.y}{given}"


@dataclass(frozen=True)
class FalsificationReport:
    """Tests of a DAG's implied conditional independences against data.

    Attributes:
        tests: one :class:`IndependenceResult` per implied independence (local Markov conditions,
            each unordered pair with the same conditioning set tested once).
        method: the independence test.
        significance_level: the level of each (corrected) test.
        correction: the multiple-testing correction (``holm``, ``bonferroni`` or ``none``).
        n_rows: rows the tests used.
        rejected: True when at least one implied independence is rejected: the data contradict the graph.
        summary: a one-paragraph verdict.
        falsified: dowhy's permutation-test verdict (None unless ``permutation_test=True``).
        falsifiable: whether dowhy's permutation test can tell this graph from random node permutations
            (None unless ``permutation_test=True``).
        evaluation: the ``dowhy.gcm.falsify.EvaluationResult`` (None unless ``permutation_test=True``).
    """

    tests: tuple[IndependenceResult, ...]
    method: str
    significance_level: float
    correction: str
    n_rows: int
    rejected: bool
    summary: str
    falsified: bool | None = None
    falsifiable: bool | None = None
    evaluation: Any = field(default=None, repr=False, compare=False)

    @property
    def violations(self) -> tuple[IndependenceResult, ...]:
        """The rejected independences."""
        return tuple(t for t in self.tests if t.rejected)

    def to_frame(self) -> pd.DataFrame:
        """One row per independence: ``x, y, given, p_value, p_adjusted, rejected``."""
        return pd.DataFrame([{"x": t.x, "y": t.y, "given": ", ".join(t.given), "p_value": t.p_value,
                              "p_adjusted": t.p_adjusted, "rejected": t.rejected} for t in self.tests],
                            columns=["x", "y", "given", "p_value", "p_adjusted", "rejected"])

    def __str__(self) -> str:
        return self.summary


# ================================================================================ validation
def _check_graph(graph: Any) -> CausalGraph:
    if not isinstance(graph, CausalGraph):
        raise TypeError(f"graph must be a scm.CausalGraph, got {type(graph).__name__}; build one with "
                        f"CausalGraph.from_dict(...) or convert a dowhy graph with graph_from_dowhy(...)")
    if not graph.attribute_nodes():
        raise ValueError("the graph has no attribute (non-image) nodes; there is nothing for dowhy to model")
    return graph


def _check_node(graph: CausalGraph, name: Any, role: str) -> str:
    attrs = graph.attribute_nodes()
    if not isinstance(name, str):
        raise TypeError(f"{role} must be one node name (a str), got {type(name).__name__} {name!r}; "
                        f"choose one of {attrs}")
    if name == graph.image_node:
        raise ValueError(f"{role} {name!r} is the image node; dowhy works on the attribute graph only, so choose "
                         f"one of the attribute nodes {attrs} (image-level effects are the pipeline's job)")
    if name not in graph:
        raise ValueError(f"unknown {role} {name!r}; the attribute nodes of this graph are {attrs}")
    return name


def _check_pair(graph: CausalGraph, treatment: Any, outcome: Any) -> tuple[str, str]:
    t = _check_node(graph, treatment, "treatment")
    y = _check_node(graph, outcome, "outcome")
    if t == y:
        raise ValueError(f"treatment and outcome are the same node {t!r}; the effect of a node on itself is not "
                         f"defined, choose another outcome among {[n for n in graph.attribute_nodes() if n != t]}")
    return t, y


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__} {seed!r}")
    return int(seed)


def _check_level(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}; e.g. 0.05")
    return float(value)


def _to_frame(graph: CausalGraph, data: Any, what: str = "data") -> pd.DataFrame:
    """Validated attribute columns, in topological order: int64 for discrete, float64 for continuous."""
    if isinstance(data, pd.DataFrame):
        columns: Mapping[str, Any] = {c: data[c] for c in data.columns}
    elif isinstance(data, Mapping):
        columns = data
    else:
        raise TypeError(f"{what} must be a dict node -> (N,) values or a pandas DataFrame, got "
                        f"{type(data).__name__}")
    attrs = graph.attribute_nodes()
    unknown = [k for k in columns if k not in graph]
    if unknown:
        raise ValueError(f"{what} has unknown column(s) {unknown}; the attribute nodes of this graph are {attrs}; "
                         f"drop the extra columns or add the nodes to the graph")
    missing = [n for n in attrs if n not in columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; dowhy needs every attribute node {attrs} observed "
                         f"(add the columns, or drop the nodes from the graph)")
    out: dict[str, np.ndarray] = {}
    for n in attrs:
        spec = graph.spec(n)
        t = as_values(n, spec, columns[n], what=what, dtype=torch.float64)
        out[n] = t.detach().cpu().numpy().astype(np.int64 if spec.is_discrete else np.float64)
    sizes = {n: len(v) for n, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{what} has columns of different lengths {sizes}; every node needs one value per row")
    n_rows = next(iter(sizes.values()))
    if n_rows < 3:
        raise ValueError(f"{what} has {n_rows} row(s); effect estimation and independence tests need at least 3 "
                         f"(in practice hundreds)")
    return pd.DataFrame(out)


def _attribute_digraph(graph: CausalGraph) -> nx.DiGraph:
    """The attribute graph as a networkx DiGraph whose nodes carry their spec fields."""
    g = nx.DiGraph()
    for n in graph.attribute_nodes():
        g.add_node(n, **graph.spec(n).to_dict())
    image = graph.image_node
    g.add_edges_from((a, b) for a, b in graph.to_networkx().edges() if image not in (a, b))
    return g


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the global numpy and ``random`` generators (dowhy draws from them), then restore them."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# ================================================================================ conversions
def to_dowhy(graph: CausalGraph, data: Any, treatment: str, outcome: str) -> "dowhy.CausalModel":
    """A ``dowhy.CausalModel`` over the attribute graph (image node dropped) and the data.

    Use it for anything dowhy offers: ``identify_effect``, ``estimate_effect``, ``refute_estimate``,
    ``refute_graph``. The graph is passed to dowhy as a ``networkx.DiGraph`` whose nodes carry their
    kinds, so :func:`graph_from_dowhy` recovers the same graph.

    Args:
        graph: the causal DAG.
        data: a dict node -> ``(N,)`` values or a DataFrame, one column per attribute node.
        treatment: the treatment node.
        outcome: the outcome node.

    Returns:
        The ``dowhy.CausalModel``; its data has one column per attribute node (discrete columns ``int64``).

    Raises:
        TypeError: graph, data or node names of the wrong type.
        ValueError: unknown or image treatment/outcome, treatment == outcome, missing/unknown columns,
            values outside a node's support.

    Example:
        >>> import numpy as np
        >>> from scm import CausalGraph
        >>> g = CausalGraph.from_edges([("z", "t"), ("z", "y"), ("t", "y")], {v: {"kind": "real"} for v in "zty"})
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=500); t = z + rng.normal(size=500); y = 2 * t + z + rng.normal(size=500)
        >>> model = to_dowhy(g, {"z": z, "t": t, "y": y}, "t", "y")
        >>> estimand = model.identify_effect()
        >>> estimand.get_adjustment_set()
        ['z']
        >>> round(float(model.estimate_effect(estimand, method_name="backdoor.linear_regression").value), 1)
        2.0
    """
    graph = _check_graph(graph)
    t, y = _check_pair(graph, treatment, outcome)
    frame = _to_frame(graph, data)
    return _causal_model(graph, frame, t, y)


def _causal_model(graph: CausalGraph, frame: pd.DataFrame, treatment: str, outcome: str) -> "dowhy.CausalModel":
    from dowhy import CausalModel

    return CausalModel(data=frame, treatment=treatment, outcome=outcome, graph=_attribute_digraph(graph))


def to_gcm(graph: CausalGraph, data: Any = None, *, quality: str = "good", seed: int = 0,
           progress: bool = False) -> Any:
    """A ``dowhy.gcm`` structural causal model over the attribute graph (image node dropped).

    The model class follows the kinds: ``InvertibleStructuralCausalModel`` when every non-root node
    is continuous (so ``gcm.counterfactual_samples`` works), else ``StructuralCausalModel`` (a
    discrete non-root node needs a classifier mechanism, which is not invertible).

    Without ``data`` only the structure is set (assign mechanisms yourself, e.g. with
    ``gcm.auto.assign_causal_mechanisms``). With ``data`` the mechanisms are assigned and fitted:
    discrete non-root nodes get ``gcm.ClassifierFCM`` (logistic regression); every other node gets
    ``gcm.auto.assign_causal_mechanisms``'s choice (an empirical distribution for roots, an
    additive-noise regression for continuous non-roots).

    gcm reads categorical data as strings, so the fit uses :func:`gcm_frame` (class ``3`` becomes
    ``"3"``); pass data to gcm's functions the same way, and read its discrete samples back with
    ``.astype(int)``.

    Args:
        graph: the causal DAG.
        data: optional dict node -> ``(N,)`` values or DataFrame to assign and fit mechanisms on.
        quality: ``"good"``, ``"better"`` or ``"best"`` (gcm's ``AssignmentQuality``; better is slower).
        seed: seed of gcm's model selection and fitting.
        progress: show gcm's progress bars.

    Returns:
        The gcm model; ``model.graph`` nodes carry their kinds (for :func:`graph_from_gcm`).

    Example:
        >>> import numpy as np
        >>> from dowhy import gcm
        >>> from scm import CausalGraph
        >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
        >>> type(to_gcm(g)).__name__
        'InvertibleStructuralCausalModel'
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=1000)
        >>> model = to_gcm(g, {"x": x, "y": 3 * x + rng.normal(size=1000)})
        >>> ate = gcm.average_causal_effect(model, "y", interventions_alternative={"x": lambda v: 1.0},
        ...                                 interventions_reference={"x": lambda v: 0.0}, num_samples_to_draw=1000)
        >>> bool(abs(ate - 3.0) < 0.3)    # a Monte Carlo estimate of the true 3
        True
    """
    from dowhy import gcm

    graph = _check_graph(graph)
    qualities = {"good": gcm.auto.AssignmentQuality.GOOD, "better": gcm.auto.AssignmentQuality.BETTER,
                 "best": gcm.auto.AssignmentQuality.BEST}
    if quality not in qualities:
        raise ValueError(f"unknown quality {quality!r}; allowed: {list(qualities)}")
    seed = _check_seed(seed)
    frame = None if data is None else _to_frame(graph, data)
    g = _attribute_digraph(graph)
    discrete_children = [n for n in g if g.in_degree(n) > 0 and graph.spec(n).is_discrete]
    cls = gcm.StructuralCausalModel if discrete_children else gcm.InvertibleStructuralCausalModel
    model = cls(g)
    if frame is None:
        return model
    saved = gcm.config.show_progress_bars
    gcm.config.show_progress_bars = bool(progress)
    try:
        with _seeded(seed):
            for n in discrete_children:
                model.set_causal_mechanism(n, gcm.ClassifierFCM(gcm.ml.create_logistic_regression_classifier()))
            frame = _strings_for_discrete(graph, frame)
            gcm.auto.assign_causal_mechanisms(model, frame, quality=qualities[quality])
            gcm.fit(model, frame)
    finally:
        gcm.config.show_progress_bars = saved
    return model


def _strings_for_discrete(graph: CausalGraph, frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for n in out.columns:
        if graph.spec(n).is_discrete:
            out[n] = out[n].astype(str).astype(object)
    return out


def gcm_frame(graph: CausalGraph, data: Any) -> pd.DataFrame:
    """The attribute columns in the form ``dowhy.gcm`` reads: continuous as float, discrete as strings.

    Args:
        graph: the causal DAG.
        data: a dict node -> ``(N,)`` values or a DataFrame, one column per attribute node.

    Returns:
        A DataFrame with one column per attribute node; class ``k`` of a binary/categorical node is ``str(k)``.

    Example:
        >>> from scm import CausalGraph
        >>> g = CausalGraph.from_edges([("d", "y")], {"d": {"kind": "binary"}, "y": {"kind": "real"}})
        >>> gcm_frame(g, {"d": [0, 1, 1], "y": [0.5, 2.0, 1.0]})["d"].tolist()
        ['0', '1', '1']
    """
    return _strings_for_discrete(_check_graph(graph), _to_frame(graph, data))


def _infer_spec(name: str, column: pd.Series) -> NodeSpec:
    """The inference rule of :func:`graph_from_dowhy` (see its docstring)."""
    values = column.to_numpy()
    if values.dtype == object and all(isinstance(v, str) and v.isdigit() for v in values):
        values = values.astype(np.int64)  # gcm's categorical form: "0", "1", ...
    if values.dtype == np.bool_:
        return NodeSpec("binary", cardinality=2)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"cannot infer the kind of node {name!r} from its column of dtype {values.dtype}; encode "
                         f"it as numbers or pass specs={{{name!r}: {{'kind': ...}}}}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"cannot infer the kind of node {name!r}: its column has NaN/inf values; clean the data "
                         f"or pass specs={{{name!r}: {{'kind': ...}}}}")
    if np.issubdtype(values.dtype, np.integer) and values.min() >= 0:
        k = int(values.max()) + 1
        if k <= 2:
            return NodeSpec("binary", cardinality=2)
        return NodeSpec("categorical", cardinality=k)
    if values.min() > 0:
        return NodeSpec("positive")
    return NodeSpec("real")


def graph_from_dowhy(model_or_graph: Any, specs: Mapping[str, Any] | None = None,
                     data: Any = None) -> CausalGraph:
    """Convert a dowhy / gcm / networkx / GML graph back to a :class:`~scm.CausalGraph`.

    Accepts a ``dowhy.CausalModel``, a ``dowhy.causal_graph.CausalGraph``, a ``dowhy.gcm``
    causal model (``ProbabilisticCausalModel`` and subclasses), a ``networkx.DiGraph`` or a GML
    string. Each node's kind comes from, in order:

    1. ``specs[node]`` (a :class:`~scm.NodeSpec` or its dict form), if given;
    2. the node's own attributes (``kind`` plus ``low``/``high``/``cardinality``/``shape``), as
       :func:`to_dowhy`, :func:`to_gcm` and ``CausalGraph.to_networkx`` write them;
    3. inference from the node's data column (``data``, else the ``CausalModel``'s own data):
       a bool column, or an integer column with values in ``{0, 1}``, is ``binary``; an integer
       column with values ``>= 0`` is ``categorical`` with cardinality ``max + 1`` (strings of digits,
       gcm's form of classes, count as integers); a numeric column
       with all values ``> 0`` is ``positive``; any other numeric column is ``real``. ``interval``
       is never inferred (its bounds are not in the data): pass it in ``specs``.

    Other node attributes (dowhy's ``observed``, gcm's ``causal_mechanism``) are ignored.

    Args:
        model_or_graph: the dowhy / gcm / networkx object or GML text.
        specs: node -> spec overrides.
        data: a DataFrame or dict node -> values to infer the missing kinds from.

    Returns:
        The validated :class:`~scm.CausalGraph` (acyclic, known kinds).

    Raises:
        TypeError: an unsupported object.
        ValueError: a spec for an unknown node, a node whose kind is neither given nor inferable.

    Example:
        >>> import networkx as nx, pandas as pd
        >>> h = nx.DiGraph([("digit", "thickness"), ("thickness", "intensity")])
        >>> df = pd.DataFrame({"digit": [0, 3, 9], "thickness": [1.5, 2.0, 3.1], "intensity": [-0.2, 0.4, 1.0]})
        >>> g = graph_from_dowhy(h, data=df)
        >>> [(n, g.spec(n).kind) for n in g.nodes]
        [('digit', 'categorical'), ('thickness', 'positive'), ('intensity', 'real')]
        >>> g.spec("digit").cardinality
        10
    """
    g, own_data = _as_digraph(model_or_graph)
    specs = dict(specs or {})
    unknown = [k for k in specs if k not in g]
    if unknown:
        raise ValueError(f"specs has unknown node(s) {unknown}; the graph's nodes are {list(g.nodes)}")
    frame = None
    if data is not None:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(
            {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in dict(data).items()})
    elif own_data is not None:
        frame = own_data
    parsed: dict[str, NodeSpec] = {}
    for name, attrs in g.nodes(data=True):
        if name in specs:
            s = specs[name]
            parsed[name] = s if isinstance(s, NodeSpec) else NodeSpec.from_dict(name, s)
        elif "kind" in attrs:
            fields = {k: attrs[k] for k in _SPEC_FIELDS if k in attrs and attrs[k] is not None}
            parsed[name] = NodeSpec.from_dict(name, fields)
        elif frame is not None and name in frame.columns:
            parsed[name] = _infer_spec(name, frame[name])
        else:
            where = "" if frame is None else f" and the data has no column {name!r}"
            raise ValueError(f"node {name!r} has no kind: it is not in specs, carries no 'kind' attribute{where}; "
                             f"pass specs={{{name!r}: {{'kind': 'real'}}}} (or another kind) or data to infer it from")
    return CausalGraph(parsed, list(g.edges()))


def graph_from_gcm(model: Any, specs: Mapping[str, Any] | None = None, data: Any = None) -> CausalGraph:
    """Convert a ``dowhy.gcm`` causal model back to a :class:`~scm.CausalGraph` (see :func:`graph_from_dowhy`).

    Example:
        >>> from scm import CausalGraph
        >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "positive"}, "y": {"kind": "binary"}})
        >>> graph_from_gcm(to_gcm(g)) == g
        True
    """
    from dowhy import gcm

    if not isinstance(model, gcm.ProbabilisticCausalModel):
        raise TypeError(f"graph_from_gcm needs a dowhy.gcm causal model (ProbabilisticCausalModel, "
                        f"StructuralCausalModel, ...), got {type(model).__name__}; use graph_from_dowhy for others")
    return graph_from_dowhy(model, specs=specs, data=data)


def _as_digraph(obj: Any) -> tuple[nx.DiGraph, pd.DataFrame | None]:
    """The networkx graph inside a dowhy/gcm object (and the CausalModel's data, if any)."""
    from dowhy import CausalModel, gcm
    from dowhy.causal_graph import CausalGraph as DowhyGraph

    if isinstance(obj, CausalModel):
        return nx.DiGraph(obj._graph._graph), obj._data
    if isinstance(obj, DowhyGraph):
        return nx.DiGraph(obj._graph), None
    if isinstance(obj, gcm.ProbabilisticCausalModel):
        return nx.DiGraph(obj.graph), None
    if isinstance(obj, nx.DiGraph) and not isinstance(obj, nx.MultiDiGraph):
        return nx.DiGraph(obj), None
    if isinstance(obj, str):
        try:
            return nx.DiGraph(nx.parse_gml(obj)), None
        except nx.NetworkXError as e:
            raise ValueError(f"could not parse the graph text as GML ({e}); pass GML such as "
                             f"'graph [directed 1 node [id \"x\" label \"x\"] ...]' or a networkx.DiGraph") from None
    raise TypeError(f"cannot read a graph from {type(obj).__name__}; pass a dowhy.CausalModel, a "
                    f"dowhy.causal_graph.CausalGraph, a dowhy.gcm causal model, a networkx.DiGraph or a GML string")


# ================================================================================ estimation
def _check_method(method: Any) -> str:
    if not isinstance(method, str) or "." not in method:
        raise ValueError(f"method must be '<identifier>.<estimator>' with identifier in {list(IDENTIFIERS)}, "
                         f"got {method!r}; e.g. 'backdoor.linear_regression'")
    identifier, estimator = method.split(".", 1)
    if identifier not in IDENTIFIERS:
        raise ValueError(f"method {method!r} has unknown identifier {identifier!r}; allowed: {list(IDENTIFIERS)}, "
                         f"e.g. 'backdoor.linear_regression'")
    if "." not in estimator:  # a dowhy estimator; econml/causalml paths are resolved by dowhy itself
        from dowhy import causal_estimators

        try:
            causal_estimators.get_class_object(estimator + "_estimator")
        except ImportError:
            raise ValueError(f"method {method!r}: dowhy has no estimator {estimator!r}; built-in estimators "
                             f"include linear_regression, generalized_linear_model, propensity_score_matching, "
                             f"propensity_score_stratification, propensity_score_weighting, distance_matching, "
                             f"instrumental_variable, two_stage_regression") from None
    return method


def _check_refuters(refuters: Any, params: Any) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    if refuters is None:
        refuters = ()
    if isinstance(refuters, str):
        refuters = (refuters,)
    refuters = tuple(refuters)
    for r in refuters:
        if r not in REFUTERS:
            raise ValueError(f"unknown refuter {r!r}; allowed: {list(REFUTERS)} (they report a p-value)")
    if len(set(refuters)) != len(refuters):
        raise ValueError(f"refuters lists a refuter twice: {list(refuters)}")
    params = dict(params or {})
    for r, p in params.items():
        if r not in refuters:
            raise ValueError(f"refuter_params has refuter {r!r}, which is not in refuters {list(refuters)}")
        if not isinstance(p, Mapping):
            raise TypeError(f"refuter_params[{r!r}] must be a dict of keyword arguments, got {type(p).__name__}")
    return refuters, {r: dict(params.get(r, {})) for r in refuters}


def _arm_values(graph: CausalGraph, frame: pd.DataFrame, treatment: str, control_value: Any,
                treatment_value: Any) -> tuple[float, float]:
    """Default and validate the two treatment values (see :func:`estimate_effect`)."""
    spec = graph.spec(treatment)
    if control_value is None and treatment_value is None:
        if spec.is_discrete:
            control_value, treatment_value = 0, 1
        else:
            median = float(np.median(frame[treatment].to_numpy()))
            control_value, treatment_value = median, median + 1.0
            for v in (control_value, treatment_value):
                if spec.kind == "interval" and not (spec.low <= v <= spec.high):  # type: ignore[operator]
                    raise ValueError(f"the default treatment values (median {median:g} and median + 1) of interval "
                                     f"node {treatment!r} leave its support {spec.describe()}; pass control_value= "
                                     f"and treatment_value= inside it")
    elif control_value is None or treatment_value is None:
        raise ValueError(f"pass both control_value and treatment_value for {treatment!r} (got control_value="
                         f"{control_value!r}, treatment_value={treatment_value!r}), or neither for the default")
    values = []
    for name, v in (("control_value", control_value), ("treatment_value", treatment_value)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.number)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
        try:
            t = as_values(treatment, spec, v, what=name, allow_scalar=True, dtype=torch.float64)
        except ValueError as e:
            raise ValueError(f"{name} {v!r} is not a valid value of treatment {treatment!r}: {e}") from None
        values.append(int(t) if spec.is_discrete else float(t))
    if values[0] == values[1]:
        raise ValueError(f"control_value and treatment_value are both {values[0]!r}; the effect of no change is 0 by "
                         f"definition, pass two different values of {treatment!r}")
    return values[0], values[1]


def estimate_effect(graph: CausalGraph, data: Any, treatment: str, outcome: str,
                    method: str = "backdoor.linear_regression",
                    refuters: Sequence[str] | None = ("placebo_treatment_refuter", "random_common_cause"),
                    control_value: float | None = None, treatment_value: float | None = None,
                    confidence_intervals: bool = True, seed: int = 0, *, num_simulations: int = 100,
                    significance_level: float = 0.05, confidence_level: float = 0.95,
                    method_params: Mapping[str, Any] | None = None,
                    refuter_params: Mapping[str, Mapping[str, Any]] | None = None) -> EffectEstimate:
    """Identify, estimate and refute the effect of ``treatment`` on ``outcome`` with dowhy.

    Steps (dowhy's four): **model** (:func:`to_dowhy`), **identify** (``identify_effect``: the
    backdoor set, instruments, front-door set), **estimate** (``estimate_effect`` with ``method``)
    and **refute** (``refute_estimate`` once per refuter).

    The effect is ``E[outcome | do(treatment := treatment_value)] - E[outcome | do(treatment :=
    control_value)]``. Without values: ``0 -> 1`` for a binary/categorical treatment, and
    ``median -> median + 1`` (a one-unit increase from the typical value) for a continuous one.

    No directed path from treatment to outcome: like dowhy, the effect is 0 by the graph; we warn
    (``UserWarning``), return ``value = 0.0`` with no confidence interval, and skip the refuters.

    The placebo refuter permutes the treatment (``placebo_type="permute"``) unless
    ``refuter_params`` says otherwise: dowhy's default placebo for a float treatment draws from
    ``N(0, 0)``, a constant, which tests nothing. Refuters get a clean copy of the data: dowhy's
    propensity estimators write their score column into the model's data, and a placebo refit
    through ``CausalModel.refute_estimate`` reuses the true treatment's scores (with
    ``backdoor.propensity_score_weighting`` that gave a placebo effect of -2.7 for a true effect of 2).

    Args:
        graph: the causal DAG (its image node, if any, is dropped).
        data: a dict node -> ``(N,)`` values or a DataFrame, one column per attribute node.
        treatment: the treatment node.
        outcome: the outcome node.
        method: dowhy's ``"<identifier>.<estimator>"``, e.g. ``"backdoor.linear_regression"``,
            ``"backdoor.propensity_score_weighting"`` (binary treatment), ``"iv.instrumental_variable"``.
        refuters: names among ``placebo_treatment_refuter``, ``random_common_cause``,
            ``data_subset_refuter``, ``bootstrap_refuter`` (empty or None: no refutation).
        control_value: the reference treatment value.
        treatment_value: the alternative treatment value.
        confidence_intervals: compute the confidence interval (analytic for linear regression,
            bootstrap otherwise).
        seed: seed of dowhy's random draws (refuters, bootstrap); global RNG states are restored.
        num_simulations: simulations per refuter (dowhy's default 100).
        significance_level: level of the refuters' tests.
        confidence_level: level of the confidence interval.
        method_params: passed to dowhy's ``estimate_effect(method_params=...)``.
        refuter_params: refuter -> extra keyword arguments of ``refute_estimate``.

    Returns:
        An :class:`EffectEstimate`.

    Raises:
        TypeError: graph, data, names, values or seed of the wrong type.
        ValueError: unknown or image treatment/outcome, treatment == outcome, unknown method or
            refuter, bad columns or values, treatment values outside the support or equal, an
            estimand that the method cannot use (e.g. no instrument for ``iv.*``).

    Example:
        >>> import numpy as np
        >>> from scm import CausalGraph
        >>> g = CausalGraph.from_edges([("z", "t"), ("z", "y"), ("t", "y")], {v: {"kind": "real"} for v in "zty"})
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=1000); t = z + rng.normal(size=1000); y = 2 * t + z + rng.normal(size=1000)
        >>> res = estimate_effect(g, {"z": z, "t": t, "y": y}, "t", "y", num_simulations=10)
        >>> lo, hi = res.confidence_interval
        >>> bool(lo < 2.0 < hi), res.adjustment_set, sorted(res.refutations)
        (True, ('z',), ['placebo_treatment_refuter', 'random_common_cause'])
    """
    # --- validate everything before touching dowhy
    graph = _check_graph(graph)
    t, y = _check_pair(graph, treatment, outcome)
    method = _check_method(method)
    refuters, r_params = _check_refuters(refuters, refuter_params)
    seed = _check_seed(seed)
    if isinstance(num_simulations, bool) or not isinstance(num_simulations, numbers.Integral) or num_simulations < 2:
        raise ValueError(f"num_simulations must be an integer >= 2, got {num_simulations!r}")
    significance_level = _check_level(significance_level, "significance_level")
    confidence_level = _check_level(confidence_level, "confidence_level")
    if method_params is not None and not isinstance(method_params, Mapping):
        raise TypeError(f"method_params must be a dict, got {type(method_params).__name__}")
    frame = _to_frame(graph, data)
    control, treated = _arm_values(graph, frame, t, control_value, treatment_value)

    from dowhy import causal_refuters

    with _seeded(seed):
        # 1. Model
        model = _causal_model(graph, frame, t, y)
        # 2. Identify
        estimand = model.identify_effect()
        if estimand.no_directed_path:
            warnings.warn(f"no directed path from {t!r} to {y!r} in the graph: the effect is 0 by the graph (dowhy's "
                          f"convention); returning 0.0 without confidence interval or refutation", UserWarning,
                          stacklevel=2)
            return EffectEstimate(t, y, 0.0, None, confidence_level, control, treated, method, str(estimand), (),
                                  MappingProxyType({}), estimand, None, model)
        identifier = method.split(".", 1)[0]
        if estimand.estimands.get(identifier) is None:
            found = [k for k, v in estimand.estimands.items() if v is not None and k in IDENTIFIERS]
            raise ValueError(f"method {method!r} needs a {identifier!r} estimand, but the graph gives none for "
                             f"{t!r} -> {y!r} (identified: {found}); choose a method starting with one of {found}")
        # 3. Estimate (dowhy's propensity estimators write a score column into the model's data; the
        #    refuters get a clean copy, so that a placebo refit does not reuse the true treatment's scores)
        clean = frame.copy()
        params = dict(method_params or {})
        if "." not in method.split(".", 1)[1]:  # a dowhy estimator: the ATE needs no per-stratum estimates
            params["init_params"] = {"need_conditional_estimates": False, **dict(params.get("init_params", {}))}
        estimate = model.estimate_effect(estimand, method_name=method, control_value=control,
                                         treatment_value=treated, confidence_intervals=bool(confidence_intervals),
                                         method_params=params)
        if estimate.value is None:
            raise ValueError(f"dowhy could not estimate the effect of {t!r} on {y!r} with {method!r}")
        ci = None
        if confidence_intervals:
            lo, hi = np.asarray(estimate.get_confidence_intervals(confidence_level=confidence_level),
                                dtype=float).reshape(-1)[:2]
            ci = (float(lo), float(hi))
        # 4. Refute
        refutations: dict[str, Refutation] = {}
        for r in refuters:
            kwargs: dict[str, Any] = {"num_simulations": int(num_simulations), "random_state": seed}
            if r == "placebo_treatment_refuter":
                kwargs["placebo_type"] = "permute"
            kwargs.update(r_params[r])
            refuter = causal_refuters.get_class_object(r)(clean.copy(), identified_estimand=estimand,
                                                          estimate=estimate, **kwargs)
            res = refuter.refute_estimate(show_progress_bar=False)
            sig = res.refutation_result or {}
            p = None if sig.get("p_value") is None else float(sig["p_value"])
            refutations[r] = Refutation(r, float(res.estimated_effect), float(np.mean(res.new_effect)), p,
                                        bool(p is None or p > significance_level), res)
    adjustment = tuple(estimand.get_adjustment_set() or ()) if identifier == "backdoor" else ()
    return EffectEstimate(t, y, float(np.asarray(estimate.value).reshape(-1)[0]), ci, confidence_level, control,
                          treated, method, str(estimand), adjustment, MappingProxyType(refutations), estimand,
                          estimate, model)


# ================================================================================ falsification
def _partial_correlation(X: np.ndarray, Y: np.ndarray, Z: np.ndarray | None = None) -> float:
    """Fisher partial-correlation test (dowhy.utils.cit.partial_corr) in the gcm test signature."""
    from dowhy.utils.cit import partial_corr

    cols = {"x": np.asarray(X, dtype=float).reshape(len(X)), "y": np.asarray(Y, dtype=float).reshape(len(Y))}
    z_names: list[str] = []
    if Z is not None and np.size(Z):
        Z = np.asarray(Z, dtype=float).reshape(len(X), -1)
        for j in range(Z.shape[1]):
            cols[f"z{j}"] = Z[:, j]
            z_names.append(f"z{j}")
    p = float(partial_corr(data=pd.DataFrame(cols), x="x", y="y", z=z_names)["p-val"])
    return 1.0 if math.isnan(p) else p  # NaN: a constant column, independent of anything


def _ci_test(method: str) -> Callable[..., float]:
    if method == "partial_correlation":
        return _partial_correlation
    from dowhy.gcm.independence_test import (approx_kernel_based, generalised_cov_based, kernel_based,
                                             regression_based)

    fns = {"kernel": kernel_based, "approx_kernel": approx_kernel_based, "regression": regression_based,
           "gcm": generalised_cov_based}
    fn = fns[method]
    if method in ("kernel", "approx_kernel"):  # one process: this project runs on 2 shared cores
        return lambda X, Y, Z=None: fn(X, Y, Z, bootstrap_n_jobs=1)
    return lambda X, Y, Z=None: fn(X, Y, Z, n_jobs=1) if method == "regression" else fn(X, Y, Z)


def _adjust(p: np.ndarray, correction: str) -> np.ndarray:
    m = len(p)
    if correction == "none" or m == 0:
        return p.copy()
    if correction == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p, kind="stable")  # Holm step-down
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def falsify_graph(graph: CausalGraph, data: Any, *, method: str = "kernel", significance_level: float = 0.05,
                  correction: str = "holm", max_rows: int | None = 1000, permutation_test: bool = False,
                  n_permutations: int | None = None, seed: int = 0, progress: bool = False) -> FalsificationReport:
    """Test the conditional independences the DAG implies against data.

    The graph implies, for every node ``X``, the local Markov condition: ``X`` is independent of
    each non-descendant ``Y`` (that is not a parent) given its parents ``pa(X)``. These are the
    independences dowhy's graph falsification tests (``dowhy.gcm.falsify.validate_lmc``); we run
    them through it with dowhy's independence tests, one p-value per independence, correct for
    multiple testing, and reject the graph when any independence is rejected.

    ``permutation_test=True`` also runs dowhy's ``dowhy.gcm.falsify.falsify_graph``, which compares
    the number of violations with those of random node permutations of the graph. Its verdict needs
    a graph that is *falsifiable* (few permutations share its Markov equivalence class): a 3-node
    chain never is, because a third of its permutations are equivalent to it.

    Args:
        graph: the causal DAG (its image node, if any, is dropped).
        data: a dict node -> ``(N,)`` values or a DataFrame, one column per attribute node.
        method: the independence test: ``"kernel"`` (KCI, dowhy's default; nonparametric),
            ``"approx_kernel"`` (RCIT, faster), ``"regression"``, ``"gcm"`` (generalised covariance
            measure) or ``"partial_correlation"`` (Fisher-z; linear-Gaussian data, fastest).
            Categorical columns are passed to the kernel/regression tests as categories (strings);
            the partial-correlation test treats them as numbers.
        significance_level: level of each corrected test.
        correction: ``"holm"`` (default), ``"bonferroni"`` or ``"none"``.
        max_rows: use a random subset of at most this many rows (KCI costs ``O(n^3)``); None: all.
        permutation_test: also run dowhy's permutation test.
        n_permutations: permutations of that test (dowhy's default ``1 / significance_level``).
        seed: seed of the row subset and of dowhy's random draws; global RNG states are restored.
        progress: show dowhy's progress bar over permutations.

    Returns:
        A :class:`FalsificationReport`.

    Raises:
        TypeError: graph, data or seed of the wrong type.
        ValueError: unknown method or correction, a level outside (0, 1), ``max_rows < 10``, bad columns.

    Example:
        >>> import numpy as np
        >>> from scm import CausalGraph
        >>> specs = {v: {"kind": "real"} for v in "abc"}
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=500); b = a + rng.normal(size=500); c = b + rng.normal(size=500)
        >>> chain = CausalGraph.from_edges([("a", "b"), ("b", "c")], specs)
        >>> fork = CausalGraph.from_edges([("a", "b"), ("a", "c")], specs)
        >>> data = {"a": a, "b": b, "c": c}
        >>> falsify_graph(chain, data, method="partial_correlation").rejected
        False
        >>> report = falsify_graph(fork, data, method="partial_correlation")
        >>> report.rejected, [str(t) for t in report.violations]
        (True, ['b ⊥ c | a'])
    """
    graph = _check_graph(graph)
    if method not in CI_TESTS:
        raise ValueError(f"unknown independence test method {method!r}; allowed: {list(CI_TESTS)}")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; allowed: {list(CORRECTIONS)}")
    significance_level = _check_level(significance_level, "significance_level")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, numbers.Integral)
                                 or max_rows < 10):
        raise ValueError(f"max_rows must be an integer >= 10 or None (all rows), got {max_rows!r}")
    if n_permutations is not None and (isinstance(n_permutations, bool)
                                       or not isinstance(n_permutations, numbers.Integral) or n_permutations < 1):
        raise ValueError(f"n_permutations must be an integer >= 1 or None, got {n_permutations!r}")
    seed = _check_seed(seed)
    frame = _to_frame(graph, data)
    if max_rows is not None and len(frame) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=int(max_rows), replace=False))
        frame = frame.iloc[rows].reset_index(drop=True)
    if method != "partial_correlation":  # dowhy's tests take categorical data as strings
        for n in graph.attribute_nodes():
            if graph.spec(n).is_discrete:
                frame[n] = frame[n].astype(str).astype(object)
    dag = nx.DiGraph(_attribute_digraph(graph).edges())
    dag.add_nodes_from(graph.attribute_nodes())
    test = _ci_test(method)

    from dowhy.gcm import falsify as F

    with _seeded(seed):
        lmc = F.validate_lmc(dag, frame, independence_test=test, conditional_independence_test=test,
                             significance_level=significance_level, include_unconditional=True, n_jobs=1)
        # One entry per unordered pair with the same conditioning set (dowhy tests each once).
        seen: dict[tuple[frozenset[str], tuple[str, ...]], tuple[str, str, tuple[str, ...], float]] = {}
        for (x, y), (p, _) in lmc[F.FalsifyConst.P_VALUES].items():
            given = tuple(n for n in graph.attribute_nodes() if n in set(dag.predecessors(x)))
            key = (frozenset((x, y)), given)
            if key not in seen:
                seen[key] = (x, y, given, float(p))
        p_raw = np.array([v[3] for v in seen.values()], dtype=float)
        p_adj = _adjust(p_raw, correction)
        tests = tuple(IndependenceResult(x, y, given, float(p), float(pa), bool(pa <= significance_level))
                      for (x, y, given, p), pa in zip(seen.values(), p_adj))
        evaluation = None
        if permutation_test:
            evaluation = F.falsify_graph(dag, frame, independence_test=test, conditional_independence_test=test,
                                         significance_level=significance_level, significance_ci=significance_level,
                                         n_permutations=n_permutations, show_progress_bar=bool(progress), n_jobs=1)
    rejected = any(t.rejected for t in tests)
    summary = _summary(tests, method, significance_level, correction, len(frame), evaluation)
    return FalsificationReport(tests, method, significance_level, correction, len(frame), rejected, summary,
                               None if evaluation is None else evaluation.falsified,
                               None if evaluation is None else evaluation.falsifiable, evaluation)


def _summary(tests: tuple[IndependenceResult, ...], method: str, alpha: float, correction: str, n_rows: int,
             evaluation: Any) -> str:
    if not tests:
        text = ("the graph implies no conditional independence between its attribute nodes (every pair is "
                "adjacent), so the data cannot contradict it by independence tests")
    else:
        bad = [t for t in tests if t.rejected]
        head = (f"{len(bad)} of {len(tests)} implied independences rejected ({method} test, {n_rows} rows, "
                f"alpha = {alpha:g}, {correction} correction)")
        if bad:
            listed = "; ".join(f"{t} (p = {t.p_value:.3g})" for t in bad)
            text = f"{head}: {listed}. The data contradict the graph."
        else:
            text = f"{head}. The data are consistent with the graph's independences."
    if evaluation is not None:
        if evaluation.falsifiable is None:
            text += " dowhy's permutation test could not be evaluated."
        elif not evaluation.falsifiable:
            text += (" dowhy's permutation test: the graph is not falsifiable (too many node permutations share "
                     "its Markov equivalence class).")
        else:
            text += f" dowhy's permutation test: {'falsified' if evaluation.falsified else 'not falsified'}."
    return text
