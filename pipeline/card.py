"""The model card: the ``README.md`` written into every saved pipeline folder.

It tells a reader of the folder what the pipeline is and how far to trust it, from facts the pipeline carries:

* the causal graph (every node with its kind and support, every edge) and the image shape;
* the data it was trained on (``card["data"]``: the spec and a fingerprint of its attributes);
* how it was trained (``card["command"]``, ``card["steps"]``, ``card["final_loss"]``, ``card["train"]``);
* the oracles' quality: each predictor's held-out score beside a constant prediction, or the Morpho digit
  classifier;
* the evaluation headline, where one was recorded (``card["evaluation"]``, written by ``dcfg evaluate``).

Example:
    >>> from pipeline.core import CounterfactualPipeline  # doctest: +SKIP
    >>> print(render_card(CounterfactualPipeline.pretrained()).splitlines()[0])  # doctest: +SKIP
    # dcfg pipeline: thickness, intensity, digit -> image (1x28x28)
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["render_card"]


def _support(spec: Any) -> str:
    if spec.kind == "interval":
        return f"interval [{spec.low:g}, {spec.high:g}]"
    if spec.kind == "categorical":
        return f"categorical, {spec.cardinality} classes"
    if spec.kind == "image":
        return "image " + "x".join(str(s) for s in spec.shape)
    return spec.kind


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_card(pipe: Any) -> str:
    """The model card of ``pipe`` as Markdown (see the module docstring)."""
    g = pipe.graph
    card = dict(getattr(pipe, "card", {}) or {})
    image = g.image_node
    shape = "x".join(str(s) for s in g.spec(image).shape)
    lines = [f"# dcfg pipeline: {', '.join(g.image_parents())} -> {image} ({shape})", ""]
    if card.get("description"):
        lines += [str(card["description"]), ""]
    lines += ["Load it with:", "", "```python", "from pipeline.core import CounterfactualPipeline",
              "pipe = CounterfactualPipeline.load(\"path/to/this/folder\")", "```", "",
              "## Causal graph", "", "| node | kind | parents |", "|---|---|---|"]
    for n in g.nodes:
        lines.append(f"| {n} | {_support(g.spec(n))} | {', '.join(g.parents(n)) or '-'} |")
    lines.append("")

    data = card.get("data")
    if data:
        lines += ["## Training data", ""]
        for k, v in sorted(data.items()):
            lines.append(f"- {k}: `{json.dumps(v) if isinstance(v, (dict, list)) else _fmt(v)}`")
        lines.append("")

    lines += ["## Training", ""]
    if card.get("command"):
        lines += ["```", str(card["command"]), "```", ""]
    for key, label in (("steps", "image-model steps"), ("batch_size", "batch size"), ("precision", "precision"),
                       ("final_loss", "final loss (mean of the last 100 steps, epsilon MSE)"),
                       ("world_size", "processes"), ("wall_s", "wall time (s)")):
        if key in card:
            lines.append(f"- {label}: {_fmt(card[key])}")
    m = pipe.image_model
    params = sum(p.numel() for p in m.parameters())
    lines += [f"- image model: {params:,} parameters, channels {tuple(m.config.block_out_channels)}",
              f"- guidance defaults: {pipe.config.guidance}, scale {pipe.config.scale:g}, "
              f"{pipe.config.steps} DDIM steps", ""]

    lines += ["## Oracles", ""]
    predictors = getattr(pipe, "predictors", None)
    if predictors is not None:
        lines += ["Anti-causal predictors, one per image parent, scored on a held-out part of the training split:",
                  ""] + [f"- {s}" for s in predictors.summary()] + [""]
    elif getattr(pipe, "classifier", None) is not None:
        lines += [f"The {pipe.oracles or 'morpho'} benchmark's oracles: morphometry and the digit classifier "
                  f"(see docs/benchmark.md).", ""]
    else:
        lines += ["None: this pipeline carries no oracle, so `dcfg evaluate` cannot score it.", ""]

    evaluation = card.get("evaluation")
    if evaluation:
        lines += ["## Evaluation", ""]
        if evaluation.get("command"):
            lines += ["```", str(evaluation["command"]), "```", ""]
        for row in evaluation.get("headline", []):
            lines.append(f"- {row}")
        lines.append("")
    return "\n".join(lines)
