"""The report folder of an experiment: ``report.md``, ``metrics.json``, ``groups.json`` and ``figures/``.

=========================  ===========================================================================
file                       content
=========================  ===========================================================================
``report.md``              the spec in words, data, model, guidance groups, evaluation headline, effects
``metrics.json``           everything the report shows, JSON
``groups.json``            per intervention: the DAG's affected / invariant groups, DCFG and CFG weights
``evaluation.md``          the full evaluation report (``pipeline.evaluation``)
``spec.toml``              a copy of the spec that was run
``figures/dag.png``        the DAG (:meth:`scm.CausalGraph.draw`)
``figures/groups.png``     the DAG once per intervention, coloured by guidance group
``figures/data.png``       a sample of test images with their attributes
``figures/tradeoff.png``   effectiveness against spurious change over the guidance scales (CFG, DCFG)
``figures/grid.png``       factual | CFG | DCFG | ground truth per intervention
``figures/effect_<k>.png`` image-level effect: counterfactual arms beside the renderer's truth
``figures/training_curve.png``  the image model's loss (trained pipelines)
=========================  ===========================================================================

Every file is written to a temporary file and renamed into place.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.markdown import format_number, markdown_table

__all__ = ["write_report", "format_experiment_report", "plot_groups", "plot_effect_images", "plot_data"]

_COLOURS = {"intervened": "#b2182b", "affected": "#f4a582", "invariant": "#92c5de", "image": "#bababa",
            "other": "#f7f7f7"}


def _fmt(v: Any) -> str:
    """The evaluation report's number format, with small effects (|v| < 0.01) in scientific notation."""
    if isinstance(v, (float, np.floating)) and 0.0 < abs(v) < 0.01:
        return f"{float(v):.2e}"
    return format_number(v)


def _ci(c: Any) -> str:
    return "–" if not c else f"[{_fmt(c[0])}, {_fmt(c[1])}]"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return markdown_table(header, rows, fmt=_fmt)


# ================================================================================ figures
def plot_groups(graph: Any, groups: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """``groups.png``: the DAG once per intervention; intervened node dark red, the rest of the affected group
    salmon, the invariant group blue, with the DCFG weights in each panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    from pipeline.images import atomic_save

    g = graph.to_networkx()
    generations = [sorted(names, key=graph.nodes.index) for names in nx.topological_generations(g)]
    pos = {n: (i - (len(names) - 1) / 2.0, -float(layer))  # layers top-down, each centred
           for layer, names in enumerate(generations) for i, n in enumerate(names)}
    width = max(len(names) for names in generations)
    k = max(1, len(groups))
    fig, axes = plt.subplots(1, k, figsize=(max(3.0, 1.4 * width) * k, 1.2 + 0.9 * len(generations)),
                             squeeze=False)
    for ax, (node, info) in zip(axes[0], groups.items()):
        colours = []
        for n in g:
            role = ("image" if n == graph.image_node else "intervened" if n == node else "affected"
                    if n in info["affected"] else "invariant" if n in info["invariant"] else "other")
            colours.append(_COLOURS[role])
        nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=1500, edgecolors="#444444")
        nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
        # edges between adjacent layers straight; an edge skipping layers bows outwards, away from the
        # nodes between its ends (to the side of the centre line it lies on; on the line, alternately)
        for a, b in g.edges():
            span = pos[a][1] - pos[b][1]
            mid = (pos[a][0] + pos[b][0]) / 2.0
            side = (1.0 if mid < 0 else -1.0) if abs(mid) > 1e-9 else (1.0 if int(-pos[a][1]) % 2 == 0 else -1.0)
            rad = 0.0 if span <= 1 else side * (0.25 + 0.1 * (span - 2))
            nx.draw_networkx_edges(g, pos, edgelist=[(a, b)], ax=ax, arrowsize=11, node_size=1500,
                                   connectionstyle=f"arc3,rad={rad}")
        ax.set_xlim(-width / 2.0 - 0.7, width / 2.0 + 0.7)
        ax.set_ylim(-len(generations) + 0.4, 0.6)
        weights = info["dcfg"]["weights"]
        parts = [f"{'+'.join(grp)} w={w:g}" for grp, w in zip(info["dcfg"]["groups"], weights)]
        ax.set_title(f"do({node})\nDCFG: " + "; ".join(parts), fontsize=8)
        ax.set_axis_off()
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, markeredgecolor="#444444", ms=9, label=r)
               for r, c in _COLOURS.items() if r != "other"]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    atomic_save(lambda p: fig.savefig(p, dpi=100, format="png"), path)
    plt.close(fig)


def _show(ax: Any, img: Any) -> None:
    x = img.detach().float().cpu()
    ax.imshow(x[0].numpy() if x.shape[0] == 1 else (x.permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1),
              cmap="gray", vmin=-1, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_effect_images(estimate: Any, truth: Any, path: str | Path, n: int = 6) -> None:
    """``effect_<k>.png``: per unit, the two counterfactual arms (and the renderer's), with the outcome values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.images import atomic_save

    cols = [("pipeline: baseline", estimate.baseline_images, estimate.baseline_outcome),
            ("pipeline: treated", estimate.images, estimate.treated_outcome)]
    if truth is not None:
        cols += [("truth: baseline", truth.baseline_images, truth.baseline_outcome),
                 ("truth: treated", truth.images, truth.treated_outcome)]
    n = max(1, min(n, estimate.n))
    fig, axes = plt.subplots(n, len(cols), figsize=(1.8 * len(cols), 1.9 * n), squeeze=False)
    for j, (title, imgs, vals) in enumerate(cols):
        for i in range(n):
            ax = axes[i, j]
            _show(ax, imgs[i])
            ax.set_xlabel(f"{estimate.outcome} {_fmt(float(vals[i]))}", fontsize=6)
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"{estimate.describe_arms()}", fontsize=8)
    fig.tight_layout()
    atomic_save(lambda p: fig.savefig(p, dpi=100, format="png"), path)
    plt.close(fig)


def plot_data(images: Any, attributes: Mapping[str, Any], path: str | Path, n: int = 16) -> None:
    """``data.png``: the first ``n`` test images with their attributes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.images import atomic_save

    n = max(1, min(n, len(images)))
    ncol = min(8, n)
    nrow = math.ceil(n / ncol)
    lines = len(attributes)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, (1.6 + 0.13 * lines) * nrow), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        _show(ax, images[k])
        label = "\n".join(f"{name[:9]}={int(v[k]) if not v.is_floating_point() else _fmt(float(v[k]))}"
                          for name, v in attributes.items())
        ax.set_xlabel(label, fontsize=5)
    fig.tight_layout()
    atomic_save(lambda p: fig.savefig(p, dpi=100, format="png"), path)
    plt.close(fig)


# ================================================================================ markdown
def _spec_section(metrics: Mapping[str, Any], graph: Any) -> list[str]:
    render, eqs = metrics["render"], metrics["equations"]
    rows = []
    for n in graph.nodes:
        spec = graph.spec(n)
        rows.append([f"`{n}`", spec.kind + (f" [{spec.low:g}, {spec.high:g}]" if spec.kind == "interval" else "")
                     + (f" ({spec.cardinality} classes)" if spec.kind == "categorical" else ""),
                     ", ".join(graph.parents(n)) or "–",
                     f"`{eqs[n]}`" if n in eqs else ("source digit's label" if render.get(n) == "digit" else
                                                     "rendered" if n == graph.image_node else "observed"),
                     render.get(n, "–")])
    return ["## The DAG", "", "![DAG](figures/dag.png)", "",
            _table(["node", "kind", "parents", "equation", "renders as"], rows), ""]


def _groups_section(groups: Mapping[str, Any]) -> list[str]:
    out = ["## Guidance groups per intervention", "",
           "DCFG amplifies the *affected* group (the intervened node and its descendants among the image's "
           "parents) and anchors the *invariant* rest; CFG uses one global weight for all parents.", "",
           "![groups](figures/groups.png)", ""]
    rows = []
    for g in groups.values():
        dcfg = "; ".join(f"{{{', '.join(grp)}}} w={w:g}" for grp, w in zip(g["dcfg"]["groups"], g["dcfg"]["weights"]))
        rows.append([g["intervention"], ", ".join(g["descendants"]) or "–", ", ".join(g["affected"]) or "–",
                     ", ".join(g["invariant"]) or "–", dcfg, f"w={g['cfg']['weights'][0]:g}"])
    out += [_table(["intervention", "descendants", "affected group", "invariant group", "DCFG groups", "CFG"], rows),
            ""]
    return out


def _effects_section(effects: list[Mapping[str, Any]]) -> list[str]:
    if not effects:
        return []
    out = ["## Causal effects", "",
           "Attribute level: dowhy on the observational rows (identify, estimate, refute), the pipeline's SCM "
           "(interventional Monte Carlo with common noise; its interval is Monte Carlo only unless the effect "
           "sets scm_bootstrap, which refits the SCM on bootstrap resamples) and, for synthetic data, the spec's "
           "equations (the truth, Monte Carlo). Image level: the outcome measured on counterfactual images of "
           "test units under both arms and, for synthetic data, on the same units re-rendered under both arms "
           "(bootstrap intervals over units).", ""]
    for k, e in enumerate(effects):
        out += [f"### Effect {k + 1}: {e['treatment']} {_fmt(e['control'])} -> {_fmt(e['treated'])} on "
                f"{e['outcome']}", ""]
        rows = []
        d = e.get("dowhy", {})
        if "error" in d:
            rows.append([f"dowhy ({e['method']})", d["error"][:120], "–", "–"])
        else:
            note = f"adjusting for {d['adjustment_set']}" if d.get("adjustment_set") is not None else ""
            refs = "; ".join(f"{n}: {'passed' if r['passed'] else 'FAILED'}"
                             for n, r in d.get("refutations", {}).items())
            rows.append([f"dowhy ({e['method']}, {note}{'; ' + refs if refs else ''})", d["value"],
                         _ci(d.get("confidence_interval")), d.get("truth_covered")])
        s = e["scm"]
        rows.append([f"pipeline SCM, interventional ATE (interval: {s.get('interval', 'Monte Carlo only')})",
                     s["value"], _ci(s["confidence_interval"]), s.get("truth_covered")])
        if "truth" in e:
            rows.append(["**ground truth** (the spec's equations)", e["truth"]["value"],
                         _ci(e["truth"]["confidence_interval"]), "–"])
        out += [_table(["estimate", "value", "95% CI", "truth inside CI"], rows), ""]
        if "image" in e:
            im = e["image"]
            rows = [[f"pipeline ({im['settings'].get('guidance')}, {im['settings'].get('steps')} steps)", im["value"],
                     _ci(im["confidence_interval"]), im["n"]]]
            if "image_truth" in e:
                t = e["image_truth"]
                rows.append(["ground truth (renderer)", t["value"], _ci(t["confidence_interval"]), t["n"]])
            out += [f"Image-level outcome `{im['outcome']}` ({im['arms']}):", "",
                    _table(["estimate", "value", "95% CI", "units"], rows), ""]
            comps = [(k2, v) for k2, v in e.items() if k2.startswith("image_vs_")]
            if comps:
                crow = [[c["name"], c["difference"], c.get("covered"), c.get("unit_mae"), c.get("unit_correlation")]
                        for _, c in comps]
                out += [_table(["comparison", "difference", "reference inside CI", "per-unit MAE",
                                "per-unit correlation"], crow), ""]
            if e.get("figure"):
                out += [f"![effect {k + 1}](figures/{e['figure']})", ""]
    return out


def format_experiment_report(metrics: Mapping[str, Any], graph: Any, evaluation_headline: str | None) -> str:
    """The markdown of ``report.md`` from ``metrics`` (as in ``metrics.json``)."""
    x, d, m = metrics["experiment"], metrics["data"], metrics["model"]
    out = [f"# Experiment: {x['name']}" + (" (--quick)" if x["quick"] else ""), ""]
    if x.get("description"):
        out += [x["description"], ""]
    if x.get("command"):
        out += ["Command:", "", f"```\n{x['command']}\n```", ""]
    out += _spec_section(metrics, graph)
    out += ["## Data", ""]
    if d.get("source") == "csv":
        out += [f"CSV `{d['csv']}` with images in `{d['image_dir']}`"
                + (" (written by the spec's prepare step)" if d.get("prepared") else "")
                + f": {d['train_images']} training rows, {d['test_images']} test rows. No ground truth (observed "
                "attributes).", ""]
    else:
        drawn = "independently (each shuffled on its own)" if d["image_parents"] == "independent" else "from the SCM"
        out += [f"Source digits: {d['source']} ({d['train_sources']} train, {d['test_sources']} test sources). "
                f"{d['scm_rows']} observational rows (SCM fit, dowhy); {d['train_images']} training renders with "
                f"image parents drawn {drawn}; "
                f"{d['test_images']} test rows with recorded noise (ground truth). Rows with a value clipped to a "
                f"perturbation's range: {d['clipped_train']} train, {d['clipped_test']} test.", ""]
    out += ["![data](figures/data.png)", "", "## Model", ""]
    if m.get("source") == "trained":
        loss = (f"; loss {_fmt(m['loss_first'])} (first 10%) -> {_fmt(m['loss_last'])} (last 10%)"
                if "loss_first" in m else "")
        out += [f"Trained here: image model of {m['parameters']:,} parameters, {m['train_steps']} steps of batch "
                f"{m['batch_size']}{loss}; SCM mechanisms: {m['scm_mechanisms']} ({m['scm_epochs']} epochs). "
                f"Saved to `{m.get('saved', '')}`.", "", "![training curve](figures/training_curve.png)", ""]
    else:
        out += [f"Loaded from {m['source']} ({m['parameters']:,} image-model parameters).", ""]
    out += _groups_section(metrics["groups"])
    out += ["## Evaluation: CFG vs DCFG", ""]
    ev = metrics["evaluation"]
    if "skipped" in ev:
        out += [f"Skipped: {ev['skipped']}.", ""]
    else:
        s = ev["settings"]
        out += [f"{s['n']} test rows, {s['steps']} DDIM steps, scales {', '.join(f'{v:g}' for v in s['scales'])} "
                f"swept on {s['sweep_n']} rows; full tables in [evaluation.md](evaluation.md).", "",
                (evaluation_headline or "").replace("## ", "### "), "",
                "![trade-off](figures/tradeoff.png)", "", "![grid](figures/grid.png)", ""]
    out += _effects_section(metrics["effects"])
    rows = [[r["name"], f"`{Path(r['folder']).name}`", "reused" if r["cached"] else "computed", r["seconds"]]
            for r in metrics["stages"]]
    out += ["## Stages", "", "Finished stages are reused when their part of the spec is unchanged (`stages/`).", "",
            _table(["stage", "folder", "this run", "seconds (when computed)"], rows), "",
            f"Wall time of this run: {metrics['timing']['wall_s'] / 60:.1f} min "
            f"({metrics['timing']['torch_threads']} torch thread(s)).", ""]
    return "\n".join(out)


def write_report(spec: Any, out: Path, metrics: dict[str, Any], data: Any, eval_folder: Path | None,
                 effects_folder: Path | None) -> None:
    """Write the report folder's files (see the module docstring), each atomically."""
    from pipeline.evaluation.report import format_headline, to_json
    from pipeline.images import atomic_save

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    spec.graph.draw(figures / "dag.png", title=spec.name)
    plot_groups(spec.graph, metrics["groups"], figures / "groups.png")
    from pipeline.experiment.data import as_float_images

    plot_data(as_float_images(data.test_images), data.test_attributes, figures / "data.png")

    def copy(src: Path, dst: Path) -> None:
        if src.is_file():
            atomic_save(lambda p: shutil.copyfile(src, p), dst)

    curve = metrics["model"].get("training_curve")
    if curve:
        copy(Path(curve), figures / "training_curve.png")
    headline = None
    if eval_folder is not None and "skipped" not in metrics["evaluation"]:
        for name in ("tradeoff.png", "grid.png"):
            copy(eval_folder / name, figures / name)
        copy(eval_folder / "evaluation.md", out / "evaluation.md")
        headline = format_headline(metrics["evaluation"])
    if effects_folder is not None:
        for f in effects_folder.glob("effect_*.png"):
            copy(f, figures / f.name)
    if spec.path is not None:
        copy(spec.path, out / "spec.toml")
    clean = to_json(metrics)
    atomic_save(lambda p: Path(p).write_text(json.dumps(clean["groups"], indent=2)), out / "groups.json")
    atomic_save(lambda p: Path(p).write_text(json.dumps(clean, indent=2, allow_nan=False)), out / "metrics.json")
    atomic_save(lambda p: Path(p).write_text(format_experiment_report(clean, spec.graph, headline)),
                out / "report.md")
