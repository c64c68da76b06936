"""What each evaluated method asks of the decoder, and what the evaluation will cost before it runs.

:func:`query_for` maps a method and a scale to the decoder's guidance, groups, weights and DCFG formulation (and a
variant's settings); :func:`query_key` is the cache key under which a run keeps that decoding, so that equal
computations are paid once. Cost, in image-NFEs (one network evaluation of one image): ``(1 + r) S`` per inverted
image (``r`` the pipeline's fixed-point refinements), ``k S`` per decoded one (``k`` = 1 none, 2 CFG, M + 1 DCFG
with M groups, or 1 + the groups not at weight 1 with ``dcfg_form="conditional"``). :func:`estimate_nfe` adds them up
before the run (``plan_nfe`` in ``metrics.json``; the run records what it spent beside it).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from diffusion.ddim import ddim_invert_nfe
from pipeline.evaluation.config import METHODS, EvaluationConfig, parse_method
from pipeline.evaluation.engine import decode_nfe, inversion_settings, invert_nfe, nfe_per_step
from pipeline.options import anchor_renamed, check_dcfg_form

__all__ = ["groups_for", "query_for", "query_key", "refine_steps_of", "predictor_of", "power_of", "estimate_nfe"]


@anchor_renamed
def groups_for(graph: Any, node: str, method: str, scale: float, invariant_weight: float,
               descendant_weight: float | str | None = None, dcfg_form: str = "paper",
               anchor_scales: Mapping[str, float] | None = None) -> tuple[str, list[list[str]], list[float], str]:
    """``(guidance, groups, weights, dcfg_form)`` of one method at one scale, as the decoder takes them.

    ``descendant_weight``: a number or ``"scale"`` (``None``: ``"scale"``). A method that is exactly the plain
    conditional at this scale is returned as guidance ``none`` (CFG at w = 1; DCFG with ``dcfg_form="conditional"``
    and every weight 1), so that it reuses those decodings.
    """
    from pipeline.groups import resolve_guidance

    guidance, groups, m_form, m_desc = METHODS[method]
    dcfg_form = check_dcfg_form(m_form or dcfg_form)
    descendant_weight = m_desc or descendant_weight
    if guidance == "cfg" and scale == 1.0:  # CFG at w = 1 is the plain conditional
        guidance = "none"
    g, w = resolve_guidance(graph, [node], guidance, scale if guidance != "none" else 1.0, groups, None,
                            invariant_weight, "scale" if descendant_weight is None else descendant_weight,
                            anchor_scales=anchor_scales if method == "dcfg" else None)
    if guidance == "dcfg" and dcfg_form == "conditional" and all(v == 1.0 for v in w):
        guidance, g, w = "none", [list(graph.image_parents())], [1.0]  # eps(x, c) exactly
    return guidance, g, w, dcfg_form if guidance == "dcfg" else "paper"


def query_for(graph: Any, node: str, method: str, scale: float, c: EvaluationConfig) -> dict[str, Any]:
    """One (possibly variant) method at one scale under a resolved ``c``: the decoder's ``guidance``, ``groups``,
    ``weights``, ``dcfg_form``, ``variant``, ``interval`` and ``apg`` settings, and ``inversion``: ``None`` (the
    shared plain inversion) or CFG++'s ``("cfgpp", interval)``.

    Where the base method is the plain conditional (CFG at w = 1, ...), APG and the interval change nothing and the
    query is guidance ``none``; CFG++ at w = 1 is not (it re-noises with ``eps(null)``) and stays CFG.
    """
    base, variant, use_interval = (method, None, False) if method in METHODS else parse_method(method)
    guidance, groups, weights, dcfg_form = groups_for(graph, node, base, scale, c.invariant_weight,
                                                      c.descendant_weight, c.dcfg_form or "paper", c.anchor_scales)
    if variant == "cfgpp" and guidance == "none" and METHODS[base][0] == "cfg":
        guidance, weights = "cfg", [1.0]
    if guidance == "none":
        variant, use_interval = None, False
    interval = tuple(float(v) for v in c.interval) if use_interval and c.interval is not None else None
    apg = ({"apg_eta": float(c.apg_eta if c.apg_eta is not None else 0.0),
            "apg_threshold": float(c.apg_threshold or 0.0),
            "apg_momentum": float(c.apg_momentum if c.apg_momentum is not None else 0.0)}
           if variant == "apg" else None)
    inversion = ("cfgpp", interval) if variant == "cfgpp" and dcfg_form == "paper" else None
    return {"guidance": guidance, "groups": groups, "weights": weights, "dcfg_form": dcfg_form, "variant": variant,
            "interval": interval, "apg": apg, "inversion": inversion}


def query_key(node: str, q: Mapping[str, Any], steps: int) -> tuple:
    """The cache key of one decoding (:func:`_decode_key`, plus the variant's settings where there are some)."""
    key = _decode_key(node, q["guidance"], q["groups"], q["weights"], q["dcfg_form"], steps)
    if q["variant"] is None and q["interval"] is None:
        return key
    return key + (q["variant"], q["interval"], tuple(sorted((q["apg"] or {}).items())))


def _decode_key(node: str, guidance: str, groups: Sequence[Sequence[str]], weights: Sequence[float],
                dcfg_form: str, steps: int) -> tuple:
    """The cache key of one decoding. With ``dcfg_form="conditional"``, groups at weight 1 contribute nothing, so
    decodings that amplify the same groups by the same weights are the same computation and share a key."""
    if guidance == "dcfg" and dcfg_form == "conditional":
        amplified = tuple(sorted((tuple(g), float(w)) for g, w in zip(groups, weights) if w != 1.0))
        return (node, guidance, amplified, dcfg_form, steps)
    return (node, guidance, tuple(map(tuple, groups)), tuple(weights), dcfg_form, steps)


def refine_steps_of(pipe: Any) -> int:
    """The fixed-point refinements of ``pipe``'s inversion (none where its solver does not invert with DDIM)."""
    return inversion_settings(pipe.config)[0]


def predictor_of(pipe: Any) -> str:
    """The predictor of ``pipe``'s DDIM inversion (``"explicit"`` without refinement)."""
    return inversion_settings(pipe.config)[1]


def power_of(pipe: Any) -> float:
    """The exponent of ``pipe``'s DDIM grid (1 for the diffusers solvers)."""
    return inversion_settings(pipe.config)[2]


def estimate_nfe(config: EvaluationConfig, graph: Any, pipelines: int = 1, refine_steps: int = 0,
                 pipeline_config: Any = None, num_timesteps: int = 1000, predictor: str = "explicit",
                 power: float = 1.0) -> dict[str, int]:
    """Image-NFEs an evaluation with a *resolved* ``config`` will spend, by phase.

    ``pipelines`` identical pipelines are counted; ``refine_steps`` and ``predictor`` are the pipelines'
    fixed-point refinement of DDIM inversion and its first guess (an inversion of S steps then costs
    :func:`diffusion.ddim.ddim_invert_nfe` forwards), ``power`` their grid's exponent;
    ``pipeline_config`` (a :class:`~pipeline.core.PipelineConfig`) resolves a ``"pipeline"`` DCFG scale
    (otherwise, like ``"best"``, it is counted as a scale other than 1); ``num_timesteps`` is the image model's T
    (a guidance interval's steps are counted on its DDIM grid: 1 row block outside the interval).

    The plan replays the run's decoding requests against the same cache the run keeps (a decoding is paid
    once per method, groups, weights, formulation and step count, for the most rows asked), so it is exact when
    the main table's ``"best"`` scales are not 1 (CFG at w = 1, and DCFG with ``dcfg_form="conditional"`` and
    every weight 1, are guidance none and cost less).

    Example:
        >>> from pipeline.presets import morphomnist_graph
        >>> config = EvaluationConfig(n=1000, steps=20, scale=3.0, cfg_scale=3.0, sweep_n=125, cycle_n=100,
        ...                           per_attribute_n=125, cycle_steps=20, sweep_steps=20,
        ...                           interventions=("thickness", "intensity", "digit"), invariant_weight=1.0)
        >>> estimate_nfe(config, morphomnist_graph())["total"]
        674500
    """
    c = config
    nodes = list(c.interventions)
    dcfg_form = c.dcfg_form or "paper"
    done: dict[tuple, int] = {}
    inverted: dict[tuple, int] = {}
    T = int(num_timesteps)

    def cost(node: str, method: str, scale: float, m: int, steps: int) -> int:
        q = query_for(graph, node, method, scale, c)
        total = 0
        if q["inversion"] is not None:  # CFG++'s own inversion, once per step count (counted where it is first needed)
            ikey = (steps, q["inversion"])
            have_inv = inverted.get(ikey, 0)
            if m > have_inv:
                inverted[ikey] = m
                total += invert_nfe(steps, refine_steps, "cfgpp", "paper", q["interval"], T,
                                    predictor, power) * (m - have_inv)
        key = query_key(node, q, steps)
        have = done.get(key, 0)
        if m <= have:
            return total
        done[key] = m
        return total + decode_nfe(q["guidance"], q["groups"], q["weights"], q["dcfg_form"], steps, q["interval"],
                                  T, power) * (m - have)

    def k(node: str, method: str, scale: float) -> int:
        guidance, groups, weights, a = groups_for(graph, node, method, scale, c.invariant_weight,
                                                  c.descendant_weight, dcfg_form, c.anchor_scales)
        return nfe_per_step(guidance, groups, weights, a)

    def main_scale(node: str, requested: Any) -> float:
        if requested == "pipeline" and pipeline_config is not None:
            return float(pipeline_config.default_scale([node]))
        return 3.0 if isinstance(requested, str) else float(requested)  # 'best' / unresolved: not 1

    def inv(steps: int) -> int:  # one row's inversion
        return ddim_invert_nfe(int(steps), int(refine_steps), predictor)

    out = {"inversion": inv(c.steps) * c.n}
    if c.sweep_steps != c.steps:
        out["inversion"] += inv(c.sweep_steps) * c.sweep_n
    if c.cycle_steps not in (c.steps, c.sweep_steps):
        out["inversion"] += inv(c.cycle_steps) * c.cycle_n
    out["sweep"] = sum(cost(node, "none", 1.0, c.sweep_n, c.sweep_steps)
                       + sum(cost(node, m, s, c.sweep_n, c.sweep_steps) for m in c.sweep_methods for s in c.scales)
                       for node in nodes)
    chosen = {node: {"cfg": main_scale(node, c.cfg_scale), "dcfg": main_scale(node, c.scale)} for node in nodes}
    out["main"] = sum(cost(node, "none", 1.0, c.n, c.steps) + cost(node, "cfg", chosen[node]["cfg"], c.n, c.steps)
                      + cost(node, "dcfg", chosen[node]["dcfg"], c.n, c.steps) for node in nodes)
    out["per_attribute"] = sum(cost(node, "dcfg_per_attribute", chosen[node]["dcfg"], c.per_attribute_n, c.steps)
                               for node in nodes) if c.per_attribute_n else 0
    out["composition"] = c.cycle_n * (c.cycle_steps * c.cycles + inv(c.cycle_steps) * (c.cycles - 1))
    out["reversibility"] = sum(c.cycle_n * (3 * inv(c.steps) + c.steps * (k(node, "none", 1.0)
                                                                          + k(node, "cfg", chosen[node]["cfg"])
                                                                          + k(node, "dcfg", chosen[node]["dcfg"])))
                               for node in nodes) if c.cycle_n else 0
    out = {key: v * pipelines for key, v in out.items()}
    out["total"] = sum(out.values())
    return out
