"""Running an experiment spec: resumable stages, then the report folder.

Stages, each cached in ``OUT/stages/<name>-<hash>/`` under a hash of the part of the spec it depends on
(and of the stages before it); a ``done.json`` marker is written last, so an interrupted stage is redone
(the image model's training resumes from its last checkpoint) and a finished one is reused:

==============  ===================================================  ========================================
stage           does                                                 depends on
==============  ===================================================  ========================================
``prepare``     writes the example CSV + PNG folder                  ``[data]`` (``prepare = "morpho_csv"``)
``data``        renders (synthetic) or reads (CSV) the data          ``[graph]``, ``[equations]``, ``[render]``,
                                                                     ``[data]``, ``seed``
``scm``         fits the attribute SCM                               data, ``[scm]``
``image_model`` trains the diffusion model (checkpointed)            data, ``[model]``, ``[training]``
``evaluation``  ``pipeline.evaluation.evaluate``: CFG vs DCFG         the model, ``[evaluation]``,
                                                                     ``[guidance]``, ``[[interventions]]``
``effects``     dowhy, the SCM's ATE, image-level effects, truth     the model, ``[[effects]]``
==============  ===================================================  ========================================

``pipeline = "pretrained"`` (or a folder) replaces ``scm`` and ``image_model`` by loading. Each key also holds
the stage's code version (:data:`STAGE_VERSIONS`, ``DATA_VERSION``), bumped when its computation changes.

Example:
    >>> res = run_experiment("examples/morphomnist.toml", "runs/morpho", quick=True)   # doctest: +SKIP
    >>> res.out / "report.md"                                                         # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from pipeline.experiment.data import as_float_images
from pipeline.experiment.spec import ExperimentSpec, load_spec, stable_hash

__all__ = ["run_experiment", "ExperimentResult", "StageRecord", "DataError", "check_experiment_dir", "guidance_groups",
           "default_out_dir"]

_MARKER = "done.json"
#: Bumped when a stage's computation changes for the same spec (part of its hash), so old results are redone.
STAGE_VERSIONS = {"scm": 1, "image_model": 1, "predictors": 1, "evaluation": 2, "effects": 3}


class DataError(ValueError):
    """The experiment's data cannot be read or generated (a run that created its folder removes it)."""


@dataclass(frozen=True)
class StageRecord:
    """One stage of a run: its folder, whether it was reused, and how long it took when computed."""

    name: str
    key: str
    folder: str
    cached: bool
    seconds: float


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced.

    Attributes:
        out: the report folder.
        metrics: the content of ``metrics.json``.
        stages: one :class:`StageRecord` per stage, in order.
        pipeline: the :class:`~pipeline.core.CounterfactualPipeline` that was evaluated.
    """

    out: Path
    metrics: dict[str, Any]
    stages: list[StageRecord] = field(default_factory=list)
    pipeline: Any = None


def default_out_dir(spec: ExperimentSpec) -> Path:
    """``experiments/<name>`` (``-quick`` appended for ``--quick`` runs), relative to the working directory."""
    return Path("experiments") / (spec.name + ("-quick" if spec.quick else ""))


def check_experiment_dir(out: str | os.PathLike) -> Path:
    """Check that ``out`` can hold an experiment: absent, empty, or an earlier run's folder (with ``stages/``).

    Raises:
        ValueError: ``out`` is a file, a folder with other content, ``.``, ``..``, ``/``, a symbolic link, below a
            file, or not writable.
    """
    from dcfg_io.folders import SavedKind, check_save_target
    from pipeline.parsing import check_writable

    out = Path(out)
    if out.exists() and not out.is_symlink():
        if not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; give a folder (it is created)")
        if any(out.iterdir()) and not (out / "stages").is_dir():
            raise ValueError(f"--out {str(out)!r} holds other files (no stages/ folder of an earlier run); give a new "
                             f"folder or an earlier run's folder, which is updated")
    check_writable(out / "report.md", "--out")
    try:  # the checks every saved folder has: not '.', '..', '/', a link, or a path below a file
        check_save_target(out, SavedKind("experiment", "stages/", recognise_folder=lambda p: (p / "stages").is_dir()))
    except ValueError as e:
        raise ValueError(f"--out: {e}") from None
    return out


class _Stages:
    """Runs and caches stages under ``root``: ``<name>-<hash>/`` with ``done.json`` written last."""

    def __init__(self, root: Path, log: Callable[[str], None]) -> None:
        self.root, self.log = root, log
        self.records: list[StageRecord] = []

    def run(self, name: str, key: Mapping[str, Any], compute: Callable[[Path], Any],
            load: Callable[[Path], Any]) -> tuple[Any, str]:
        from pipeline.images import atomic_save

        h = stable_hash(key)
        folder = self.root / f"{name}-{h}"
        marker = folder / _MARKER
        if marker.is_file():
            self.log(f"stage {name}: reusing {folder}")
            done = json.loads(marker.read_text())
            self.records.append(StageRecord(name, h, str(folder), True, float(done.get("seconds", 0.0))))
            return load(folder), h
        self.log(f"stage {name}: computing into {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        compute(folder)
        seconds = time.perf_counter() - t0
        atomic_save(lambda p: Path(p).write_text(json.dumps({"stage": name, "key": key, "seconds": seconds},
                                                            indent=2, default=str)), marker)
        self.records.append(StageRecord(name, h, str(folder), False, seconds))
        return load(folder), h


# ================================================================================ the pipeline
def _image_dataset(images: torch.Tensor, attributes: Mapping[str, torch.Tensor]) -> Any:
    """The image model's training set: items ``(image, {parent: value})``."""

    table = dict(attributes)

    class _Rows(torch.utils.data.Dataset):
        attributes = table  # read by train_predictors without decoding images

        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return as_float_images(images[k]), {n: v[k] for n, v in attributes.items()}

        def __getitems__(self, ks: list[int]) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
            return [self[k] for k in ks]

    return _Rows()


def _train_pipeline(spec: ExperimentSpec, data: Any, data_key: str, stages: _Stages, progress: bool,
                    classifier: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from diffusion import ConditionalUNet, TrainConfig
    from diffusion import train as train_diffusion
    from pipeline.core import CounterfactualPipeline, PipelineConfig
    from pipeline.train import image_model_config_for, plot_training_curve
    from scm import SCM

    graph = spec.graph

    def fit_scm(folder: Path) -> None:
        scm = _new_scm(spec, spec.seed)
        history = scm.fit(data.scm_rows, epochs=spec.scm.epochs, lr=spec.scm.lr, seed=spec.seed, progress=progress)
        scm.save(folder / "scm")
        (folder / "history.json").write_text(json.dumps({"nll_per_epoch": history}))

    scm, scm_key = stages.run("scm", {"data": data_key, "scm": asdict(spec.scm), "seed": spec.seed,
                                      "version": STAGE_VERSIONS["scm"]}, fit_scm,
                              lambda f: SCM.load(f / "scm"))
    sizes = asdict(spec.model)
    sizes.pop("pipeline")
    model_config = image_model_config_for(graph, data.train_attributes, **sizes)
    train_config = TrainConfig(**asdict(spec.training), seed=spec.seed)

    def train_model(folder: Path) -> None:
        train_diffusion(model_config, train_config, _image_dataset(data.train_images, data.train_attributes),
                        folder / "run", resume=True, progress=progress)
        if (folder / "run" / "loss.csv").is_file():
            plot_training_curve(folder / "run" / "loss.csv", folder / "training_curve.png")

    image_key_obj = {"data": data_key, "model": model_config.to_dict(), "training": train_config.to_dict(),
                     "version": STAGE_VERSIONS["image_model"]}
    image_model, image_key = stages.run("image_model", image_key_obj, train_model,
                                        lambda f: ConditionalUNet.from_pretrained(f / "run" / "model").eval())
    image_folder = Path(stages.records[-1].folder)
    losses = _losses(image_folder / "run" / "loss.csv")
    g = spec.guidance
    pcfg = PipelineConfig(guidance="dcfg", scale=float(g.dcfg_scale) if g.dcfg_scale != "best" else 2.0,
                          steps=spec.evaluation.steps, invariant_weight=g.invariant_weight, dcfg_form=g.dcfg_form)
    pipe = CounterfactualPipeline(graph, scm, image_model, pcfg, classifier)
    info = {"source": "trained", "parameters": int(sum(p.numel() for p in image_model.parameters())),
            "train_steps": spec.training.steps, "batch_size": spec.training.batch_size, **losses,
            "scm_mechanisms": spec.scm.mechanisms, "scm_epochs": spec.scm.epochs,
            "training_curve": str(image_folder / "training_curve.png")}
    return pipe, {"scm": scm_key, "image_model": image_key}, info


def _new_scm(spec: ExperimentSpec, seed: int) -> Any:
    """An unfitted SCM as ``[scm]`` says: learnable flows, or the spec's equations."""
    from pipeline.experiment.data import make_mechanism
    from scm import SCM

    mechanisms = None
    if spec.scm.mechanisms == "equations":
        mechanisms = {n: make_mechanism(eq, spec.graph) for n, eq in spec.equations.items()}
    return SCM(spec.graph, mechanisms=mechanisms, hidden=spec.scm.hidden, seed=seed)


def _losses(loss_csv: Path) -> dict[str, Any]:
    if not loss_csv.is_file():
        return {}
    rows = [line.split(",") for line in loss_csv.read_text().strip().splitlines()[1:]]
    if not rows:
        return {}
    loss = np.array([float(r[1]) for r in rows])
    k = max(1, len(loss) // 10)
    return {"loss_first": float(loss[:k].mean()), "loss_last": float(loss[-k:].mean()),
            "train_seconds": float(rows[-1][3]) if len(rows[-1]) > 3 else None}


def _load_pipeline(spec: ExperimentSpec, classifier: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from importlib import resources

    from pipeline.core import CounterfactualPipeline

    if spec.model.pipeline == "pretrained":
        pipe = CounterfactualPipeline.pretrained()
        root = resources.files("pipeline") / "pretrained" / "morphomnist"
        with resources.as_file(root) as p:
            folder = Path(p)
        where = "the bundled pipeline"
    else:
        folder = spec.resolve_path(spec.model.pipeline)
        pipe = CounterfactualPipeline.load(folder)
        where = str(folder)
    stamp = {f.relative_to(folder).as_posix(): [f.stat().st_size, int(f.stat().st_mtime)]
             for f in sorted(folder.rglob("*")) if f.is_file()}
    if pipe.classifier is None and classifier is not None:
        pipe.classifier = classifier
    info = {"source": where, "parameters": int(sum(p.numel() for p in pipe.image_model.parameters()))}
    return pipe, {"loaded": stable_hash(stamp)}, info


# ================================================================================ guidance groups
def guidance_groups(spec: ExperimentSpec, dcfg_scales: Mapping[str, float], cfg_scales: Mapping[str, float]
                    ) -> dict[str, dict[str, Any]]:
    """Per intervention: the DAG's affected / invariant groups, and the DCFG and CFG groups with their weights.

    Example:
        >>> from pipeline.experiment.spec import parse_spec
        >>> spec = parse_spec({"graph": {"nodes": {"a": {"kind": "real"}, "b": {"kind": "real"},
        ...     "c": {"kind": "real"}, "image": {"kind": "image", "shape": [1, 28, 28]}},
        ...     "edges": [["a", "b"], ["a", "image"], ["b", "image"], ["c", "image"]]},
        ...     "data": {"source": "csv", "csv": "x.csv", "image_dir": "."}}, path=None)
        >>> g = guidance_groups(spec, {"a": 3.0, "b": 3.0, "c": 3.0}, {"a": 2.0, "b": 2.0, "c": 2.0})
        >>> g["a"]["affected"], g["a"]["invariant"], g["a"]["dcfg"]["weights"]
        (['a', 'b'], ['c'], [3.0, 1.0])
    """
    from pipeline.groups import derive_groups, resolve_guidance

    graph = spec.graph
    out = {}
    for iv in spec.interventions:
        dag = derive_groups(graph, [iv.node])
        w = float(dcfg_scales.get(iv.node, 2.0))
        groups, weights = resolve_guidance(graph, [iv.node], "dcfg", w, None, None, spec.guidance.invariant_weight)
        cw = float(cfg_scales.get(iv.node, 2.0))
        out[iv.node] = {"intervention": iv.describe(),
                        "descendants": [d for d in graph.descendants(iv.node) if d != graph.image_node],
                        "affected": list(dag.affected), "invariant": list(dag.invariant),
                        "dcfg": {"groups": groups, "weights": [float(x) for x in weights],
                                 **({"dcfg_form": "conditional"} if spec.guidance.dcfg_form == "conditional"
                                    else {})},
                        "cfg": {"groups": [list(graph.image_parents())], "weights": [cw]}}
    return out


# ================================================================================ evaluation
def evaluation_stage(spec: ExperimentSpec, pipe: Any, data: Any, oracles: Any, progress: bool,
                      log: Callable[[str], None]) -> Callable[[Path], None]:
    def compute(folder: Path) -> None:
        from pipeline.evaluation.report import format_report, plot_grid, plot_tradeoff, to_json
        from pipeline.evaluation.runner import EvaluationConfig, evaluate

        if not oracles.complete:
            missing = [p for p in spec.graph.image_parents() if p not in spec.render]
            (folder / "metrics.json").write_text(json.dumps({"skipped": (
                f"no oracle for image parent(s) {missing}")}))
            return
        ev, g = spec.evaluation, spec.guidance
        t = len(data.test_images)
        n = min(ev.n, t)
        config = EvaluationConfig(
            n=n, steps=ev.steps, scales=g.scales, scale=g.dcfg_scale, cfg_scale=g.cfg_scale,
            sweep_n=min(ev.sweep_n or max(2, n // 4), n), sweep_methods=g.swept_methods, interval=g.interval,
            apg_eta=g.apg_eta,
            cycle_n=min(ev.cycle_n if ev.cycle_n is not None else max(2, n // 8), n), cycles=ev.cycles,
            interventions=tuple(iv.node for iv in spec.interventions), invariant_weight=g.invariant_weight,
            grid_n=min(ev.grid_n, n), seed=spec.seed, precision=ev.precision)
        test_images = as_float_images(data.test_images)
        res = evaluate(pipe, test_images, data.test_attributes, oracles, config, rows=torch.arange(t),
                       reference_images=test_images, progress=progress, log=log)
        metrics = to_json(res.metrics)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        (folder / "evaluation.md").write_text(format_report(metrics))
        plot_tradeoff(metrics, folder / "tradeoff.png")
        plot_grid(res.grid, folder / "grid.png")

    return compute


# ================================================================================ effects
def _mc_effect(scm: Any, outcome: str, treatment: str, treated: float, control: float, n: int, seed: int
               ) -> dict[str, Any]:
    """``E[outcome | do(t = treated)] - E[outcome | do(t = control)]`` by Monte Carlo, common noise, normal CI."""
    from pipeline.effects import confidence_interval

    a = scm.interventional_samples({treatment: treated}, n, seed=seed)[outcome].double()
    b = scm.interventional_samples({treatment: control}, n, seed=seed)[outcome].double()
    diff = (a - b).cpu()
    if float(diff.std()) == 0.0:
        return {"value": float(diff.mean()), "confidence_interval": [float(diff.mean())] * 2, "n": n}
    lo, hi = confidence_interval(diff, "normal")
    return {"value": float(diff.mean()), "confidence_interval": [lo, hi], "n": n}


def dowhy_inputs(spec: ExperimentSpec, rows: Mapping[str, torch.Tensor], e: Any
                  ) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any] | None, float]:
    """Graph, data, method params and the outcome's unit for dowhy; ``glm_family = "binomial"`` rescales an
    interval outcome to [0, 1] for a logistic GLM (by its ``affine_sigmoid`` equation's range if it has one,
    else by the node's interval), and the effect back by the range's width."""
    if e.glm_family is None:
        return spec.graph, dict(rows), None, 1.0
    import statsmodels.api as sm

    from scm import CausalGraph

    spec_y, eq = spec.graph.spec(e.outcome), spec.equations.get(e.outcome)
    if eq is not None and eq.form == "affine_sigmoid":   # the equation's own range, e.g. [64, 255] in [0, 255]
        low, high = float(eq.params["low"]), float(eq.params["high"])
    else:
        low, high = float(spec_y.low), float(spec_y.high)
    g = spec.graph.to_dict()
    g["nodes"][e.outcome] = {"kind": "interval", "low": 0.0, "high": 1.0}
    scaled = dict(rows)
    scaled[e.outcome] = (rows[e.outcome].double() - low) / (high - low)
    return CausalGraph.from_dict(g), scaled, {"init_params": {"glm_family": sm.families.Binomial()}}, high - low


def scm_bootstrap(spec: ExperimentSpec, rows: Mapping[str, torch.Tensor], e: Any, value: float) -> dict[str, Any]:
    """The SCM's ATE refitted on ``e.scm_bootstrap`` bootstrap resamples of the rows: ``value +- 1.96 sd``."""
    n = len(next(iter(rows.values())))
    estimates = []
    for b in range(e.scm_bootstrap):
        idx = torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(10007 * (spec.seed + 1) + b))
        scm = _new_scm(spec, spec.seed + 1 + b)
        scm.fit({k: v[idx] for k, v in rows.items()}, epochs=spec.scm.epochs, lr=spec.scm.lr, seed=b,
                progress=False)
        estimates.append(float(scm.average_causal_effect(e.outcome, {e.treatment: e.treated},
                                                         {e.treatment: e.control}, n=min(e.scm_samples, 20000),
                                                         seed=spec.seed)))
    half = 1.96 * float(np.std(estimates, ddof=1))
    return {"confidence_interval": [value - half, value + half], "bootstrap": estimates,
            "interval": f"bootstrap over {e.scm_bootstrap} refits (+- 1.96 sd)"}


def _image_outcome(name: str, classifier: Any) -> Any:
    from pipeline.effects import ClassifierProbability, Morphometric, StrokeArea

    if name == "stroke_area":
        return StrokeArea()
    if name.startswith("classifier:"):
        return ClassifierProbability(classifier, int(name.split(":", 1)[1]))
    return Morphometric(name)


def _effects_stage(spec: ExperimentSpec, pipe: Any, data: Any, classifier: Any, n_jobs: int | None,
                   progress: bool, log: Callable[[str], None]) -> Callable[[Path], None]:
    def compute(folder: Path) -> None:
        from pipeline.effects import compare_effects, effect_from_images, image_effect
        from pipeline.experiment.report import plot_effect_images
        from scm.effects import estimate_effect

        truth_scm = data._truth[0] if data.has_truth else None
        results = []
        for k, e in enumerate(spec.effects):
            log(f"effect {k + 1}/{len(spec.effects)}: {e.treatment} -> {e.outcome}")
            row: dict[str, Any] = {"treatment": e.treatment, "outcome": e.outcome, "control": e.control,
                                   "treated": e.treated, "method": e.method}
            # Attribute level: dowhy on the observational rows.
            try:
                graph, rows, params, unit = dowhy_inputs(spec, data.scm_rows, e)
                est = estimate_effect(graph, rows, e.treatment, e.outcome, method=e.method, refuters=e.refuters,
                                      control_value=e.control, treatment_value=e.treated,
                                      num_simulations=e.num_simulations, seed=spec.seed, method_params=params)
                row["dowhy"] = {"value": unit * est.value,
                                "confidence_interval": [unit * c for c in est.confidence_interval or ()],
                                "adjustment_set": list(est.adjustment_set), "estimand": est.estimand,
                                "glm_family": e.glm_family,
                                "refutations": {r.name: {"new_effect": unit * r.new_effect, "p_value": r.p_value,
                                                         "passed": r.passed} for r in est.refutations.values()}}
            except (ValueError, TypeError) as err:
                row["dowhy"] = {"error": str(err)}
            # Attribute level: the pipeline's SCM, and the spec's equations (the truth).
            row["scm"] = _mc_effect(pipe.scm, e.outcome, e.treatment, e.treated, e.control, e.scm_samples,
                                    spec.seed)
            row["scm"]["interval"] = "Monte Carlo only"
            if e.scm_bootstrap >= 2 and spec.model.pipeline == "train":
                row["scm"].update(scm_bootstrap(spec, data.scm_rows, e, row["scm"]["value"]))
            if truth_scm is not None:
                row["truth"] = _mc_effect(truth_scm, e.outcome, e.treatment, e.treated, e.control,
                                          max(e.scm_samples, 100000), spec.seed + 1)
            for name in ("dowhy", "scm"):
                ref = row.get("truth")
                est_d = row[name]
                if ref is not None and "value" in est_d and est_d.get("confidence_interval"):
                    lo, hi = est_d["confidence_interval"]
                    est_d["truth_covered"] = bool(lo <= ref["value"] <= hi)
            # Image level: counterfactual images of test units, and their ground truth.
            if e.image_outcome is not None:
                units = torch.arange(min(e.units, len(data.test_images)))
                x = as_float_images(data.test_images[units])
                pa = {n: v[units] for n, v in data.test_attributes.items()}
                outcome = _image_outcome(e.image_outcome, classifier)
                do, control = {e.treatment: e.treated}, {e.treatment: e.control}
                img = image_effect(pipe, x, pa, do, outcome, control=control, guidance=e.guidance,
                                   steps=spec.evaluation.steps, seed=spec.seed, progress=progress)
                row["image"] = img.to_dict()
                truth_img = None
                if data.has_truth:
                    t_do, t_ctl = data.true_counterfactual(units, do), data.true_counterfactual(units, control)
                    if t_do is not None and t_ctl is not None:
                        truth_img = effect_from_images(t_do[1], t_ctl[1], outcome, do=do, control=control,
                                                       seed=spec.seed, source="ground truth (renderer)")
                        row["image_truth"] = truth_img.to_dict()
                        row["image_vs_renderer"] = compare_effects(img, truth_img,
                                                                   "image level: pipeline vs renderer").to_dict()
                if spec.render.get(e.outcome) == e.image_outcome:  # the image outcome measures the attribute
                    labels = {"dowhy": "dowhy", "scm": "the pipeline's SCM", "truth": "the equations' truth"}
                    for name, label in labels.items():
                        if "value" in row.get(name, {}):
                            ref = (row[name]["value"], tuple(row[name]["confidence_interval"])) \
                                if row[name].get("confidence_interval") else row[name]["value"]
                            row[f"image_vs_attribute_{name}"] = compare_effects(
                                img, ref, f"image level (pipeline) vs attribute level ({label})").to_dict()
                plot_effect_images(img, truth_img, folder / f"effect_{k + 1}.png", n=min(6, len(units)))
                row["figure"] = f"effect_{k + 1}.png"
            results.append(row)
        (folder / "effects.json").write_text(json.dumps(results, indent=2, default=float))

    return compute


# ================================================================================ the run
def run_experiment(spec: ExperimentSpec | str | os.PathLike, out: str | os.PathLike | None = None, *,
                   quick: bool = False, n_jobs: int | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = None, command: str | None = None) -> ExperimentResult:
    """Run an experiment spec: data, pipeline, evaluation, effects; write the report folder ``out``.

    Args:
        spec: an :class:`~pipeline.experiment.spec.ExperimentSpec` or the path of a TOML spec.
        out: the report folder (default :func:`default_out_dir`); finished stages in ``out/stages`` are reused.
        quick: apply the ``--quick`` budgets (only when ``spec`` is a path).
        n_jobs: processes for rendering and morphometry (``None``: all CPUs).
        progress: tqdm bars.
        log: one-line progress messages (e.g. ``print``).
        command: the command line, recorded in the report.

    Returns:
        An :class:`ExperimentResult`.

    Raises:
        SpecError: an invalid spec (nothing is written).
        ValueError: ``out`` cannot hold an experiment (nothing is written).
        DataError: the data cannot be read or generated (a run that created ``out`` removes it).

    Example:
        >>> res = run_experiment("examples/morphomnist.toml", quick=True)      # doctest: +SKIP
        >>> print((res.out / "report.md").read_text()[:200])                  # doctest: +SKIP
    """
    from pipeline.experiment.data import (
        DATA_VERSION,
        ExperimentData,
        ExperimentOracles,
        build_data,
        bundled_classifier,
        write_morpho_csv,
    )
    from pipeline.experiment.report import write_report

    log = log or (lambda s: None)
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, quick=quick)
    out = check_experiment_dir(out if out is not None else default_out_dir(spec))
    fresh = not out.exists()
    t_start = time.perf_counter()
    stages = _Stages(out / "stages", log)

    # 1. Data (and the example folder it is read from). Unreadable data is a user error like a bad spec:
    #    a run that created ``out`` removes it again.
    try:
        prepared, prepare_key = None, None
        if spec.data.prepare is not None:
            key = {"prepare": spec.data.prepare, "rows": spec.data.prepare_rows, "seed": spec.seed}
            prepared, prepare_key = stages.run(
                "prepare", key, lambda f: write_morpho_csv(f / "folder", spec.data.prepare_rows, seed=spec.seed,
                                                           n_jobs=n_jobs, progress=progress),
                lambda f: f / "folder")
        data_key_obj = {"spec": spec.section_hash("graph", "equations", "render", "data"), "seed": spec.seed,
                        "version": DATA_VERSION, "prepared": prepare_key}
        data, data_key = stages.run("data", data_key_obj,
                                    lambda f: build_data(spec, prepared=prepared, n_jobs=n_jobs, progress=progress,
                                                         log=log).save(f),
                                    ExperimentData.load)
    except (ValueError, FileNotFoundError) as e:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise DataError(" ".join(str(e).split())) from e
    data.attach_truth(spec, n_jobs)

    # 2. The pipeline: trained in stages, or loaded.
    classifier = bundled_classifier() if spec.digit_node() is not None else None
    if spec.model.pipeline == "train":
        pipe, model_keys, model_info = _train_pipeline(spec, data, data_key, stages, progress, classifier)
        pipe.save(out / "pipeline")
        model_info["saved"] = str(out / "pipeline")
    else:
        pipe, model_keys, model_info = _load_pipeline(spec, classifier)

    # 3. Evaluation (CFG vs DCFG over the interventions).
    predictors = None
    if any(p not in spec.render for p in spec.graph.image_parents()):
        # image parents with no render op (CSV data) are read off the images by anti-causal predictors
        from pipeline.predictors import PredictorSet, train_predictors

        missing = [p for p in spec.graph.image_parents() if p not in spec.render]

        def fit_predictors(folder: Path) -> None:
            train_predictors(spec.graph, _image_dataset(data.train_images, data.train_attributes), nodes=missing,
                             seed=spec.seed, progress=progress).save(folder / "predictors")

        predictors, _ = stages.run("predictors", {"data": data_key, "nodes": missing, "seed": spec.seed,
                                                  "version": STAGE_VERSIONS["predictors"]}, fit_predictors,
                                   lambda f: PredictorSet.load(f / "predictors"))
    oracles = ExperimentOracles(spec, data, classifier, n_jobs=n_jobs, predictors=predictors)
    eval_key = {"model": model_keys, "data": data_key, "version": STAGE_VERSIONS["evaluation"],
                **{k: spec.raw.get(k) for k in ("evaluation", "guidance", "interventions")},
                "interventions_resolved": [asdict(iv) for iv in spec.interventions]}
    evaluation, _ = stages.run("evaluation", eval_key, evaluation_stage(spec, pipe, data, oracles, progress, log),
                               lambda f: json.loads((f / "metrics.json").read_text()))
    eval_folder = Path(stages.records[-1].folder)

    # 4. Effects.
    effects: list[dict[str, Any]] = []
    effects_folder = None
    if spec.effects:
        eff_key = {"model": model_keys, "data": data_key, "version": STAGE_VERSIONS["effects"],
                   "effects": [asdict(e) for e in spec.effects],
                   "steps": spec.evaluation.steps, "guidance": spec.raw.get("guidance")}
        effects, _ = stages.run("effects", eff_key,
                                _effects_stage(spec, pipe, data, classifier, n_jobs, progress, log),
                                lambda f: json.loads((f / "effects.json").read_text()))
        effects_folder = Path(stages.records[-1].folder)

    # 5. Guidance groups per intervention, at the scales the evaluation used.
    scales = (evaluation.get("pipelines", {}).get("main", {}).get("scales", {}) if "skipped" not in evaluation
              else {})
    dcfg_scales = {n: v["dcfg"] for n, v in scales.items()} or {
        iv.node: float(pipe.config.default_scale([iv.node])) for iv in spec.interventions}
    cfg_scales = {n: v["cfg"] for n, v in scales.items()} or dcfg_scales
    groups = guidance_groups(spec, dcfg_scales, cfg_scales)

    metrics = {"experiment": {"name": spec.name, "description": spec.description, "quick": spec.quick,
                              "spec": None if spec.path is None else str(spec.path), "command": command,
                              "seed": spec.seed},
               "graph": spec.graph.to_dict(), "equations": {n: e.describe() for n, e in spec.equations.items()},
               "render": dict(spec.render), "data": data.info, "model": model_info, "groups": groups,
               "evaluation": evaluation, "effects": effects,
               "stages": [asdict(r) for r in stages.records],
               "timing": {"wall_s": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()}}
    write_report(spec, out, metrics, data, eval_folder, effects_folder)
    return ExperimentResult(out, metrics, stages.records, pipe)
