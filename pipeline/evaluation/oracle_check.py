"""``dcfg bench oracles``: how far the oracles that score counterfactuals can be trusted.

On clean renders of a benchmark with exact attributes (colour Morpho-MNIST's test digits, or Morpho-MNIST's), it
measures every attribute with the benchmark's measurement oracles and compares it with the renderer's true value:
MAE (and median) for continuous attributes, accuracy of the digit classifier. Where the pipeline also carries
learned anti-causal predictors (:mod:`pipeline.predictors`), they are scored the same way and against the
measurement: how much a user without a renderer can trust predictor-scored numbers.

Example:
    >>> res = check_oracles(pipe, n=1000)                        # doctest: +SKIP
    >>> res["measurement"]["hue"]["mae"] < 0.01                   # doctest: +SKIP
    True
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.markdown import markdown_table

__all__ = ["check_oracles", "format_oracle_check"]


def _cmp(pred: np.ndarray, truth: np.ndarray, discrete: bool) -> dict[str, float]:
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if discrete:
        return {"accuracy": float(np.mean(pred.astype(np.int64) == truth.astype(np.int64)))}
    err = np.abs(pred - truth)
    err = err[np.isfinite(err)]
    return {"mae": float(err.mean()), "median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
            "sd_of_truth": float(np.std(truth))}


def check_oracles(pipe: Any, *, n: int = 1000, seed: int = 0, n_jobs: int | None = None,
                  predictors: Any = None, out: str | os.PathLike | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Score the benchmark oracles of ``pipe`` (``oracles`` ``"morpho"`` or ``"morpho-colour"``) on ``n`` clean
    test renders, and ``predictors`` (default ``pipe.predictors``) against the truth and the measurement."""
    from pipeline.datasets import MorphoColour, MorphoMNIST
    from pipeline.machine import cpu_facts

    kind = pipe.oracles
    if kind not in ("morpho", "morpho-colour"):
        raise ValueError("dcfg bench oracles checks the benchmark oracles against a renderer's true attributes: it "
                         "needs a Morpho-MNIST or colour Morpho-MNIST pipeline (morphomnist, morpho-colour)")
    cls = MorphoColour if kind == "morpho-colour" else MorphoMNIST
    test = cls("test", samples_per_digit=1, seed=seed, attribute_sampling="scm", n_jobs=n_jobs, progress=progress)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x = test.images[idx]
    truth = {k: v[idx].numpy() for k, v in test.attributes.items()}
    oracles = pipe.make_oracles(test, n_jobs=n_jobs)
    measured = oracles.measure(x)
    graph = pipe.graph
    res: dict[str, Any] = {"benchmark": kind, "n": int(len(idx)), "seed": seed, "measurement": {},
                           "machine": cpu_facts()}
    for k in graph.image_parents():
        res["measurement"][k] = _cmp(measured[k], truth[k], graph.spec(k).is_discrete)
    predictors = predictors if predictors is not None else getattr(pipe, "predictors", None)
    if predictors is not None:
        learned = predictors.measure(x)
        res["predictors"] = {k: {"vs_truth": _cmp(v, truth[k], graph.spec(k).is_discrete),
                                 "vs_measurement": _cmp(v, measured[k], graph.spec(k).is_discrete)}
                             for k, v in learned.items()}
    if out is not None:
        from dcfg_io.atomic import atomic_write_json

        atomic_write_json(Path(out), res)
    return res


def format_oracle_check(res: dict[str, Any]) -> str:
    """The check as a Markdown table."""
    def cell(d: dict[str, float] | None) -> str:
        if d is None:
            return "-"
        return f"accuracy {d['accuracy']:.3f}" if "accuracy" in d else f"MAE {d['mae']:.3g} (median {d['median']:.3g})"

    rows = []
    for k, m in res["measurement"].items():
        p = res.get("predictors", {}).get(k)
        rows.append([k, cell(m), cell(p and p["vs_truth"]), cell(p and p["vs_measurement"])])
    table = markdown_table(["attribute", "measurement vs truth", "predictor vs truth", "predictor vs measurement"],
                           rows)
    return f"{res['benchmark']}: {res['n']} clean test renders\n\n{table}"
