"""Guidance groups for DCFG, derived from the causal graph.

DCFG (arXiv 2506.14399) splits the image's parents into groups and gives each group its own guidance
weight. The default grouping follows the DAG:

* ``affected``: the intervened nodes and all their descendants, restricted to the parents of the
  image. These are the attributes that *should* change, so they are amplified (weight = scale).
* ``invariant``: every other parent of the image. These must stay as they were, so they are
  conditioned on but not amplified (weight 1.0 by default).

Example:
    >>> from scm import CausalGraph
    >>> g = CausalGraph.from_dict({
    ...     "nodes": {"t": {"kind": "positive"}, "i": {"kind": "real"},
    ...               "y": {"kind": "categorical", "cardinality": 10},
    ...               "x": {"kind": "image", "shape": [1, 28, 28]}},
    ...     "edges": [["t", "i"], ["t", "x"], ["i", "x"], ["y", "x"]]})
    >>> derive_groups(g, ["t"])
    GuidanceGroups(affected=('t', 'i'), invariant=('y',))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from dcfg_io.checks import is_number

from .options import check_descendant_weight, warn_deprecated

if TYPE_CHECKING:  # pragma: no cover
    from scm import CausalGraph


@dataclass(frozen=True)
class GuidanceGroups:
    """The DAG-derived partition of the image's parents.

    Attributes:
        affected: intervened image parents and image parents downstream of an intervention.
        invariant: the remaining image parents.
    """

    affected: tuple[str, ...]
    invariant: tuple[str, ...]


def derive_groups(graph: "CausalGraph", intervened: Iterable[str]) -> GuidanceGroups:
    """Split the image's parents into the ``affected`` and ``invariant`` groups.

    Args:
        graph: the causal graph; it must have an image node.
        intervened: names of the intervened (non-image) nodes.

    Returns:
        The two groups, each in the topological order of ``graph.image_parents()``.

    Raises:
        ValueError: if a name is not a node of the graph, or names the image node.
    """
    image_parents = list(graph.image_parents())
    nodes = set(graph.nodes)
    changed: set[str] = set()
    for name in intervened:
        if name not in nodes:
            raise ValueError(
                f"unknown node {name!r} in the intervention; known nodes are {sorted(nodes)}")
        if name == graph.image_node:
            raise ValueError(
                f"cannot intervene on the image node {name!r}: intervene on its parents "
                f"{image_parents} instead")
        changed.add(name)
        changed.update(graph.descendants(name))
    affected = tuple(p for p in image_parents if p in changed)
    invariant = tuple(p for p in image_parents if p not in changed)
    return GuidanceGroups(affected=affected, invariant=invariant)


def _anchor_weight(name: str, value: Any) -> float:
    if not is_number(value, 0, low_open=True):
        raise ValueError(f"anchor_scales[{name!r}]={value!r} must be a positive finite number (1 = plain conditioning)")
    return float(value)


def resolve_guidance(
    graph: "CausalGraph",
    intervened: Sequence[str],
    guidance: str,
    scale: float,
    groups: Sequence[Sequence[str]] | str | None = None,
    weights: Sequence[float] | None = None,
    invariant_weight: float = 1.0,
    descendant_weight: float | str = "scale",
    anchor_scales: Mapping[str, float] | None = None,
) -> tuple[list[list[str]], list[float]]:
    """Turn the user's guidance arguments into explicit ``(groups, weights)``.

    * ``guidance="none"``: one group holding every image parent, weight 1 (the plain conditional).
    * ``guidance="cfg"``: one group holding every image parent, weight ``scale`` (global CFG).
    * ``guidance="dcfg"``: the DAG groups (affected -> ``scale``, invariant -> ``invariant_weight``),
      or ``groups="per_attribute"`` (one group per image parent, affected ones at ``scale``), or
      explicit ``groups`` and ``weights``.
    * ``descendant_weight`` (DCFG only; ``"scale"``, the paper's grouping, by default): when a number, the
      affected image parents that are not themselves intervened on (the intervention's descendants)
      get this weight instead of ``scale``; with the DAG groups they form a group of their own, between
      the intervened group and the invariant one. Use it when a mediator overshoots its counterfactual
      value under amplification (on Morpho-MNIST, intensity under do(thickness)). ``None``, the former
      spelling of ``"scale"``, is deprecated.
    * ``anchor_scales`` (DCFG with the DAG groups only): per image parent, its anchor weight when the
      intervention leaves it invariant (``PipelineConfig.anchor_scales``, measured by
      :func:`pipeline.calibrate.calibrate_guidance`); an invariant parent whose anchor weight differs from
      ``invariant_weight`` gets a group of its own at that weight, the others share the invariant group.

    Returns:
        ``(groups, weights)`` with the groups partitioning the image's parents.

    Example:
        >>> from pipeline.presets import morphomnist_graph
        >>> g = morphomnist_graph()
        >>> resolve_guidance(g, ["thickness"], "dcfg", 3.0)
        ([['thickness', 'intensity'], ['digit']], [3.0, 1.0])
        >>> resolve_guidance(g, ["thickness"], "dcfg", 3.0, descendant_weight=1.0)
        ([['thickness'], ['intensity'], ['digit']], [3.0, 1.0, 1.0])
    """
    if guidance not in ("none", "cfg", "dcfg"):
        raise ValueError(f"guidance={guidance!r} is not one of 'none', 'cfg', 'dcfg'")
    for name, value in (("scale", scale), ("invariant_weight", invariant_weight)):
        if not is_number(value):
            raise ValueError(f"{name}={value!r} must be a finite number (e.g. 3.0)")
    if descendant_weight is None:
        warn_deprecated("descendant_weight=None is deprecated: use descendant_weight='scale' (the intervention's "
                        "scale, the paper's grouping)")
        descendant_weight = "scale"
    descendant_weight = check_descendant_weight(descendant_weight)
    parents = list(graph.image_parents())
    if guidance in ("none", "cfg"):
        if groups is not None or weights is not None:
            raise ValueError(f"groups/weights only apply to guidance='dcfg', not {guidance!r}")
        return [parents], [1.0 if guidance == "none" else float(scale)]
    dag = derive_groups(graph, intervened)
    direct = set(intervened)
    descendants = [p for p in dag.affected if p not in direct] if descendant_weight != "scale" else []

    def weight_of(members: Sequence[str]) -> float:
        if any(n in dag.affected and n not in descendants for n in members):
            return float(scale)
        if any(n in descendants for n in members):
            return float(descendant_weight)  # type: ignore[arg-type]
        return float(invariant_weight)

    if groups is None or groups == "dag":
        if weights is not None:
            raise ValueError("weights without groups: pass both, or neither to use the DAG groups")
        amplified = [p for p in dag.affected if p not in descendants]
        anchors = {k: _anchor_weight(k, v) for k, v in (anchor_scales or {}).items()}
        own = [p for p in dag.invariant if anchors.get(p, float(invariant_weight)) != float(invariant_weight)]
        shared = [p for p in dag.invariant if p not in own]
        out_groups = [g for g in (amplified, descendants) if g]
        out_weights = [weight_of(g) for g in out_groups]
        out_groups += [[p] for p in own] + ([shared] if shared else [])
        out_weights += [anchors[p] for p in own] + ([float(invariant_weight)] if shared else [])
        return out_groups, out_weights
    if groups == "per_attribute":
        if weights is not None:
            raise ValueError("weights cannot be combined with groups='per_attribute'")
        return [[p] for p in parents], [weight_of([p]) for p in parents]
    if isinstance(groups, str):
        raise ValueError(
            f"groups={groups!r} is not understood: use 'dag', 'per_attribute' or a list of lists of "
            f"attribute names partitioning {parents}")
    if (not isinstance(groups, Sequence)
            or not all(isinstance(g, Sequence) and not isinstance(g, str) for g in groups)):
        raise TypeError(f"groups={groups!r:.80} must be 'dag', 'per_attribute' or a list of lists of attribute "
                        f"names partitioning {parents}")
    out_groups = [list(g) for g in groups]
    seen: list[str] = [n for g in out_groups for n in g]
    unknown = [n for n in seen if n not in parents]
    if unknown:
        raise ValueError(f"groups name {unknown}, which are not parents of the image {parents}")
    if sorted(seen) != sorted(parents) or len(set(seen)) != len(seen):
        raise ValueError(
            f"groups {out_groups} must partition the image's parents {parents}: each exactly once")
    if weights is None:
        out_weights = [weight_of(g) for g in out_groups]
    else:
        if isinstance(weights, str) or not isinstance(weights, Sequence):
            raise TypeError(f"weights={weights!r:.80} must be a list of numbers, one per group")
        for i, w in enumerate(weights):
            if not is_number(w):
                raise ValueError(f"weights[{i}]={w!r} must be a finite number (e.g. 3.0)")
        out_weights = [float(w) for w in weights]
        if len(out_weights) != len(out_groups):
            raise ValueError(
                f"got {len(out_weights)} weights for {len(out_groups)} groups: give one weight per group")
    return out_groups, out_weights
