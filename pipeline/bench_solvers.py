"""``dcfg bench solvers``: the quality and cost of each solver x steps x inversion refinement, measured with the
benchmark's own evaluation (:func:`pipeline.evaluation.runner.evaluate`) at the pipeline's DCFG defaults.

For every setting it runs a reduced evaluation (``n`` test rows, composition on ``cycle_n`` of them, no sweep or
per-attribute phase) and records, for DCFG:

* composition L1 (0-255) after 1 and 10 cycles;
* ground-truth L1 (where the benchmark has true counterfactuals), the mean over interventions;
* effectiveness (each intervention's headline metric: MAE or accuracy) and the total spurious change;
* image-NFEs per counterfactual (inversion + DCFG decoding, per row) and wall seconds per counterfactual.

Example:
    >>> from pipeline.bench_solvers import bench_solvers            # doctest: +SKIP
    >>> rows = bench_solvers(pipe, solvers=("ddim", "dpmpp_2m"), steps=(10, 20), refines=(0, 1), n=50)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from diffusion.ddim import check_inversion, check_power
from diffusion.solvers import check_solver, uses_refinement


def _dcfg_headline(metrics: dict[str, Any]) -> dict[str, float]:
    """metric name -> DCFG's value in the headline table."""
    out = {}
    for row in metrics["headline"]:
        v = row["values"].get("main/dcfg")
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            out[row["metric"]] = float(v)
    return out


def _summary(metrics: dict[str, Any], graph: Any) -> dict[str, Any]:
    head = _dcfg_headline(metrics)
    main = metrics["pipelines"]["main"]
    nodes = list(graph.image_parents())
    gt = [v for k, v in head.items() if k.endswith(": gt_l1")]
    spurious = {k.split(":")[0]: v for k, v in head.items() if k.endswith(": total_spurious_change")}
    effect = {}
    for node in nodes:
        for k, v in head.items():  # the intervention's own metric: do(a): a_mae / a_accuracy
            if k in (f"do({node}): {node}_mae", f"do({node}): {node}_accuracy"):
                effect[k] = v
    comp = main.get("composition") or {}
    return {"composition_1": comp.get("cycle_1"), "composition_10": comp.get("cycle_10"),
            "gt_l1_mean": sum(gt) / len(gt) if gt else None, "effectiveness": effect, "total_spurious": spurious}


def _counted_nfe(pipe: Any, ev: Any, steps: int) -> float:
    """Image-NFEs (network rows) of one DCFG counterfactual at the pipeline's defaults, counted on the network
    itself, averaged over do(each image parent) of two test rows."""
    rows = [0]
    handle = pipe.image_model.unet.register_forward_pre_hook(
        lambda module, args: rows.__setitem__(0, rows[0] + int(args[0].shape[0])))
    nodes = list(pipe.graph.image_parents())
    try:
        x = ev.images[:2]
        parents = {k: v[:2] for k, v in ev.parents.items()}
        for node in nodes:
            value = parents[node].flip(0).clone()  # the other row's value: a real change
            pipe.counterfactual(x, parents, do={node: value}, guidance="dcfg", steps=steps, seed=0)
    finally:
        handle.remove()
    return rows[0] / (2 * len(nodes))


def bench_solvers(pipe: Any, *, solvers: Sequence[str] = ("ddim", "dpmpp_2m", "unipc"),
                  steps: Sequence[int] = (10, 15, 20, 30, 50), refines: Sequence[int] = (0, 1), n: int = 100,
                  cycle_n: int = 10, data: str | None = None, precision: str = "auto", seed: int = 0,
                  predictors: Sequence[str] = ("explicit", "extrapolated"), powers: Sequence[float] | None = None,
                  log: Callable[[str], None] | None = None,
                  on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """One row per (solver, refine, predictor, steps) with the figures of the module docstring, in the order the
    arguments give them. A refinement count and inversion predictor are measured only for the solvers whose
    inversion is DDIM's (the others get refine 0 once), and without refinement only the explicit predictor (plain
    DDIM inversion). ``powers`` are DDIM's grid exponents (default: the pipeline's; the diffusers solvers keep
    their uniform grid, so they run once at 1). ``on_row(rows so far)`` is called after each setting (to save partial
    results)."""
    from pipeline.evaluation.runner import EvaluationConfig, evaluate, load_evaluation_data

    for s in solvers:
        check_solver(s)
    for p in predictors:
        check_inversion(1, p)
    powers = [check_power(p) for p in (powers if powers is not None else (pipe.config.timestep_power,))]
    ev = load_evaluation_data(pipe, data, progress=False)
    base = pipe.config
    rows = []
    try:
        inversions = [(int(r), p) for r in refines for p in (predictors if r else ("explicit",))]
        for solver in solvers:
            settings = [(r, p, w) for r, p in (inversions if uses_refinement(solver) else [(0, "explicit")])
                        for w in (powers if solver == "ddim" else [1.0])]
            for refine, predictor, power in settings:
                for s in steps:
                    pipe.config = dataclasses.replace(base, solver=solver, refine_steps=refine,
                                                      invert_predictor=predictor, timestep_power=power)
                    eval_config = EvaluationConfig(n=n, steps=int(s), scales=(1.0,), scale=None,
                                                   cfg_scale=float(base.scale), sweep_n=1, per_attribute_n=0,
                                                   cycle_n=cycle_n, cycles=10, cycle_steps=int(s), grid_n=1,
                                                   seed=seed, precision=precision, compile=False)
                    res = evaluate(pipe, ev.images, ev.parents, ev.oracles, eval_config, rows=ev.rows,
                                   reference_images=ev.images, progress=False)
                    m = res.metrics
                    per_cf = _counted_nfe(pipe, ev, int(s))
                    row = {"solver": solver, "steps": int(s), "refine": refine, "predictor": predictor, "power": power,
                           **_summary(m, pipe.graph),
                           "nfe_per_counterfactual": per_cf, "ms_per_nfe": m["timing"]["ms_per_nfe"],
                           # the run's measured time per image-NFE times this query's count
                           "wall_s_per_counterfactual": per_cf * m["timing"]["ms_per_nfe"] / 1000.0,
                           "evaluation_wall_s": m["timing"]["wall_s"]}
                    rows.append(row)
                    if on_row:
                        on_row(rows)
                    if log:
                        log(f"{solver} steps={s} power={power:g} refine={refine} {predictor}: {per_cf:.0f} NFE, "
                            f"composition "
                            f"{row['composition_1']:.3f} / {row['composition_10']:.3f}, gt_l1 {row['gt_l1_mean']}")
    finally:
        pipe.config = base
    return rows


def format_solver_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`bench_solvers` rows."""
    def f(v: Any, digits: int = 3) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    lines = ["| solver | steps | grid power | refine | predictor | NFE / cf | composition 1 / 10 | GT L1 | "
             "effectiveness | total spurious (mean) | ms / NFE | s / cf |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eff = ", ".join(f"{k.split(': ')[1]} {v:.3g}" for k, v in r["effectiveness"].items())
        sp = list(r["total_spurious"].values())
        lines.append(f"| {r['solver']} | {r['steps']} | {r.get('power', 1.0):g} | {r['refine']} | "
                     f"{r.get('predictor', 'explicit')} | "
                     f"{r['nfe_per_counterfactual']:.0f} | "
                     f"{f(r['composition_1'], 2)} / {f(r['composition_10'], 2)} | {f(r['gt_l1_mean'], 4)} | {eff} | "
                     f"{f(sum(sp) / len(sp) if sp else None)} | {r['ms_per_nfe']:.2f} | "
                     f"{r['wall_s_per_counterfactual']:.3f} |")
    return "\n".join(lines)
