"""The settings of ``dcfg evaluate``: :class:`EvaluationConfig`, the guidance methods it compares
(:data:`METHODS`, :func:`parse_method`) and :func:`resolve_config`, which validates a config against a pipeline and
fills its defaults.

Example:
    >>> EvaluationConfig(n=50).scales, parse_method("cfg+interval")
    ((1.0, 1.5, 2.0, 3.0, 4.0, 6.0), ('cfg', None, True))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from dcfg_io.checks import check_integer, is_number
from diffusion.model import PRECISIONS, resolve_precision
from pipeline.evaluation.engine import num_timesteps
from pipeline.options import anchor_renamed, check_dcfg_form, check_descendant_weight, former_anchor, warn_deprecated

__all__ = ["EvaluationConfig", "METHODS", "METHOD_VARIANTS", "COMPILE_AUTO_NFE", "parse_method", "resolve_config"]

#: Guidance methods the evaluation knows: name -> (guidance, groups, DCFG formulation, descendant weight).
#: ``groups`` is what ``resolve_guidance`` takes; the formulation and the descendant weight are ``None`` where the
#: evaluation's (the pipeline's) apply. ``dcfg_paper`` is the paper's DCFG exactly: its equation
#: (``dcfg_form="paper"``) and its grouping (descendants share the intervention's scale), whatever the pipeline's
#: defaults.
METHODS: dict[str, tuple[str, str | None, str | None, str | None]] = {
    "none": ("none", None, None, None),
    "cfg": ("cfg", None, None, None),
    "dcfg": ("dcfg", "dag", None, None),
    "dcfg_per_attribute": ("dcfg", "per_attribute", None, None),
    "dcfg_paper": ("dcfg", "dag", "paper", "scale"),
}

#: Guidance variants a swept method may carry: ``BASE[+apg|+cfgpp][+interval]``.
METHOD_VARIANTS = ("apg", "cfgpp")


def parse_method(name: Any) -> tuple[str, str | None, bool]:
    """``(base, variant, interval)`` of a method name ``BASE[+apg|+cfgpp][+interval]``.

    Example:
        >>> parse_method("dcfg+apg+interval"), parse_method("cfg")
        (('dcfg', 'apg', True), ('cfg', None, False))
    """
    grammar = ("a method is BASE[+apg|+cfgpp][+interval] with BASE one of 'cfg', 'dcfg', 'dcfg_per_attribute', "
               "'dcfg_paper' (e.g. cfg+apg, dcfg+cfgpp, cfg+interval, dcfg+apg+interval)")
    parts = name.split("+") if isinstance(name, str) else []
    base, rest = (parts[0], parts[1:]) if parts else ("", [])
    if base not in METHODS or base == "none":
        raise ValueError(f"sweep method {name!r} unknown: {grammar}")
    variant, interval = None, False
    for i, p in enumerate(rest):
        if p in METHOD_VARIANTS and variant is None and not interval and i == 0:
            variant = p
        elif p == "interval" and not interval:
            interval = True
        else:
            raise ValueError(f"sweep method {name!r}: {p!r} is not allowed there; {grammar}")
    return base, variant, interval


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of one evaluation (saved in ``metrics.json``; the CLI maps its flags onto it).

    Attributes:
        n: test rows of the main table.
        steps: DDIM steps (inversion and decoding) of the main table (``None``: the pipeline's
            ``config.steps``, the steps its queries use).
        scales: guidance scales of the sweep (the trade-off curves).
        scale: DCFG scale of the main table: a number, ``None``/``"pipeline"`` (per intervention, the
            pipeline's ``config.default_scale([node])``, which honours ``attribute_scales``) or ``"best"``
            (per intervention, the sweep scale with the best effectiveness).
        cfg_scale: CFG scale of the main table: ``"best"`` (default, as for ``scale``) or a number.
        sweep_n: rows of the sweep (``None``: ``min(n, max(4, n // 16))``, 62 of 1,000).
        sweep_steps: DDIM steps of the sweep (``None``: ``steps``).
        sweep_methods: guided methods swept over ``scales`` (``cfg`` is required as the baseline); a method may
            carry guidance variants, ``BASE[+apg|+cfgpp][+interval]`` (:func:`parse_method`).
        per_attribute_n: rows of DCFG with one group per attribute (``None``: ``sweep_n``; 0 skips it).
        cycle_n: rows of composition and reversibility (``None``: ``min(n, max(2, n // 40))``, 25 of 1,000).
        cycles: composition cycles.
        cycle_steps: DDIM steps of composition (``None``: ``steps``).
        interventions: intervened nodes (``None``: every image parent).
        invariant_weight: DCFG weight of the invariant group (``None``: the pipeline's).
        descendant_weight: DCFG weight of the intervention's descendants among the image's parents: a number,
            or ``"scale"`` (the intervention's scale, the paper's grouping); ``None`` (not set): the pipeline's
            ``config.descendant_weight``.
        dcfg_form: DCFG's formulation, ``"paper"`` (the paper's equation) or ``"conditional"`` (each group
            amplified given the others; see :mod:`pipeline.options`); ``None``: the pipeline's
            ``config.dcfg_form``. The ``dcfg_paper`` method always uses ``"paper"``. Its former name ``anchor``
            (values ``"null"``, ``"full"``) still works, with a deprecation warning.
        anchor_scales: per-attribute DCFG anchor weights of the ``dcfg`` method (``None``: the pipeline's
            ``config.anchor_scales``, from ``dcfg calibrate``; ``{}``: none). The other DCFG methods do not use them.
        interval: the guidance interval ``(lo, hi)`` of the ``+interval`` methods, in timesteps of the schedule
            (``None``: the pipeline's ``config.interval``; one of them is needed when a method has ``+interval``).
        apg_eta, apg_threshold, apg_momentum: APG's settings of the ``+apg`` methods (``None``: the pipeline's;
            see :func:`diffusion.guidance.apg_update`).
        chunk_size: rows per batched call (``None``: the pipeline's).
        grid_n: digits per intervention in ``grid.png``.
        seed: seed of the rows, the targets and the SCM's abduction.
        precision: the image model's inference precision, ``"fp32"``, ``"bf16"`` or ``"auto"`` (the default:
            bf16 where the image model's device has native bf16 units, an AMX or AVX512-BF16 CPU or a bf16 GPU,
            fp32 elsewhere; see :func:`diffusion.model.native_bf16`). The resolved one is recorded.
        compile: ``torch.compile`` the image model for the run: ``True``, ``False`` or ``"auto"`` (on when the
            plan has at least :data:`COMPILE_AUTO_NFE` image-NFEs, where the compilation time is paid back).
            The pipelines' own settings are restored after the run.
    """

    n: int = 1000
    steps: int | None = None
    scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    scale: float | str | None = None
    cfg_scale: float | str = "best"
    sweep_n: int | None = None
    sweep_steps: int | None = None
    sweep_methods: tuple[str, ...] = ("cfg", "dcfg")
    per_attribute_n: int | None = None
    cycle_n: int | None = None
    cycles: int = 10
    cycle_steps: int | None = None
    interventions: tuple[str, ...] | None = None
    invariant_weight: float | None = None
    descendant_weight: float | str | None = None
    dcfg_form: str | None = None
    anchor_scales: dict[str, float] | None = None
    interval: tuple[float, float] | None = None
    apg_eta: float | None = None
    apg_threshold: float | None = None
    apg_momentum: float | None = None
    chunk_size: int | None = None
    grid_n: int = 4
    seed: int = 0
    precision: str = "auto"
    compile: bool | str = "auto"

    @property
    def anchor(self) -> str | None:
        """Deprecated: :attr:`dcfg_form` under its former name and values (``"null"``, ``"full"``)."""
        warn_deprecated(f"EvaluationConfig.anchor is deprecated: read dcfg_form ({self.dcfg_form!r})", 2)
        return None if self.dcfg_form is None else former_anchor(check_dcfg_form(self.dcfg_form, warn=False))


# the former keyword anchor= ("null" / "full") of EvaluationConfig(...) and dataclasses.replace(config, ...)
EvaluationConfig.__init__ = anchor_renamed(EvaluationConfig.__init__)  # type: ignore[method-assign]


#: ``compile="auto"`` compiles the image model when an evaluation plans at least this many image-NFEs.
COMPILE_AUTO_NFE = 200_000


def _pos_int(name: str, value: Any, minimum: int = 1) -> int:
    return check_integer(name, value, minimum)


def _scale_value(name: str, value: Any, allow_none: bool) -> float | str | None:
    if value is None and allow_none:
        return None
    if value == "best":
        return "best"
    if value == "pipeline" and allow_none:
        return "pipeline"
    if not is_number(value, 0):
        raise ValueError(f"{name}={value!r} must be a non-negative finite number or 'best'"
                         + (" (or None/'pipeline' for the pipeline's default)" if allow_none else ""))
    return float(value)


def resolve_config(config: EvaluationConfig, pipe: Any, available_rows: int) -> EvaluationConfig:
    """Validate ``config`` against the pipeline and the data and fill every ``None`` default.

    Raises:
        ValueError: a setting out of range, naming the setting, the value and the allowed range.
    """
    c = config
    n = _pos_int("n", c.n)
    if n > available_rows:
        raise ValueError(f"n={n} exceeds the {available_rows} test rows available; use n <= {available_rows}")
    steps = int(pipe.config.steps) if c.steps is None else _pos_int("steps", c.steps)
    if not c.scales:
        raise ValueError("scales is empty: give at least one guidance scale, e.g. 1,1.5,2,3,4,6")
    scales = tuple(sorted({float(_scale_value("scales", s, False)) for s in c.scales}))  # type: ignore[arg-type]
    parsed = [parse_method(m) for m in c.sweep_methods]
    if "cfg" not in c.sweep_methods:
        raise ValueError(f"sweep_methods={list(c.sweep_methods)} must include 'cfg', the baseline of the "
                         f"equal-effectiveness ratio")
    sweep_n = min(n, max(4, n // 16)) if c.sweep_n is None else _pos_int("sweep_n", c.sweep_n)
    cycle_n = min(n, max(2, n // 40)) if c.cycle_n is None else _pos_int("cycle_n", c.cycle_n, 0)
    per_attr = sweep_n if c.per_attribute_n is None else _pos_int("per_attribute_n", c.per_attribute_n, 0)
    for name, v in (("sweep_n", sweep_n), ("cycle_n", cycle_n), ("per_attribute_n", per_attr)):
        if v > n:
            raise ValueError(f"{name}={v} exceeds n={n}: the subsets are nested in the main rows; use {name} <= n")
    parents = list(pipe.graph.image_parents())
    interventions = tuple(parents) if c.interventions is None else tuple(c.interventions)
    bad = [v for v in interventions if v not in parents]
    if bad or not interventions:
        raise ValueError(f"interventions {list(interventions)} must be non-empty image parents of the pipeline: "
                         f"{parents}")
    scale = _scale_value("scale", c.scale, allow_none=True)
    if scale == "best" and "dcfg" not in c.sweep_methods:
        raise ValueError(f"scale='best' picks DCFG's scale from the sweep, but sweep_methods="
                         f"{list(c.sweep_methods)} has no 'dcfg'; add it or give a number")
    if scale is None:  # per intervention: PipelineConfig.default_scale([node]) (attribute_scales, else scale)
        scale = "pipeline"
    iw = float(pipe.config.invariant_weight) if c.invariant_weight is None else float(c.invariant_weight)
    if not math.isfinite(iw):
        raise ValueError(f"invariant_weight={c.invariant_weight!r} must be finite")
    dw = getattr(pipe.config, "descendant_weight", "scale") if c.descendant_weight is None else c.descendant_weight
    dw = check_descendant_weight("scale" if dw is None else dw)
    if c.precision not in PRECISIONS:
        raise ValueError(f"precision={c.precision!r} must be 'auto', 'fp32' or 'bf16'")
    model = getattr(pipe, "image_model", None)
    if c.precision == "auto" and not hasattr(model, "set_inference"):
        precision = "fp32"  # an image model without inference settings runs as it is
    else:
        device = model.device if isinstance(getattr(model, "device", None), torch.device) else torch.device("cpu")
        precision = resolve_precision(c.precision, device)
    if c.compile not in (True, False, "auto"):
        raise ValueError(f"compile={c.compile!r} must be True, False or 'auto'")
    dcfg_form = check_dcfg_form(getattr(pipe.config, "dcfg_form", "paper") if c.dcfg_form is None else c.dcfg_form)
    from diffusion.guidance import APG_ETA, APG_MOMENTUM, APG_THRESHOLD, check_apg, check_interval

    pc = pipe.config
    interval = getattr(pc, "interval", None) if c.interval is None else c.interval
    interval = check_interval(interval, num_timesteps(pipe))
    needs = [m for m, p in zip(c.sweep_methods, parsed) if p[2]]
    if needs and interval is None:
        raise ValueError(f"sweep method(s) {needs} need a guidance interval: give interval=(lo, hi) (dcfg evaluate "
                         f"--interval LO,HI) or set the pipeline's config.interval")
    apg = check_apg(getattr(pc, "apg_eta", APG_ETA) if c.apg_eta is None else c.apg_eta,
                    getattr(pc, "apg_threshold", APG_THRESHOLD) if c.apg_threshold is None else c.apg_threshold,
                    getattr(pc, "apg_momentum", APG_MOMENTUM) if c.apg_momentum is None else c.apg_momentum)
    return replace(
        c, n=n, steps=steps, scales=scales, scale=scale, cfg_scale=_scale_value("cfg_scale", c.cfg_scale, False),
        sweep_n=sweep_n, sweep_steps=steps if c.sweep_steps is None else _pos_int("sweep_steps", c.sweep_steps),
        sweep_methods=tuple(dict.fromkeys(c.sweep_methods)), per_attribute_n=per_attr, cycle_n=cycle_n,
        cycles=_pos_int("cycles", c.cycles), cycle_steps=steps if c.cycle_steps is None
        else _pos_int("cycle_steps", c.cycle_steps), interventions=interventions, invariant_weight=iw,
        descendant_weight=dw, dcfg_form=dcfg_form, precision=precision, interval=interval, apg_eta=apg[0],
        apg_threshold=apg[1] or 0.0, apg_momentum=apg[2],
        anchor_scales=dict(getattr(pipe.config, "anchor_scales", {}) if c.anchor_scales is None else c.anchor_scales),
        chunk_size=_pos_int("chunk_size", c.chunk_size if c.chunk_size is not None else pipe.config.chunk_size),
        grid_n=_pos_int("grid_n", c.grid_n, 0), seed=int(c.seed))
