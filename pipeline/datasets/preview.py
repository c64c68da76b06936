"""``dcfg data preview``: a grid of rendered Morpho-MNIST (or colour Morpho-MNIST) digits with their measured
attributes, plus histograms of the attribute draws."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcfg_io.atomic import atomic_write

__all__ = ["preview_morpho", "preview_colour", "measure_colour"]


def _check_args(out: str | os.PathLike, n: int, n_hist: int) -> Path:
    if not 1 <= int(n) <= 256:
        raise ValueError(f"n={n} is out of range: the grid shows 1..256 digits")
    if not int(n_hist) >= 10:
        raise ValueError(f"n_hist={n_hist} is too small: use at least 10 draws")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"out={str(out)!r} must end in .png")
    return out


def preview_morpho(out: str | os.PathLike, split: str = "test", n: int = 32, seed: int = 0,
                   attribute_sampling: str = "scm", root: str | os.PathLike | None = None, n_hist: int = 20000,
                   cache_dir: str | os.PathLike | None = None, n_jobs: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Write a PNG: ``n`` rendered digits annotated with measured (requested) attributes, and
    histograms of ``t`` and ``i`` over ``n_hist`` draws of the chosen attribute sampling.

    Args:
        out: PNG path (written atomically).
        split: ``"train"`` or ``"test"`` source digits.
        n: digits in the grid (class-balanced, 1..256).
        seed: seed of the attributes.
        attribute_sampling: ``"scm"`` or ``"independent"``.
        root: optional local MNIST folder (default: the bundled digits).
        n_hist: draws for the histograms.
        cache_dir: render cache (default ``$DCFG_CACHE`` or ``~/.cache/dcfg``).
        n_jobs: rendering processes.
        progress: tqdm bars.

    Returns:
        ``{"out", "requested", "measured"}`` with per-digit attribute arrays.

    Example:
        >>> preview_morpho("/tmp/morpho_preview.png", n=8, progress=False)  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.datasets import morpho_equations as eq
    from pipeline.datasets.morpho import MorphoMNIST
    from pipeline.morphometry import measure

    out = _check_args(out, n, n_hist)
    ds = MorphoMNIST(split, root=root, samples_per_digit=1, seed=seed, attribute_sampling=attribute_sampling,
                     max_sources=int(n), cache_dir=cache_dir, n_jobs=n_jobs, progress=progress)
    m = measure(ds.images, n_jobs=n_jobs)
    g = torch.Generator().manual_seed(seed + 1)
    noise = eq.sample_noise(int(n_hist), g) if attribute_sampling == "scm" else eq.sample_independent(int(n_hist), g)
    t_draw = eq.thickness_from_noise(noise["u_t"]).numpy()
    i_draw = eq.intensity_from(t_draw, noise["e_i"].numpy())

    cols = min(8, len(ds))
    rows = int(np.ceil(len(ds) / cols))
    fig = plt.figure(figsize=(1.45 * cols + 0.4, 1.6 * rows + 3.2))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.9], hspace=0.55, wspace=0.15)
    for k in range(len(ds)):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(ds.images[k, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"y={int(ds.attributes['digit'][k])}  "
                     f"t={m['thickness'][k]:.2f} ({ds.attributes['thickness'][k]:.2f})"
                     f"\ni={m['intensity'][k]:.0f} ({ds.attributes['intensity'][k]:.0f})", fontsize=6.5)
    bottom = grid[rows, :].subgridspec(1, 3, wspace=0.35)
    ax_t, ax_i, ax_s = (fig.add_subplot(bottom[0, j]) for j in range(3))
    ax_t.hist(t_draw, bins=60, color="tab:blue", alpha=0.8, density=True)
    ax_t.set_xlabel("thickness t (px)")
    ax_t.set_title(f"t, {n_hist} draws ({attribute_sampling})", fontsize=8)
    ax_i.hist(i_draw, bins=60, color="tab:orange", alpha=0.8, density=True)
    ax_i.set_xlabel("intensity i (0..255)")
    ax_i.set_title(f"i, {n_hist} draws ({attribute_sampling})", fontsize=8)
    ax_s.scatter(t_draw[:3000], i_draw[:3000], s=2, alpha=0.3, label="draws")
    ax_s.scatter(m["thickness"], m["intensity"], s=10, color="k", label="grid, measured")
    ax_s.set_xlabel("t")
    ax_s.set_ylabel("i")
    ax_s.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"Morpho-MNIST {split} digits: measured (requested) attributes", fontsize=10)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return {"out": str(out), "requested": {k: v.numpy() for k, v in ds.attributes.items()}, "measured": m}


def measure_colour(images: torch.Tensor, n_jobs: int | None = None) -> dict[str, np.ndarray]:
    """The colour benchmark's measurement of every continuous attribute: morphometry of the saturation
    (slant, thickness, intensity), and hue and background read off the colours."""
    from pipeline.morphometry import measure
    from pipeline.morphometry.colour import measure_background, measure_hue, saturation

    x = images.detach().float().cpu()
    m = measure(saturation(x), n_jobs=n_jobs, value_range=(-1.0, 1.0))
    return {"slant": np.asarray(m["slant"]), "thickness": np.asarray(m["thickness"]),
            "intensity": np.asarray(m["intensity"]), "hue": measure_hue(x), "background": measure_background(x)}


def preview_colour(out: str | os.PathLike, split: str = "test", n: int = 32, seed: int = 0,
                   attribute_sampling: str = "scm", root: str | os.PathLike | None = None, n_hist: int = 20000,
                   n_jobs: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Like :func:`preview_morpho` for colour Morpho-MNIST: ``n`` renders labelled with measured (requested)
    attributes, and histograms of hue and background and their scatter over ``n_hist`` draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.datasets import colour_equations as ceq
    from pipeline.datasets.morpho_colour import MorphoColour
    from pipeline.images import atomic_save

    out = _check_args(out, n, n_hist)
    ds = MorphoColour(split, root=root, samples_per_digit=1, seed=seed, attribute_sampling=attribute_sampling,
                      max_sources=int(n), n_jobs=n_jobs, progress=progress)
    m = measure_colour(ds.images, n_jobs=n_jobs)
    g = torch.Generator().manual_seed(seed + 1)
    digits = torch.randint(0, 10, (int(n_hist),), generator=g)
    draws = (ceq.attributes_from_noise(digits, ceq.sample_noise(int(n_hist), g)) if attribute_sampling == "scm"
             else ceq.sample_independent(digits, g))
    a = ds.attributes
    cols = min(8, len(ds))
    rows = int(np.ceil(len(ds) / cols))
    fig = plt.figure(figsize=(1.55 * cols + 0.4, 1.75 * rows + 3.2))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.9], hspace=0.75, wspace=0.15)
    for k in range(len(ds)):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(((ds.images[k].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"y={int(a['digit'][k])} s={m['slant'][k]:.2f} ({a['slant'][k]:.2f})\n"
                     f"t={m['thickness'][k]:.2f} ({a['thickness'][k]:.2f}) i={m['intensity'][k]:.0f}\n"
                     f"h={m['hue'][k]:.3f} ({a['hue'][k]:.3f}) b={m['background'][k]:.3f}", fontsize=5.5)
    bottom = grid[rows, :].subgridspec(1, 3, wspace=0.35)
    ax_h, ax_b, ax_s = (fig.add_subplot(bottom[0, j]) for j in range(3))
    ax_h.hist(draws["hue"].numpy(), bins=60, color="tab:purple", alpha=0.8, density=True)
    ax_h.set_xlabel("hue h")
    ax_b.hist(draws["background"].numpy(), bins=60, color="tab:grey", alpha=0.8, density=True)
    ax_b.set_xlabel("background b")
    ax_s.scatter(draws["hue"][:3000], draws["background"][:3000], s=2, alpha=0.3, label="draws")
    ax_s.scatter(m["hue"], m["background"], s=10, color="k", label="grid, measured")
    ax_s.set_xlabel("h")
    ax_s.set_ylabel("b")
    ax_s.legend(fontsize=6, loc="upper left")
    for ax in (ax_h, ax_b):
        ax.set_title(f"{n_hist} draws ({attribute_sampling})", fontsize=8)
    fig.suptitle(f"colour Morpho-MNIST {split} digits: measured (requested) attributes", fontsize=10)
    atomic_save(lambda p: fig.savefig(p, format="png", dpi=130, bbox_inches="tight"), out)
    plt.close(fig)
    return {"out": str(out), "requested": {k: v.numpy() for k, v in a.items()}, "measured": m}
