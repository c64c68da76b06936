"""The ``--do`` grammar and the interventions it names: constants, shifts of the factual value, per-image draws.

One grammar (:func:`parse_interventions`), one shift type (:class:`ShiftDo`) and one check
(:func:`check_interventions`) serve ``dcfg generate``, ``dcfg counterfactual``,
:meth:`~pipeline.core.CounterfactualPipeline.counterfactual` and the experiment specs' ``[[interventions]]``:

* ``name=v``: a constant (``thickness=3``; ``thickness=-0.5`` is a negative constant);
* ``name=+d``, ``name+=d``, ``name-=d``: a shift of the factual value, :class:`ShiftDo`;
* ``name~uniform(low,high)``, ``name~normal(mean,std)`` (truncated to the node's support) and
  ``name~choice(v1,v2,...)`` (``a,...,b`` lists the integers ``a`` to ``b``, e.g. ``choice(0,...,9)``): a value
  drawn per image, :class:`UniformDraw`, :class:`NormalDraw`, :class:`ChoiceDraw`. Row ``j``'s draw depends only
  on ``(seed, node, j)`` (:func:`draw_interventions`).

Nothing is evaluated: numbers are read with ``int``/``float``. The nodes and the values of constants are checked
by the SCM's own check (:meth:`scm.SCM.check_do`); what the SCM does not know (shifts of a class, draws, callables
that cannot be recorded) is checked here.

Example:
    >>> do = parse_interventions("thickness=+1, digit~choice(0,...,3)")
    >>> do
    {'thickness': ShiftDo(delta=1.0), 'digit': ChoiceDraw(values=(0, 1, 2, 3))}
    >>> do["thickness"].describe("thickness")
    'do(thickness := thickness + 1)'
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from dcfg_io.checks import is_integer
from pipeline.parsing import parse_assignment, parse_number

from .randomness import per_image_uniform

__all__ = ["ShiftDo", "UniformDraw", "NormalDraw", "ChoiceDraw", "Draw", "Intervention", "parse_interventions",
           "check_intervention", "check_interventions", "check_shifts", "draw_interventions", "interventions_json",
           "support_bounds"]


def support_bounds(spec: Any) -> tuple[float, float]:
    """``(low, high)`` of a continuous node's support (infinite where it is unbounded)."""
    if spec.kind == "positive":
        return 0.0, math.inf
    if spec.kind == "interval":
        return float(spec.low), float(spec.high)
    return -math.inf, math.inf


@dataclass(frozen=True)
class ShiftDo:
    """``do(x := x + delta)``: a shift of the factual value (``thickness=+1``).

    Called on the values a node would take, it returns them shifted, so the SCM takes it as it takes any
    callable intervention.

    Example:
        >>> import torch
        >>> ShiftDo(-0.5)(torch.tensor([2.0]))
        tensor([1.5000])
    """

    delta: float

    def __call__(self, x: Tensor) -> Tensor:
        return x + self.delta

    def to_json(self) -> dict[str, Any]:
        """The record of the shift in a manifest: ``{"shift": delta}``."""
        return {"shift": self.delta}

    def describe(self, node: str) -> str:
        """``do(node := node + delta)`` in words."""
        return f"do({node} := {node} {'+' if self.delta >= 0 else '-'} {abs(self.delta):g})"


@dataclass(frozen=True)
class UniformDraw:
    """``do(x := v)`` with ``v ~ Uniform(low, high)`` drawn per image (``thickness~uniform(1,4)``)."""

    low: float
    high: float

    def to_json(self) -> dict[str, Any]:
        """The record of the draw in a manifest: ``{"uniform": [low, high]}``."""
        return {"uniform": [self.low, self.high]}

    def draw(self, u: np.ndarray, spec: Any) -> np.ndarray:
        """The values for uniform variates ``u`` in (0, 1)."""
        return self.low + (self.high - self.low) * u


@dataclass(frozen=True)
class NormalDraw:
    """``do(x := v)`` with ``v ~ Normal(mean, std)`` per image, truncated to the node's support."""

    mean: float
    std: float

    def to_json(self) -> dict[str, Any]:
        """The record of the draw in a manifest: ``{"normal": [mean, std]}``."""
        return {"normal": [self.mean, self.std]}

    def draw(self, u: np.ndarray, spec: Any) -> np.ndarray:
        """The values for uniform variates ``u`` in (0, 1), by the inverse CDF of the truncated normal."""
        from scipy import special, stats

        lo, hi = support_bounds(spec)
        if math.isinf(lo) and math.isinf(hi):
            return self.mean + self.std * special.ndtri(u)
        a, b = (lo - self.mean) / self.std, (hi - self.mean) / self.std
        v = self.mean + self.std * stats.truncnorm.ppf(u, a, b)
        v = np.clip(v, lo, hi)
        if spec.kind == "positive":  # the support is open at 0
            v = np.maximum(v, np.finfo(np.float32).tiny)
        return v


@dataclass(frozen=True)
class ChoiceDraw:
    """``do(x := v)`` with ``v`` drawn uniformly per image from ``values`` (``digit~choice(0,...,9)``)."""

    values: tuple[float | int, ...]

    def to_json(self) -> dict[str, Any]:
        """The record of the draw in a manifest: ``{"choice": [v1, v2, ...]}``."""
        return {"choice": list(self.values)}

    def draw(self, u: np.ndarray, spec: Any) -> np.ndarray:
        """The values for uniform variates ``u`` in (0, 1)."""
        k = np.minimum((u * len(self.values)).astype(np.int64), len(self.values) - 1)
        return np.asarray(self.values)[k]


#: a value drawn per image
Draw = UniformDraw | NormalDraw | ChoiceDraw
#: what the ``--do`` grammar gives for one node
Intervention = float | int | ShiftDo | UniformDraw | NormalDraw | ChoiceDraw

_DRAW = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)\s*~\s*(?P<dist>[A-Za-z_]+)\s*\((?P<args>[^()]*)\)\s*$")
_DISTRIBUTIONS = "uniform(low,high), normal(mean,std) or choice(v1,v2,...)"


def _split_top_level(text: str, source: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{source}: {text!r} has an unmatched ')'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"{source}: {text!r} has an unclosed '('")
    parts.append("".join(cur))
    return parts


def _draw_args(name: str, dist: str, args: str, source: str) -> list[float | int]:
    """The numbers between the parentheses of a draw (``a,...,b`` expanded for ``choice``)."""
    items = [a.strip() for a in args.split(",")]
    if dist == "choice" and "..." in items:
        k = items.index("...")
        if items.count("...") != 1 or k in (0, len(items) - 1):
            raise ValueError(f"{source}: {name}~choice({args}): write '...' once, between two integers, "
                             f"e.g. choice(0,...,9)")
        a, b = parse_number(items[k - 1], name, source), parse_number(items[k + 1], name, source)
        if not isinstance(a, int) or not isinstance(b, int) or b < a:
            raise ValueError(f"{source}: {name}~choice({args}): 'a,...,b' needs integers a <= b, e.g. choice(0,...,9)")
        head = [parse_number(x, name, source) for x in items[:k - 1]]
        tail = [parse_number(x, name, source) for x in items[k + 2:]]
        return head + list(range(a, b + 1)) + tail
    if any(not a for a in items):
        raise ValueError(f"{source}: {name}~{dist}({args}) has an empty argument; write {_DISTRIBUTIONS}")
    return [parse_number(a, name, source) for a in items]


def _parse_draw(part: str, source: str) -> tuple[str, Draw]:
    """``name~dist(args)`` as ``(name, draw)``."""
    m = _DRAW.match(part)
    if not m:
        raise ValueError(f"{source}: cannot parse {part.strip()!r}; a per-image draw reads "
                         f"name~{_DISTRIBUTIONS}, e.g. thickness~uniform(1,4)")
    name, dist = m.group("name"), m.group("dist").lower()
    if dist not in ("uniform", "normal", "choice"):
        raise ValueError(f"{source}: unknown distribution {m.group('dist')!r} in {part.strip()!r}; "
                         f"use {_DISTRIBUTIONS}")
    args = _draw_args(name, dist, m.group("args"), source)
    if dist == "uniform":
        if len(args) != 2 or not args[0] < args[1]:
            raise ValueError(f"{source}: {name}~uniform{tuple(args)} needs two numbers low < high, "
                             f"e.g. {name}~uniform(1,4)")
        return name, UniformDraw(float(args[0]), float(args[1]))
    if dist == "normal":
        if len(args) != 2 or not args[1] > 0:
            raise ValueError(f"{source}: {name}~normal{tuple(args)} needs a mean and a std > 0, "
                             f"e.g. {name}~normal(2,0.5)")
        return name, NormalDraw(float(args[0]), float(args[1]))
    return name, ChoiceDraw(tuple(args))


def parse_interventions(text: str, source: str = "--do", *, draws: bool = True) -> dict[str, Intervention]:
    """Parse a ``--do`` text: constants, shifts and per-image draws, separated by commas.

    ``name=v`` sets a constant; ``name=+d``, ``name+=d`` and ``name-=d`` shift the factual value;
    ``name~uniform(low,high)``, ``name~normal(mean,std)`` and ``name~choice(v1,...)`` draw per image.
    Nothing is evaluated: numbers are read with ``int``/``float``.

    Args:
        text: the text, e.g. ``"thickness=+1,digit~choice(0,...,9)"``.
        source: what the text is, for the messages (``"--do"``).
        draws: whether per-image draws are allowed (``False``: constants and shifts only).

    Returns:
        node -> number, :class:`ShiftDo` or a draw, in the order given.

    Raises:
        ValueError: a malformed text, naming ``source``, the item and the fix.

    Example:
        >>> parse_interventions("thickness=+1, digit~choice(0,...,3)")
        {'thickness': ShiftDo(delta=1.0), 'digit': ChoiceDraw(values=(0, 1, 2, 3))}
        >>> parse_interventions("intensity~normal(200, 20)")
        {'intensity': NormalDraw(mean=200.0, std=20.0)}
        >>> parse_interventions("thickness-=0.5,digit=2", draws=False)
        {'thickness': ShiftDo(delta=-0.5), 'digit': 2}
    """
    if not isinstance(text, str) or not text.strip():
        example = "thickness=3, thickness=+1 or thickness~uniform(1,4)" if draws else "thickness=3 or thickness=+1"
        raise ValueError(f"{source}: empty; write e.g. {example}")
    out: dict[str, Intervention] = {}
    for part in _split_top_level(text, source):
        if not part.strip():
            raise ValueError(f"{source}: {text!r} has an empty item (a doubled or trailing comma)")
        value: Intervention
        if "~" in part:
            if not draws:
                raise ValueError(f"{source}: {part.strip()!r} is a per-image draw, which is not taken here; write a "
                                 f"constant (name=v) or a shift (name=+d)")
            name, value = _parse_draw(part, source)
        else:
            name, op, raw = parse_assignment(part, source)
            if op == "=" and raw.startswith("+"):
                op, raw = "+=", raw[1:]
            number = parse_number(raw, name, source)
            value = number if op == "=" else ShiftDo(float(number) if op == "+=" else -float(number))
        if name in out:
            raise ValueError(f"{source}: node {name!r} is given twice")
        out[name] = value
    return out


def _node_only(x: Tensor) -> Tensor:
    """Stands for a value the SCM does not know (a shift, a draw) in its check of the node's name."""
    return x


def _check_draw(name: str, value: Draw, spec: Any) -> Draw:
    """A draw's parameters, against the node's kind and support."""
    where = f"do[{name!r}]"
    if isinstance(value, ChoiceDraw):
        from scm.support import as_values

        if not value.values:
            raise ValueError(f"{where}: choice() needs at least one value")
        as_values(name, spec, torch.tensor(value.values, dtype=torch.float64), what="do")
        return ChoiceDraw(tuple(int(v) if spec.is_discrete else float(v) for v in value.values))
    if spec.is_discrete:
        raise ValueError(f"{where}: {type(value).__name__.removesuffix('Draw').lower()} draws need a continuous "
                         f"node, but {name!r} is {spec.kind}; use {name}~choice(...) with class indices")
    lo, hi = support_bounds(spec)
    if isinstance(value, UniformDraw):
        if not (math.isfinite(value.low) and math.isfinite(value.high) and value.low < value.high):
            raise ValueError(f"{where}: uniform({value.low}, {value.high}) needs finite low < high")
        if value.low < lo or value.high > hi:
            raise ValueError(f"{where}: uniform({value.low}, {value.high}) leaves the support of the "
                             f"{spec.kind} node {name!r} ({spec.describe()}); use bounds inside it")
        return value
    if not (math.isfinite(value.mean) and math.isfinite(value.std) and value.std > 0):
        raise ValueError(f"{where}: normal({value.mean}, {value.std}) needs a finite mean and std > 0")
    from scipy import special

    mass = special.ndtr((hi - value.mean) / value.std) - special.ndtr((lo - value.mean) / value.std)
    if not mass > 1e-9:
        raise ValueError(f"{where}: normal({value.mean}, {value.std}) puts no mass on the support of "
                         f"{name!r} ({spec.describe()}); move the mean inside it")
    return value


def _check_shift(name: str, value: ShiftDo, spec: Any) -> ShiftDo:
    """A shift needs a continuous node and a finite delta."""
    where = f"do[{name!r}]"
    if spec.is_discrete:
        raise ValueError(f"{where}: a shift of the {spec.kind} node {name!r} is not allowed (its values are "
                         f"classes); set a class instead, e.g. {name}=1")
    if not math.isfinite(value.delta):
        raise ValueError(f"{where}: the shift {value.delta} must be a finite number")
    return value


def check_intervention(name: str, value: Any, spec: Any, *, draws: bool = True, callables: bool = True) -> Any:
    """One node's intervention checked against the node's spec (its name is the caller's to check).

    A number or a tensor is checked by the SCM's check of values (:func:`scm.support.as_values`: in the support,
    a class index for a discrete node); this adds what the SCM does not know: a bool is a value only for a binary
    node, a text is no value, a shift needs a continuous node, and a draw's parameters must fit the node.

    Args:
        name: the node.
        value: a number, a tensor, :class:`ShiftDo`, a draw (with ``draws``) or a callable of the factual value
            (with ``callables``).
        spec: the node's ``NodeSpec``.
        draws: accept per-image draws (they are drawn by :func:`draw_interventions`).
        callables: accept callables other than :class:`ShiftDo` (a query recorded in a manifest cannot).

    Returns:
        The checked value: a number as ``int`` (discrete node) or ``float``, a tensor as the SCM reads it
        (float32 or int64 class indices), a shift, draw or callable as given.

    Raises:
        TypeError: a value of the wrong type.
        ValueError: a value outside the support, a shift of a class, a draw that does not fit the node.

    Example:
        >>> from scm import NodeSpec
        >>> digit = NodeSpec("categorical", cardinality=10)
        >>> check_intervention("digit", 3.0, digit)
        3
        >>> check_intervention("digit", ShiftDo(1.0), digit)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: do['digit']: a shift of the categorical node 'digit' is not allowed ...
    """
    from scm.support import as_values

    where = f"do[{name!r}]"
    if isinstance(value, ShiftDo):
        return _check_shift(name, value, spec)
    if isinstance(value, Draw):
        if not draws:
            raise TypeError(f"{where}={value!r} is a per-image draw; draw it first with "
                            f"pipeline.generate.draw_interventions (as dcfg counterfactual and generate do)")
        return _check_draw(name, value, spec)
    if (isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool)) \
            and spec.kind != "binary":  # True/False mean 1/0 only for a binary node
        raise TypeError(f"{where}={value!r}: pass a number, a (B,) tensor, a ShiftDo or a callable of the factual "
                        f"value, not a bool (a class index is an integer, e.g. 1)")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{where}={value!r:.80}: pass a number, a (B,) tensor, a ShiftDo or a callable of the "
                        f"factual value, not a string")
    if callable(value) and not isinstance(value, Tensor):
        if not callables:
            raise TypeError(f"{where} is a callable; generate records its query in manifest.json, so pass a "
                            f"ShiftDo(delta) (or the text '{name}=+1') instead of a function")
        return value  # the SCM checks its values when it applies it
    t = as_values(name, spec, value, what="do", allow_scalar=True)
    if t.dim() == 0:
        return int(t) if spec.is_discrete else float(value)  # 3 and 3.0 are one query
    return t


def check_interventions(do: Mapping[str, Any] | None, scm: Any, n: int | None = None, *, draws: bool = False,
                        callables: bool = True) -> dict[str, Any]:
    """Check a ``do`` mapping against an SCM before any work: the pipeline's one check of interventions.

    The SCM checks the nodes and the rows of a tensor (:meth:`scm.SCM.check_do`: an attribute node, one value
    per row); :func:`check_intervention` checks each value.

    Args:
        do: node -> number, ``(n,)`` tensor, :class:`ShiftDo`, a draw (with ``draws``) or a callable of the
            factual value (with ``callables``); ``None`` is no intervention.
        scm: the :class:`scm.SCM` intervened on.
        n: the number of rows a tensor must have (``None``: not checked here).
        draws: accept per-image draws (they are drawn by :func:`draw_interventions`).
        callables: accept callables other than :class:`ShiftDo`.

    Returns:
        node -> the checked value (:func:`check_intervention`; a tensor on the SCM's device).

    Raises:
        TypeError: ``do`` is not a mapping, or a value of the wrong type.
        ValueError: an unknown node, the image node, a value outside the support, a shift of a class.
    """
    if do is None:
        return {}
    if not isinstance(do, Mapping):
        raise TypeError(f"do must be a dict of node name -> value, got {type(do).__name__}")
    out: dict[str, Any] = {}
    for name, value in do.items():
        scm.check_do({name: _node_only}, n)  # the node: an attribute node of the SCM
        value = check_intervention(name, value, scm.graph.spec(name), draws=draws, callables=callables)
        out[name] = scm.check_do({name: value}, n)[name] if isinstance(value, Tensor) else value
    return out


def check_shifts(do: Mapping[str, Any], rows: Any, graph: Any) -> None:
    """A shift must keep every row in the node's support. Checked before anything is written when the data
    hold their attributes in memory (``rows.factual(node)`` is not None); otherwise the shard that meets the row
    stops."""
    from scm.support import as_values

    for name, value in do.items():
        factual = rows.factual(name) if isinstance(value, ShiftDo) else None
        if factual is None:
            continue
        try:
            as_values(name, graph.spec(name), factual.double() + value.delta, what=f"shifted (by {value.delta:+g})")
        except ValueError as e:
            raise ValueError(f"do[{name!r}]: the shift {value.delta:+g} leaves the support on some rows of the data "
                             f"({e}); use a smaller shift") from None


def interventions_json(do: Mapping[str, Any]) -> dict[str, Any]:
    """The record of checked interventions in a manifest (a per-row tensor by its sha256)."""
    out: dict[str, Any] = {}
    for name, value in do.items():
        if isinstance(value, Tensor):
            data = value.detach().cpu().to(torch.float64 if value.is_floating_point() else torch.int64)
            out[name] = {"per_row_sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest()}
        elif isinstance(value, (int, float)):
            out[name] = {"set": value}
        else:
            out[name] = value.to_json()
    return out


def draw_interventions(do: Mapping[str, Any], graph: Any, seed: int, rows: Any) -> dict[str, Any]:
    """The ``do`` of :meth:`~pipeline.core.CounterfactualPipeline.counterfactual` for some dataset rows.

    Each draw becomes one value per row, from :func:`~pipeline.generate.randomness.per_image_uniform` over
    ``(seed, "do/<node>", row)``; a per-row tensor is indexed by ``rows``; constants and shifts stay as they are.

    Args:
        do: checked interventions (:func:`check_interventions`).
        graph: the pipeline's ``CausalGraph``.
        seed: the query's seed, an integer >= 0.
        rows: the dataset rows, integers >= 0 (a single image is row 0).

    Returns:
        node -> number, ``(len(rows),)`` tensor or :class:`ShiftDo`.

    Example:
        >>> from pipeline.presets import morphomnist_graph
        >>> do = draw_interventions({"thickness": UniformDraw(1.0, 4.0)}, morphomnist_graph(), 0, [0, 1, 2])
        >>> do["thickness"].shape, bool(((do["thickness"] > 1) & (do["thickness"] < 4)).all())
        (torch.Size([3]), True)
    """
    index = np.asarray(rows, dtype=np.int64)
    out: dict[str, Any] = {}
    for name, value in do.items():
        spec = graph.spec(name)
        if isinstance(value, Tensor):
            out[name] = value[torch.from_numpy(index)]
        elif isinstance(value, Draw):
            if not is_integer(seed, 0):
                raise ValueError(f"seed={seed!r} must be an integer >= 0 for the per-image draw of {name!r}")
            v = value.draw(per_image_uniform(int(seed), f"do/{name}", index), spec)
            out[name] = (torch.from_numpy(np.asarray(v, dtype=np.int64)) if spec.is_discrete
                         else torch.from_numpy(np.asarray(v, dtype=np.float64)).float())
        else:
            out[name] = value
    return out
