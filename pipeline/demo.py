"""``dcfg demo``: counterfactual queries with a bundled pipeline, as a labelled grid.

For a few test digits it answers do(thickness), do(intensity) and do(digit) (Morpho-MNIST), or do(thickness),
do(hue), do(background), do(digit) and do(slant) (colour Morpho-MNIST), with no guidance, CFG and DCFG; it
measures every counterfactual with the benchmark's oracles (morphometry, colour measurement, the digit
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


def _colour_targets(attrs: dict[str, Tensor], gen: torch.Generator) -> dict[str, Tensor]:
    t, h, b, s, y = (attrs[k] for k in ("thickness", "hue", "background", "slant", "digit"))
    return {"thickness": torch.where(t < 2.75, torch.full_like(t, 4.5), torch.full_like(t, 1.5)),
            "hue": torch.where(h < 0.375, torch.full_like(h, 0.6), torch.full_like(h, 0.15)),
            "background": torch.where(b < 0.175, torch.full_like(b, 0.3), torch.full_like(b, 0.05)),
            "digit": (y + torch.randint(1, 10, y.shape, generator=gen)) % 10,
            "slant": torch.where(s < 0, torch.full_like(s, 0.4), torch.full_like(s, -0.4))}


#: per bundled benchmark: the interventions the demo answers, their targets and the measured attributes shown
_DEMOS = {
    "morpho": (("thickness", "intensity", "digit"), _targets, ("thickness", "intensity", "digit")),
    "morpho-colour": (("thickness", "hue", "background", "digit", "slant"), _colour_targets,
                      ("thickness", "slant", "hue", "background", "digit")),
}


def run_demo(pipe: CounterfactualPipeline, out_dir: str | os.PathLike, n_digits: int = 4,
             steps: int | None = None, scale: float | None = None, cfg_scale: float | None = None,
             seed: int = 0, progress: bool = True) -> list[DemoRow]:
    """Run the demo queries and write ``demo.png`` into ``out_dir``; returns the rows.

    Morpho-MNIST pipelines answer do(thickness), do(intensity), do(digit); colour Morpho-MNIST ones do(thickness),
    do(hue), do(background), do(digit), do(slant). Every image is labelled with its measured attributes.
    """
    from .datasets import MorphoColour, MorphoMNIST

    kind = pipe.oracles if pipe.oracles in _DEMOS else "morpho"
    if kind == "morpho" and sorted(pipe.graph.image_parents()) != ["digit", "intensity", "thickness"]:
        raise ValueError("dcfg demo draws the benchmark pipelines (morphomnist, morpho-colour); for your own "
                         "pipeline use dcfg counterfactual or dcfg evaluate")
    nodes, make_targets, shown = _DEMOS[kind]
    out_dir = Path(out_dir)
    gen = torch.Generator().manual_seed(seed)
    # a class-balanced handful of test digits: only these are rendered
    cls = MorphoColour if kind == "morpho-colour" else MorphoMNIST
    test = cls("test", samples_per_digit=1, seed=seed, attribute_sampling="scm",
               max_sources=max(10, n_digits), progress=False)
    idx = torch.randperm(len(test), generator=gen)[:n_digits]
    x = test.images[idx]
    attrs = {k: v[idx] for k, v in test.attributes.items()}
    targets = make_targets(attrs, gen)
    steps = steps or pipe.config.steps

    # Abduction of the image noise is shared by every query on the same digits.
    x_T = pipe.invert(x, {k: attrs[k] for k in pipe.graph.image_parents()}, steps=steps,
                      progress=progress)
    u = pipe.scm.abduct(attrs, seed=seed)
    columns: dict[str, list[Tensor]] = {}
    scales: dict[str, tuple[float, float]] = {}
    dcfg_used: dict[str, tuple[list[list[str]], list[float]]] = {}
    for node in nodes:
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
                                               descendant_weight=pipe.config.descendant_weight,
                                               anchor_scales=pipe.config.anchor_scales if g == "dcfg" else None)
            if g == "dcfg":
                dcfg_used[node] = (groups, weights)
            imgs.append(pipe.decode(x_T, cond, guidance=g, groups=groups, weights=weights,
                                    steps=steps, progress=progress).cpu())
        columns[node] = imgs

    def measured(batch: Tensor) -> list[dict]:
        if kind == "morpho-colour":
            m = pipe.make_oracles(test).measure(batch)
        else:
            from .morphometry import measure

            m = dict(measure(batch))
            m["digit"] = (pipe.classifier.predict(batch) if pipe.classifier is not None
                          else torch.full((len(batch),), -1)).cpu().numpy()
        return [{k: (int(m[k][j]) if k == "digit" else float(m[k][j])) for k in shown} for j in range(len(batch))]

    fact_m = measured(x)
    col_m = {node: [measured(b) for b in imgs] for node, imgs in columns.items()}
    rows: list[DemoRow] = []
    for node, imgs in columns.items():
        for j in range(len(x)):
            tgt = targets[node][j]
            tgt_s = f"{node}={int(tgt)}" if node == "digit" else f"{node}={float(tgt):.3g}"
            rows.append(DemoRow(node, tgt_s, [x[j]] + [b[j] for b in imgs],
                                [fact_m[j]] + [m[j] for m in col_m[node]], scales[node],
                                *dcfg_used[node]))
    _plot(rows, out_dir / "demo.png")
    return rows


_SHORT = {"thickness": "t", "intensity": "i", "digit": "y", "slant": "s", "hue": "h", "background": "b"}


def _label(m: dict) -> str:
    parts = []
    for k, v in m.items():
        fmt = "d" if k == "digit" else ".0f" if k == "intensity" else ".1f" if k == "thickness" else ".2f"
        parts.append(f"{_SHORT.get(k, k)}={v:{fmt}}")
    if len(parts) > 3:
        return " ".join(parts[:3]) + "\n" + " ".join(parts[3:])
    return " ".join(parts)


def _plot(rows: list[DemoRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .images import atomic_save

    heads = ["factual", "no guidance", "CFG", "DCFG (group weights)"]
    tall = 0.35 if len(rows[0].measured[0]) > 3 else 0.0
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 1.9, len(rows) * (2.3 + tall)))
    axes = np.atleast_2d(axes)
    for r, row in enumerate(rows):
        for c in range(4):
            ax = axes[r, c]
            image = row.images[c].cpu()
            if image.shape[0] == 3:
                ax.imshow(((image.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1))
            else:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            label = _label(row.measured[c])
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
    keys = list(rows[0].measured[0])
    lines = [f"{'intervention':<22}{'column':<13}" + "".join(f"{k:>11}" for k in keys)]
    names = ["factual", "none", "cfg", "dcfg"]
    for row in rows:
        for name, m in zip(names, row.measured):
            cells = "".join(f"{m[k]:>11d}" if k == "digit" else f"{m[k]:>11.1f}" if k == "intensity"
                            else f"{m[k]:>11.2f}" if k == "thickness" else f"{m[k]:>11.3f}" for k in keys)
            lines.append(f"{'do(' + row.target + ')':<22}{name:<13}{cells}")
    return "\n".join(lines)
