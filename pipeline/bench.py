"""``dcfg bench pipeline``: the cost of a whole counterfactual query against its network evaluations.

A query with S DDIM steps runs (1 + r) * S network calls of B rows for the inversion (r fixed-point
refinements per step), then S calls of k*B rows for the decoding (k = 1 without guidance, 2 for CFG,
M+1 for DCFG with M groups, or 1 + the groups not at weight 1 with DCFG anchored at the full
condition). The *overhead ratio* divides the query's wall time by the time of those same network
calls measured alone:

    ratio = wall / ((1 + r) * S * t_fwd(B) + S * t_fwd(k * B))

A ratio of 1.0 means the SCM, the guidance arithmetic and the DDIM updates cost nothing beside the
network.

On a shared 2-core machine the stand-alone forward timings drift by 10-50 % between the moment they
are taken and the moment the query runs, so the bench also times every network call *inside* the
query (a thin wrapper around ``image_model.eps``) and reports

    in_situ_ratio = wall / (sum of the query's own network-call times)

which measures the same thing, the cost of everything that is not the network, without that drift.
Each query is run ``repeats`` times and the median wall time is reported.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from .core import CounterfactualPipeline
from .evaluation.engine import nfe_per_step
from .groups import resolve_guidance


class _NetworkTimer:
    """Context manager that sums the wall time spent inside ``model.eps`` while it is active."""

    def __init__(self, model) -> None:
        self.model = model
        self.seconds = 0.0

    def __enter__(self) -> "_NetworkTimer":
        inner = self.model.eps

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        self.model.eps = timed  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        del self.model.eps


def _time_forward(pipe: CounterfactualPipeline, rows: int, repeats: int) -> float:
    model = pipe.image_model
    shape = tuple(pipe.graph.spec(pipe.graph.image_node).shape)
    x = torch.randn((rows, *shape))
    attrs = {}
    for a in model.config.attributes:
        attrs[a.name] = (torch.zeros(rows, dtype=torch.int64) if a.kind == "categorical"
                         else torch.full((rows,), float(a.mean)))
    t = torch.full((rows,), 500, dtype=torch.int64)
    with torch.no_grad():
        model.eps(x, t, attrs)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.eps(x, t, attrs)
            times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])  # the median, like the single timed query


def bench_pipeline(pipe: CounterfactualPipeline, batch: int = 64, steps: Sequence[int] = (10, 20, 50),
                   do: dict | None = None, repeats: int = 3, seed: int = 0,
                   out: str | os.PathLike | None = None, verbose: bool = True) -> dict:
    """Time counterfactual queries (CFG and DCFG) and compare them with their network calls.

    Args:
        pipe: the pipeline to time.
        batch: images per query.
        steps: DDIM step counts to time.
        do: the intervention (default: ``{"<first image parent>": <its mean>}``).
        repeats: forward timings take the median of this many runs.
        seed: seed of the query.
        out: optional JSON file for the results.
        verbose: print a table.

    Returns:
        ``{"forward_ms": {rows: ms}, "rows": [...], "threads": n}``.
    """
    from .datasets import MorphoMNIST

    first = pipe.graph.image_parents()[0]
    if do is None:
        spec = pipe.image_model.config.attribute(first)
        do = {first: float(spec.mean) if spec.kind == "continuous" else 0}
    shape = tuple(pipe.graph.spec(pipe.graph.image_node).shape)
    if shape == (1, 28, 28) and set(pipe.graph.attribute_nodes()) == {"thickness", "intensity", "digit"}:
        test = MorphoMNIST("test", samples_per_digit=1, seed=0, progress=False)
        x = test.images[:batch]
        parents = {k: v[:batch] for k, v in test.attributes.items()}
    else:  # any other pipeline: parents from its SCM, images from the model itself
        x, parents = pipe.sample(batch, steps=10, seed=seed)
    batch = len(x)
    fwd: dict[int, float] = {}
    rows = []
    for guidance in ("cfg", "dcfg"):
        groups, weights = resolve_guidance(pipe.graph, list(do), guidance, 3.0,  # the groups the query will use
                                           invariant_weight=pipe.config.invariant_weight,
                                           descendant_weight=pipe.config.descendant_weight)
        k = nfe_per_step(guidance, groups, weights, pipe.config.dcfg_anchor)
        for r in (batch, k * batch):
            if r not in fwd:
                fwd[r] = _time_forward(pipe, r, repeats)
        for s in steps:
            pipe.counterfactual(x[:2], {n: v[:2] for n, v in parents.items()}, do=do,
                                guidance=guidance, scale=3.0, steps=2, seed=seed)  # warm-up
            walls, in_net = [], []
            for _ in range(max(1, repeats)):
                with _NetworkTimer(pipe.image_model) as timer:
                    t0 = time.perf_counter()
                    pipe.counterfactual(x, parents, do=do, guidance=guidance, scale=3.0, steps=s, seed=seed)
                    walls.append(time.perf_counter() - t0)
                in_net.append(timer.seconds)
            order = sorted(range(len(walls)), key=walls.__getitem__)
            mid = order[len(order) // 2]
            wall, net = walls[mid], in_net[mid]
            inv_calls = (1 + pipe.config.refine_steps) * s
            ideal = inv_calls * fwd[batch] + s * fwd[k * batch]
            rows.append({"guidance": guidance, "groups": len(groups), "steps": s, "batch": batch,
                         "nfe_per_step": 1 + pipe.config.refine_steps + k, "wall_s": wall,
                         "ms_per_counterfactual": 1000 * wall / batch,
                         "network_s": ideal, "overhead_ratio": wall / ideal,
                         "in_network_s": net, "in_situ_ratio": wall / net if net > 0 else float("nan"),
                         "repeats": len(walls)})
    result = {"forward_ms": {str(r): 1000 * v for r, v in sorted(fwd.items())}, "rows": rows,
              "threads": torch.get_num_threads(), "do": {k: (v if not callable(v) else "callable")
                                                          for k, v in do.items()}}
    if verbose:
        print(f"torch threads: {result['threads']}; one forward: " +
              ", ".join(f"{r} rows {ms:.1f} ms" for r, ms in result["forward_ms"].items()))
        print(f"{'guidance':<9}{'steps':>6}{'batch':>6}{'NFE/step':>9}{'wall s':>9}"
              f"{'ms/cf':>8}{'ratio':>7}{'in-situ':>9}")
        for r in rows:
            print(f"{r['guidance']:<9}{r['steps']:>6}{r['batch']:>6}{r['nfe_per_step']:>9}"
                  f"{r['wall_s']:>9.2f}{r['ms_per_counterfactual']:>8.1f}{r['overhead_ratio']:>7.3f}"
                  f"{r['in_situ_ratio']:>9.3f}")
        dc = {r["steps"]: r["wall_s"] for r in rows if r["guidance"] == "dcfg"}
        cf = {r["steps"]: r["wall_s"] for r in rows if r["guidance"] == "cfg"}
        print("DCFG / CFG wall time: " + ", ".join(f"{s} steps {dc[s] / cf[s]:.2f}" for s in steps))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result
