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
                       ("world_size", "processes")):
        if card.get(key) is not None:
            lines.append(f"- {label}: {_fmt(card[key])}")
    if card.get("wall_s"):
        lines.append(f"- wall time: {float(card['wall_s']) / 3600:.2f} h")
    m = pipe.image_model
    params = sum(p.numel() for p in m.parameters())
    lines += [f"- image model: {params:,} parameters, channels {tuple(m.config.block_out_channels)}",
              f"- guidance defaults: {pipe.config.guidance}, scale {pipe.config.scale:g}, "
              f"{pipe.config.steps} {pipe.config.solver.upper()} steps{_grid(pipe.config)}", ""]

    lines += ["## Oracles", ""]
    predictors = getattr(pipe, "predictors", None)
    if predictors is not None:
        lines += ["Anti-causal predictors, one per image parent, scored on a held-out part of the training split:",
                  ""] + [f"- {s}" for s in predictors.summary()] + [""]
    elif getattr(pipe, "classifier", None) is not None:
        which = "colour Morpho-MNIST" if pipe.oracles == "morpho-colour" else "Morpho-MNIST"
        lines += [f"The {which} benchmark's oracles: the renderer's measurement (morphometry) and the digit "
                  f"classifier, checked against the true attributes in docs/benchmark.md.", ""]
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


def headline_lines(metrics: dict[str, Any], pipeline: str = "main") -> list[str]:
    """The headline rows with a target, one line each: the methods' values beside the target."""
    names = {"none": "none", "cfg": "CFG", "dcfg": "DCFG", "ratio": "ratio"}
    out = []
    for row in metrics.get("headline", []):
        if row.get("target") is None:
            continue
        values = [f"{names.get(k.split('/', 1)[1], k.split('/', 1)[1])} {v:.4g}"
                  for k, v in row.get("values", {}).items()
                  if k.startswith(pipeline + "/") and isinstance(v, (int, float)) and not k.endswith("per_attribute")]
        if values:
            out.append(f"{row['metric']}: {', '.join(values)} (target {row['target']})")
    return out


def record_evaluation(pipeline_dir: Any, metrics: dict[str, Any], command: str | None = None) -> None:
    """Write an evaluation's headline into a saved pipeline's card (``config.json`` and ``README.md``), atomically."""
    from pathlib import Path

    from dcfg_io.atomic import atomic_write_json

    from .core import CounterfactualPipeline
    from .images import atomic_save

    path = Path(pipeline_dir)
    cfg = json.loads((path / "config.json").read_text())
    card = dict(cfg.get("card") or {})
    card["evaluation"] = {"command": command or metrics.get("settings", {}).get("command"),
                          "n": metrics.get("settings", {}).get("n"), "headline": headline_lines(metrics)}
    cfg["card"] = card
    atomic_write_json(path / "config.json", cfg)
    pipe = CounterfactualPipeline.load(path)
    atomic_save(lambda p: Path(p).write_text(render_card(pipe)), path / "README.md")


def _grid(config: Any) -> str:
    """The grid and inversion of a config's default solver, where they are not the uniform, explicit ones."""
    parts = []
    if getattr(config, "solver", "ddim") == "ddim" and getattr(config, "timestep_power", 1.0) != 1.0:
        parts.append(f"grid power {config.timestep_power:g}")
    if getattr(config, "refine_steps", 0) and getattr(config, "invert_predictor", "explicit") != "explicit":
        parts.append(f"inversion: {config.refine_steps} refinement(s) from the {config.invert_predictor} guess")
    return f" ({'; '.join(parts)})" if parts else ""
