"""The experiment spec: a TOML file that defines a DAG-driven counterfactual experiment, and its validation.

A spec has these tables (only ``[graph]`` and ``[data]`` are required; every other key has a default):

==================  ====================================================================================
table               what it holds
==================  ====================================================================================
top level           ``name``, ``description``, ``seed``
``[graph]``         ``nodes`` (name -> ``{kind = ...}``, as :meth:`scm.CausalGraph.from_dict`) and ``edges``
``[equations]``     synthetic data only: one structural equation per attribute node, from a small safe set
                    of forms (see :data:`FORMS`); never code
``[render]``        image parent -> how it shows in the image: ``thickness``, ``intensity``, ``slant`` (the
                    Morpho-MNIST perturbations, applied in the order slant, thickness, intensity) or ``digit``
                    (the class of the source digit); also how the evaluation measures it
``[data]``          ``source``: ``"morpho"`` (the digits bundled offline), ``"mnist_folder"`` (a local MNIST
                    / Morpho-MNIST folder) or ``"csv"`` (a CSV of attributes plus an image folder)
``[model]``         ``pipeline`` (``"train"``, ``"pretrained"`` or a saved pipeline folder) and the UNet sizes
``[scm]``           ``mechanisms`` (``"fit"``: learnable flows fitted on the data; ``"equations"``: the spec's
                    equations themselves) and the fit's budget
``[training]``      the image model's training budget (:class:`diffusion.TrainConfig` fields)
``[evaluation]``    rows and DDIM steps of the counterfactual evaluation
``[guidance]``      the guidance settings compared: sweep methods (with guidance variants), scales, DCFG and CFG
                    scales, ``variant`` / ``interval`` / ``apg_eta`` (APG, CFG++, a guidance interval)
``[[interventions]]`` the interventions evaluated: ``node``, and ``value`` (a number, or ``"marginal"``:
                    drawn from the training marginal) or ``shift`` (added to the factual value)
``[[effects]]``     effects estimated: ``treatment``, ``outcome``, ``control``, ``treated``, dowhy ``method``
                    (``glm_family = "binomial"``: a logistic GLM of an interval outcome's position in its
                    range), ``scm_bootstrap`` (refits of the SCM for its interval), and an optional
                    ``image_outcome`` measured on counterfactual images
``[quick]``         overrides used by ``--quick`` (same tables and keys), on top of built-in small budgets
                    (:data:`QUICK_DEFAULTS`, a learning rate of at least 1e-3, and a UNet with half the
                    channels and no self-attention)
==================  ====================================================================================

Validation happens before anything runs or is written. Every problem raises :class:`SpecError`, whose
one-line message names the key (``[equations.intensity] weights``), the problem and the fix.

Example:
    >>> spec = parse_spec({
    ...     "graph": {"nodes": {"t": {"kind": "positive"}, "digit": {"kind": "categorical", "cardinality": 10},
    ...                         "image": {"kind": "image", "shape": [1, 28, 28]}},
    ...               "edges": [["t", "image"], ["digit", "image"]]},
    ...     "equations": {"t": {"form": "gamma", "concentration": 10.0, "rate": 5.0, "shift": 0.5}},
    ...     "render": {"t": "thickness", "digit": "digit"},
    ...     "data": {"source": "morpho"}})
    >>> [i.node for i in spec.interventions], spec.guidance.methods
    (['t', 'digit'], ('cfg', 'dcfg'))
    >>> parse_spec({"graph": {"nodes": {}, "edges": []}, "data": {"source": "morpho"}, "sede": 1})
    Traceback (most recent call last):
    ...
    pipeline.experiment.spec.SpecError: spec: unknown key 'sede' (did you mean 'seed'?); allowed keys:
        ['data', 'description', 'effects', 'equations', 'evaluation', 'graph', 'guidance', 'interventions', 'model',
        'name', 'quick', 'render', 'scm', 'seed', 'training']
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

from dcfg_io.checks import is_integer, is_number
from diffusion.config import ImageModelConfig
from pipeline.options import DCFG_FORMS, check_dcfg_form, former_anchor, warn_deprecated

__all__ = ["SpecError", "ExperimentSpec", "EquationSpec", "DataSpec", "ModelSpec", "ScmSpec", "TrainingSpec",
           "EvaluationSpec", "GuidanceSpec", "InterventionSpec", "EffectSpec", "load_spec", "parse_spec", "FORMS",
           "RENDER_OPS", "SOURCES", "QUICK_DEFAULTS", "stable_hash", "check_paths"]

#: Equation forms and their parameters (name -> (required, optional with defaults)).
FORMS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "linear": ((), {"weights": {}, "bias": 0.0, "scale": 1.0}),
    "normal": ((), {"loc": 0.0, "scale": 1.0}),
    "affine_sigmoid": (("low", "high"), {"weights": {}, "bias": 0.0, "noise_scale": 1.0}),
    "gamma": (("concentration", "rate"), {"shift": 0.0}),
    "categorical": (("probs",), {}),
}
_FORM_HELP = {
    "linear": "x = bias + sum_p weights[p] * p + scale * N(0, 1)",
    "normal": "x = loc + scale * N(0, 1) (a root)",
    "affine_sigmoid": "x = low + (high - low) * sigmoid(bias + sum_p weights[p] * p + noise_scale * N(0, 1))",
    "gamma": "x = shift + Gamma(concentration, rate) (a root)",
    "categorical": "x ~ Categorical(probs) (a root)",
}
#: How an image parent shows in the image (and is measured).
RENDER_OPS: tuple[str, ...] = ("thickness", "intensity", "slant", "digit")
SOURCES: tuple[str, ...] = ("morpho", "mnist_folder", "csv")
_METHODS = ("cfg", "dcfg", "dcfg_per_attribute", "dcfg_paper")
#: guidance variants a method may carry: ``BASE[+apg|+cfgpp][+interval]`` (``pipeline.evaluation.runner.parse_method``)
_VARIANTS = ("apg", "cfgpp")
#: timesteps of the image model the spec trains (or the bundled one): a guidance interval lies in [0, T]
_NUM_TIMESTEPS = 1000
_IMAGE_OUTCOMES = ("stroke_area", "thickness", "intensity", "slant")

#: Small budgets applied by ``--quick`` (each is a cap: a smaller value in the spec is kept), before [quick].
QUICK_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"train_digits": 300, "test_digits": 40, "samples_per_digit": 2, "scm_rows": 2000, "prepare_rows": 400},
    "scm": {"epochs": 10},
    "training": {"steps": 300, "batch_size": 32, "warmup": 20, "ckpt_every": 100},
    "evaluation": {"n": 24, "steps": 10, "sweep_n": 8, "cycle_n": 4, "cycles": 2, "grid_n": 3},
    "guidance": {"scales": 3},  # the first three scales
    "effects": {"units": 16, "num_simulations": 10, "scm_samples": 20000, "scm_bootstrap": 10},
}


class SpecError(ValueError):
    """A problem in an experiment spec. The message is one line: ``<where>: <key>: <problem>; <fix>``."""


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-able object (sorted keys).

    Example:
        >>> stable_hash({"b": 1, "a": [1, 2]}) == stable_hash({"a": [1, 2], "b": 1})
        True
    """
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ================================================================================ the parsed spec
@dataclass(frozen=True)
class EquationSpec:
    """One structural equation: ``form`` (a key of :data:`FORMS`) and its parameters."""

    node: str
    form: str
    params: Mapping[str, Any]

    def describe(self) -> str:
        """The equation in words, e.g. ``intensity = 64 + 191 * sigmoid(-5 + 2 * thickness + 0.5 * u)``."""
        p = self.params
        if self.form in ("linear", "affine_sigmoid"):
            terms = [f"{p['bias']:g}"] + [f"{w:g} * {k}" for k, w in p["weights"].items()]
            noise = p["scale"] if self.form == "linear" else p["noise_scale"]
            inner = " + ".join(terms + [f"{noise:g} * u"])
            if self.form == "linear":
                return f"{self.node} = {inner},  u ~ N(0, 1)"
            return (f"{self.node} = {p['low']:g} + {p['high'] - p['low']:g} * sigmoid({inner}),  u ~ N(0, 1)")
        if self.form == "normal":
            return f"{self.node} = {p['loc']:g} + {p['scale']:g} * u,  u ~ N(0, 1)"
        if self.form == "gamma":
            return f"{self.node} = {p['shift']:g} + u,  u ~ Gamma({p['concentration']:g}, rate {p['rate']:g})"
        return f"{self.node} ~ Categorical({[round(v, 4) for v in p['probs']]})"


@dataclass(frozen=True)
class DataSpec:
    """``[data]``: where the images and attributes come from (see the module docstring)."""

    source: str
    root: str | None = None
    train_digits: int | None = None
    test_digits: int = 200
    samples_per_digit: int = 4
    scm_rows: int = 4000
    image_parents: str = "independent"
    csv: str | None = None
    image_dir: str | None = None
    test_csv: str | None = None
    test_fraction: float = 0.2
    prepare: str | None = None
    prepare_rows: int = 600


#: The UNet sizes a spec's ``[model]`` may set: fields of :class:`diffusion.ImageModelConfig`, with its defaults.
UNET_FIELDS: tuple[str, ...] = ("block_out_channels", "layers_per_block", "block_dim", "attention_levels",
                                "mid_attention", "attention_head_dim", "norm_num_groups")
_UNET_DEFAULTS = {f.name: f.default for f in fields(ImageModelConfig) if f.name in UNET_FIELDS}


@dataclass(frozen=True)
class ModelSpec:
    """``[model]``: the pipeline to train or load, and the UNet's sizes (defaulting to
    :class:`diffusion.ImageModelConfig`'s).

    Example:
        >>> ModelSpec().unet_sizes() == {name: getattr(ImageModelConfig(), name) for name in UNET_FIELDS}
        True
    """

    pipeline: str = "train"
    block_out_channels: tuple[int, ...] = _UNET_DEFAULTS["block_out_channels"]
    layers_per_block: int = _UNET_DEFAULTS["layers_per_block"]
    block_dim: int = _UNET_DEFAULTS["block_dim"]
    attention_levels: tuple[bool, ...] = _UNET_DEFAULTS["attention_levels"]
    mid_attention: bool = _UNET_DEFAULTS["mid_attention"]
    attention_head_dim: int = _UNET_DEFAULTS["attention_head_dim"]
    norm_num_groups: int = _UNET_DEFAULTS["norm_num_groups"]

    def unet_sizes(self) -> dict[str, Any]:
        """The UNet sizes, as keyword arguments of :class:`diffusion.ImageModelConfig`."""
        return {name: getattr(self, name) for name in UNET_FIELDS}


@dataclass(frozen=True)
class ScmSpec:
    """``[scm]``: the attribute SCM of the pipeline: learnable and fitted, or the spec's equations."""

    mechanisms: str = "fit"
    epochs: int = 30
    hidden: tuple[int, ...] = (32, 32)
    lr: float = 3e-3


@dataclass(frozen=True)
class TrainingSpec:
    """``[training]``: the image model's training (fields of :class:`diffusion.TrainConfig`)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    p_attr: float = 0.35
    p_all: float = 0.1
    ema_decay: float = 0.999
    warmup: int = 200
    ckpt_every: int = 250


@dataclass(frozen=True)
class EvaluationSpec:
    """``[evaluation]``: the counterfactual evaluation's rows and DDIM steps."""

    n: int = 200
    steps: int = 20
    sweep_n: int | None = None
    cycle_n: int | None = None
    cycles: int = 3
    grid_n: int = 4
    precision: str = "auto"  # the image model's inference precision: "auto" (bf16 where native), "fp32", "bf16"


@dataclass(frozen=True)
class GuidanceSpec:
    """``[guidance]``: the guidance settings compared."""

    methods: tuple[str, ...] = ("cfg", "dcfg")
    scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    dcfg_scale: float | str = 2.0
    cfg_scale: float | str = "best"
    invariant_weight: float = 1.0
    dcfg_form: str = "paper"  # DCFG's formulation: "paper" (the paper's equation) or "conditional" (each group
    #                           amplified given the others); its former key ``anchor`` ("null" / "full") is deprecated
    variant: str | None = None  # "apg" or "cfgpp": every method without a variant is also swept with it
    interval: tuple[float, float] | None = None  # the guidance interval (lo, hi) of the "+interval" methods
    apg_eta: float = 0.0  # APG's weight of the parallel part, in [0, 1]

    @property
    def swept_methods(self) -> tuple[str, ...]:
        """The evaluation's sweep: ``methods``, and with ``variant`` and / or ``interval`` given, each method that
        has no variant of its own also with them (``cfg`` -> ``cfg``, ``cfg+apg``; with an interval too,
        ``cfg+apg+interval``).

        Example:
            >>> GuidanceSpec(methods=("cfg", "dcfg+cfgpp"), variant="apg", interval=(200.0, 800.0)).swept_methods
            ('cfg', 'dcfg+cfgpp', 'cfg+apg+interval')
        """
        suffix = (f"+{self.variant}" if self.variant else "") + ("+interval" if self.interval else "")
        extra = [m + suffix for m in self.methods if suffix and "+" not in m]
        return tuple(dict.fromkeys(list(self.methods) + extra))

    @property
    def anchor(self) -> str:
        """Deprecated: :attr:`dcfg_form` under its former name and values (``"null"``, ``"full"``)."""
        warn_deprecated(f"GuidanceSpec.anchor is deprecated: read dcfg_form ({self.dcfg_form!r})", 2)
        return former_anchor(self.dcfg_form)


@dataclass(frozen=True)
class InterventionSpec:
    """One ``[[interventions]]`` entry: ``do(node = value)`` or ``do(node = node + shift)`` (the ``shift`` of a
    :class:`~pipeline.generate.ShiftDo`, checked like ``--do``'s: :func:`pipeline.generate.check_intervention`)."""

    node: str
    value: float | int | str = "marginal"
    shift: float | None = None
    categorical: bool = False

    @property
    def intervention(self) -> Any:
        """The intervention as the ``--do`` grammar gives it: a number, a :class:`~pipeline.generate.ShiftDo`, or
        None for ``"marginal"`` (drawn by the evaluation)."""
        from pipeline.generate.interventions import ShiftDo

        if self.shift is not None:
            return ShiftDo(self.shift)
        return None if self.value == "marginal" else self.value

    def describe(self) -> str:
        """``do(node = ...)`` in words."""
        if self.shift is not None:
            return self.intervention.describe(self.node)
        if self.value == "marginal":
            what = "another class, uniformly" if self.categorical else "a draw from its training marginal"
            return f"do({self.node} := {what})"
        return f"do({self.node} := {self.value:g})"


@dataclass(frozen=True)
class EffectSpec:
    """One ``[[effects]]`` entry: the effect of ``treatment: control -> treated`` on ``outcome``."""

    treatment: str
    outcome: str
    control: float
    treated: float
    method: str = "backdoor.linear_regression"
    image_outcome: str | None = None
    units: int = 32
    refuters: tuple[str, ...] = ("placebo_treatment_refuter",)
    num_simulations: int = 20
    scm_samples: int = 100000
    guidance: str = "dcfg"
    glm_family: str | None = None
    scm_bootstrap: int = 0


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment spec (see the module docstring).

    Attributes:
        name: the experiment's name (default: the file's stem).
        graph: the causal DAG (:class:`scm.CausalGraph`).
        equations: node -> :class:`EquationSpec` (synthetic data).
        render: image parent -> render op.
        raw: the spec as parsed (after ``--quick`` overrides), for hashing and the report.
        path: the spec file (None for a dict).
        quick: whether the ``--quick`` budgets were applied.
    """

    name: str
    description: str
    seed: int
    graph: Any
    equations: Mapping[str, EquationSpec]
    render: Mapping[str, str]
    data: DataSpec
    model: ModelSpec
    scm: ScmSpec
    training: TrainingSpec
    evaluation: EvaluationSpec
    guidance: GuidanceSpec
    interventions: tuple[InterventionSpec, ...]
    effects: tuple[EffectSpec, ...]
    raw: Mapping[str, Any] = field(repr=False)
    path: Path | None = None
    quick: bool = False

    @property
    def synthetic(self) -> bool:
        """True when the data are rendered from the spec's equations (``morpho`` or ``mnist_folder``)."""
        return self.data.source in ("morpho", "mnist_folder")

    def digit_node(self) -> str | None:
        """The node rendered as the source digit's class, if any."""
        return next((n for n, op in self.render.items() if op == "digit"), None)

    def section_hash(self, *keys: str) -> str:
        """Hash of some top-level tables of the (overridden) spec, for stage caching."""
        return stable_hash({k: self.raw.get(k) for k in keys})

    def resolve_path(self, value: str) -> Path:
        """A path from the spec, relative to the spec file's folder (``~`` expanded)."""
        p = Path(os.path.expanduser(value))
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p


# ================================================================================ small checkers
def _suggest(key: str, options: Any) -> str:
    close = difflib.get_close_matches(str(key), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: Mapping[str, Any], allowed: Any, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r}{_suggest(key, allowed)}; allowed keys: {sorted(allowed)}")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: expected a table, got {_tname(value)} {value!r:.60}")
    return dict(value)


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(v), type(v).__name__)


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if not is_integer(value):
        raise SpecError(f"{where}: expected an integer, got {_tname(value)} {value!r:.60}")
    if minimum is not None and value < minimum:
        raise SpecError(f"{where}: {value} is too small; use an integer >= {minimum}")
    return int(value)


def _float(value: Any, where: str, low: float | None = None, high: float | None = None, *,
           open_low: bool = False, open_high: bool = False) -> float:
    if not is_number(value):
        raise SpecError(f"{where}: expected a finite number, got {_tname(value)} {value!r:.60}")
    v = float(value)
    if low is not None and (v < low or (open_low and v == low)):
        raise SpecError(f"{where}: {v:g} is out of range; use a number {'>' if open_low else '>='} {low:g}")
    if high is not None and (v > high or (open_high and v == high)):
        raise SpecError(f"{where}: {v:g} is out of range; use a number {'<' if open_high else '<='} {high:g}")
    return v


def _str(value: Any, where: str, choices: Any = None) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a string, got {_tname(value)} {value!r:.60}")
    if choices is not None and value not in choices:
        raise SpecError(f"{where}: {value!r} is not allowed{_suggest(value, choices)}; use one of {list(choices)}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {_tname(value)} {value!r:.60}")
    return value


def _list(value: Any, where: str, item: Callable[[Any, str], Any], min_len: int = 1) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"{where}: expected an array, got {_tname(value)} {value!r:.60}")
    if len(value) < min_len:
        raise SpecError(f"{where}: the array is empty; give at least {min_len} item(s)")
    return tuple(item(v, f"{where}[{k}]") for k, v in enumerate(value))


# ================================================================================ sections
def _section(raw: Mapping[str, Any], name: str, cls: type, parsers: Mapping[str, Callable[[Any, str], Any]],
             required: tuple[str, ...] = ()) -> Any:
    where = f"[{name}]"
    table = _table(raw.get(name, {}), where)
    _check_keys(table, parsers, where)
    for key in required:
        if key not in table:
            raise SpecError(f"{where}: missing key {key!r}; it is required")
    return cls(**{k: parsers[k](v, f"{where} {k}") for k, v in table.items()})


def _pos(minimum: int = 1) -> Callable[[Any, str], int]:
    return lambda v, w: _int(v, w, minimum)


def _prob(v: Any, w: str) -> float:
    return _float(v, w, 0.0, 1.0)


def _scale_or_best(v: Any, w: str) -> float | str:
    if isinstance(v, str):
        return _str(v, w, ("best",))
    return _float(v, w, 0.0)


def _parse_data(raw: Mapping[str, Any]) -> DataSpec:
    parsers = {
        "source": lambda v, w: _str(v, w, SOURCES), "root": _str, "train_digits": _pos(10), "test_digits": _pos(2),
        "samples_per_digit": _pos(1), "scm_rows": _pos(100),
        "image_parents": lambda v, w: _str(v, w, ("independent", "scm")), "csv": _str, "image_dir": _str,
        "test_csv": _str, "test_fraction": lambda v, w: _float(v, w, 0.0, 0.9, open_low=True),
        "prepare": lambda v, w: _str(v, w, ("morpho_csv",)), "prepare_rows": _pos(20)}
    if "data" not in raw:
        raise SpecError("spec: missing table [data]; add one with source = \"morpho\", \"mnist_folder\" or \"csv\"")
    data = _section(raw, "data", DataSpec, parsers, required=("source",))
    given = set(_table(raw["data"], "[data]"))
    only = {"morpho": {"train_digits", "test_digits", "samples_per_digit", "scm_rows", "image_parents"},
            "csv": {"csv", "image_dir", "test_csv", "test_fraction", "prepare", "prepare_rows"}}
    only["mnist_folder"] = only["morpho"] | {"root"}
    common = {"source"}
    extra = sorted(given - common - only[data.source])
    if extra:
        raise SpecError(f"[data] {extra[0]}: not used with source = {data.source!r}; keys for this source: "
                        f"{sorted(only[data.source])}")
    if data.source == "mnist_folder" and data.root is None:
        raise SpecError("[data] root: missing; source = \"mnist_folder\" needs the folder of the MNIST IDX files "
                        "(train-images-idx3-ubyte.gz, ...)")
    if data.source == "csv":
        if data.prepare is None and (data.csv is None or data.image_dir is None):
            raise SpecError("[data] csv: source = \"csv\" needs csv = \"attributes.csv\" and image_dir = \"images\" "
                            "(paths relative to the spec), or prepare = \"morpho_csv\" to generate a small example "
                            "folder")
        if data.prepare is not None and (data.csv is not None or data.image_dir is not None
                                         or data.test_csv is not None):
            raise SpecError("[data] prepare: generates its own CSV and image folder; remove csv, image_dir and "
                            "test_csv, or remove prepare to use your own folder")
    return data


def _parse_model(raw: Mapping[str, Any]) -> ModelSpec:
    bool_item = _bool
    parsers = {"pipeline": _str, "block_out_channels": lambda v, w: _list(v, w, _pos(1)),
               "layers_per_block": _pos(1), "block_dim": _pos(1),
               "attention_levels": lambda v, w: _list(v, w, bool_item), "mid_attention": _bool,
               "attention_head_dim": _pos(1), "norm_num_groups": _pos(1)}
    return _section(raw, "model", ModelSpec, parsers)


def _parse_scm(raw: Mapping[str, Any]) -> ScmSpec:
    parsers = {"mechanisms": lambda v, w: _str(v, w, ("fit", "equations")), "epochs": _pos(1),
               "hidden": lambda v, w: _list(v, w, _pos(1)), "lr": lambda v, w: _float(v, w, 0.0, open_low=True)}
    return _section(raw, "scm", ScmSpec, parsers)


def _parse_training(raw: Mapping[str, Any]) -> TrainingSpec:
    parsers = {"steps": _pos(1), "batch_size": _pos(1), "lr": lambda v, w: _float(v, w, 0.0, open_low=True),
               "p_attr": _prob, "p_all": _prob, "ema_decay": lambda v, w: _float(v, w, 0.0, 1.0, open_high=True),
               "warmup": _pos(0), "ckpt_every": _pos(1)}
    return _section(raw, "training", TrainingSpec, parsers)


def _parse_evaluation(raw: Mapping[str, Any]) -> EvaluationSpec:
    parsers = {"n": _pos(2), "steps": _pos(1), "sweep_n": _pos(1), "cycle_n": _pos(0), "cycles": _pos(1),
               "grid_n": _pos(0), "precision": lambda v, w: _str(v, w, ("auto", "fp32", "bf16"))}
    ev = _section(raw, "evaluation", EvaluationSpec, parsers)
    for key in ("sweep_n", "cycle_n"):
        v = getattr(ev, key)
        if v is not None and v > ev.n:
            raise SpecError(f"[evaluation] {key}: {v} exceeds n = {ev.n}; the subsets are taken from the n rows, use "
                            f"{key} <= {ev.n}")
    return ev


def _method(value: Any, where: str) -> str:
    """A method name ``BASE[+apg|+cfgpp][+interval]``."""
    name = _str(value, where)
    base, *rest = name.split("+")
    _str(base, where, _METHODS)
    allowed = [v for v in _VARIANTS] + ["interval"]
    for i, part in enumerate(rest):
        ok = (part in _VARIANTS and i == 0) or (part == "interval" and i == len(rest) - 1 and rest.count(part) == 1)
        if not ok:
            raise SpecError(f"{where}: {name!r}: {part!r} is not allowed there; a method is BASE[+apg|+cfgpp]"
                            f"[+interval] with BASE one of {list(_METHODS)} and the suffixes {allowed} in this order "
                            f"(e.g. \"cfg+apg\", \"dcfg+cfgpp+interval\")")
    return name


def _interval(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SpecError(f"{where}: expected two numbers [lo, hi] (timesteps, e.g. [200, 800]), got {value!r:.60}")
    lo, hi = _list(value, where, lambda x, w: _float(x, w, 0.0))
    if lo >= hi or hi > _NUM_TIMESTEPS:
        raise SpecError(f"{where}: [{lo:g}, {hi:g}] must be [lo, hi] with 0 <= lo < hi <= {_NUM_TIMESTEPS} (timesteps "
                        f"of the image model's schedule; guidance applies where lo <= t <= hi)")
    return lo, hi


def _former_anchor_key(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``[guidance] anchor = "null" | "full"`` (deprecated, with a warning) as ``dcfg_form = "paper" |
    "conditional"``."""
    table = raw.get("guidance")
    if not isinstance(table, Mapping) or "anchor" not in table:
        return raw
    if "dcfg_form" in table:
        raise SpecError("[guidance]: give dcfg_form only; anchor is its former name")
    value = _str(table["anchor"], "[guidance] anchor", ("null", "full"))
    form = check_dcfg_form(value, warn=False)
    warn_deprecated(f"[guidance] anchor = {value!r} is deprecated: write dcfg_form = {form!r}", 4)
    table = {("dcfg_form" if k == "anchor" else k): (check_dcfg_form(v, warn=False) if k == "anchor" else v)
             for k, v in table.items()}
    return {**raw, "guidance": table}


def _parse_guidance(raw: Mapping[str, Any]) -> GuidanceSpec:
    parsers = {"methods": lambda v, w: _list(v, w, _method),
               "scales": lambda v, w: _list(v, w, lambda x, ww: _float(x, ww, 0.0)),
               "dcfg_scale": _scale_or_best, "cfg_scale": _scale_or_best,
               "invariant_weight": lambda v, w: _float(v, w, 0.0),
               "dcfg_form": lambda v, w: _str(v, w, DCFG_FORMS),
               "variant": lambda v, w: None if _str(v, w, _VARIANTS + ("none",)) == "none" else v,
               "interval": _interval, "apg_eta": _prob}
    raw = _former_anchor_key(raw)
    g = _section(raw, "guidance", GuidanceSpec, parsers)
    if "cfg" not in g.methods:
        raise SpecError(f"[guidance] methods: {list(g.methods)} lacks 'cfg', the baseline every other method is "
                        f"compared with; add \"cfg\"")
    if len(set(g.methods)) != len(g.methods):
        raise SpecError(f"[guidance] methods: {list(g.methods)} lists a method twice")
    if g.dcfg_scale == "best" and "dcfg" not in g.methods:
        raise SpecError("[guidance] dcfg_scale: 'best' picks DCFG's scale from the sweep, but methods has no "
                        "'dcfg'; add it or give a number")
    needs = [m for m in g.swept_methods if m.endswith("+interval")]
    if needs and g.interval is None:
        raise SpecError(f"[guidance] interval: missing; the methods {needs} guide only inside an interval: add "
                        f"interval = [lo, hi] (timesteps, e.g. [200, 800])")
    return g


# ================================================================================ graph, equations, render
def _parse_graph(raw: Mapping[str, Any]) -> Any:
    from scm import CausalGraph

    if "graph" not in raw:
        raise SpecError("spec: missing table [graph]; add [graph.nodes] (name = {kind = ...}) and [graph] edges")
    g = _table(raw["graph"], "[graph]")
    _check_keys(g, ("nodes", "edges"), "[graph]")
    nodes = _table(g.get("nodes", {}), "[graph.nodes]")
    if not nodes:
        raise SpecError("[graph.nodes]: no nodes; declare each variable, e.g. thickness = {kind = \"positive\"}")
    edges = g.get("edges", [])
    if not isinstance(edges, list):
        raise SpecError(f"[graph] edges: expected an array of [parent, child] pairs, got {_tname(edges)}")
    for k, e in enumerate(edges):
        if not (isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)):
            raise SpecError(f"[graph] edges[{k}]: {e!r} is not a [parent, child] pair of node names")
        for end in e:
            if end not in nodes:
                raise SpecError(f"[graph] edges[{k}]: node {end!r} is not in the DAG{_suggest(end, nodes)}; "
                                f"declared nodes: {list(nodes)}; declare it under [graph.nodes] or fix the edge")
    try:
        graph = CausalGraph.from_dict({"nodes": nodes, "edges": edges})
    except (ValueError, TypeError) as e:
        raise SpecError(f"[graph]: {e}") from None
    if graph.image_node is None:
        raise SpecError("[graph.nodes]: no node of kind 'image'; add one, e.g. image = {kind = \"image\", "
                        "shape = [1, 28, 28]}, with edges from the attributes it depends on")
    if not graph.image_parents():
        raise SpecError(f"[graph] edges: the image node {graph.image_node!r} has no parents; add edges "
                        f"[attribute, {graph.image_node!r}] for the attributes the image shows")
    return graph


def _parse_equation(node: str, raw: Any, graph: Any) -> EquationSpec:
    where = f"[equations.{node}]"
    table = _table(raw, where)
    if "form" not in table:
        raise SpecError(f"{where}: missing key 'form'; use one of {list(FORMS)}")
    form = _str(table["form"], f"{where} form", FORMS)
    required, optional = FORMS[form]
    _check_keys(table, {"form", *required, *optional}, where)
    for key in required:
        if key not in table:
            raise SpecError(f"{where}: form {form!r} needs {key!r} ({_FORM_HELP[form]})")
    spec, parents = graph.spec(node), graph.parents(node)
    params: dict[str, Any] = copy.deepcopy(optional)
    for key, value in table.items():
        if key == "form":
            continue
        w = f"{where} {key}"
        if key == "weights":
            weights = _table(value, w)
            for p, c in weights.items():
                if p not in parents:
                    raise SpecError(f"{w}: {p!r} is not a parent of {node!r} (parents: {parents}); add the edge "
                                    f"[{p!r}, {node!r}] to [graph] edges or drop the weight")
                _float(c, f"{w}.{p}")
            params[key] = {p: float(c) for p, c in weights.items()}
        elif key == "probs":
            params[key] = list(_list(value, w, lambda x, ww: _float(x, ww, 0.0)))
        elif key in ("scale", "noise_scale", "concentration", "rate"):
            params[key] = _float(value, w, 0.0, open_low=True)
        else:
            params[key] = _float(value, w)
    if form in ("linear", "affine_sigmoid"):
        unweighted = [p for p in parents if p not in params["weights"]]
        if unweighted:
            raise SpecError(f"{where} weights: parent {unweighted[0]!r} of {node!r} has no weight; give every parent "
                            f"a coefficient ({_FORM_HELP[form]}), or remove the edge")
    elif parents:
        raise SpecError(f"{where} form: {form!r} is for a root ({_FORM_HELP[form]}), but {node!r} has parents "
                        f"{parents}; use 'linear' or 'affine_sigmoid', or remove the edges")
    # the form's range must lie in the node's support
    kind = spec.kind
    if form == "categorical":
        if not spec.is_discrete:
            raise SpecError(f"{where} form: 'categorical' gives class indices, but {node!r} is {kind}; make the node "
                            f"categorical or choose a continuous form")
        k = int(spec.cardinality or 2)
        probs = params["probs"]
        if len(probs) != k:
            raise SpecError(f"{where} probs: {len(probs)} probabilities for a node with {k} classes; "
                            f"give one per class")
        if abs(sum(probs) - 1.0) > 1e-6:
            raise SpecError(f"{where} probs: they sum to {sum(probs):.6g}; probabilities must sum to 1")
        return EquationSpec(node, form, params)
    if spec.is_discrete:
        raise SpecError(f"{where} form: {form!r} gives real numbers, but {node!r} is {kind}; use form "
                        f"'categorical' (a root) for a discrete node")
    if form in ("linear", "normal") and kind != "real":
        raise SpecError(f"{where} form: {form!r} can give any real number, but {node!r} is {kind} "
                        f"({spec.describe()}); use 'affine_sigmoid' (bounded) or 'gamma' (positive root), or make "
                        f"the node real")
    if form == "gamma":
        if kind == "interval":
            raise SpecError(f"{where} form: 'gamma' is unbounded above, but {node!r} is an interval "
                            f"({spec.describe()}); use 'affine_sigmoid' with low/high inside it")
        if kind == "positive" and params["shift"] < 0:
            raise SpecError(f"{where} shift: {params['shift']:g} < 0 can give values <= 0, but {node!r} is positive; "
                            f"use shift >= 0")
    if form == "affine_sigmoid":
        low, high = params["low"], params["high"]
        if not low < high:
            raise SpecError(f"{where} low: need low < high, got low = {low:g}, high = {high:g}")
        if kind == "interval" and not (spec.low <= low and high <= spec.high):
            raise SpecError(f"{where} low: the range [{low:g}, {high:g}] leaves the support of {node!r} "
                            f"[{spec.low:g}, {spec.high:g}]; narrow it or widen the node's interval")
        if kind == "positive" and low < 0:
            raise SpecError(f"{where} low: {low:g} < 0, but {node!r} is positive; use low >= 0")
    return EquationSpec(node, form, params)


def _parse_render(raw: Mapping[str, Any], graph: Any, source: str) -> dict[str, str]:
    render = _table(raw.get("render", {}), "[render]")
    parents = graph.image_parents()
    seen: dict[str, str] = {}
    for node, op in render.items():
        w = f"[render] {node}"
        if node not in graph:
            raise SpecError(f"{w}: node {node!r} is not in the DAG{_suggest(node, graph.nodes)}; nodes: {graph.nodes}")
        if node not in parents:
            raise SpecError(f"{w}: {node!r} is not a parent of the image {graph.image_node!r} (parents: {parents}); "
                            f"only image parents show in the image: add the edge [{node!r}, {graph.image_node!r}] "
                            f"or remove this line")
        op = _str(op, w, RENDER_OPS)
        if op in seen:
            raise SpecError(f"{w}: {op!r} already renders node {seen[op]!r}; each op renders one node")
        seen[op] = node
        spec = graph.spec(node)
        if op == "digit":
            if spec.kind != "categorical" or spec.cardinality != 10 or graph.parents(node):
                raise SpecError(f"{w}: 'digit' is the class of the source digit, so {node!r} must be a root "
                                f"categorical node with cardinality 10 (it is {spec.kind}"
                                f"{', with parents ' + str(graph.parents(node)) if graph.parents(node) else ''})")
        elif not spec.is_continuous:
            raise SpecError(f"{w}: {op!r} sets a continuous measurement, but {node!r} is {spec.kind}; render it as "
                            f"'digit' or make it continuous")
        render[node] = op
    if source != "csv":
        missing = [p for p in parents if p not in render]
        if missing:
            raise SpecError(f"[render]: image parent {missing[0]!r} is not rendered; with synthetic data every parent "
                            f"of the image must show in it: add {missing[0]} = one of {list(RENDER_OPS)}")
    shape = tuple(graph.spec(graph.image_node).shape)
    if render and shape != (1, 28, 28):
        raise SpecError(f"[render]: the Morpho-MNIST renderer and its measurements work on 1x28x28 digits, but the "
                        f"image node has shape {list(shape)}; use shape = [1, 28, 28] or remove [render]")
    return render


def _parse_equations(raw: Mapping[str, Any], graph: Any, render: Mapping[str, str], source: str
                     ) -> dict[str, EquationSpec]:
    table = _table(raw.get("equations", {}), "[equations]")
    if source == "csv":
        if table:
            raise SpecError("[equations]: a CSV dataset observes its attributes, so equations do not apply; remove "
                            "[equations] (they generate synthetic data for source = \"morpho\" / \"mnist_folder\")")
        return {}
    digit = next((n for n, op in render.items() if op == "digit"), None)
    for node in table:
        if node not in graph:
            raise SpecError(f"[equations.{node}]: node {node!r} is not in the DAG{_suggest(node, graph.nodes)}; "
                            f"nodes: {graph.nodes}")
        if node == graph.image_node:
            raise SpecError(f"[equations.{node}]: {node!r} is the image node; the image is rendered (see [render]), "
                            f"not given an equation")
        if node == digit:
            raise SpecError(f"[equations.{node}]: {node!r} renders as the source digit, so its value is the source's "
                            f"label; remove [equations.{node}]")
    out = {}
    for node in graph.attribute_nodes():
        if node == digit:
            continue
        if node not in table:
            raise SpecError(f"[equations]: node {node!r} has no equation; add [equations.{node}] with a form among "
                            f"{list(FORMS)}")
        out[node] = _parse_equation(node, table[node], graph)
    return out


def _check_do_value(node: str, key: str, raw: Any, spec: Any, where: str) -> Any:
    """An entry's ``value`` (a number) or ``shift`` (a :class:`~pipeline.generate.ShiftDo`), checked like a ``--do``
    value (:func:`pipeline.generate.check_intervention`)."""
    from pipeline.generate.interventions import ShiftDo, check_intervention

    number = _float(raw, f"{where} {key}")
    try:
        return check_intervention(node, ShiftDo(number) if key == "shift" else number, spec)
    except (ValueError, TypeError) as e:
        raise SpecError(f"{where} {key}: {e}") from None


def _parse_interventions(raw: Mapping[str, Any], graph: Any) -> tuple[InterventionSpec, ...]:
    parents = graph.image_parents()
    if "interventions" not in raw:
        return tuple(InterventionSpec(p, categorical=graph.spec(p).is_discrete) for p in parents)
    entries = raw["interventions"]
    if not isinstance(entries, list) or not entries:
        raise SpecError("[[interventions]]: expected a non-empty array of tables, e.g. [[interventions]] node = "
                        "\"thickness\"")
    out, seen = [], set()
    for k, entry in enumerate(entries):
        where = f"[[interventions]] #{k + 1}"
        t = _table(entry, where)
        _check_keys(t, ("node", "value", "shift"), where)
        if "node" not in t:
            raise SpecError(f"{where}: missing key 'node'; name the intervened node")
        node = _str(t["node"], f"{where} node")
        if node not in graph:
            raise SpecError(f"{where} node: {node!r} is not in the DAG{_suggest(node, graph.nodes)}; nodes: "
                            f"{graph.nodes}")
        if node not in parents:
            raise SpecError(f"{where} node: {node!r} is not a parent of the image (parents: {parents}); the "
                            f"evaluation scores counterfactual images, so intervene on an image parent")
        if node in seen:
            raise SpecError(f"{where} node: {node!r} is intervened on twice; give one entry per node")
        seen.add(node)
        spec = graph.spec(node)
        if "value" in t and "shift" in t:
            raise SpecError(f"{where}: give either value or shift, not both")
        value: Any = "marginal"
        shift = None
        if "shift" in t:
            shift = _check_do_value(node, "shift", t["shift"], spec, where).delta
        elif "value" in t:
            v = t["value"]
            if isinstance(v, str):
                value = _str(v, f"{where} value", ("marginal",))
            else:
                value = _check_do_value(node, "value", v, spec, where)
        out.append(InterventionSpec(node, value, shift, spec.is_discrete))
    return tuple(out)


def _parse_effects(raw: Mapping[str, Any], graph: Any) -> tuple[EffectSpec, ...]:
    entries = raw.get("effects", [])
    if not isinstance(entries, list):
        raise SpecError("[[effects]]: expected an array of tables, e.g. [[effects]] treatment = \"thickness\"")
    attrs = graph.attribute_nodes()
    parsers = {"treatment": _str, "outcome": _str, "control": _float, "treated": _float, "method": _str,
               "image_outcome": _str, "units": _pos(2),
               "refuters": lambda v, w: _list(v, w, _str, min_len=0), "num_simulations": _pos(2),
               "scm_samples": _pos(100), "guidance": lambda v, w: _str(v, w, ("none", "cfg", "dcfg")),
               "glm_family": lambda v, w: _str(v, w, ("binomial",)), "scm_bootstrap": _pos(0)}
    out = []
    for k, entry in enumerate(entries):
        where = f"[[effects]] #{k + 1}"
        t = _table(entry, where)
        _check_keys(t, parsers, where)
        for key in ("treatment", "outcome", "control", "treated"):
            if key not in t:
                raise SpecError(f"{where}: missing key {key!r}; an effect needs treatment, outcome, control and "
                                f"treated")
        e = EffectSpec(**{key: parsers[key](v, f"{where} {key}") for key, v in t.items()})
        for role in ("treatment", "outcome"):
            name = getattr(e, role)
            if name not in attrs:
                hint = " (the image node: use image_outcome for an outcome measured on the image)" \
                    if name == graph.image_node else _suggest(name, attrs)
                raise SpecError(f"{where} {role}: {name!r} is not an attribute node{hint}; attribute nodes: {attrs}")
        if e.treatment == e.outcome:
            raise SpecError(f"{where} outcome: the same node as the treatment ({e.treatment!r}); choose another")
        if e.control == e.treated:
            raise SpecError(f"{where} treated: equal to control ({e.control:g}); the contrast needs two values")
        from scm.support import as_values

        for key in ("control", "treated"):
            try:
                as_values(e.treatment, graph.spec(e.treatment), getattr(e, key), what=key, allow_scalar=True)
            except (ValueError, TypeError) as err:
                raise SpecError(f"{where} {key}: {err}") from None
        from scm.effects import IDENTIFIERS, REFUTERS

        ident = e.method.split(".", 1)[0]
        if "." not in e.method or ident not in IDENTIFIERS:
            raise SpecError(f"{where} method: {e.method!r} is not '<identifier>.<estimator>' with identifier in "
                            f"{list(IDENTIFIERS)}; e.g. \"backdoor.linear_regression\"")
        for r in e.refuters:
            if r not in REFUTERS:
                raise SpecError(f"{where} refuters: unknown refuter {r!r}{_suggest(r, REFUTERS)}; allowed: "
                                f"{list(REFUTERS)}")
        if not graph.spec(e.outcome).is_continuous and graph.spec(e.outcome).kind != "binary":
            raise SpecError(f"{where} outcome: {e.outcome!r} is {graph.spec(e.outcome).kind}; an average effect "
                            f"needs a continuous or binary outcome")
        if e.glm_family is not None:
            if e.method != "backdoor.generalized_linear_model":
                raise SpecError(f"{where} glm_family: only used with method = \"backdoor.generalized_linear_model\" "
                                f"(got {e.method!r}); remove it or change the method")
            if graph.spec(e.outcome).kind != "interval":
                raise SpecError(f"{where} glm_family: 'binomial' models the outcome's position in its interval, but "
                                f"{e.outcome!r} is {graph.spec(e.outcome).kind}; use an interval outcome")
        if e.image_outcome is not None and e.image_outcome not in _IMAGE_OUTCOMES \
                and not e.image_outcome.startswith("classifier:"):
            raise SpecError(f"{where} image_outcome: {e.image_outcome!r} is not an image outcome; use one of "
                            f"{list(_IMAGE_OUTCOMES)} or \"classifier:<class>\" (the digit classifier's probability)")
        if e.image_outcome is not None and e.image_outcome.startswith("classifier:"):
            cls = e.image_outcome.split(":", 1)[1]
            if not cls.isdigit() or int(cls) > 9:
                raise SpecError(f"{where} image_outcome: {e.image_outcome!r} needs a digit class 0..9 after "
                                f"'classifier:', e.g. \"classifier:3\"")
        out.append(e)
    return tuple(out)


# ================================================================================ quick overrides
_OVERRIDABLE = ("data", "model", "scm", "training", "evaluation", "guidance", "effects")


def _apply_quick(raw: dict[str, Any]) -> dict[str, Any]:
    """The spec with ``--quick`` budgets: :data:`QUICK_DEFAULTS` caps, then the spec's own ``[quick]`` tables."""
    out = copy.deepcopy(raw)
    user = _table(out.pop("quick", {}), "[quick]")
    _check_keys(user, _OVERRIDABLE, "[quick]")
    data = out.get("data") if isinstance(out.get("data"), dict) else {}
    source = data.get("source")
    for name, caps in QUICK_DEFAULTS.items():
        if name == "effects":
            entries = out.get("effects") if isinstance(out.get("effects"), list) else []
            for entry in (e for e in entries if isinstance(e, dict)):
                for key, cap in caps.items():
                    current = entry.get(key, getattr(_EFFECT_DEFAULTS, key))
                    entry[key] = min(current, cap) if _is_num(current) else current
            continue
        table = out.setdefault(name, {})
        if not isinstance(table, dict):
            continue  # reported by the section's own check
        if name == "guidance":
            scales = table.get("scales", list(GuidanceSpec.scales))
            table["scales"] = scales[:caps["scales"]] if isinstance(scales, list) else scales
            continue
        for key, cap in caps.items():
            if name == "data" and (key == "prepare_rows") != (source == "csv"):
                continue  # keys of the other sources
            current = table.get(key, getattr(_DEFAULTS[name], key))
            table[key] = cap if current is None else min(current, cap) if _is_num(current) else current
    training = out.get("training")
    if isinstance(training, dict) and _is_num(training.get("lr", TrainingSpec.lr)):
        training["lr"] = max(training.get("lr", TrainingSpec.lr), 1e-3)  # a tiny budget learns faster at 1e-3
    model = out.setdefault("model", {})
    if isinstance(model, dict):  # a smaller UNet: half the channels, no self-attention
        chans = model.get("block_out_channels", list(ModelSpec.block_out_channels))
        groups = model.get("norm_num_groups", ModelSpec.norm_num_groups)
        if isinstance(chans, list) and chans and all(_is_num(c) for c in chans) and _is_num(groups) and groups >= 1:
            g = int(groups)
            model["block_out_channels"] = [max(g, (int(c) // 2) // g * g) for c in chans]
            model["attention_levels"] = [False] * len(chans)
            model["mid_attention"] = False
            if _is_num(model.get("block_dim", ModelSpec.block_dim)):
                model["block_dim"] = min(int(model.get("block_dim", ModelSpec.block_dim)), 16)
    for name, overrides in user.items():
        o = _table(overrides, f"[quick.{name}]")
        if name == "effects":
            for entry in out.get("effects", []) if isinstance(out.get("effects"), list) else []:
                if isinstance(entry, dict):
                    entry.update(o)
            continue
        table = out.setdefault(name, {})
        if isinstance(table, dict):
            table.update(o)
    return out


def _is_num(v: Any) -> bool:
    return is_number(v, finite=False)


_DEFAULTS = {"data": DataSpec("morpho"), "scm": ScmSpec(), "training": TrainingSpec(), "evaluation": EvaluationSpec()}
_EFFECT_DEFAULTS = EffectSpec("t", "y", 0.0, 1.0)


# ================================================================================ entry points
_TOP = ("name", "description", "seed", "graph", "equations", "render", "data", "model", "scm", "training",
        "evaluation", "guidance", "interventions", "effects", "quick")


def parse_spec(raw: Mapping[str, Any], *, name: str = "experiment", path: str | os.PathLike | None = None,
               quick: bool = False) -> ExperimentSpec:
    """Validate a parsed spec (the dict ``tomllib`` returns) and build an :class:`ExperimentSpec`.

    Args:
        raw: the spec as a dict.
        name: default name (a file's stem) when the spec has none.
        path: the spec file, for relative paths and messages.
        quick: apply the ``--quick`` budgets.

    Raises:
        SpecError: the first problem found, in one line naming the key, the problem and the fix.
    """
    if not isinstance(raw, Mapping):
        raise SpecError(f"spec: expected a table at the top level, got {_tname(raw)}")
    raw = dict(raw)
    _check_keys(raw, _TOP, "spec")
    if quick:
        raw = _apply_quick(raw)
    else:
        _table(raw.get("quick", {}), "[quick]")
        _check_keys(raw.get("quick", {}), _OVERRIDABLE, "[quick]")
    exp_name = _str(raw.get("name", name), "spec name")
    if not exp_name or any(c in exp_name for c in "/\\") or exp_name.startswith("."):
        raise SpecError(f"spec name: {exp_name!r} must be a non-empty name without '/' (it names the output folder)")
    description = _str(raw.get("description", ""), "spec description")
    seed = _int(raw.get("seed", 0), "spec seed", 0)
    data = _parse_data(raw)
    graph = _parse_graph(raw)
    render = _parse_render(raw, graph, data.source)
    equations = _parse_equations(raw, graph, render, data.source)
    model = _parse_model(raw)
    scm = _parse_scm(raw)
    training = _parse_training(raw)
    evaluation = _parse_evaluation(raw)
    guidance = _parse_guidance(raw)
    interventions = _parse_interventions(raw, graph)
    effects = _parse_effects(raw, graph)
    # cross-table checks
    if scm.mechanisms == "equations" and data.source == "csv":
        raise SpecError("[scm] mechanisms: 'equations' uses the spec's structural equations, which a CSV dataset "
                        "does not have; use \"fit\"")
    _check_model(model, graph, path)
    digit = next((n for n, op in render.items() if op == "digit"), None)
    for k, e in enumerate(effects):
        if e.image_outcome is not None and e.image_outcome.startswith("classifier:") and digit is None:
            raise SpecError(f"[[effects]] #{k + 1} image_outcome: {e.image_outcome!r} uses the digit classifier, which "
                            f"needs a node rendered as 'digit' in [render]")
        if e.image_outcome in ("thickness", "intensity", "slant") and tuple(
                graph.spec(graph.image_node).shape) != (1, 28, 28):
            raise SpecError(f"[[effects]] #{k + 1} image_outcome: morphometry measures 1x28x28 digits; the image "
                            f"node has shape {list(graph.spec(graph.image_node).shape)}")
    try:  # the image model's config, with dummy statistics: catches inconsistent sizes now
        from diffusion import TrainConfig

        ImageModelConfig(image_shape=tuple(graph.spec(graph.image_node).shape), **model.unet_sizes())
        TrainConfig(**asdict(training), seed=seed)
    except ValueError as e:
        section = "[training]" if "TrainConfig" in str(e) else "[model]"
        raise SpecError(f"{section}: {e}") from None
    return ExperimentSpec(exp_name, description, seed, graph, equations, render, data, model, scm, training,
                          evaluation, guidance, interventions, effects, raw,
                          None if path is None else Path(path), bool(quick))


def _check_model(model: ModelSpec, graph: Any, path: str | os.PathLike | None) -> None:
    if model.pipeline == "train":
        return
    if model.pipeline == "pretrained":
        from importlib import resources

        cfg_path = resources.files("pipeline") / "pretrained" / "morphomnist" / "config.json"
        try:
            saved = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            raise SpecError("[model] pipeline: 'pretrained' needs the bundled Morpho-MNIST pipeline, which is missing "
                            "from this installation; use \"train\"") from None
        where = "the bundled pipeline"
    else:
        folder = Path(os.path.expanduser(model.pipeline))
        if not folder.is_absolute() and path is not None:
            folder = Path(path).parent / folder
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise SpecError(f"[model] pipeline: {model.pipeline!r} is neither \"train\", \"pretrained\" nor a saved "
                            f"pipeline folder ({cfg_file} does not exist)")
        try:
            saved = json.loads(cfg_file.read_text())
        except ValueError as e:
            raise SpecError(f"[model] pipeline: {cfg_file} is not valid JSON ({e})") from None
        where = f"the pipeline at {model.pipeline!r}"
    from scm import CausalGraph

    try:
        theirs = CausalGraph.from_dict(saved["graph"])
    except (KeyError, ValueError, TypeError) as e:
        raise SpecError(f"[model] pipeline: {where} has no readable graph ({e})") from None
    if theirs != graph:
        raise SpecError(f"[model] pipeline: {where} was trained on the graph {theirs!r}, not on this spec's "
                        f"{graph!r}; use the same [graph] or pipeline = \"train\"")


def load_spec(path: str | os.PathLike, *, quick: bool = False) -> ExperimentSpec:
    """Read and validate a TOML spec file.

    Args:
        path: the ``.toml`` file.
        quick: apply the ``--quick`` budgets (built-in caps, then the spec's ``[quick]`` tables).

    Raises:
        SpecError: a missing or unreadable file, invalid TOML, or any problem of the spec.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "bad.toml"
        >>> _ = p.write_text('[graph]\\nedges = [["a", "b"]]\\n[graph.nodes]\\na = {kind = "real"}\\n'
        ...                  '[data]\\nsource = "morpho"\\n')
        >>> load_spec(p)
        Traceback (most recent call last):
        ...
        pipeline.experiment.spec.SpecError: bad.toml: [graph] edges[0]: node 'b' is not in the DAG; declared nodes:
            ['a']; declare it under [graph.nodes] or fix the edge
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise SpecError(f"{p}: spec file not found; pass the path of a .toml experiment spec")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{p.name}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: cannot be read ({e})") from None
    try:
        spec = parse_spec(raw, name=p.stem, path=p, quick=quick)
        check_paths(spec)
    except SpecError as e:
        raise SpecError(f"{p.name}: {e}") from None
    return spec


def check_paths(spec: ExperimentSpec) -> None:
    """Check that the files and folders the spec names exist (relative to the spec's folder).

    Raises:
        SpecError: a missing CSV, image folder or MNIST folder.
    """
    d = spec.data
    checks = [("root", d.root, "dir"), ("csv", d.csv, "file"), ("image_dir", d.image_dir, "dir"),
              ("test_csv", d.test_csv, "file")]
    for key, value, kind in checks:
        if value is None:
            continue
        p = spec.resolve_path(value)
        ok = p.is_dir() if kind == "dir" else p.is_file()
        if not ok:
            what = "folder" if kind == "dir" else "file"
            raise SpecError(f"[data] {key}: {what} {str(p)!r} does not exist (paths are relative to the spec's "
                            f"folder); fix the path")
