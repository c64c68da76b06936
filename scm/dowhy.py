"""Conversion between a :class:`~scm.CausalGraph` and dowhy: ``CausalModel``, ``gcm`` models, graphs and data.

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
:func:`graph_from_gcm`      a gcm causal model back to a :class:`~scm.CausalGraph`
==========================  ======================================================================

Data are a dict node -> ``(N,)`` tensor/array, or a pandas DataFrame, with one column per attribute
node (an image entry is ignored). Values are checked against each node's support (:func:`attribute_frame`);
categorical and binary columns stay integers (``int64``), continuous ones become ``float64``.

The argument checks and helpers that :mod:`scm.effects` (effect estimation) and :mod:`scm.falsify` (graph
falsification) share with the conversions live here too: :func:`check_graph`, :func:`check_pair`,
:func:`check_seed`, :func:`check_level`, :func:`attribute_frame`, :func:`attribute_digraph`, :func:`seeded`.

Example:
    >>> import networkx as nx
    >>> from scm import CausalGraph
    >>> g = CausalGraph.from_edges([("t", "y")], {"t": {"kind": "binary"}, "y": {"kind": "real"}})
    >>> h = attribute_digraph(g)
    >>> sorted(h.nodes(data="kind"))
    [('t', 'binary'), ('y', 'real')]
    >>> graph_from_dowhy(h) == g
    True
"""
from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import networkx as nx
import numpy as np
import pandas as pd
import torch

from dcfg_io.checks import is_integer, is_number
from scm.graph import CausalGraph, NodeSpec
from scm.support import as_values

if TYPE_CHECKING:  # dowhy is imported lazily: it takes seconds to import
    import dowhy

__all__ = [
    "attribute_digraph",
    "attribute_frame",
    "check_graph",
    "check_level",
    "check_pair",
    "check_seed",
    "gcm_frame",
    "graph_from_dowhy",
    "graph_from_gcm",
    "seeded",
    "to_dowhy",
    "to_gcm",
]

_SPEC_FIELDS = ("kind", "low", "high", "cardinality", "shape")


# ================================================================================ checks shared with effects, falsify
def check_graph(graph: Any) -> CausalGraph:
    """``graph`` if it is a :class:`~scm.CausalGraph` with attribute nodes; ``TypeError`` / ``ValueError`` otherwise."""
    if not isinstance(graph, CausalGraph):
        raise TypeError(f"graph must be a scm.CausalGraph, got {type(graph).__name__}; build one with "
                        f"CausalGraph.from_dict(...) or convert a dowhy graph with graph_from_dowhy(...)")
    if not graph.attribute_nodes():
        raise ValueError("the graph has no attribute (non-image) nodes; there is nothing for dowhy to model")
    return graph


def _check_node(graph: CausalGraph, name: Any, role: str) -> str:
    """``name`` if it is an attribute node of ``graph`` (``role``, e.g. ``"treatment"``, names it in errors)."""
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


def check_pair(graph: CausalGraph, treatment: Any, outcome: Any) -> tuple[str, str]:
    """The treatment and outcome names, checked: two different attribute nodes of ``graph``."""
    t = _check_node(graph, treatment, "treatment")
    y = _check_node(graph, outcome, "outcome")
    if t == y:
        raise ValueError(f"treatment and outcome are the same node {t!r}; the effect of a node on itself is not "
                         f"defined, choose another outcome among {[n for n in graph.attribute_nodes() if n != t]}")
    return t, y


def check_seed(seed: Any) -> int:
    """``seed`` as an int; ``TypeError`` unless it is a non-negative integer."""
    if not is_integer(seed, 0):
        raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__} {seed!r}")
    return int(seed)


def check_level(value: Any, name: str) -> float:
    """``value`` as a float; ``ValueError`` (naming the argument ``name``) unless it is a number in (0, 1)."""
    if not is_number(value, 0.0, 1.0, low_open=True, high_open=True):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}; e.g. 0.05")
    return float(value)


def attribute_frame(graph: CausalGraph, data: Any, what: str = "data") -> pd.DataFrame:
    """The attribute columns of ``data``, validated, in topological order: int64 for discrete, float64 for
    continuous (the form every function here hands to dowhy)."""
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


def attribute_digraph(graph: CausalGraph) -> nx.DiGraph:
    """The attribute graph as a networkx DiGraph whose nodes carry their spec fields."""
    g = nx.DiGraph()
    for n in graph.attribute_nodes():
        g.add_node(n, **graph.spec(n).to_dict())
    image = graph.image_node
    g.add_edges_from((a, b) for a, b in graph.to_networkx().edges() if image not in (a, b))
    return g


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
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
    graph = check_graph(graph)
    t, y = check_pair(graph, treatment, outcome)
    frame = attribute_frame(graph, data)
    return causal_model(graph, frame, t, y)


def causal_model(graph: CausalGraph, frame: pd.DataFrame, treatment: str, outcome: str) -> "dowhy.CausalModel":
    """:func:`to_dowhy` of a frame already checked by :func:`attribute_frame`."""
    from dowhy import CausalModel

    return CausalModel(data=frame, treatment=treatment, outcome=outcome, graph=attribute_digraph(graph))


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

    graph = check_graph(graph)
    qualities = {"good": gcm.auto.AssignmentQuality.GOOD, "better": gcm.auto.AssignmentQuality.BETTER,
                 "best": gcm.auto.AssignmentQuality.BEST}
    if quality not in qualities:
        raise ValueError(f"unknown quality {quality!r}; allowed: {list(qualities)}")
    seed = check_seed(seed)
    frame = None if data is None else attribute_frame(graph, data)
    g = attribute_digraph(graph)
    discrete_children = [n for n in g if g.in_degree(n) > 0 and graph.spec(n).is_discrete]
    cls = gcm.StructuralCausalModel if discrete_children else gcm.InvertibleStructuralCausalModel
    model = cls(g)
    if frame is None:
        return model
    saved = gcm.config.show_progress_bars
    gcm.config.show_progress_bars = bool(progress)
    try:
        with seeded(seed):
            for n in discrete_children:
                model.set_causal_mechanism(n, gcm.ClassifierFCM(gcm.ml.create_logistic_regression_classifier()))
            frame = strings_for_discrete(graph, frame)
            gcm.auto.assign_causal_mechanisms(model, frame, quality=qualities[quality])
            gcm.fit(model, frame)
    finally:
        gcm.config.show_progress_bars = saved
    return model


def strings_for_discrete(graph: CausalGraph, frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with its discrete columns as strings (how gcm and its tests read categories)."""
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
    return strings_for_discrete(check_graph(graph), attribute_frame(graph, data))


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
