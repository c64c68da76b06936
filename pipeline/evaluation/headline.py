"""The summaries of an evaluation: the benchmark's targets, the headline table that holds the main tables
against them, and the sweep's scale recommendations and equal-effectiveness ratios.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.evaluation.metrics import equal_effectiveness_ratio

__all__ = ["BENCHMARK_TARGETS", "COLOUR_TARGETS", "TARGETS", "targets_of", "primary_metric", "recommend_scales",
           "tradeoff_ratios", "headline_rows"]

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


def primary_metric(graph: Any, node: str) -> tuple[str, bool]:
    """The effectiveness metric of ``do(node)`` and whether higher is better."""
    if graph.spec(node).is_discrete:
        return f"{node}_accuracy", True
    return f"{node}_mae", False


def recommend_scales(graph: Any, sweep: Mapping[str, list[dict]], methods: Sequence[str]) -> dict[str, Any]:
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
            key, higher = primary_metric(graph, node)
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


def tradeoff_ratios(graph: Any, sweep: Mapping[str, list[dict]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Equal-effectiveness ratios of every swept method against CFG, per intervention and spurious metric."""
    out = []
    for node, rows in sweep.items():
        eff, higher = primary_metric(graph, node)
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


def _fmt_target(cmp_: str, value: float) -> str:
    return f"{cmp_} {value:g}"


def _met(cmp_: str, target: float, value: float | None) -> bool | None:
    if value is None or not math.isfinite(value):
        return None
    return value <= target + _EPS if cmp_ == "<=" else value >= target - _EPS


def targets_of(pipe: Any) -> dict[tuple[str, str], tuple[str, float]]:
    """The targets that apply to ``pipe``: those of its oracles' benchmark (:data:`TARGETS`)."""
    kind = getattr(pipe, "oracles", None)
    if kind is None and getattr(pipe, "classifier", None) is not None:
        kind = "morpho"
    return TARGETS.get(kind, TARGETS[None])


def headline_rows(graph: Any, results: Mapping[str, Any],
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
        eff, _ = primary_metric(graph, node)
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
