"""The causal DAG: typed variables on a validated, read-only ``networkx`` graph.

A :class:`CausalGraph` holds one :class:`NodeSpec` per variable (its *kind* and support) and the
directed edges between them. It is built once, validated once, and never mutated afterwards; every
accessor returns fresh lists or copies.

Kinds and their supports:

==============  ===============================  ===========================================
kind            support                          fields
==============  ===============================  ===========================================
``real``        the real line                    none
``positive``    ``(0, inf)``                     none
``interval``    ``[low, high]``                  ``low`` < ``high``, both finite
``binary``      ``{0, 1}``                       none (``cardinality`` is 2)
``categorical`` ``{0, ..., cardinality - 1}``    ``cardinality`` in 2..100,000
``image``       tensors of shape ``shape``       ``shape`` (1-4 ints in 1..4096); no children
==============  ===============================  ===========================================

Example:
    >>> g = CausalGraph.from_dict({
    ...     "nodes": {"thickness": {"kind": "positive"},
    ...               "intensity": {"kind": "interval", "low": 0, "high": 255},
    ...               "digit": {"kind": "categorical", "cardinality": 10},
    ...               "image": {"kind": "image", "shape": [1, 28, 28]}},
    ...     "edges": [["thickness", "intensity"], ["thickness", "image"],
    ...               ["intensity", "image"], ["digit", "image"]]})
    >>> g.nodes
    ['thickness', 'intensity', 'digit', 'image']
    >>> g.image_parents()
    ['thickness', 'intensity', 'digit']
    >>> g.descendants("thickness")
    ['intensity', 'image']
    >>> CausalGraph.from_networkx(g.to_networkx()) == g
    True
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import networkx as nx

from dcfg_io.atomic import atomic_write
from dcfg_io.checks import is_integer

KINDS: tuple[str, ...] = ("real", "positive", "interval", "binary", "categorical", "image")
CONTINUOUS_KINDS: frozenset[str] = frozenset({"real", "positive", "interval"})
DISCRETE_KINDS: frozenset[str] = frozenset({"binary", "categorical"})
#: Bounds of a node spec: classes of a categorical node, and each dimension of an image node's shape.
MAX_CARDINALITY = 100_000
MAX_IMAGE_SIDE = 4096

# Which spec fields each kind accepts (besides "kind").
_FIELDS: dict[str, frozenset[str]] = {
    "real": frozenset(),
    "positive": frozenset(),
    "interval": frozenset({"low", "high"}),
    "binary": frozenset({"cardinality"}),
    "categorical": frozenset({"cardinality"}),
    "image": frozenset({"shape"}),
}


@dataclass(frozen=True)
class NodeSpec:
    """The kind and support of one variable.

    Attributes:
        kind: one of ``real``, ``positive``, ``interval``, ``binary``, ``categorical``, ``image``.
        low: lower end of an ``interval`` (else None).
        high: upper end of an ``interval`` (else None).
        cardinality: number of classes of a ``binary`` (2) or ``categorical`` node (else None).
        shape: tensor shape of one ``image`` (else None), e.g. ``(1, 28, 28)``.

    Example:
        >>> NodeSpec.from_dict("t", {"kind": "interval", "low": 0, "high": 1})
        NodeSpec(kind='interval', low=0.0, high=1.0, cardinality=None, shape=None)
    """

    kind: str
    low: float | None = None
    high: float | None = None
    cardinality: int | None = None
    shape: tuple[int, ...] | None = None

    @property
    def is_continuous(self) -> bool:
        """True for ``real``, ``positive`` and ``interval`` nodes."""
        return self.kind in CONTINUOUS_KINDS

    @property
    def is_discrete(self) -> bool:
        """True for ``binary`` and ``categorical`` nodes."""
        return self.kind in DISCRETE_KINDS

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any] | None) -> "NodeSpec":
        """Validate the TOML-friendly form of a node's spec.

        Args:
            name: the node's name (used in error messages).
            d: ``{"kind": ..., **fields}``.

        Raises:
            ValueError: no or unknown kind, unknown field, bad interval, bad cardinality or shape.
        """
        if d is None or not isinstance(d, Mapping) or "kind" not in d:
            raise ValueError(f"node {name!r} has no kind (got spec {d!r}); give it one of {list(KINDS)}, "
                             f"e.g. {{'kind': 'real'}}")
        kind = d["kind"]
        if kind not in KINDS:
            raise ValueError(f"node {name!r} has unknown kind {kind!r}; allowed kinds: {list(KINDS)}")
        extra = sorted(set(d) - {"kind"} - _FIELDS[kind])
        if extra:
            raise ValueError(f"node {name!r} of kind {kind!r} has unexpected field(s) {extra}; "
                             f"allowed fields: {sorted(_FIELDS[kind])}")
        if kind == "interval":
            low, high = d.get("low"), d.get("high")
            try:
                if any(isinstance(v, (bool, str, bytes, bytearray)) for v in (low, high)):
                    raise TypeError
                low_f, high_f = float(low), float(high)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(f"interval node {name!r} needs numeric 'low' and 'high' (got low={low!r}, "
                                 f"high={high!r}); e.g. {{'kind': 'interval', 'low': 0, 'high': 255}}") from None
            if not (math.isfinite(low_f) and math.isfinite(high_f) and low_f < high_f):
                raise ValueError(f"interval node {name!r} has a bad interval [{low!r}, {high!r}]: low and high "
                                 f"must be finite with low < high")
            return cls(kind, low=low_f, high=high_f)
        if kind in DISCRETE_KINDS:
            card = d.get("cardinality", 2 if kind == "binary" else None)
            if not is_integer(card, 2, MAX_CARDINALITY, python_int=True):
                raise ValueError(f"{kind} node {name!r} has a bad cardinality {card!r}: it must be an integer "
                                 f"in 2..{MAX_CARDINALITY} (the number of classes)")
            if kind == "binary" and card != 2:
                raise ValueError(f"binary node {name!r} has cardinality {card!r}, but binary means 2 classes; "
                                 f"use kind 'categorical' for {card} classes")
            return cls(kind, cardinality=int(card))
        if kind == "image":
            shape = d.get("shape")
            if (not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 4
                    or not all(is_integer(s, 1, MAX_IMAGE_SIDE, python_int=True) for s in shape)):
                raise ValueError(f"image node {name!r} has a bad shape {shape!r:.80}: it must be a list of 1 to 4 "
                                 f"positive ints of at most {MAX_IMAGE_SIDE}, e.g. [1, 28, 28]")
            return cls(kind, shape=tuple(int(s) for s in shape))
        return cls(kind)

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON-friendly form (inverse of :meth:`from_dict`)."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "interval":
            d["low"], d["high"] = self.low, self.high
        elif self.kind == "categorical":
            d["cardinality"] = self.cardinality
        elif self.kind == "image":
            d["shape"] = list(self.shape or ())
        return d

    def describe(self) -> str:
        """Human-readable support, used in error messages (e.g. ``"[0.0, 255.0]"``)."""
        if self.kind == "real":
            return "any finite real number"
        if self.kind == "positive":
            return "a finite number > 0"
        if self.kind == "interval":
            return f"a number in [{self.low}, {self.high}]"
        if self.kind in DISCRETE_KINDS:
            return f"an integer class index in 0..{(self.cardinality or 2) - 1}"
        return f"an image tensor of shape (B, {', '.join(map(str, self.shape or ()))})"


class CausalGraph:
    """A validated, read-only causal DAG whose nodes carry a :class:`NodeSpec`.

    Build it with :meth:`from_dict`, :meth:`from_networkx` or :meth:`from_edges`. Validation rejects,
    each with a ``ValueError`` naming the culprit: a cycle (printed), a self-loop, an edge to an
    unknown node, a node without a kind, a bad cardinality or interval, more than one image node,
    an image node with children, and node names that are not non-empty strings without ``/``.

    Node lists (``nodes``, ``parents``, ``children``, ...) are in one fixed topological order that
    breaks ties by the order in which nodes were declared.

    Example:
        >>> g = CausalGraph.from_edges([("a", "b")], {"a": {"kind": "real"}, "b": {"kind": "binary"}})
        >>> g.parents("b"), g.children("a"), g.image_node
        (['a'], ['b'], None)
    """

    def __init__(self, specs: Mapping[str, NodeSpec], edges: Iterable[tuple[str, str]]) -> None:
        """Validate and freeze. Prefer the ``from_*`` constructors, which also parse specs.

        Args:
            specs: node name -> :class:`NodeSpec`, in declaration order.
            edges: ``(parent, child)`` pairs.

        Raises:
            ValueError: on any invalid structure (see the class docstring).
        """
        for name, spec in specs.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"bad node name {name!r}: node names must be non-empty strings without '/' "
                                 f"(the SCM names exogenous-noise sites '<node>/u')")
            if not isinstance(spec, NodeSpec):
                raise TypeError(f"spec of node {name!r} must be a NodeSpec, got {type(spec).__name__}")
        g = nx.DiGraph()
        for name, spec in specs.items():
            g.add_node(name, spec=spec)
        for edge in edges:
            if not isinstance(edge, (list, tuple)) or len(edge) != 2:
                raise ValueError(f"bad edge {edge!r}: an edge is a [parent, child] pair")
            a, b = edge
            for end in (a, b):
                if not isinstance(end, str) or end not in specs:
                    raise ValueError(f"edge {a!r} -> {b!r} refers to unknown node {end!r}; declared nodes: "
                                     f"{list(specs)}")
            if a == b:
                raise ValueError(f"self-loop on node {a!r}: a variable cannot cause itself; remove the edge "
                                 f"[{a!r}, {b!r}]")
            g.add_edge(a, b)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([cycle[0][0]] + [e[1] for e in cycle])
            raise ValueError(f"the graph has a cycle: {path}; a causal graph must be acyclic, remove one of "
                             f"these edges")
        images = [n for n, s in specs.items() if s.kind == "image"]
        if len(images) > 1:
            raise ValueError(f"more than one image node: {images}; a CausalGraph has at most one")
        for img in images:
            kids = list(g.successors(img))
            if kids:
                raise ValueError(f"image node {img!r} has children {kids}; the image must be a sink (the SCM "
                                 f"models attributes only); remove the edges from {img!r}")
        position = {n: i for i, n in enumerate(specs)}
        self._order: list[str] = list(nx.lexicographical_topological_sort(g, key=position.__getitem__))
        self._index = {n: i for i, n in enumerate(self._order)}
        self._g = g
        self._specs: dict[str, NodeSpec] = {n: specs[n] for n in specs}
        self._image = images[0] if images else None

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CausalGraph":
        """Build from ``{"nodes": {name: spec}, "edges": [[parent, child], ...]}``.

        Example:
            >>> CausalGraph.from_dict({"nodes": {"x": {"kind": "real"}}, "edges": []}).nodes
            ['x']
        """
        if not isinstance(d, Mapping) or not isinstance(d.get("nodes"), Mapping):
            raise ValueError(f"a graph dict needs a 'nodes' mapping (name -> spec) and an 'edges' list; got "
                             f"keys {list(d) if isinstance(d, Mapping) else type(d).__name__}")
        extra = sorted(set(d) - {"nodes", "edges"})
        if extra:
            raise ValueError(f"unexpected graph key(s) {extra}; allowed keys: ['edges', 'nodes']")
        edges = d.get("edges", [])
        if isinstance(edges, (str, bytes)) or not isinstance(edges, (list, tuple)):
            raise ValueError(f"the graph's 'edges' must be a list of [parent, child] pairs, got {edges!r:.80}")
        specs = {name: NodeSpec.from_dict(name, spec) for name, spec in d["nodes"].items()}
        return cls(specs, list(edges))  # edges as given, so that errors quote them as written

    @classmethod
    def from_edges(cls, edges: Iterable[tuple[str, str]],
                   specs: Mapping[str, NodeSpec | Mapping[str, Any]]) -> "CausalGraph":
        """Build from ``(parent, child)`` pairs plus a spec for every node.

        Example:
            >>> CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}}).nodes
            ['x', 'y']
        """
        parsed = {n: s if isinstance(s, NodeSpec) else NodeSpec.from_dict(n, s) for n, s in specs.items()}
        return cls(parsed, list(edges))

    @classmethod
    def from_networkx(cls, g: nx.DiGraph) -> "CausalGraph":
        """Build from a ``networkx.DiGraph`` whose nodes carry ``kind`` (and its fields) as attributes.

        A node may instead carry a ready ``spec`` attribute (:class:`NodeSpec` or dict), as
        :meth:`to_networkx` writes.

        Example:
            >>> import networkx as nx
            >>> h = nx.DiGraph()
            >>> h.add_node("x", kind="real"); h.add_node("y", kind="binary"); h.add_edge("x", "y")
            >>> CausalGraph.from_networkx(h).parents("y")
            ['x']
        """
        if not isinstance(g, nx.DiGraph) or isinstance(g, nx.MultiDiGraph):
            raise TypeError(f"from_networkx needs a networkx.DiGraph, got {type(g).__name__}")
        specs: dict[str, NodeSpec] = {}
        for name, attrs in g.nodes(data=True):
            spec = attrs.get("spec")
            if isinstance(spec, NodeSpec):
                specs[name] = spec
            elif isinstance(spec, Mapping):
                specs[name] = NodeSpec.from_dict(name, spec)
            else:
                fields = {k: v for k, v in attrs.items() if v is not None and k != "spec"}
                specs[name] = NodeSpec.from_dict(name, fields if "kind" in fields else None)
        return cls(specs, list(g.edges()))

    # ---------------------------------------------------------------------------------- exports
    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON-friendly form, accepted by :meth:`from_dict`."""
        return {"nodes": {n: self._specs[n].to_dict() for n in self._specs},
                "edges": [[a, b] for a, b in self._g.edges()]}

    def to_networkx(self) -> nx.DiGraph:
        """A fresh ``networkx.DiGraph``; each node carries its spec fields as attributes."""
        g = nx.DiGraph()
        for n in self._specs:
            g.add_node(n, **self._specs[n].to_dict())
        g.add_edges_from(self._g.edges())
        return g

    # -------------------------------------------------------------------------------- structure
    @property
    def nodes(self) -> list[str]:
        """All node names, in topological order."""
        return list(self._order)

    def topological_order(self) -> list[str]:
        """All node names, in topological order (the same list as :attr:`nodes`)."""
        return list(self._order)

    def spec(self, name: str) -> NodeSpec:
        """The :class:`NodeSpec` of ``name``."""
        self._check(name)
        return self._specs[name]

    def _sorted(self, names: Iterable[str]) -> list[str]:
        return sorted(names, key=self._index.__getitem__)

    def parents(self, name: str) -> list[str]:
        """Direct causes of ``name``, in topological order."""
        self._check(name)
        return self._sorted(self._g.predecessors(name))

    def children(self, name: str) -> list[str]:
        """Direct effects of ``name``, in topological order."""
        self._check(name)
        return self._sorted(self._g.successors(name))

    def descendants(self, name: str) -> list[str]:
        """All nodes reachable from ``name`` (excluding itself), in topological order."""
        self._check(name)
        return self._sorted(nx.descendants(self._g, name))

    def ancestors(self, name: str) -> list[str]:
        """All nodes with a path to ``name`` (excluding itself), in topological order."""
        self._check(name)
        return self._sorted(nx.ancestors(self._g, name))

    @property
    def image_node(self) -> str | None:
        """The name of the image node, or None when the graph has none."""
        return self._image

    def image_parents(self) -> list[str]:
        """The image node's parents in topological order (empty without an image node)."""
        return [] if self._image is None else self.parents(self._image)

    def attribute_nodes(self) -> list[str]:
        """The non-image nodes, in topological order: the variables the SCM models."""
        return [n for n in self._order if n != self._image]

    def draw(self, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """Draw the DAG (layered by topological generation) to a PNG file.

        Args:
            path: output ``.png`` path; written atomically.
            title: optional figure title.

        Returns:
            The path written.

        Example:
            >>> import tempfile, pathlib
            >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
            >>> out = g.draw(pathlib.Path(tempfile.mkdtemp()) / "dag.png")
            >>> out.stat().st_size > 0
            True
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        path = Path(path)
        g = self._g.copy()
        for layer, names in enumerate(nx.topological_generations(g)):
            for n in names:
                g.nodes[n]["layer"] = layer
        pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal", scale=1.0)
        pos = {n: (x, -y) for n, (x, y) in pos.items()}  # roots on top
        colours = {"image": "#f4a582", "binary": "#92c5de", "categorical": "#92c5de"}
        labels = {n: f"{n}\n({self._specs[n].kind})" for n in g}
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(g)), 4.0))
        nx.draw_networkx(g, pos, ax=ax, labels=labels, node_size=2600, font_size=8, arrowsize=16,
                         node_color=[colours.get(self._specs[n].kind, "#d9f0d3") for n in g])
        ax.set_axis_off()
        if title:
            ax.set_title(title)
        fig.tight_layout()
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        finally:
            plt.close(fig)
        return path

    # ------------------------------------------------------------------------------- internals
    def _check(self, name: str) -> None:
        if name not in self._specs:
            raise ValueError(f"unknown node {name!r}; nodes of this graph: {self._order}")

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._order)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalGraph):
            return NotImplemented
        return self._specs == other._specs and set(self._g.edges()) == set(other._g.edges())

    def __hash__(self) -> int:
        return hash((tuple(sorted(self._specs)), frozenset(self._g.edges())))

    def __repr__(self) -> str:
        edges = ", ".join(f"{a}->{b}" for a, b in self._g.edges())
        return f"CausalGraph(nodes={self._order}, edges=[{edges}])"

