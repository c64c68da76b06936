"""Counterfactual evaluation: the benchmark's metrics and the ``dcfg evaluate`` runner.

* :mod:`~pipeline.evaluation.metrics`: the single definitions (MAE, accuracy, L1, PSNR, Frechet distance,
  change measures, the equal-effectiveness ratio);
* :mod:`~pipeline.evaluation.scores`: effectiveness, spurious change, ground truth, realism, composition and
  reversibility on batches of counterfactuals;
* :mod:`~pipeline.evaluation.oracles`: what a dataset provides to score them (:class:`MorphoOracles`);
* :mod:`~pipeline.evaluation.config`: :class:`EvaluationConfig`, the compared methods and their validation;
* :mod:`~pipeline.evaluation.plan`: each method's decoder query and the cost plan (:func:`estimate_nfe`);
* :mod:`~pipeline.evaluation.run`: :func:`evaluate`, the run on given test images;
* :mod:`~pipeline.evaluation.headline`: the benchmark's targets, the headline table and the sweep's summaries;
* :mod:`~pipeline.evaluation.runner`: :func:`run_evaluation` (``dcfg evaluate``: load the test split, evaluate,
  write);
* :mod:`~pipeline.evaluation.report`: ``metrics.json``, ``report.md``, ``tradeoff.png``, ``grid.png``.

Heavy modules are imported lazily.
"""
from importlib import import_module
from typing import Any

from pipeline.evaluation.metrics import (
    abs_change,
    accuracy,
    equal_effectiveness_ratio,
    excess_change,
    flip_rate,
    frechet_distance,
    l1,
    mae,
    pareto_front,
    psnr,
    to_unit,
)

_LAZY = {
    "Oracles": "pipeline.evaluation.oracles",
    "MorphoOracles": "pipeline.evaluation.oracles",
    "QueryEngine": "pipeline.evaluation.engine",
    "effectiveness": "pipeline.evaluation.scores",
    "spurious_change": "pipeline.evaluation.scores",
    "ground_truth_error": "pipeline.evaluation.scores",
    "realism": "pipeline.evaluation.scores",
    "composition": "pipeline.evaluation.scores",
    "reversibility": "pipeline.evaluation.scores",
    "EvaluationConfig": "pipeline.evaluation.config",
    "EvaluationResult": "pipeline.evaluation.run",
    "evaluate": "pipeline.evaluation.run",
    "run_evaluation": "pipeline.evaluation.runner",
    "estimate_nfe": "pipeline.evaluation.plan",
    "write_outputs": "pipeline.evaluation.report",
}

__all__ = ["abs_change", "accuracy", "equal_effectiveness_ratio", "excess_change", "flip_rate", "frechet_distance",
           "l1", "mae", "pareto_front", "psnr", "to_unit", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.evaluation' has no attribute {name!r}")
