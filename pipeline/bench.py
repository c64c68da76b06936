"""``dcfg bench pipeline``: the cost of a whole counterfactual query against its network evaluations.

For every guidance method (``none``, ``cfg``, ``dcfg`` and their variants ``BASE[+apg|+cfgpp][+interval]``) and
step count, a query of ``batch`` images runs at the pipeline's defaults (its solver, inversion refinement, scales
and anchors) while a thin wrapper around ``image_model.eps`` records every network call: its rows and its time.
Then each distinct row count is timed alone (one batched forward, median of ``repeats``), and

    floor = sum over the query's calls of t_fwd(rows of that call)
    ratio = wall / floor

A ratio of 1.0 means the SCM, the guidance arithmetic and the solver's updates cost nothing beside the network.
The image-NFEs of a counterfactual are the rows of all calls divided by the batch.

The stand-alone forward time of a shared machine drifts between the moment it is taken and the moment the query
runs, so the bench also reports ``in_situ_ratio = wall / (the query's own network-call time)``, which measures the
same overhead without that drift. Each query runs ``repeats`` times; the median wall time is reported.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .core import CounterfactualPipeline
from .options import grid_power, inversion_predictor

#: The methods timed by default: the three guidances and each variant on CFG and DCFG.
DEFAULT_METHODS = ("none", "cfg", "dcfg", "cfg+apg", "dcfg+apg", "cfg+cfgpp", "dcfg+cfgpp", "cfg+interval",
                   "dcfg+interval")


class NetworkCalls:
    """Context manager that records the rows and wall time of every ``model.eps`` call while it is active."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rows: list[int] = []
        self.seconds = 0.0

    def __enter__(self) -> "NetworkCalls":
        inner = self.model.eps

        def recorded(x, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(x, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.rows.append(int(x.shape[0]))

        self.model.eps = recorded  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.eps


def _time_forward(pipe: CounterfactualPipeline, rows: int, repeats: int) -> float:
    """Median seconds of one ``eps`` call of ``rows`` rows (after a warm-up)."""
    model = pipe.image_model
    shape = tuple(pipe.graph.spec(pipe.graph.image_node).shape)
    x = torch.randn((rows, *shape))
    attrs = {a.name: (torch.zeros(rows, dtype=torch.int64) if a.kind == "categorical"
                      else torch.full((rows,), float(a.mean))) for a in model.config.attributes}
    t = torch.full((rows,), 500, dtype=torch.int64)
    with torch.no_grad():
        model.eps(x, t, attrs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.eps(x, t, attrs)
            times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])


def _method_kwargs(pipe: CounterfactualPipeline, method: str, interval: Sequence[float] | None) -> dict[str, Any]:
    """Query arguments of a method name (``none`` or ``BASE[+apg|+cfgpp][+interval]``)."""
    if method == "none":
        return {"guidance": "none"}
    from .evaluation.runner import parse_method

    base, variant, with_interval = parse_method(method)
    if base not in ("cfg", "dcfg"):
        raise ValueError(f"bench pipeline times 'none' and BASE[+apg|+cfgpp][+interval] with BASE 'cfg' or 'dcfg'; "
                         f"got {method!r}")
    if with_interval and interval is None:
        raise ValueError(f"method {method!r} needs a guidance interval: give interval=(lo, hi) (--interval LO,HI) "
                         f"or save one in the pipeline's config")
    return {"guidance": base, "variant": variant, "interval": tuple(interval) if with_interval else None}


def _bench_data(pipe: CounterfactualPipeline, batch: int, data: str | None, seed: int) -> tuple[torch.Tensor, dict]:
    """``batch`` test images with their parents: the pipeline's evaluation data where it has some (the bundled
    benchmarks' test digits, a CSV pipeline's test rows, or ``data``), else samples of the pipeline itself."""
    from .evaluation.runner import load_evaluation_data

    try:
        ev = load_evaluation_data(pipe, data, max_sources=batch, max_rows=batch, progress=False)
    except ValueError:
        if data is not None:
            raise
        return pipe.sample(batch, steps=10, seed=seed)
    return ev.images[:batch], {k: v[:batch] for k, v in ev.parents.items()}


def _default_do(pipe: CounterfactualPipeline, parents: dict[str, torch.Tensor]) -> dict[str, Any]:
    """do(first image parent) = another row's factual value (a real change of every row)."""
    first = pipe.graph.image_parents()[0]
    return {first: parents[first].roll(1, 0).clone()}


def bench_pipeline(pipe: CounterfactualPipeline, batch: int = 64, steps: Sequence[int | None] = (None,),
                   methods: Sequence[str] = DEFAULT_METHODS, do: dict | None = None, repeats: int = 3,
                   seed: int = 0, interval: Sequence[float] | None = None, data: str | None = None,
                   out: str | os.PathLike | None = None, verbose: bool = True) -> dict:
    """Time counterfactual queries of every method against the floor of their network calls.

    Args:
        pipe: the pipeline to time, at its own defaults (solver, refinement, per-attribute scales, anchors).
        batch: images per query.
        steps: step counts to time (``None``: the pipeline's ``config.steps``).
        methods: ``none``, ``cfg``, ``dcfg`` and variants ``BASE[+apg|+cfgpp][+interval]``.
        do: the intervention (default: the first image parent set to another row's value).
        repeats: timed runs of each forward and each query (medians are reported).
        seed: seed of the queries.
        interval: guidance interval of the ``+interval`` methods (default: the pipeline's ``config.interval``,
            else ``(0, T / 2)``, guidance only in the less noisy half of the schedule).
        data: data spec of the images (default: the pipeline's own test data, else its samples).
        out: optional JSON file for the results.
        verbose: print a table.

    Returns:
        ``{"rows": [...], "forward_ms": {rows: ms}, "machine": ..., "threads": n, "solver": ..., ...}``; each row
        has ``method, steps, nfe_per_counterfactual, wall_s, ms_per_counterfactual, floor_s, ratio, in_situ_ratio``.

    Example:
        >>> from pipeline.bench import bench_pipeline                         # doctest: +SKIP
        >>> r = bench_pipeline(CounterfactualPipeline.pretrained(), methods=("cfg", "dcfg"))  # doctest: +SKIP
    """
    from .machine import cpu_facts

    steps = [pipe.config.steps if s is None else int(s) for s in steps]
    if interval is None:
        interval = pipe.config.interval or (0.0, pipe.image_model.config.num_train_timesteps / 2)
    kwargs = {m: _method_kwargs(pipe, m, interval) for m in methods}  # every name checked before any work
    x, parents = _bench_data(pipe, batch, data, seed)
    batch = len(x)
    do = _default_do(pipe, parents) if do is None else do
    fwd: dict[int, float] = {}
    rows = []
    for method in methods:
        for s in steps:
            pipe.counterfactual(x[:2], {n: v[:2] for n, v in parents.items()},
                                do={k: (v[:2] if torch.is_tensor(v) and v.dim() else v) for k, v in do.items()},
                                steps=2, seed=seed, **kwargs[method])  # warm-up
            runs = []
            for _ in range(max(1, repeats)):
                with NetworkCalls(pipe.image_model) as calls:
                    t0 = time.perf_counter()
                    pipe.counterfactual(x, parents, do=do, steps=s, seed=seed, **kwargs[method])
                    wall = time.perf_counter() - t0
                runs.append((wall, calls.seconds, calls.rows))
            wall, net, call_rows = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            for r in set(call_rows) - set(fwd):
                fwd[r] = _time_forward(pipe, r, repeats)
            floor = sum(fwd[r] for r in call_rows)
            nfe = sum(call_rows) / batch
            calls_by_rows = {str(r): call_rows.count(r) for r in sorted(set(call_rows))}
            rows.append({"method": method, "steps": s, "batch": batch, "calls": calls_by_rows,
                         "nfe_per_counterfactual": nfe, "wall_s": wall, "ms_per_counterfactual": 1000 * wall / batch,
                         "floor_s": floor, "ratio": wall / floor, "in_network_s": net,
                         "in_situ_ratio": wall / net if net > 0 else float("nan"), "repeats": len(runs)})
    result = {"rows": rows, "forward_ms": {str(r): 1000 * v for r, v in sorted(fwd.items())},
              "solver": pipe.config.solver, "refine_steps": pipe.config.refine_steps,
              "invert_predictor": inversion_predictor(pipe.config, pipe.config.refine_steps),
              "timestep_power": grid_power(pipe.config),
              "interval": list(interval),
              "threads": torch.get_num_threads(), "machine": cpu_facts(),
              **pipe.image_model.inference_settings,
              "do": {k: ("per-row tensor" if torch.is_tensor(v) and v.dim() else "callable" if callable(v) else v)
                     for k, v in do.items()}}
    if verbose:
        print(format_pipeline_table(result))
    if out is not None:
        from dcfg_io.atomic import atomic_write_json

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result)
    return result


def format_pipeline_table(result: dict) -> str:
    """A Markdown table of :func:`bench_pipeline`'s result, with the machine and the floor beside the wall time."""
    m = result["machine"]
    lines = [f"{m['cpu']} (avx512_bf16 {m['avx512_bf16']}, amx_bf16 {m['amx_bf16']}), {result['threads']} torch "
             f"threads, solver {result['solver']}, refine {result['refine_steps']} "
             f"({result['invert_predictor']}), grid power {result['timestep_power']:g}; one forward: "
             + ", ".join(f"{r} rows {ms:.1f} ms" for r, ms in result["forward_ms"].items()),
             "",
             "| method | steps | image-NFEs / cf | ms / cf | floor ms / cf | wall / floor | wall / in-query network |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['steps']} | {r['nfe_per_counterfactual']:.1f} | "
                     f"{r['ms_per_counterfactual']:.1f} | {1000 * r['floor_s'] / r['batch']:.1f} | {r['ratio']:.3f} | "
                     f"{r['in_situ_ratio']:.3f} |")
    return "\n".join(lines)
