"""``dcfg demo``: counterfactual queries with the bundled Morpho-MNIST pipeline, as a labelled grid.

For a few test digits it answers do(thickness), do(intensity) and do(digit) with no guidance, CFG and
DCFG, measures every counterfactual (thickness and intensity by morphometry, digit by the bundled
classifier), prints a table and writes ``demo.png``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .core import CounterfactualPipeline
from .groups import resolve_guidance

GUIDANCES = ("none", "cfg", "dcfg")


@dataclass(frozen=True)
class DemoRow:
    """One intervention on one digit: the images of each column and their measurements."""

    intervention: str
    target: str
    images: list[Tensor]      # factual, then one per guidance
    measured: list[dict]      # thickness, intensity, digit per image
    scales: tuple[float, float] = (1.0, 1.0)  # CFG scale, DCFG scale
    dcfg_groups: list[list[str]] = field(default_factory=list)  # DCFG's groups and their weights
    dcfg_weights: list[float] = field(default_factory=list)


def _targets(attrs: dict[str, Tensor], gen: torch.Generator) -> dict[str, Tensor]:
    t, i, y = attrs["thickness"], attrs["intensity"], attrs["digit"]
    t_new = torch.where(t < 2.75, torch.full_like(t, 4.5), torch.full_like(t, 1.5))
    i_new = torch.where(i < 160, torch.full_like(i, 250.0), torch.full_like(i, 90.0))
    y_new = (y + torch.randint(1, 10, y.shape, generator=gen)) % 10
    return {"thickness": t_new, "intensity": i_new, "digit": y_new}


def run_demo(pipe: CounterfactualPipeline, out_dir: str | os.PathLike, n_digits: int = 4,
             steps: int | None = None, scale: float | None = None, cfg_scale: float | None = None,
             seed: int = 0, progress: bool = True) -> list[DemoRow]:
    """Run the demo queries and write ``demo.png`` into ``out_dir``; returns the rows."""
    from .datasets import MorphoMNIST
    from .morphometry import measure

    out_dir = Path(out_dir)
    gen = torch.Generator().manual_seed(seed)
    # a class-balanced handful of test digits: only these are rendered
    test = MorphoMNIST("test", samples_per_digit=1, seed=seed, attribute_sampling="scm",
                       max_sources=max(10, n_digits), progress=False)
    idx = torch.randperm(len(test), generator=gen)[:n_digits]
    x = test.images[idx]
    attrs = {k: v[idx] for k, v in test.attributes.items()}
    targets = _targets(attrs, gen)
    steps = steps or pipe.config.steps

    # Abduction of the image noise is shared by every query on the same digits.
    x_T = pipe.invert(x, {k: attrs[k] for k in pipe.graph.image_parents()}, steps=steps,
                      progress=progress)
    u = pipe.scm.abduct(attrs, seed=seed)
    columns: dict[str, list[Tensor]] = {}
    scales: dict[str, tuple[float, float]] = {}
    dcfg_used: dict[str, tuple[list[list[str]], list[float]]] = {}
    for node in ("thickness", "intensity", "digit"):
        do = {node: targets[node]}
        cf_parents = pipe.scm.predict(u, do=do)
        cond = {k: cf_parents[k] for k in pipe.graph.image_parents()}
        w = pipe.config.default_scale([node]) if scale is None else scale
        w_cfg = w if cfg_scale is None else cfg_scale
        scales[node] = (w_cfg, w)
        imgs = []
        for g in GUIDANCES:
            groups, weights = resolve_guidance(pipe.graph, [node], g, w_cfg if g == "cfg" else w,
                                               invariant_weight=pipe.config.invariant_weight,
                                               descendant_weight=pipe.config.descendant_weight)
            if g == "dcfg":
                dcfg_used[node] = (groups, weights)
            imgs.append(pipe.decode(x_T, cond, guidance=g, groups=groups, weights=weights,
                                    steps=steps, progress=progress))
        columns[node] = imgs

    def measured(batch: Tensor) -> list[dict]:
        m = measure(batch)
        ys = (pipe.classifier.predict(batch) if pipe.classifier is not None
              else torch.full((len(batch),), -1))
        return [{"thickness": float(m["thickness"][j]), "intensity": float(m["intensity"][j]),
                 "digit": int(ys[j])} for j in range(len(batch))]

    fact_m = measured(x)
    col_m = {node: [measured(b) for b in imgs] for node, imgs in columns.items()}
    rows: list[DemoRow] = []
    for node, imgs in columns.items():
        for j in range(len(x)):
            tgt = targets[node][j]
            tgt_s = f"{node}={int(tgt)}" if node == "digit" else f"{node}={float(tgt):.1f}"
            rows.append(DemoRow(node, tgt_s, [x[j]] + [b[j] for b in imgs],
                                [fact_m[j]] + [m[j] for m in col_m[node]], scales[node],
                                *dcfg_used[node]))
    _plot(rows, out_dir / "demo.png")
    return rows


def _plot(rows: list[DemoRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .images import atomic_save

    heads = ["factual", "no guidance", "CFG", "DCFG (group weights)"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 1.9, len(rows) * 2.3))
    axes = np.atleast_2d(axes)
    for r, row in enumerate(rows):
        for c in range(4):
            ax = axes[r, c]
            ax.imshow(row.images[c][0].cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            m = row.measured[c]
            label = f"t={m['thickness']:.1f} i={m['intensity']:.0f} y={m['digit']}"
            if c == 2:
                label += f"\nw={row.scales[0]:g}"
            elif c == 3:
                label += "\n" + " ".join(f"{'+'.join(n[0] for n in g)}:{w:g}"
                                          for g, w in zip(row.dcfg_groups, row.dcfg_weights))
            ax.set_xlabel(label, fontsize=7)
            if r == 0:
                ax.set_title(heads[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"do({row.target})", fontsize=7)
    fig.tight_layout()
    atomic_save(lambda f: fig.savefig(f, dpi=110, format="png"), path)
    plt.close(fig)


def format_table(rows: list[DemoRow]) -> str:
    """A plain-text table of the measured attributes of every image of the demo."""
    lines = [f"{'intervention':<22}{'column':<13}{'thickness':>10}{'intensity':>10}{'digit':>6}"]
    names = ["factual", "none", "cfg", "dcfg"]
    for row in rows:
        for name, m in zip(names, row.measured):
            lines.append(f"{'do(' + row.target + ')':<22}{name:<13}{m['thickness']:>10.2f}"
                         f"{m['intensity']:>10.1f}{m['digit']:>6d}")
    return "\n".join(lines)
