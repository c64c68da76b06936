"""The outputs of ``dcfg evaluate``: ``metrics.json``, ``report.md``, ``tradeoff.png`` and ``grid.png``.

:func:`write_outputs` writes all four into a temporary folder beside the destination and swaps it into place
crash-safely (:func:`dcfg_io.folders.save_dir`), so a failed or interrupted run leaves nothing partial; the
destination must be new, empty or an earlier evaluation (:func:`check_out_dir`).

Example:
    >>> out = check_out_dir("eval-out")            # doctest: +SKIP
    >>> write_outputs(result, out)                  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dcfg_io.folders import SavedKind
from pipeline.markdown import format_number, markdown_table

__all__ = ["check_out_dir", "write_outputs", "format_report", "format_headline", "plot_tradeoff", "plot_grid",
           "to_json", "OUTPUT_FILES"]

#: The files of an evaluation folder.
OUTPUT_FILES = ("metrics.json", "report.md", "tradeoff.png", "grid.png")
#: an evaluation folder: metrics.json (a JSON object, written last) marks a complete one
EVALUATION_KIND = SavedKind("evaluation", "metrics.json", lambda m: isinstance(m, dict))

_LABELS = {"none": "none", "cfg": "CFG", "dcfg": "DCFG", "dcfg_per_attribute": "DCFG (one group per attribute)",
           "dcfg_paper": "DCFG (paper's equation and grouping)"}
_VARIANT_LABELS = {"apg": "APG", "cfgpp": "CFG++", "interval": "interval"}


def _label(method: str) -> str:
    """A method's name in the report: ``cfg+apg`` -> ``CFG + APG``."""
    base, *variants = str(method).split("+")
    return " + ".join([_LABELS.get(base, base)] + [_VARIANT_LABELS.get(v, v) for v in variants])


# ---------------------------------------------------------------------------------------------- files
def check_out_dir(out: str | os.PathLike) -> Path:
    """Check that ``out`` can receive an evaluation: absent, or an earlier evaluation's folder.

    Raises:
        ValueError: ``out`` is a file, a folder holding anything but an evaluation, or not writable.
    """
    from dcfg_io.folders import check_save_target
    from pipeline.parsing import check_writable

    out = Path(out)
    if out.exists() and not out.is_symlink():
        if not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; give a folder path (it is created)")
        if any(out.iterdir()) and not EVALUATION_KIND.is_saved(out):
            raise ValueError(f"--out {str(out)!r} is a folder with other content (no metrics.json); give a new "
                             f"folder or an earlier evaluation's folder, which is replaced")
    check_writable(out / "metrics.json", "--out")
    try:
        check_save_target(out, EVALUATION_KIND)  # '.', '..', '/', a link, a path below a file
    except ValueError as e:
        raise ValueError(f"--out: {e}") from None
    return out


def to_json(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, tensors to lists, non-finite floats to ``None``."""
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return to_json(obj.detach().cpu().tolist())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def write_outputs(result: Any, out: str | os.PathLike) -> Path:
    """Write ``metrics.json``, ``report.md``, ``tradeoff.png``, ``grid.png`` into ``out``, atomically.

    Everything goes into a temporary folder next to ``out``, renamed into place at the end; an earlier
    evaluation at ``out`` is replaced only once the new one is complete.
    """
    from dcfg_io.folders import save_dir

    out = check_out_dir(out)
    metrics = to_json(result.metrics)
    text = json.dumps(metrics, indent=2, allow_nan=False)

    def write(tmp: Path) -> None:
        (tmp / "report.md").write_text(format_report(metrics))
        plot_tradeoff(metrics, tmp / "tradeoff.png")
        plot_grid(result.grid, tmp / "grid.png")
        (tmp / "metrics.json").write_text(text)  # the marker of a complete evaluation: last

    return save_dir(out, write, EVALUATION_KIND)


# ---------------------------------------------------------------------------------------------- markdown
_SKIP = {"method", "scale", "guidance", "groups", "weights", "n", "steps"}


def _metric_keys(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in _SKIP and k not in keys:
                keys.append(k)
    order = ("_mae", "_accuracy", "_flip_rate", "_abs_change", "_excess_change", "gt_l1", "gt_psnr", "realism_fd")
    return sorted(keys, key=lambda k: next((i for i, s in enumerate(order) if k.endswith(s)), len(order)))


def _column(key: str, pipelines: int) -> str:
    pname, method = key.split("/", 1)
    label = _label(method)
    return label if pipelines == 1 else f"{label} ({pname})"


def _scale(v: Any) -> str:
    return "–" if v is None else f"{float(v):g}"


def _method_label(r: Mapping[str, Any]) -> str:
    return _label(r["method"])


def format_headline(metrics: Mapping[str, Any]) -> str:
    """The headline table (main-table settings, every pipeline and method) and the equal-effectiveness ratios."""
    pipes = metrics["pipelines"]
    out: list[str] = []
    out += ["## Headline (main table settings)", ""]
    for name, res in pipes.items():
        out.append(f"- {name}: main-table scales " + ", ".join(
            f"do({n}) CFG w={_scale(v['cfg'])}, DCFG w={_scale(v['dcfg'])}" for n, v in res["scales"].items()))
    for name, res in pipes.items():
        rec = res.get("recommended") or {}
        for m in ("dcfg", "cfg"):
            if m in rec and rec[m]["overall"] is not None:
                out.append(f"- {name}: sweep-recommended {_label(m)} scale {_scale(rec[m]['overall'])} overall; per "
                           "intervention " + ", ".join(f"do({n}) {_scale(v)}"
                                                       for n, v in rec[m]["per_intervention"].items()))
    if any((res.get("recommended") or {}).get("rule") for res in pipes.values()):
        out.append(f"- recommendation rule: {next(iter(pipes.values()))['recommended']['rule']}.")
    out.append("")
    cols: list[str] = []
    table = [r for r in metrics["headline"] if not any(k.endswith("/ratio") for k in r["values"])]
    for r in table:
        for k in r["values"]:
            if k not in cols:
                cols.append(k)
    rows = []
    for r in table:
        met = r.get("met") or {}
        # the verdict of DCFG (the method under test) where it has a value, else of what was measured
        shown = {k: v for k, v in met.items() if k.endswith("/dcfg")} or met
        verdict = ", ".join((f"{_column(k, len(pipes))}: " if len(shown) > 1 else "") + format_number(v)
                            for k, v in shown.items())
        rows.append([r["metric"], r.get("target") or ""] + [r["values"].get(c) for c in cols] + [verdict])
    header = ["metric", "target"] + [_column(c, len(pipes)) for c in cols] + ["target met (DCFG)"]
    out += [markdown_table(header, rows), ""]

    # Trade-off ratios.
    out += ["## Spurious change at equal effectiveness", "",
            "For each intervention and spurious metric, each method's sweep points (effectiveness, spurious "
            "change), reduced to their Pareto front and interpolated linearly in effectiveness, are averaged over "
            "101 evenly spaced effectiveness values of the range both fronts cover; the ratio is the method's mean "
            "over CFG's (below 1: less spurious change than CFG at the same effectiveness; `–` when the ranges do "
            "not overlap or CFG has no spurious change there). Both curves start at the same unguided point "
            "(weight 1), so that mean includes a stretch where the ratio is near 1 by construction. The ratio at "
            "CFG's best compares the two fronts at one effectiveness, the best CFG reaches in the sweep (`–` where "
            "the method's front does not reach it).", ""]
    rows = []
    for name, res in pipes.items():
        for tr in res["tradeoff"]:
            rng = tr.get("range")
            note = (f"{tr['effectiveness']} in [{format_number(rng[0])}, {format_number(rng[1])}]" if rng
                    else (tr.get("reason") or ""))
            near = tr.get("nearest")
            if near and near.get("ratio") is not None:
                who = _label(tr["method"]) if near["method_more_effective"] else "CFG"
                note += (f"; at the nearest ends (where {who} is more effective) the ratio is "
                         f"{format_number(near['ratio'])}, not an equal-effectiveness figure")
            best = tr.get("at_baseline_best") or {}
            at_best = (f"{format_number(best['ratio'])} ({format_number(best['method'])} vs "
                       f"{format_number(best['baseline'])} at {format_number(best['effectiveness'])})"
                       if best.get("ratio") is not None else "–")
            rows.append([name, f"do({tr['intervention']})", tr["spurious"], _label(tr["method"]),
                         tr["ratio"], at_best, note])
    out += [markdown_table(["pipeline", "intervention", "spurious metric", "method", "ratio vs CFG (mean)",
                            "ratio at CFG's best (method vs CFG at effectiveness)", "common range"], rows), ""]

    return "\n".join(out).rstrip() + "\n"


def format_report(metrics: Mapping[str, Any]) -> str:
    """The markdown report of an evaluation's ``metrics`` (as written to ``metrics.json``)."""
    s = metrics["settings"]
    t = metrics["timing"]
    pipes = metrics["pipelines"]
    out = ["# Counterfactual evaluation: CFG vs DCFG", ""]
    if s.get("command"):
        out += ["Command:", "", f"```\n{s['command']}\n```", ""]
    out += [f"{s['n']} test rows, {s['steps']} DDIM steps; sweep over scales "
            f"{', '.join(_scale(x) for x in s['scales'])} "
            f"on {s['sweep_n']} rows ({s['sweep_steps']} steps); composition ({s['cycles']} cycles, "
            f"{s['cycle_steps']} steps) and reversibility on {s['cycle_n']} rows; DCFG with one group per attribute "
            f"on {s['per_attribute_n']} rows. Seed {s['seed']}.", "",
            f"Subsets: {s['subset_rule']}.", "",
            f"Wall time {t['wall_s'] / 60:.1f} min for {t['nfe']:,} image-NFEs ({t['ms_per_nfe']:.2f} ms per "
            f"image-NFE in the diffusion phases, oracle measurement excluded; {t['torch_threads']} torch "
            f"thread(s)).", ""]

    out += [format_headline(metrics), ""]

    # Per intervention.
    for node in s["interventions"]:
        out += [f"## do({node})", ""]
        for name, res in pipes.items():
            main = res["main"][node]
            keys = _metric_keys(main)
            rev = {(r["method"]): r["l1"] for r in (res["reversibility"] or []) if r["intervention"] == node}
            rows = [[_method_label(r), _scale(r["scale"]), r["n"], r["steps"]] + [r.get(k) for k in keys]
                    + [rev.get(r["method"])] for r in main]
            out += [f"Main table ({name}):", "",
                    markdown_table(["guidance", "scale", "n", "steps"] + keys + ["reversibility L1"], rows), ""]
            sweep = res["sweep"][node]
            keys = _metric_keys(sweep)
            rows = [[_method_label(r), _scale(r["scale"])] + [r.get(k) for k in keys] for r in sweep]
            out += [f"Sweep ({name}, {sweep[0]['n']} rows, {sweep[0]['steps']} steps):", "",
                    markdown_table(["guidance", "scale"] + keys, rows), ""]

    # do(random parent).
    for name, res in pipes.items():
        rp = res.get("random_parent")
        if not rp:
            continue
        keys = _metric_keys(rp["methods"])
        out += [f"## do(random parent) ({name})", "",
                "Each row intervenes on one parent drawn uniformly (" + ", ".join(
                    f"{k}: {v} rows" for k, v in rp["counts"].items()) + "), with that row's single-parent "
                "target; metrics are over the rows of each parent.", "",
                markdown_table(["guidance"] + keys,
                               [[_method_label(r)] + [r.get(k) for k in keys] for r in rp["methods"]]),
                ""]

    # Composition, realism floor.
    out += ["## Composition (guidance none, under the factual parents)", ""]
    for name, res in pipes.items():
        comp = res.get("composition")
        if comp:
            out += [f"{name}: {comp['n']} rows, {comp['steps']} steps; L1 (0-255) after each cycle: "
                    + ", ".join(f"{k + 1}: {format_number(v)}" for k, v in enumerate(comp["l1_per_cycle"])), ""]
    f = metrics["factual"]
    out += ["## Oracle floor (factual test images)", "",
            markdown_table(["quantity", "value"], [[k, v] for k, v in f.items()]), "",
            "`*_measurement_mae`: oracle measurement of the factual image against its label; `digit_accuracy`: "
            "the classifier on the factual images; `realism_fd`: the factual rows against the whole test set.", ""]
    out += ["## Definitions", "",
            "- effectiveness: `<a>_mae` = MAE between the target and the measured attribute (morphometry); for "
            "do(thickness) the intensity target is the SCM's counterfactual i'. `digit_accuracy` = classifier "
            "accuracy against the target digit.",
            "- spurious change: `digit_flip_rate` = classifier prediction differs from the (unchanged) digit; "
            "`<a>_abs_change` = mean |m(x') - m(x)| of an attribute the intervention must not change; "
            "`<a>_excess_change` = mean |(m(x') - m(x)) - (a' - a)|, the change beyond the SCM's.",
            "- ground truth: `gt_l1` (on [0, 1]) and `gt_psnr` (dB) against the re-rendered true counterfactual.",
            "- composition / reversibility: L1 on 0..255 after invert-decode cycles / after do(a') then do(a) back.",
            "- realism: `realism_fd` = Frechet distance to the real test images in the classifier's penultimate "
            "features.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- figures
def plot_tradeoff(metrics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``tradeoff.png``: effectiveness (x) against spurious change (y), one curve per guidance method.

    One panel per (intervention, spurious metric); points are labelled with their scale; guidance
    ``none`` is a star; an ablation pipeline's curves are dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.images import atomic_save

    pipes = metrics["pipelines"]
    first = next(iter(pipes.values()))
    panels = []
    for node, rows in first["sweep"].items():
        spur = [k for k in rows[0] if k.endswith(("_flip_rate", "_abs_change", "_excess_change"))]
        eff = next(k for k in rows[0] if k.startswith(f"{node}_") and k.endswith(("_mae", "_accuracy")))
        panels += [(node, eff, k) for k in spur]
    ncols = max(1, max((sum(1 for p in panels if p[0] == n) for n in first["sweep"]), default=1))
    nrows = max(1, len(first["sweep"]))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    colors = {"cfg": "tab:red", "dcfg": "tab:blue", "dcfg_per_attribute": "tab:green", "dcfg_paper": "tab:purple"}
    variant_style = {"apg": "-.", "cfgpp": ":", "interval": (0, (5, 1))}
    variant_marker = {"apg": "^", "cfgpp": "s", "interval": "d"}
    for r, node in enumerate(first["sweep"]):
        mine = [p for p in panels if p[0] == node]
        for cidx in range(ncols):
            ax = axes[r, cidx]
            if cidx >= len(mine):
                ax.axis("off")
                continue
            _, eff, spur = mine[cidx]
            for pname, res in pipes.items():
                style = "-" if pname == "main" else "--"
                rows = res["sweep"][node]
                for method in dict.fromkeys(x["method"] for x in rows):
                    pts = sorted((x for x in rows if x["method"] == method), key=lambda x: x["scale"] or 0)
                    xs, ys = [p[eff] for p in pts], [p[spur] for p in pts]
                    if method == "none":
                        ax.plot(xs, ys, "*", color="k", ms=10, label=f"none ({pname})" if len(pipes) > 1 else "none")
                        continue
                    base, *variants = method.split("+")  # a variant: its base's colour, its own line and marker
                    ax.plot(xs, ys, linestyle=style if not variants else variant_style.get(variants[0], ":"),
                            marker="o" if not variants else variant_marker.get(variants[0], "x"), ms=4,
                            color=colors.get(base, "tab:gray"),
                            label=_label(method) + (f" ({pname})" if len(pipes) > 1 else ""))
                    for p in pts:
                        ax.annotate(_scale(p["scale"]), (p[eff], p[spur]), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points")
            ratio = next((t for t in first["tradeoff"] if t["intervention"] == node and t["spurious"] == spur
                          and t["method"] == "dcfg"), None)
            title = f"do({node})"
            if ratio and ratio["ratio"] is not None:
                title += f": DCFG/CFG = {ratio['ratio']:.2f}"
                best = ratio.get("at_baseline_best") or {}
                if best.get("ratio") is not None:
                    title += f" (at CFG's best: {best['ratio']:.2f})"
            ax.set_title(title, fontsize=9)
            better = "higher is better" if eff.endswith("_accuracy") else "lower is better"
            ax.set_xlabel(f"{eff} ({better})", fontsize=8)
            ax.set_ylabel(spur, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_save(lambda f: fig.savefig(f, dpi=110, format="png"), path)
    plt.close(fig)


def plot_grid(grid: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> None:
    """``grid.png``: factual | CFG | DCFG (| ground truth) for a few digits per intervention, measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.images import atomic_save

    blocks = [(node, g) for node, g in grid.items() if len(g["images"][0])]
    nrows = sum(len(g["images"][0]) for _, g in blocks)
    ncols = max((len(g["columns"]) for _, g in blocks), default=1)
    fig, axes = plt.subplots(max(nrows, 1), ncols, figsize=(ncols * 1.9, max(nrows, 1) * 2.1), squeeze=False)
    if not blocks:
        axes[0, 0].text(0.5, 0.5, "no rows", ha="center", va="center")
        axes[0, 0].axis("off")
    r = 0
    for node, g in blocks:
        for j in range(len(g["images"][0])):
            target = g["target"][j]
            tgt = f"{int(target)}" if node == "digit" or float(target).is_integer() else f"{float(target):.1f}"
            for c in range(ncols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(g["images"]):
                    ax.axis("off")
                    continue
                img = g["images"][c][j]
                ax.imshow(img[0].detach().cpu().numpy() if img.shape[0] == 1 else
                          img.permute(1, 2, 0).detach().cpu().numpy() * 0.5 + 0.5, cmap="gray", vmin=-1, vmax=1)
                m = g["measured"][c]
                ax.set_xlabel(" ".join(f"{k[0]}={_short(m[k][j])}" for k in m), fontsize=6)
                if r == 0 or j == 0:
                    ax.set_title(g["columns"][c], fontsize=7)
                if c == 0:
                    ax.set_ylabel(f"do({node}={tgt})", fontsize=7)
            r += 1
    fig.tight_layout()
    atomic_save(lambda f: fig.savefig(f, dpi=100, format="png"), path)
    plt.close(fig)


def _short(v: Any) -> str:
    v = float(v)
    return f"{int(v)}" if v.is_integer() else f"{v:.1f}"
