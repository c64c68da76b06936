"""The whole counterfactual query: SCM + diffusion, datasets, evaluation, experiments and the CLI.

Example:
    >>> from pipeline import CounterfactualPipeline  # doctest: +SKIP
    >>> pipe = CounterfactualPipeline.pretrained()  # doctest: +SKIP

Heavy names are imported lazily so that ``dcfg --help`` and the data utilities start fast.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "CounterfactualPipeline": "pipeline.core",
    "CounterfactualResult": "pipeline.core",
    "PipelineConfig": "pipeline.core",
    "GuidanceGroups": "pipeline.groups",
    "derive_groups": "pipeline.groups",
    "train_pipeline": "pipeline.train",
    "train_morphomnist": "pipeline.train",
    "morphomnist_graph": "pipeline.presets",
    "DigitClassifier": "pipeline.classifier",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
