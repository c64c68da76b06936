"""``dcfg bench scm``: counterfactual throughput of the SCM beside ``dowhy.gcm`` on the same rows.

Both models are fitted on the same observational Morpho-MNIST attributes (the deepscm equations:
``t = 0.5 + Gamma(10, 5)``, ``i = 64 + 191 * sigmoid(0.5 e + 2 t - 5)``, ``digit`` uniform), then
both answer the same counterfactual query on the same ``n_rows`` held-out rows: the shift
``do(thickness := thickness + 1)``. We time only the query (abduction + action + prediction):

* ours: :meth:`scm.SCM.counterfactual` (learned spline flows, Gumbel-max digit);
* dowhy: ``gcm.counterfactual_samples`` on an ``InvertibleStructuralCausalModel`` whose mechanisms
  ``gcm.auto.assign_causal_mechanisms`` chose (additive-noise regression for intensity).

Each timing is the median of ``repeats`` runs after one warm-up. We also report each model's
median absolute error of the counterfactual intensity against the true equations with the true
noise, so that speed is not bought with accuracy.

Example:
    >>> res = bench_scm(n_rows=200, fit_rows=400, epochs=1, repeats=1, verbose=False)  # doctest: +SKIP
    >>> sorted(res)  # doctest: +SKIP
    ['config', 'dowhy', 'ours', 'ratio']
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from scm.graph import CausalGraph
from scm.mechanisms import _gamma_sample
from scm.model import SCM

MORPHO_ATTRIBUTES: dict[str, Any] = {
    "nodes": {"thickness": {"kind": "positive"},
              "intensity": {"kind": "interval", "low": 0, "high": 255},
              "digit": {"kind": "categorical", "cardinality": 10}},
    "edges": [["thickness", "intensity"]],
}


def _morpho_rows(n: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """``n`` rows of the deepscm attribute equations and their intensity noise ``e``."""
    g = torch.Generator().manual_seed(seed)
    t = 0.5 + _gamma_sample(10.0, n, g).to(torch.float32) / 5.0
    e = torch.randn(n, generator=g)
    i = 64.0 + 191.0 * torch.sigmoid(0.5 * e + 2.0 * t - 5.0)
    y = torch.randint(0, 10, (n,), generator=g)
    return {"thickness": t, "intensity": i, "digit": y}, e


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_scm(n_rows: int = 10000, seed: int = 0, out: str | os.PathLike[str] | None = None, *,
              fit_rows: int = 20000, epochs: int = 30, repeats: int = 5, verbose: bool = True,
              progress: bool = False) -> dict[str, Any]:
    """Time ``SCM.counterfactual`` against ``dowhy.gcm.counterfactual_samples`` on the same rows.

    Args:
        n_rows: rows of the counterfactual query.
        seed: seed of the data, the fit and the discrete abduction.
        out: if given, a JSON file to write the results to (atomically).
        fit_rows: observational rows both models are fitted on.
        epochs: epochs of our SCM's fit.
        repeats: timed runs per method (the median is reported).
        verbose: print the table.
        progress: show the fit's progress bar.

    Returns:
        ``{"config": ..., "ours": {...}, "dowhy": {...}, "ratio": ours rows/s / dowhy rows/s}``.

    Example:
        >>> res = bench_scm(n_rows=200, fit_rows=400, epochs=1, repeats=1, verbose=False)  # doctest: +SKIP
        >>> res["ratio"] > 0  # doctest: +SKIP
        True
    """
    import networkx as nx
    import numpy as np
    import pandas as pd
    from dowhy import gcm

    for name, v in (("n_rows", n_rows), ("fit_rows", fit_rows), ("epochs", epochs), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    train, _ = _morpho_rows(fit_rows, seed)
    test, e_test = _morpho_rows(n_rows, seed + 1)
    shift = 1.0
    t_cf = test["thickness"] + shift
    true_i = 64.0 + 191.0 * torch.sigmoid(0.5 * e_test + 2.0 * t_cf - 5.0)

    # Ours: fit, then time the counterfactual query.
    graph = CausalGraph.from_dict(MORPHO_ATTRIBUTES)
    scm = SCM(graph, seed=seed)
    t0 = time.perf_counter()
    scm.fit(train, epochs=epochs, seed=seed, progress=progress)
    ours_fit = time.perf_counter() - t0
    ours_time, ours_cf = _median_time(
        lambda: scm.counterfactual(test, do={"thickness": lambda t: t + shift}, seed=seed), repeats)
    ours_err = (ours_cf["intensity"] - true_i).abs()

    # dowhy.gcm: auto-assigned invertible mechanisms, fitted on the same rows.
    df_train = pd.DataFrame({k: v.numpy() for k, v in train.items()})
    df_test = pd.DataFrame({k: v.numpy() for k, v in test.items()})
    dag = nx.DiGraph()
    dag.add_nodes_from(["thickness", "intensity", "digit"])
    dag.add_edge("thickness", "intensity")
    causal_model = gcm.InvertibleStructuralCausalModel(dag)
    np.random.seed(seed)
    bars = gcm.config.show_progress_bars
    if not progress:
        gcm.config.disable_progress_bars()
    try:
        t0 = time.perf_counter()
        gcm.auto.assign_causal_mechanisms(causal_model, df_train)
        gcm.fit(causal_model, df_train)
        dowhy_fit = time.perf_counter() - t0
    finally:
        gcm.config.show_progress_bars = bars
    mech = causal_model.causal_mechanism("intensity")
    dowhy_time, dowhy_cf = _median_time(
        lambda: gcm.counterfactual_samples(causal_model, {"thickness": lambda t: t + shift}, observed_data=df_test),
        repeats)
    dowhy_err = np.abs(dowhy_cf["intensity"].to_numpy() - true_i.numpy())

    ours = {"counterfactual_s": ours_time, "rows_per_s": n_rows / ours_time, "fit_s": ours_fit,
            "intensity_median_abs_error": float(ours_err.median()),
            "intensity_mean_abs_error": float(ours_err.mean())}
    theirs = {"counterfactual_s": dowhy_time, "rows_per_s": n_rows / dowhy_time, "fit_s": dowhy_fit,
              "intensity_median_abs_error": float(np.median(dowhy_err)),
              "intensity_mean_abs_error": float(np.mean(dowhy_err)),
              "intensity_mechanism": str(mech)}
    result = {
        "config": {"n_rows": n_rows, "fit_rows": fit_rows, "epochs": epochs, "repeats": repeats, "seed": seed,
                   "query": "do(thickness := thickness + 1)", "torch_threads": torch.get_num_threads(),
                   "torch": torch.__version__, "python": platform.python_version(),
                   "processor": platform.processor() or platform.machine()},
        "ours": ours, "dowhy": theirs, "ratio": ours["rows_per_s"] / theirs["rows_per_s"],
    }
    if verbose:
        print(_table(result))
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)
    return result


def _table(res: dict[str, Any]) -> str:
    c = res["config"]
    rows = [("method", "counterfactual s", "rows/s", "fit s", "cf intensity MedAE", "MAE")]
    for name, key in (("dcfg scm.SCM", "ours"), ("dowhy.gcm", "dowhy")):
        r = res[key]
        rows.append((name, f"{r['counterfactual_s']:.4f}", f"{r['rows_per_s']:,.0f}", f"{r['fit_s']:.1f}",
                     f"{r['intensity_median_abs_error']:.3f}", f"{r['intensity_mean_abs_error']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"SCM counterfactual benchmark: {c['n_rows']:,} rows, {c['query']}, fit on {c['fit_rows']:,} rows, "
             f"median of {c['repeats']} runs, {c['torch_threads']} torch thread(s)"]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    ratio = res["ratio"]
    lines.append(f"speed ratio (ours / dowhy rows/s): {ratio:.2f}  ({'>=' if ratio >= 1 else '<'} 1.0 target)")
    return "\n".join(lines)


__all__ = ["bench_scm", "MORPHO_ATTRIBUTES"]

if __name__ == "__main__":  # pragma: no cover
    bench_scm()
