"""Counterfactual evaluation: the benchmark's metrics and the ``dcfg evaluate`` runner."""
from pipeline.evaluation.metrics import accuracy, frechet_distance, l1, mae, psnr, to_unit

__all__ = ["accuracy", "frechet_distance", "l1", "mae", "psnr", "to_unit"]
