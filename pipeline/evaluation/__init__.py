"""Counterfactual evaluation: the benchmark's metrics and the ``dcfg evaluate`` runner.

* :mod:`~pipeline.evaluation.metrics`: the single definitions (MAE, accuracy, L1, PSNR, Frechet distance,
  change measures, the equal-effectiveness ratio);
* :mod:`~pipeline.evaluation.scores`: effectiveness, spurious change, ground truth, realism, composition and
  reversibility on batches of counterfactuals;
* :mod:`~pipeline.evaluation.oracles`: what a dataset provides to score them (:class:`MorphoOracles`);
* :mod:`~pipeline.evaluation.runner`: :func:`evaluate` / :func:`run_evaluation` (``dcfg evaluate``);
* :mod:`~pipeline.evaluation.report`: ``metrics.json``, ``report.md``, ``tradeoff.png``, ``grid.png``.

Heavy modules are imported lazily.
"""
from importlib import import_module
from typing import Any

from pipeline.evaluation.metrics import (abs_change, accuracy, equal_effectiveness_ratio, excess_change,
                                         flip_rate, frechet_distance, l1, mae, pareto_front, psnr, to_unit)

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
    "EvaluationConfig": "pipeline.evaluation.runner",
    "EvaluationResult": "pipeline.evaluation.runner",
    "evaluate": "pipeline.evaluation.runner",
    "run_evaluation": "pipeline.evaluation.runner",
    "estimate_nfe": "pipeline.evaluation.runner",
    "write_outputs": "pipeline.evaluation.report",
}

__all__ = ["abs_change", "accuracy", "equal_effectiveness_ratio", "excess_change", "flip_rate", "frechet_distance",
           "l1", "mae", "pareto_front", "psnr", "to_unit", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.evaluation' has no attribute {name!r}")
