"""A tiny untrained pipeline shared by the hardening tests (test_faults, test_untrusted, test_cli_errors).

    t (positive) --> i (interval [0, 255]) --+
         \\---------------------------------+--> image (1x8x8)
    d (categorical, 3 classes) -------------+

Untrained weights are enough: these tests check loading, validation and file handling, not image quality.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from tiny_unet import tiny_unet_config

from diffusion import AttributeSpec, ConditionalUNet
from pipeline.classifier import ClassifierConfig, DigitClassifier
from pipeline.core import CounterfactualPipeline, PipelineConfig
from scm import SCM, CausalGraph

GRAPH = {
    "nodes": {"t": {"kind": "positive"}, "i": {"kind": "interval", "low": 0, "high": 255},
              "d": {"kind": "categorical", "cardinality": 3}, "image": {"kind": "image", "shape": [1, 8, 8]}},
    "edges": [["t", "i"], ["t", "image"], ["i", "image"], ["d", "image"]],
}


def small_pipeline(classifier: bool = True) -> CounterfactualPipeline:
    """The toy pipeline, with seeded weights (and a 3-class digit classifier of 28x28 inputs)."""
    graph = CausalGraph.from_dict(GRAPH)
    cfg = tiny_unet_config(AttributeSpec("t", "continuous", mean=1.0, std=0.5),
                           AttributeSpec("i", "continuous", mean=150.0, std=50.0),
                           AttributeSpec("d", "categorical", cardinality=3), block_out_channels=(8, 8))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConditionalUNet(cfg).eval()
        clf = DigitClassifier(ClassifierConfig(num_classes=3, width=4, feature_dim=8)).eval() if classifier else None
    scm = SCM(graph, hidden=(4,), count_bins=2, seed=0)
    return CounterfactualPipeline(graph, scm, model, PipelineConfig(steps=2), classifier=clf)


def query_batch(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` images in [-1, 1] and factual parents of the toy graph."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    t = 0.5 + 2 * torch.rand(n, generator=g)
    return x, {"t": t, "i": 40 + 60 * t, "d": torch.randint(0, 3, (n,), generator=g)}


def set_json_field(path: Path, keys: Sequence[str], value: Any) -> None:
    """Rewrite the JSON file ``path`` with ``value`` at the nested key path ``keys`` (e.g. a saved config's
    ``("image_model", "layers_per_block")``)."""
    cfg = json.loads(path.read_text())
    node = cfg
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    path.write_text(json.dumps(cfg))
