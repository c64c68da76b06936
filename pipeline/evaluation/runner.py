"""``dcfg evaluate``: CFG vs DCFG on the counterfactual benchmark, within a fixed compute budget.

What runs (for each pipeline: the evaluated one, and an optional ablation evaluated the same way):

1. **Rows and targets.** ``n`` test rows are drawn by a seeded permutation; the scale sweep uses its
   first ``sweep_n`` rows and composition/reversibility its first ``cycle_n`` rows, so the subsets are
   random samples nested in the main rows. Intervention values come from :meth:`Oracles.draw_targets`,
   each intervention from its own stream seeded by (seed, node): a run on some of the interventions draws
   the same targets for them as a run on all, and the first ``m`` targets do not depend on ``n``.
   ``do(random parent)`` gives every row one intervened parent drawn uniformly, with the same target
   value as that row's single-parent query, so its counterfactuals are those queries' (no extra cost).
2. **Abduction, once.** Every row is DDIM-inverted once per step count, under its factual parents; that
   ``x_T`` is shared by every intervention, guidance method and scale (and by composition's first
   cycle). The SCM's noise is abducted once and pushed through each ``do``.
3. **Sweep** (``sweep_n`` rows): CFG and DCFG (and optionally DCFG with one group per attribute) at
   every scale of ``scales``. CFG at ``w = 1`` is the plain conditional, i.e. guidance ``none``, and
   reuses it. A swept method may carry guidance variants, ``BASE[+apg|+cfgpp][+interval]`` (``cfg+apg``,
   ``dcfg+cfgpp``, ``cfg+interval``, ``dcfg+apg+interval``; :func:`parse_method`): the base method with
   APG, CFG++ (whose rows are inverted with CFG++'s own pair, once per step count) or the guidance interval
   ``interval``; each is compared with CFG like the other methods.
4. **Main table** (``n`` rows): guidance none, CFG at its best sweep scale for that intervention (the
   one with the best effectiveness; ``cfg_scale`` overrides it) and DCFG at ``scale`` (default: the
   pipeline's). Rows already decoded by the sweep are reused. DCFG with one group per attribute runs at
   the same scale on ``per_attribute_n`` rows (default ``sweep_n``).
5. **Composition** (``cycle_n`` rows, ``cycle_steps``): ``cycles`` invert-decode cycles, no guidance.
   **Reversibility** (``cycle_n`` rows): the main table's counterfactuals, queried back to the factual
   value with the same guidance.

Cost, in image-NFEs (one network evaluation of one image): ``(1 + r) S`` per inverted image (``r`` the
pipeline's fixed-point refinements), ``k S`` per decoded one (``k`` = 1 none, 2 CFG, M + 1 DCFG with M
groups, or 1 + the groups not at weight 1 anchored at the full condition). :func:`estimate_nfe` adds them
up before the run (``plan_nfe`` in ``metrics.json``; the run records what it spent beside it). At the
defaults with the bundled pipeline (``n = 1000``, ``S = 50``, its own steps, ``sweep_n = 62``,
``cycle_n = 25``, 6 scales, 3 interventions) the plan is 980,000 image-NFEs; the run spent 884,950
(CFG's best scale for do(intensity) was 1, the plain conditional) in 23.4 minutes on 2 CPU cores, with
the image model compiled (``compile="auto"``) and in bf16 (``precision="auto"`` on this AMX CPU),
1.5 ms per image-NFE; in fp32, 46.9 minutes (3.1 ms). ``n = 10`` plans 23,500 (2.3 minutes).

Metric definitions (docs/evaluation.md; the single definitions live in
:mod:`pipeline.evaluation.metrics` and :mod:`pipeline.evaluation.scores`):

=================  =========================================================================================
effectiveness t/i  MAE between the target ``t'`` (``i'``) and the measured thickness (intensity) of the
                   counterfactual; for do(t) the intensity target is the SCM's counterfactual ``i'``
effectiveness y    accuracy of the digit classifier on the counterfactual against the target digit
spurious change    digit flips (classifier) under do(t)/do(i); measured ``|delta t|``, ``|delta i|`` under
                   do(y) (and ``|delta t|`` under do(i)); under do(t) the intensity change beyond the SCM's:
                   ``|(m_i(x') - m_i(x)) - (i' - i)|``
ground truth       L1 on [0, 1] and PSNR between counterfactual and true counterfactual, do(t) and do(i)
composition        L1 (0-255) between x and invert-then-decode of x under its own parents, no guidance,
                   after 1 and 10 cycles
reversibility      L1 (0-255) between x and do(a') followed by do(a) back
realism            Frechet distance between counterfactuals and the real test images in the digit
                   classifier's penultimate features
=================  =========================================================================================

**Spurious change, DCFG / CFG at equal effectiveness** (:func:`~pipeline.evaluation.metrics.
equal_effectiveness_ratio`): for each intervention and each of its spurious metrics, each method's sweep
points (effectiveness, spurious), reduced to their Pareto front and interpolated linearly in
effectiveness, are averaged over 101 evenly spaced effectiveness values of the range both fronts cover;
the ratio is DCFG's mean over CFG's (``None`` if the ranges do not overlap). Beside it, the ratio at
CFG's best effectiveness compares the two fronts at the most effective point of CFG's (``None`` where
DCFG's front does not reach it).

Example:
    >>> from pipeline import CounterfactualPipeline                             # doctest: +SKIP
    >>> res = run_evaluation(CounterfactualPipeline.pretrained(), "eval-out",
    ...                      EvaluationConfig(n=50))                            # doctest: +SKIP
    >>> res.metrics["headline"][0]                                              # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from diffusion.model import PRECISIONS, resolve_precision
from pipeline.evaluation.engine import QueryEngine, decode_nfe, invert_nfe, nfe_per_step, num_timesteps
from pipeline.evaluation.metrics import equal_effectiveness_ratio, frechet_distance
from pipeline.evaluation.oracles import MorphoOracles, Oracles
from pipeline.evaluation.scores import effectiveness, ground_truth_error, roles, spurious_change

__all__ = ["EvaluationConfig", "EvaluationResult", "METHODS", "BENCHMARK_TARGETS", "evaluate", "run_evaluation",
           "estimate_nfe", "resolve_config", "parse_method"]

#: Guidance methods the evaluation knows: name -> (guidance, groups, anchor, descendant weight). ``groups`` is
#: what ``resolve_guidance`` takes; ``anchor`` and the descendant weight are ``None`` where the evaluation's
#: (the pipeline's) apply. ``dcfg_paper`` is the paper's DCFG exactly: its equation (anchored at the null
#: condition) and its grouping (descendants share the intervention's scale), whatever the pipeline's defaults.
METHODS: dict[str, tuple[str, str | None, str | None, str | None]] = {
    "none": ("none", None, None, None),
    "cfg": ("cfg", None, None, None),
    "dcfg": ("dcfg", "dag", None, None),
    "dcfg_per_attribute": ("dcfg", "per_attribute", None, None),
    "dcfg_paper": ("dcfg", "dag", "null", "scale"),
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

#: The benchmark's targets (docs/results.md): (intervened node, metric) -> (comparison, value).
BENCHMARK_TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("thickness", "thickness_mae"): ("<=", 0.20),
    ("intensity", "intensity_mae"): ("<=", 5.0),
    ("digit", "digit_accuracy"): (">=", 0.98),
    ("thickness", "gt_l1"): ("<=", 0.03),
    ("intensity", "gt_l1"): ("<=", 0.03),
    ("composition", "cycle_1"): ("<=", 1.0),
    ("composition", "cycle_10"): ("<=", 3.0),
    ("tradeoff", "ratio"): ("<=", 0.5),
}

#: Colour Morpho-MNIST's targets (docs/benchmark.md), the same keys.
COLOUR_TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("thickness", "thickness_mae"): ("<=", 0.25),
    ("intensity", "intensity_mae"): ("<=", 6.0),
    ("slant", "slant_mae"): ("<=", 0.05),
    ("hue", "hue_mae"): ("<=", 0.02),
    ("background", "background_mae"): ("<=", 0.02),
    ("digit", "digit_accuracy"): (">=", 0.97),
    **{(n, "gt_l1"): ("<=", 0.03) for n in ("slant", "thickness", "intensity", "hue", "background")},
    ("composition", "cycle_1"): ("<=", 1.0),
    ("composition", "cycle_10"): ("<=", 3.0),
    ("tradeoff", "ratio"): ("<=", 0.5),
}

#: The targets of each pipeline's oracles; other data (learned predictors) only has the general ones.
TARGETS = {"morpho": BENCHMARK_TARGETS, "morpho-colour": COLOUR_TARGETS,
           None: {k: v for k, v in BENCHMARK_TARGETS.items() if k[0] in ("composition", "tradeoff")}}

_EPS = 1e-9


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
        descendant_weight: DCFG weight of the intervention's descendants among the image's parents
            (``None``: the pipeline's ``config.descendant_weight``; ``"scale"``: the intervention's scale,
            the paper's grouping; or a number).
        anchor: DCFG's formulation, ``"null"`` (the paper's equation) or ``"full"`` (each group amplified
            given the others; see :func:`diffusion.guidance.dcfg`); ``None``: the pipeline's
            ``config.dcfg_anchor``. The ``dcfg_paper`` method always uses ``"null"``.
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
            plan has at least :data:`COMPILE_AUTO_NFE` image-NFEs, where the minute of compilation is paid back).
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
    anchor: str | None = None
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


#: ``compile="auto"`` compiles the image model when an evaluation plans at least this many image-NFEs.
COMPILE_AUTO_NFE = 200_000


@dataclass
class EvaluationResult:
    """What an evaluation produced: ``metrics`` (JSON-ready) and the images of ``grid.png``."""

    metrics: dict[str, Any]
    grid: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- config
def _pos_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _scale_value(name: str, value: Any, allow_none: bool) -> float | str | None:
    if value is None and allow_none:
        return None
    if value == "best":
        return "best"
    if value == "pipeline" and allow_none:
        return "pipeline"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
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
    dw = pipe.config.descendant_weight if c.descendant_weight is None else c.descendant_weight
    if dw is None or dw == "scale":
        dw = "scale"
    elif isinstance(dw, bool) or not isinstance(dw, (int, float)) or not math.isfinite(dw):
        raise ValueError(f"descendant_weight={c.descendant_weight!r} must be None (the pipeline's), 'scale' (the "
                         f"intervention's scale, the paper's grouping) or a finite number")
    else:
        dw = float(dw)
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
    anchor = getattr(pipe.config, "dcfg_anchor", "null") if c.anchor is None else c.anchor
    if anchor not in ("null", "full"):
        raise ValueError(f"anchor={c.anchor!r} must be None (the pipeline's), 'null' (the paper's DCFG) or 'full' "
                         f"(each group amplified given the others)")
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
        descendant_weight=dw, anchor=anchor, precision=precision, interval=interval, apg_eta=apg[0],
        apg_threshold=apg[1] or 0.0, apg_momentum=apg[2],
        anchor_scales=dict(getattr(pipe.config, "anchor_scales", {}) if c.anchor_scales is None else c.anchor_scales),
        chunk_size=_pos_int("chunk_size", c.chunk_size if c.chunk_size is not None else pipe.config.chunk_size),
        grid_n=_pos_int("grid_n", c.grid_n, 0), seed=int(c.seed))


def _descendant(value: float | str | None) -> float | None:
    """A resolved config's ``descendant_weight`` as ``resolve_guidance`` takes it."""
    return None if value is None or value == "scale" else float(value)


def _groups_for(graph: Any, node: str, method: str, scale: float, invariant_weight: float,
                descendant_weight: float | str | None = None, anchor: str = "null",
                anchor_scales: Mapping[str, float] | None = None) -> tuple[str, list[list[str]], list[float], str]:
    """``(guidance, groups, weights, anchor)`` of one method at one scale, as the decoder takes them.

    A method that is exactly the plain conditional at this scale is returned as guidance ``none`` (CFG at
    w = 1; DCFG anchored at the full condition with every weight 1), so that it reuses those decodings.
    """
    from pipeline.groups import resolve_guidance

    guidance, groups, m_anchor, m_desc = METHODS[method]
    anchor = m_anchor or anchor
    descendant_weight = m_desc or descendant_weight
    if guidance == "cfg" and scale == 1.0:  # CFG at w = 1 is the plain conditional
        guidance = "none"
    g, w = resolve_guidance(graph, [node], guidance, scale if guidance != "none" else 1.0, groups, None,
                            invariant_weight, _descendant(descendant_weight) if guidance == "dcfg" else None,
                            anchor_scales=anchor_scales if method == "dcfg" else None)
    if guidance == "dcfg" and anchor == "full" and all(v == 1.0 for v in w):
        guidance, g, w = "none", [list(graph.image_parents())], [1.0]  # eps(x, c) exactly
    return guidance, g, w, anchor if guidance == "dcfg" else "null"


def _query(graph: Any, node: str, method: str, scale: float, c: EvaluationConfig) -> dict[str, Any]:
    """One (possibly variant) method at one scale under a resolved ``c``: the decoder's ``guidance``, ``groups``,
    ``weights``, ``anchor``, ``variant``, ``interval`` and ``apg`` settings, and ``inversion``: ``None`` (the
    shared plain inversion) or CFG++'s ``("cfgpp", interval)``.

    Where the base method is the plain conditional (CFG at w = 1, ...), APG and the interval change nothing and the
    query is guidance ``none``; CFG++ at w = 1 is not (it re-noises with ``eps(null)``) and stays CFG.
    """
    base, variant, use_interval = (method, None, False) if method in METHODS else parse_method(method)
    guidance, groups, weights, anchor = _groups_for(graph, node, base, scale, c.invariant_weight,
                                                    c.descendant_weight, c.anchor or "null", c.anchor_scales)
    if variant == "cfgpp" and guidance == "none" and METHODS[base][0] == "cfg":
        guidance, weights = "cfg", [1.0]
    if guidance == "none":
        variant, use_interval = None, False
    interval = tuple(float(v) for v in c.interval) if use_interval and c.interval is not None else None
    apg = ({"apg_eta": float(c.apg_eta if c.apg_eta is not None else 0.0),
            "apg_threshold": float(c.apg_threshold or 0.0),
            "apg_momentum": float(c.apg_momentum if c.apg_momentum is not None else 0.0)}
           if variant == "apg" else None)
    inversion = ("cfgpp", interval) if variant == "cfgpp" and anchor == "null" else None
    return {"guidance": guidance, "groups": groups, "weights": weights, "anchor": anchor, "variant": variant,
            "interval": interval, "apg": apg, "inversion": inversion}


def _query_key(node: str, q: Mapping[str, Any], steps: int) -> tuple:
    """The cache key of one decoding (:func:`_decode_key`, plus the variant's settings where there are some)."""
    key = _decode_key(node, q["guidance"], q["groups"], q["weights"], q["anchor"], steps)
    if q["variant"] is None and q["interval"] is None:
        return key
    return key + (q["variant"], q["interval"], tuple(sorted((q["apg"] or {}).items())))


def _decode_key(node: str, guidance: str, groups: Sequence[Sequence[str]], weights: Sequence[float], anchor: str,
                steps: int) -> tuple:
    """The cache key of one decoding. Anchored at the full condition, groups at weight 1 contribute nothing, so
    decodings that amplify the same groups by the same weights are the same computation and share a key."""
    if guidance == "dcfg" and anchor == "full":
        amplified = tuple(sorted((tuple(g), float(w)) for g, w in zip(groups, weights) if w != 1.0))
        return (node, guidance, amplified, anchor, steps)
    return (node, guidance, tuple(map(tuple, groups)), tuple(weights), anchor, steps)


def _refine_steps(pipe: Any) -> int:
    """The fixed-point refinements of ``pipe``'s inversion (none where its solver does not invert with DDIM)."""
    from diffusion.solvers import uses_refinement

    if not uses_refinement(getattr(pipe.config, "solver", "ddim")):
        return 0
    return int(getattr(pipe.config, "refine_steps", 0) or 0)


def estimate_nfe(config: EvaluationConfig, graph: Any, pipelines: int = 1, refine_steps: int = 0,
                 pipeline_config: Any = None, num_timesteps: int = 1000) -> dict[str, int]:
    """Image-NFEs an evaluation with a *resolved* ``config`` will spend, by phase.

    ``pipelines`` identical pipelines are counted; ``refine_steps`` is the pipelines' fixed-point
    refinement of DDIM inversion (each inversion step then costs ``1 + refine_steps`` forwards);
    ``pipeline_config`` (a :class:`~pipeline.core.PipelineConfig`) resolves a ``"pipeline"`` DCFG scale
    (otherwise, like ``"best"``, it is counted as a scale other than 1); ``num_timesteps`` is the image model's T
    (a guidance interval's steps are counted on its DDIM grid: 1 row block outside the interval).

    The plan replays the run's decoding requests against the same cache the run keeps (a decoding is paid
    once per method, groups, weights, anchor and step count, for the most rows asked), so it is exact when
    the main table's ``"best"`` scales are not 1 (CFG at w = 1, and DCFG anchored at the full condition with
    every weight 1, are guidance none and cost less).

    Example:
        >>> from pipeline.presets import morphomnist_graph
        >>> cfg = EvaluationConfig(n=1000, steps=20, scale=3.0, cfg_scale=3.0, sweep_n=125, cycle_n=100,
        ...                        per_attribute_n=125, cycle_steps=20, sweep_steps=20,
        ...                        interventions=("thickness", "intensity", "digit"), invariant_weight=1.0)
        >>> estimate_nfe(cfg, morphomnist_graph())["total"]
        674500
    """
    c = config
    nodes = list(c.interventions)
    anchor = c.anchor or "null"
    done: dict[tuple, int] = {}
    inverted: dict[tuple, int] = {}
    T = int(num_timesteps)

    def cost(node: str, method: str, scale: float, m: int, steps: int) -> int:
        q = _query(graph, node, method, scale, c)
        total = 0
        if q["inversion"] is not None:  # CFG++'s own inversion, once per step count (counted where it is first needed)
            ikey = (steps, q["inversion"])
            have_inv = inverted.get(ikey, 0)
            if m > have_inv:
                inverted[ikey] = m
                total += invert_nfe(steps, refine_steps, "cfgpp", "null", q["interval"], T) * (m - have_inv)
        key = _query_key(node, q, steps)
        have = done.get(key, 0)
        if m <= have:
            return total
        done[key] = m
        return total + decode_nfe(q["guidance"], q["groups"], q["weights"], q["anchor"], steps, q["interval"],
                                  T) * (m - have)

    def k(node: str, method: str, scale: float) -> int:
        guidance, groups, weights, a = _groups_for(graph, node, method, scale, c.invariant_weight,
                                                   c.descendant_weight, anchor, c.anchor_scales)
        return nfe_per_step(guidance, groups, weights, a)

    def main_scale(node: str, requested: Any) -> float:
        if requested == "pipeline" and pipeline_config is not None:
            return float(pipeline_config.default_scale([node]))
        return 3.0 if isinstance(requested, str) else float(requested)  # 'best' / unresolved: not 1

    inv = 1 + int(refine_steps)
    out = {"inversion": inv * c.steps * c.n}
    if c.sweep_steps != c.steps:
        out["inversion"] += inv * c.sweep_steps * c.sweep_n
    if c.cycle_steps not in (c.steps, c.sweep_steps):
        out["inversion"] += inv * c.cycle_steps * c.cycle_n
    out["sweep"] = sum(cost(node, "none", 1.0, c.sweep_n, c.sweep_steps)
                       + sum(cost(node, m, s, c.sweep_n, c.sweep_steps) for m in c.sweep_methods for s in c.scales)
                       for node in nodes)
    chosen = {node: {"cfg": main_scale(node, c.cfg_scale), "dcfg": main_scale(node, c.scale)} for node in nodes}
    out["main"] = sum(cost(node, "none", 1.0, c.n, c.steps) + cost(node, "cfg", chosen[node]["cfg"], c.n, c.steps)
                      + cost(node, "dcfg", chosen[node]["dcfg"], c.n, c.steps) for node in nodes)
    out["per_attribute"] = sum(cost(node, "dcfg_per_attribute", chosen[node]["dcfg"], c.per_attribute_n, c.steps)
                               for node in nodes) if c.per_attribute_n else 0
    out["composition"] = c.cycle_steps * c.cycle_n * (c.cycles + inv * (c.cycles - 1))
    out["reversibility"] = sum(c.steps * c.cycle_n * (3 * inv + k(node, "none", 1.0) + k(node, "cfg", chosen[node]["cfg"])
                                                      + k(node, "dcfg", chosen[node]["dcfg"]))
                               for node in nodes) if c.cycle_n else 0
    out = {key: v * pipelines for key, v in out.items()}
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------------- one pipeline
class _Run:
    """Evaluation of one pipeline on fixed rows and targets, with caches of inversions and decodings."""

    def __init__(self, name: str, pipe: Any, data: "_Data", config: EvaluationConfig, bar: Any) -> None:
        self.name, self.pipe, self.data, self.c = name, pipe, data, config
        self.graph = pipe.graph
        self.engine = QueryEngine(pipe, chunk_size=config.chunk_size, bar=bar)
        self._x_T: dict[int, Tensor] = {}
        self._decoded: dict[tuple, dict[str, Any]] = {}
        self.timing: dict[str, float] = {}
        self.nfe: dict[str, int] = {}
        self.measure_s = 0.0
        # Abduction (attributes) once; action + prediction per intervened node.
        u = pipe.scm.abduct(data.parents, seed=config.seed)
        self.cf_parents: dict[str, dict[str, Tensor]] = {}
        for node in config.interventions:
            value = data.targets[node].to(data.parents[node].dtype)
            self.cf_parents[node] = pipe.scm.predict(u, do={node: value})

    # -- caches -------------------------------------------------------------------------------------
    def x_T(self, steps: int, m: int, inversion: tuple | None = None) -> Tensor:
        """The inversion of rows [0, m) at ``steps``: the shared plain one, or CFG++'s (``("cfgpp", interval)``)."""
        key: Any = steps if inversion is None else (steps, inversion)
        have = self._x_T.get(key)
        done = 0 if have is None else len(have)
        if done < m:
            d = self.data
            kw = {} if inversion is None else {"variant": "cfgpp", "anchor": "null", "interval": inversion[1]}
            new = self.engine.invert(d.images[done:m], {k: v[done:m] for k, v in d.parents.items()}, steps, **kw)
            self._x_T[key] = new if have is None else torch.cat([have, new])
        return self._x_T[key][:m]

    def decode(self, node: str, method: str, scale: float, m: int, steps: int) -> dict[str, Any]:
        """Counterfactual images (and their measurements) of rows [0, m) for one method and scale."""
        q = _query(self.graph, node, method, scale, self.c)
        guidance, groups, weights, anchor = q["guidance"], q["groups"], q["weights"], q["anchor"]
        key = _query_key(node, q, steps)
        entry = self._decoded.get(key)
        done = 0 if entry is None else len(entry["images"])
        if done < m:
            z = self.x_T(steps, m, q["inversion"])[done:m]
            cf = {k: v[done:m] for k, v in self.cf_parents[node].items()}
            kw = {} if q["variant"] is None and q["interval"] is None else {
                "variant": q["variant"], "interval": q["interval"], "apg": q["apg"]}
            imgs = self.engine.decode(z, cf, guidance, groups, weights, steps, anchor=anchor, **kw)
            t0 = time.perf_counter()
            meas = self.data.oracles.measure(imgs)
            self.measure_s += time.perf_counter() - t0
            if entry is None:
                entry = {"images": imgs, "measured": meas}
            else:
                entry["images"] = torch.cat([entry["images"], imgs])
                entry["measured"] = {k: np.concatenate([entry["measured"][k], meas[k]]) for k in meas}
            self._decoded[key] = entry
        # the request's own groups and weights (a shared key can hold an equivalent grouping's decodings)
        return {"images": entry["images"][:m], "measured": {k: v[:m] for k, v in entry["measured"].items()},
                "guidance": guidance, "groups": groups, "weights": weights, "anchor": anchor}

    # -- scoring ------------------------------------------------------------------------------------
    def score(self, node: str, method: str, scale: float, m: int, steps: int, extras: bool) -> dict[str, Any]:
        d = self.data
        out = self.decode(node, method, scale, m, steps)
        tgt = {k: v[:m] for k, v in self.cf_parents[node].items()}
        fact = {k: v[:m] for k, v in d.parents.items()}
        fmeas = {k: v[:m] for k, v in d.measured.items()}
        row: dict[str, Any] = {"method": method, "scale": None if method == "none" else scale,
                               "guidance": out["guidance"], "groups": out["groups"], "weights": out["weights"],
                               "anchor": out["anchor"], "n": m, "steps": steps}
        row.update(effectiveness(self.graph, [node], tgt, out["measured"]))
        row.update(spurious_change(self.graph, [node], fact, fmeas, tgt, out["measured"]))
        total = _total_spurious(self.graph, node, row, d.attribute_sd)
        if total is not None:
            row["total_spurious_change"] = total
        if extras:
            truth = d.truth.get(node)
            if truth is not None:
                row.update(ground_truth_error(out["images"], truth[:m]))
            if m >= 2:
                row["realism_fd"] = frechet_distance(d.oracles.embed(out["images"]), d.reference_features)
        return row

    def _phase(self, name: str, start: float, nfe0: int) -> None:
        self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - start
        self.nfe[name] = self.nfe.get(name, 0) + self.engine.nfe - nfe0

    # -- the evaluation -------------------------------------------------------------------------------
    def run(self, dcfg_scale: float | str, log: Callable[[str], None]) -> dict[str, Any]:
        c, nodes = self.c, list(self.c.interventions)
        t0, n0 = time.perf_counter(), self.engine.nfe
        self.x_T(c.steps, c.n)
        self._phase("inversion", t0, n0)

        # Sweep: every guided method at every scale on the first sweep_n rows.
        t0, n0 = time.perf_counter(), self.engine.nfe
        sweep: dict[str, list[dict]] = {}
        for node in nodes:
            rows = [self.score(node, "none", 1.0, c.sweep_n, c.sweep_steps, extras=False)]
            for method in c.sweep_methods:
                for s in c.scales:
                    rows.append(self.score(node, method, s, c.sweep_n, c.sweep_steps, extras=False))
            sweep[node] = rows
        self._phase("sweep", t0, n0)

        # Scales of the main table.
        chosen: dict[str, dict[str, float]] = {}
        for node in nodes:
            key, higher = _primary(self.graph, node)
            chosen[node] = {}
            for method, requested in (("cfg", c.cfg_scale), ("dcfg", dcfg_scale)):
                if requested == "best":
                    if method not in c.sweep_methods:
                        raise ValueError(f"scale='best' for {method} needs {method!r} in sweep_methods")
                    cands = [r for r in sweep[node] if r["method"] == method]
                    best = max(cands, key=lambda r: (r[key] if higher else -r[key], -r["scale"]))
                    chosen[node][method] = float(best["scale"])
                elif requested == "pipeline":  # what pipe.counterfactual(..., scale=None) would use
                    chosen[node][method] = float(self.pipe.config.default_scale([node]))
                else:
                    chosen[node][method] = float(requested)
        log(f"[{self.name}] main-table scales: " + ", ".join(
            f"do({n}) CFG {v['cfg']:g} DCFG {v['dcfg']:g}" for n, v in chosen.items()))

        # Main table on n rows (+ DCFG with one group per attribute on per_attribute_n rows).
        t0, n0 = time.perf_counter(), self.engine.nfe
        main: dict[str, list[dict]] = {}
        for node in nodes:
            main[node] = [self.score(node, "none", 1.0, c.n, c.steps, extras=True),
                          self.score(node, "cfg", chosen[node]["cfg"], c.n, c.steps, extras=True),
                          self.score(node, "dcfg", chosen[node]["dcfg"], c.n, c.steps, extras=True)]
        self._phase("main", t0, n0)
        t0, n0 = time.perf_counter(), self.engine.nfe
        if c.per_attribute_n:
            for node in nodes:
                main[node].append(self.score(node, "dcfg_per_attribute", chosen[node]["dcfg"], c.per_attribute_n,
                                             c.steps, extras=c.per_attribute_n == c.n))
        self._phase("per_attribute", t0, n0)

        random_parent = self._random_parent(chosen) if len(nodes) > 1 else None

        # Composition and reversibility on the first cycle_n rows.
        t0, n0 = time.perf_counter(), self.engine.nfe
        composition = self._composition() if c.cycle_n else None
        self._phase("composition", t0, n0)
        t0, n0 = time.perf_counter(), self.engine.nfe
        reversibility = self._reversibility(chosen) if c.cycle_n else None
        self._phase("reversibility", t0, n0)

        tradeoff = _tradeoff(self.graph, sweep, c.sweep_methods)
        return {"scales": chosen, "recommended": _recommend(self.graph, sweep, c.sweep_methods), "main": main,
                "sweep": sweep, "random_parent": random_parent,
                "composition": composition, "reversibility": reversibility, "tradeoff": tradeoff,
                "nfe": dict(self.nfe, total=self.engine.nfe),
                "seconds": dict(self.timing, measure_oracles=self.measure_s)}

    def _random_parent(self, chosen: dict[str, dict[str, float]]) -> dict[str, Any]:
        """do(random parent): row j's query is do(node_j) with that row's single-parent target."""
        c, d = self.c, self.data
        nodes = list(c.interventions)
        pick = d.random_choice[:c.n]
        out: dict[str, Any] = {"counts": {node: int((pick == k).sum()) for k, node in enumerate(nodes)},
                               "methods": []}
        for method in ("none", "cfg", "dcfg"):
            imgs = torch.empty_like(d.images[:c.n])
            row: dict[str, Any] = {"method": method}
            for k, node in enumerate(nodes):
                sel = np.flatnonzero(pick == k)
                scale = 1.0 if method == "none" else chosen[node][method]
                dec = self.decode(node, method, scale, c.n, c.steps)
                imgs[sel] = dec["images"][sel]
                if len(sel) == 0:
                    continue
                tgt = {a: v[sel] for a, v in self.cf_parents[node].items()}
                fact = {a: v[sel] for a, v in d.parents.items()}
                fmeas = {a: v[sel] for a, v in d.measured.items()}
                meas = {a: v[sel] for a, v in dec["measured"].items()}
                for key, val in {**effectiveness(self.graph, [node], tgt, meas),
                                 **spurious_change(self.graph, [node], fact, fmeas, tgt, meas)}.items():
                    row[f"do({node}) {key}"] = val
            if c.n >= 2:
                row["realism_fd"] = frechet_distance(d.oracles.embed(imgs), d.reference_features)
            out["methods"].append(row)
        return out

    def _composition(self) -> dict[str, Any]:
        from pipeline.evaluation.scores import composition

        c, d = self.c, self.data
        m = c.cycle_n
        curve = composition(self.pipe, d.images[:m], {k: v[:m] for k, v in d.parents.items()}, cycles=c.cycles,
                            steps=c.cycle_steps, x_T=self.x_T(c.cycle_steps, m), engine=self.engine)
        mean = curve.mean(0)
        return {"n": m, "steps": c.cycle_steps, "cycles": c.cycles, "l1_per_cycle": [float(v) for v in mean],
                "cycle_1": float(mean[0]), f"cycle_{c.cycles}": float(mean[-1])}

    def _reversibility(self, chosen: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
        from pipeline.evaluation.scores import reversibility

        c, d = self.c, self.data
        m = c.cycle_n
        rows = []
        for node in c.interventions:
            for method in ("none", "cfg", "dcfg"):
                scale = 1.0 if method == "none" else chosen[node][method]
                dec = self.decode(node, method, scale, m, c.steps)
                guidance, groups, weights, anchor = _groups_for(self.graph, node, method, scale, c.invariant_weight,
                                                                c.descendant_weight, c.anchor or "null",
                                                                c.anchor_scales)
                dist = reversibility(
                    self.pipe, d.images[:m], {k: v[:m] for k, v in d.parents.items()},
                    {node: d.targets[node][:m]}, guidance, scale, c.steps, counterfactual=dec["images"],
                    counterfactual_parents={k: v[:m] for k, v in self.cf_parents[node].items()},
                    invariant_weight=c.invariant_weight, groups=groups if guidance == "dcfg" else None,
                    weights=weights if guidance == "dcfg" else None, seed=c.seed, engine=self.engine,
                    anchor=anchor)
                rows.append({"intervention": node, "method": method, "scale": None if method == "none" else scale,
                             "n": m, "steps": c.steps, "l1": float(np.mean(dist))})
        return rows


def _primary(graph: Any, node: str) -> tuple[str, bool]:
    """The effectiveness metric of ``do(node)`` and whether higher is better."""
    if graph.spec(node).is_discrete:
        return f"{node}_accuracy", True
    return f"{node}_mae", False


def _recommend(graph: Any, sweep: Mapping[str, list[dict]], methods: Sequence[str]) -> dict[str, Any]:
    """Scale recommendations from the sweep, for every swept method.

    Per intervention: the scale with the best effectiveness (ties: the smaller scale). Overall: the scale
    minimising the mean over interventions of the effectiveness loss relative to guidance none
    (``MAE / MAE_none``, ``(1 - acc) / (1 - acc_none)``), ties to the smaller scale.
    """
    out: dict[str, Any] = {"rule": "per intervention: best effectiveness in the sweep; overall: least mean "
                                   "effectiveness loss relative to guidance none over the interventions"}
    for m in methods:
        per: dict[str, float] = {}
        rel: dict[float, list[float]] = {}
        for node, rows in sweep.items():
            key, higher = _primary(graph, node)
            loss = {None if r["method"] == "none" else r["scale"]: (1.0 - r[key]) if higher else r[key]
                    for r in rows if r["method"] in ("none", m)}
            cands = {s: v for s, v in loss.items() if s is not None}
            per[node] = min(cands, key=lambda s: (cands[s], s))
            for s, v in cands.items():
                rel.setdefault(s, []).append(v / max(loss[None], _EPS))
        full = {s: float(np.mean(v)) for s, v in rel.items() if len(v) == len(sweep)}
        out[m] = {"per_intervention": per, "overall": min(full, key=lambda s: (full[s], s)) if full else None,
                  "relative_loss": {f"{s:g}": v for s, v in sorted(full.items())}}
    return out


def _tradeoff(graph: Any, sweep: Mapping[str, list[dict]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Equal-effectiveness ratios of every swept method against CFG, per intervention and spurious metric."""
    out = []
    for node, rows in sweep.items():
        eff, higher = _primary(graph, node)
        spurious = [k for k in rows[0] if k.endswith(("_flip_rate", "_abs_change", "_excess_change"))
                    or k == "total_spurious_change"]
        curves = {m: [r for r in rows if r["method"] == m] for m in methods}
        for key in spurious:
            base = ([r[eff] for r in curves["cfg"]], [r[key] for r in curves["cfg"]])
            for m in methods:
                if m == "cfg":
                    continue
                res = equal_effectiveness_ratio(([r[eff] for r in curves[m]], [r[key] for r in curves[m]]), base,
                                                higher_is_better=higher)
                out.append({"intervention": node, "effectiveness": eff, "spurious": key, "method": m,
                            "baseline": "cfg", **res})
    return out


# ---------------------------------------------------------------------------------------------- data
@dataclass
class _Data:
    images: Tensor
    parents: dict[str, Tensor]
    rows: Tensor
    targets: dict[str, Tensor]
    random_choice: np.ndarray
    measured: dict[str, np.ndarray]
    truth: dict[str, Tensor | None]
    reference_features: np.ndarray
    oracles: Oracles
    attribute_sd: dict[str, float] = field(default_factory=dict)


def _total_spurious(graph: Any, node: str, row: Mapping[str, Any], sd: Mapping[str, float]) -> float | None:
    """The total spurious change of one row: over the invariant image parents, each continuous one's
    ``abs_change`` in units of its standard deviation in the test data, plus each discrete one's flip rate."""
    total, parts = 0.0, 0
    for name, role in roles(graph, [node]).items():
        if role != "invariant":
            continue
        if f"{name}_flip_rate" in row:
            total += float(row[f"{name}_flip_rate"])
        elif f"{name}_abs_change" in row and sd.get(name):
            total += float(row[f"{name}_abs_change"]) / sd[name]
        else:
            continue
        parts += 1
    return total if parts else None


def _target_generator(seed: int, node: str) -> torch.Generator:
    """The random stream of one intervention's targets: seeded by (seed, node name) alone, so that a run
    on a subset of the interventions (``--interventions digit``) draws the same targets as a full run."""
    state = np.random.SeedSequence([int(seed) % (1 << 64), zlib.crc32(node.encode())]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & ((1 << 63) - 1))


def _prepare(images: Tensor, parents: Mapping[str, Tensor], oracles: Oracles, c: EvaluationConfig,
             rows: Tensor | None, reference_images: Tensor | None, graph: Any) -> tuple[_Data, dict[str, Any]]:
    n_all = len(images)
    gen = torch.Generator().manual_seed(c.seed)
    sel = torch.randperm(n_all, generator=gen)[:c.n]
    x = images[sel]
    pa = {k: torch.as_tensor(v)[sel] for k, v in parents.items()}
    data_rows = (torch.arange(n_all) if rows is None else torch.as_tensor(rows).long())[sel]
    targets = {node: torch.as_tensor(oracles.draw_targets(node, pa, _target_generator(c.seed, node)))
               for node in c.interventions}
    choice = torch.randint(0, len(c.interventions), (c.n,), generator=gen).numpy()
    measured = oracles.measure(x)
    missing = [p for p in graph.image_parents() if p not in measured]
    if missing:
        raise ValueError(f"the oracles' measure() gives {sorted(measured)}, but it must measure every image "
                         f"parent: {missing} missing")
    truth: dict[str, Tensor | None] = {}
    for node in c.interventions:
        value = targets[node].to(pa[node].dtype)
        truth[node] = oracles.true_counterfactual(data_rows, {node: value})
    ref = images if reference_images is None else reference_images
    ref_feats = oracles.embed(ref)
    factual: dict[str, Any] = {"n": c.n, "reference_n": len(ref)}
    for p in graph.image_parents():
        if graph.spec(p).is_discrete:
            factual[f"{p}_accuracy"] = float(np.mean(measured[p].astype(np.int64) == pa[p].numpy().astype(np.int64)))
        else:
            factual[f"{p}_measurement_mae"] = float(np.mean(np.abs(measured[p] - pa[p].double().numpy())))
    if c.n >= 2:
        factual["realism_fd"] = frechet_distance(oracles.embed(x), ref_feats)
    sd = {k: float(torch.as_tensor(v).double().std()) for k, v in parents.items()
          if graph.spec(k).is_continuous and len(v) > 1}
    data = _Data(x, pa, data_rows, targets, choice, measured, truth, ref_feats, oracles, sd)
    return data, factual


# ---------------------------------------------------------------------------------------------- entry points
def evaluate(pipe: Any, images: Tensor, parents: Mapping[str, Tensor], oracles: Oracles,
             config: EvaluationConfig | None = None, *, rows: Tensor | None = None,
             reference_images: Tensor | None = None, ablation: Any = None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Evaluate counterfactuals of ``pipe`` (and optionally an ``ablation`` pipeline) on a test set.

    Args:
        pipe: the :class:`~pipeline.core.CounterfactualPipeline` under test.
        images: candidate test images (N, C, H, W) in [-1, 1]; ``config.n`` of them are drawn.
        parents: their factual attributes (every attribute node), name -> (N,).
        oracles: measurement, features, intervention values and ground truth of this dataset.
        config: settings (see :class:`EvaluationConfig`; ``None`` values are resolved here).
        rows: dataset row index of each image, for ``oracles.true_counterfactual`` (default 0..N-1).
        reference_images: real images for realism (default: all of ``images``).
        ablation: a second pipeline over the same graph, evaluated the same way (same rows, targets,
            oracles and DCFG scale) and reported beside the first.
        progress: a tqdm bar over image-NFEs.
        log: called with one-line progress messages (e.g. ``print``).

    Returns:
        An :class:`EvaluationResult`.

    Example:
        >>> res = evaluate(pipe, test.images, test.attributes, MorphoOracles(test, pipe.classifier),
        ...                EvaluationConfig(n=50))                                    # doctest: +SKIP
        >>> res.metrics["pipelines"]["main"]["main"]["thickness"][2]["thickness_mae"]  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    log = log or (lambda s: None)
    if not isinstance(oracles, Oracles):
        raise TypeError(f"oracles must be a pipeline.evaluation.Oracles, got {type(oracles).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise TypeError("images must be a (N, C, H, W) tensor in [-1, 1]")
    missing = [k for k in pipe.graph.attribute_nodes() if k not in parents]
    if missing:
        raise ValueError(f"parents lacks attribute node(s) {missing}; the SCM needs every one of "
                         f"{list(pipe.graph.attribute_nodes())}")
    c = resolve_config(config or EvaluationConfig(), pipe, len(images))
    if ablation is not None and sorted(ablation.graph.image_parents()) != sorted(pipe.graph.image_parents()):
        raise ValueError(f"the ablation pipeline's image parents {ablation.graph.image_parents()} differ from "
                         f"{pipe.graph.image_parents()}; both must answer the same queries")
    pipelines = {"main": pipe} if ablation is None else {"main": pipe, "ablation": ablation}
    plans = [estimate_nfe(c, p.graph, refine_steps=_refine_steps(p),
                          num_timesteps=num_timesteps(p),
                          pipeline_config=p.config) for p in pipelines.values()]
    plan = {k: sum(pl[k] for pl in plans) for k in plans[0]}
    log(f"plan: {plan['total']:,} image-NFEs ({', '.join(f'{k} {v:,}' for k, v in plan.items() if k != 'total')})")

    compile_ = bool(plan["total"] >= COMPILE_AUTO_NFE) if c.compile == "auto" else bool(c.compile)
    if compile_ or c.precision != "fp32":
        log(f"image model inference: precision {c.precision}, compile {compile_}")

    t_start = time.perf_counter()
    t0 = time.perf_counter()
    data, factual = _prepare(images, parents, oracles, c, rows, reference_images, pipe.graph)
    prep_s = time.perf_counter() - t0

    bar = tqdm(total=plan["total"], unit="nfe", unit_scale=True, desc="evaluate", disable=not progress)
    results: dict[str, Any] = {}
    runs: dict[str, _Run] = {}
    before = {name: _inference_settings(p) for name, p in pipelines.items()}
    try:
        for name, p in pipelines.items():
            _set_inference(p, c.precision, compile_)
            run = _Run(name, p, data, c, bar)
            results[name] = run.run(c.scale, log)
            runs[name] = run
    finally:
        bar.close()
        for name, p in pipelines.items():
            if before[name] is not None:
                _set_inference(p, **before[name])
    wall = time.perf_counter() - t_start
    nfe_total = sum(r["nfe"]["total"] for r in results.values())
    diffusion_s = sum(sum(v for k, v in r["seconds"].items() if k != "measure_oracles") - r["seconds"]["measure_oracles"]
                      for r in results.values())
    metrics = {
        "settings": _settings(c),
        "plan_nfe": plan,
        "factual": factual,
        "pipelines": results,
        "headline": _headline(pipe.graph, results, _targets_of(pipe)),
        "solver": getattr(pipe.config, "solver", "ddim"),
        "timing": {"wall_s": wall, "prepare_s": prep_s, "nfe": nfe_total,
                   "ms_per_nfe": 1000.0 * max(diffusion_s, 0.0) / max(nfe_total, 1), "torch_threads": torch.get_num_threads(),
                   "precision": c.precision, "compile": compile_},
    }
    return EvaluationResult(metrics=metrics, grid=_grid(runs["main"], results["main"]["scales"]))


def _inference_settings(pipe: Any) -> dict[str, Any] | None:
    model = getattr(pipe, "image_model", None)
    return dict(model.inference_settings) if hasattr(model, "inference_settings") else None


def _set_inference(pipe: Any, precision: str, compile: bool) -> None:
    """Apply the run's inference settings where the pipeline's image model has them (test doubles may not)."""
    model = getattr(pipe, "image_model", None)
    if hasattr(model, "set_inference"):
        model.set_inference(precision=precision, compile=compile)
    elif compile or precision != "fp32":
        raise ValueError(f"precision={precision!r}/compile={compile!r} need an image model with set_inference(); "
                         f"{type(model).__name__} has none")


def _settings(c: EvaluationConfig) -> dict[str, Any]:
    s = asdict(c)
    s["scales"] = list(c.scales)
    s["interventions"] = list(c.interventions or ())
    s["sweep_methods"] = list(c.sweep_methods)
    s["subset_rule"] = ("rows = first n of a seeded permutation of the test set; sweep = first sweep_n of them, "
                        "composition/reversibility = first cycle_n, DCFG per attribute = first per_attribute_n; "
                        "one DDIM inversion per row and step count is shared by every query")
    return s


def _grid(run: _Run, chosen: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    c, d = run.c, run.data
    m = min(c.grid_n, c.n)
    out: dict[str, dict[str, Any]] = {}
    if m == 0:
        return out
    for node in c.interventions:
        cfg = run.decode(node, "cfg", chosen[node]["cfg"], m, c.steps)
        dc = run.decode(node, "dcfg", chosen[node]["dcfg"], m, c.steps)
        truth = d.truth.get(node)
        out[node] = {
            "target": d.targets[node][:m], "columns": ["factual", f"CFG w={chosen[node]['cfg']:g}",
                                                      f"DCFG w={chosen[node]['dcfg']:g}"]
            + (["ground truth"] if truth is not None else []),
            "images": [d.images[:m], cfg["images"], dc["images"]] + ([truth[:m]] if truth is not None else []),
            "measured": [{k: v[:m] for k, v in d.measured.items()}, cfg["measured"], dc["measured"]]
            + ([d.oracles.measure(truth[:m])] if truth is not None else [])}
    return out


def _fmt_target(cmp_: str, value: float) -> str:
    return f"{cmp_} {value:g}"


def _met(cmp_: str, target: float, value: float | None) -> bool | None:
    if value is None or not math.isfinite(value):
        return None
    return value <= target + _EPS if cmp_ == "<=" else value >= target - _EPS


def _targets_of(pipe: Any) -> dict[tuple[str, str], tuple[str, float]]:
    kind = getattr(pipe, "oracles", None)
    if kind is None and getattr(pipe, "classifier", None) is not None:
        kind = "morpho"
    return TARGETS.get(kind, TARGETS[None])


def _headline(graph: Any, results: Mapping[str, Any],
              targets: Mapping[tuple[str, str], tuple[str, float]] = BENCHMARK_TARGETS) -> list[dict[str, Any]]:
    """One row per metric of the main tables; a column per ``pipeline/method``; targets where the benchmark sets one."""
    rows: list[dict[str, Any]] = []

    def add(label: str, target: tuple[str, float] | None, values: dict[str, float | None],
            **extra: Any) -> None:
        rows.append({"metric": label, "target": _fmt_target(*target) if target else None, "values": values,
                     "met": {k: _met(target[0], target[1], v) for k, v in values.items()} if target else None,
                     **extra})

    first = next(iter(results.values()))
    for node in first["main"]:
        eff, _ = _primary(graph, node)
        keys = [eff]
        for r in first["main"][node]:
            keys += [k for k in r if k not in keys and k.endswith(
                ("_mae", "_accuracy", "_flip_rate", "_abs_change", "_excess_change", "total_spurious_change", "gt_l1",
                 "gt_psnr", "realism_fd"))]
        for key in keys:
            values = {f"{pname}/{r['method']}": r[key] for pname, res in results.items()
                      for r in res["main"][node] if key in r}
            add(f"do({node}): {key}", targets.get((node, key)), values)
    comps = {pname: res["composition"] for pname, res in results.items() if res["composition"]}
    if comps:
        cycles = next(iter(comps.values()))["cycles"]
        for key in dict.fromkeys(("cycle_1", f"cycle_{cycles}")):
            add(f"composition L1 (0-255) after {key.split('_')[1]} cycle(s)", targets.get(("composition", key)),
                {f"{pname}/none": comp[key] for pname, comp in comps.items()})
    for pname, res in results.items():
        revs: dict[str, dict[str, float]] = {}
        for tr in res["reversibility"] or []:
            revs.setdefault(tr["intervention"], {})[f"{pname}/{tr['method']}"] = tr["l1"]
        for node, values in revs.items():
            add(f"do({node}): reversibility L1 (0-255)", None, values)
    for pname, res in results.items():
        for tr in res["tradeoff"]:
            add(f"do({tr['intervention']}): {tr['spurious']}, {tr['method']} / cfg at equal {tr['effectiveness']}",
                targets[("tradeoff", "ratio")], {f"{pname}/ratio": tr["ratio"]}, reason=tr["reason"])
            best = tr.get("at_baseline_best") or {}
            add(f"do({tr['intervention']}): {tr['spurious']}, {tr['method']} / cfg at CFG's best {tr['effectiveness']}",
                targets[("tradeoff", "ratio")], {f"{pname}/ratio": best.get("ratio")},
                reason=best.get("reason"))
    return rows


#: at most this many test rows are read for an evaluation of data that is not a Morpho benchmark: the candidates
#: of the main table and the real images of the realism reference (a seeded subsample of larger splits)
MAX_EVALUATION_ROWS = 2000


@dataclass
class EvaluationData:
    """What :func:`load_evaluation_data` returns: the test images and attributes, and their oracles."""

    images: Tensor
    parents: dict[str, Tensor]
    rows: Tensor
    oracles: Oracles
    spec: dict[str, Any]
    total_rows: int


def load_evaluation_data(pipe: Any, data: str | None = None, *, classifier: Any = None, data_seed: int = 0,
                         root: str | os.PathLike | None = None, n_jobs: int | None = None,
                         max_sources: int | None = None, max_rows: int = MAX_EVALUATION_ROWS,
                         progress: bool = True) -> EvaluationData:
    """The test split a pipeline is scored on, and the oracles that score it.

    Args:
        pipe: the pipeline; its ``oracles`` decide how counterfactuals are measured
            (:meth:`~pipeline.core.CounterfactualPipeline.make_oracles`).
        data: a ``--data`` spec of the test split (``csv:FILE,split=test``, ``mnist:DIR``...). ``None`` or
            ``"morpho-test"``: the Morpho-MNIST benchmark's 1,000 test digits (``MorphoMNIST("test",
            seed=data_seed)``, with ground truth); ``"morpho-colour-test"``: colour Morpho-MNIST's.
        classifier: a digit classifier replacing the pipeline's (Morpho oracles).
        data_seed, root, n_jobs, max_sources: the Morpho benchmarks' test digits (see :func:`run_evaluation`).
        max_rows: other data: at most this many rows are read (a seeded subsample of a larger split).
        progress: tqdm bars.
    """
    from pipeline.datasets import MorphoColour, MorphoMNIST
    from pipeline.evaluation.oracles import ColourOracles, MorphoOracles

    kind = getattr(pipe, "oracles", None) or ("morpho" if pipe.classifier is not None or classifier is not None
                                              else None)
    if data is None:
        if kind == "morpho":
            data = "morpho-test"
        elif kind == "morpho-colour":
            data = "morpho-colour-test"
        elif (sorted(pipe.graph.image_parents()) == ["digit", "intensity", "thickness"]
              and tuple(pipe.graph.spec(pipe.graph.image_node).shape) == (1, 28, 28)):
            data = "morpho-test"  # a Morpho-MNIST pipeline saved without its classifier: asks for --classifier
        else:
            raise ValueError("this pipeline was trained on your own data: give its test split with --data SPEC "
                             "(e.g. csv:faces.csv,split=test)")
    spec_text = data.strip()
    if spec_text in ("morpho-test", "morpho-colour-test"):
        colour = spec_text == "morpho-colour-test"
        expected = ("colour Morpho-MNIST", ["background", "digit", "hue", "intensity", "slant", "thickness"],
                    (3, 28, 28)) if colour else ("Morpho-MNIST", ["digit", "intensity", "thickness"], (1, 28, 28))
        image = pipe.graph.image_node
        if (sorted(pipe.graph.image_parents()) != expected[1]
                or tuple(pipe.graph.spec(image).shape) != expected[2]):
            raise ValueError(f"--data {spec_text} scores {expected[0]} pipelines ({', '.join(expected[1])} -> "
                             f"{'x'.join(map(str, expected[2]))} image); this one has parents "
                             f"{pipe.graph.image_parents()} and image shape {tuple(pipe.graph.spec(image).shape)}: "
                             f"give its own test data with --data SPEC")
        classifier = classifier if classifier is not None else pipe.classifier
        if classifier is None:
            raise ValueError("the pipeline has no digit classifier (the benchmark's oracle): pass --classifier DIR "
                             "(a DigitClassifier saved with save_pretrained) or a pipeline saved with one")
        cls = MorphoColour if colour else MorphoMNIST
        test = cls("test", root=root, samples_per_digit=1, seed=data_seed, attribute_sampling="scm",
                   n_jobs=n_jobs, progress=progress, max_sources=max_sources)
        oracles = (ColourOracles if colour else MorphoOracles)(test, classifier.eval(), n_jobs=n_jobs)
        spec = {"spec": spec_text, "data_seed": data_seed, "root": None if root is None else str(root),
                "max_sources": max_sources}
        return EvaluationData(test.images, dict(test.attributes), torch.arange(len(test)), oracles, spec,
                              len(test))

    from pipeline.generate import open_dataset

    rows = open_dataset(spec_text, graph=pipe.graph)
    n_all = len(rows)
    nodes = list(pipe.graph.attribute_nodes())
    factual = {n: rows.factual(n) for n in nodes}
    if n_all > max_rows:
        pick = torch.randperm(n_all, generator=torch.Generator().manual_seed(data_seed))[:max_rows].sort().values
    else:
        pick = torch.arange(n_all)
    images, parents = [], {n: [] for n in nodes}
    for i in range(0, len(pick), 256):
        idx = pick[i:i + 256].tolist()
        items = [rows[j] for j in idx]
        images.append(torch.stack([it[0] for it in items]).float())
        for n in nodes:
            parents[n].append(torch.stack([torch.as_tensor(it[1][n]) for it in items]))
    x = torch.cat(images)
    pa = {n: torch.cat(v) for n, v in parents.items()}
    marginals = {n: (factual[n] if factual[n] is not None else pa[n]) for n in nodes}
    oracles = pipe.make_oracles(marginals=marginals, n_jobs=n_jobs)
    spec = {**rows.spec, "rows_read": len(pick), "data_seed": data_seed}
    return EvaluationData(x, pa, pick.long(), oracles, spec, n_all)


def run_evaluation(pipe: Any, out: str | os.PathLike, config: EvaluationConfig | None = None, *,
                   data: str | None = None, ablation: Any = None, classifier: Any = None, data_seed: int = 0,
                   root: str | os.PathLike | None = None, n_jobs: int | None = None, max_sources: int | None = None,
                   max_rows: int = MAX_EVALUATION_ROWS, command: str | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Evaluate a pipeline on its test split and write ``out``.

    Writes ``metrics.json``, ``report.md``, ``tradeoff.png`` and ``grid.png`` into a temporary folder
    beside ``out`` and renames it into place at the end: a failed run leaves nothing (an earlier
    evaluation at ``out`` stays as it was until the new one is complete).

    Args:
        pipe: the pipeline under test.
        out: output folder; it must not exist, or must be an earlier evaluation's output.
        config: settings (:class:`EvaluationConfig`).
        data: the test split (:func:`load_evaluation_data`): a ``--data`` spec; ``None`` is the benchmark's
            test digits for a Morpho pipeline.
        ablation: optional second pipeline (e.g. trained with whole-condition dropout only).
        classifier: the oracle digit classifier of the Morpho benchmarks (default ``pipe.classifier``).
        data_seed: seed of the test digits' attributes (``MorphoMNIST("test", seed=...)``), or of the
            subsample of a split larger than ``max_rows``.
        root: a local MNIST/Morpho-MNIST folder (default: the bundled digits).
        n_jobs: morphometry and rendering processes.
        max_sources: use only this many test source digits (class-balanced; for quick tests).
        max_rows: the most rows read from other data.
        command: the command line, recorded in the report.
        progress: tqdm bars.
        log: one-line progress messages.

    Returns:
        The :class:`EvaluationResult` that was written.

    Example:
        >>> pipe = CounterfactualPipeline.pretrained()                          # doctest: +SKIP
        >>> run_evaluation(pipe, "eval-quick", EvaluationConfig(n=50))          # doctest: +SKIP
    """
    from pipeline.evaluation.report import check_out_dir, write_outputs

    out = check_out_dir(out)
    t0 = time.perf_counter()
    ev = load_evaluation_data(pipe, data, classifier=classifier, data_seed=data_seed, root=root, n_jobs=n_jobs,
                              max_sources=max_sources, max_rows=max_rows, progress=progress)
    result = evaluate(pipe, ev.images, ev.parents, ev.oracles, config, rows=ev.rows,
                      reference_images=ev.images, ablation=ablation, progress=progress, log=log)
    result.metrics["settings"].update(data_seed=data_seed, root=None if root is None else str(root),
                                      max_sources=max_sources, test_rows=ev.total_rows, command=command)
    if ev.spec["spec"] not in ("morpho-test",):
        result.metrics["settings"]["data"] = ev.spec
    result.metrics["timing"]["load_s"] = time.perf_counter() - t0 - result.metrics["timing"]["wall_s"]
    write_outputs(result, out)
    return result
