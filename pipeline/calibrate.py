"""Calibrated DCFG weights: per attribute, the weight that makes do(a) land on its target, and the weight
that holds it at its factual value while other attributes are intervened on.

An attribute's right guidance weight is a property of the trained model, not a constant. For every image
parent ``a`` :func:`calibrate_guidance` measures on validation rows (never the test split):

* ``w_a``, the **amplified weight**: DCFG decodes do(a) at each weight of ``weights`` (the intervened group at
  that weight, the rest as the pipeline decodes it); ``w_a`` is the weight whose counterfactuals' measured ``a``
  is closest to the target (least MAE; highest accuracy for a discrete ``a``).
* ``v_a``, the **anchor weight**: under every intervention do(b) that leaves ``a`` invariant (``a`` is neither
  ``b`` nor its descendant), ``a`` gets a group of its own at each weight of ``anchor_weights``, while ``b`` is
  amplified at ``w_b``; ``v_a`` is the weight at which ``a``'s measured value moves least from its factual
  measurement (mean absolute change; flip rate for a discrete ``a``), averaged over those interventions.

Ties go to the weight nearest 1 (the cheapest and least surprising). Both tables go into
:class:`~pipeline.core.PipelineConfig` (``attribute_scales`` and ``anchor_scales``), where DCFG reads them by
default. Under ``dcfg_form="conditional"`` an anchor weight of 1 costs no network rows, so only the attributes that
need anchoring add rows; :func:`plan_cost` gives the image-NFEs before anything runs.

The targets of do(a) are drawn by the oracles (``draw_targets``: the training marginal for continuous nodes,
another class for discrete ones), the counterfactual attributes come from the SCM (abduction, action,
prediction), and each row is inverted once and shared by every decoding.
"""
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from dcfg_io.checks import is_integer, is_number
from diffusion.solvers import nfe as solver_nfe

from .evaluation.engine import QueryEngine, nfe_per_step
from .evaluation.scores import roles
from .options import anchor_renamed, inversion_predictor

#: amplified weights tried by default
WEIGHTS = (1.0, 1.5, 2.0, 3.0, 4.0)
#: anchor weights tried by default
ANCHOR_WEIGHTS = (1.0, 1.5, 2.0, 3.0)
#: validation rows used by default
DEFAULT_N = 48


def _calibration_kind() -> Any:
    from dcfg_io.folders import SavedKind

    return SavedKind("calibration report", "calibration.json", lambda c: isinstance(c, dict))


@dataclass
class Calibration:
    """What :func:`calibrate_guidance` measured and chose.

    Attributes:
        attribute_scales: ``w_a`` per image parent.
        anchor_scales: ``v_a`` per image parent that some intervention leaves invariant.
        amplified: per ``a``: the curve ``[{"weight", "mae" | "accuracy"}]`` ``w_a`` was read off.
        anchor: per ``a``: the curve ``[{"weight", "abs_change" | "flip_rate", "per_intervention"}]``.
        settings: rows, steps, seed, weights, data spec.
        nfe: image-NFEs spent; ``seconds``: wall time.
    """

    attribute_scales: dict[str, float]
    anchor_scales: dict[str, float]
    amplified: dict[str, list[dict[str, Any]]]
    anchor: dict[str, list[dict[str, Any]]]
    settings: dict[str, Any] = field(default_factory=dict)
    nfe: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"attribute_scales": self.attribute_scales, "anchor_scales": self.anchor_scales,
                "amplified": self.amplified, "anchor": self.anchor, "settings": self.settings,
                "nfe": self.nfe, "seconds": round(self.seconds, 1)}


def dcfg_groups(graph: Any, intervened: Sequence[str], scale: float, *, descendant_weight: float | str,
                invariant_weight: float = 1.0, anchor_scales: Mapping[str, float] | None = None
                ) -> tuple[list[list[str]], list[float]]:
    """DCFG's DAG groups with per-attribute anchor weights (:func:`pipeline.groups.resolve_guidance`).

    Example:
        >>> from pipeline.presets import morphomnist_graph
        >>> dcfg_groups(morphomnist_graph(), ["digit"], 3.0, descendant_weight=1.0, anchor_scales={"thickness": 2.0})
        ([['digit'], ['thickness'], ['intensity']], [3.0, 2.0, 1.0])
    """
    from .groups import resolve_guidance

    return resolve_guidance(graph, list(intervened), "dcfg", float(scale), invariant_weight=invariant_weight,
                            descendant_weight=descendant_weight, anchor_scales=anchor_scales)


#: the validation rows of the bundled benchmarks: training source digits with fresh attributes (the test
#: digits are never seen by calibration)
VALIDATION_SPECS = {"morpho": "morpho-train:samples=1,seed=1000",
                    "morpho-colour": "morpho-colour-train:samples=1,seed=1000"}


def validation_spec(pipe: Any, data: str | None) -> str:
    """The ``--data`` spec calibration reads: ``data``, or the bundled benchmarks' validation rows.

    Raises:
        ValueError: no spec for a pipeline of your own, or a spec that names a test split.
    """
    if data is None:
        kind = getattr(pipe, "oracles", None)
        if kind not in VALIDATION_SPECS:
            raise ValueError("give validation rows with --data SPEC (e.g. csv:faces.csv,split=val); calibration "
                             "must not read the test split")
        return VALIDATION_SPECS[kind]
    text = str(data).strip()
    if text.endswith("-test") or "-test:" in text or "split=test" in text.replace(" ", ""):
        raise ValueError(f"--data {text!r} is a test split: calibrate on validation rows (e.g. split=val, or "
                         f"morpho-train:samples=1,seed=1000), so that the test split stays unseen")
    return text


def _check_weights(name: str, values: Sequence[Any]) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name}={values!r} must be a non-empty list of numbers (e.g. {list(WEIGHTS)})")
    out = []
    for v in values:
        if not is_number(v, 0, low_open=True):
            raise ValueError(f"{name} holds {v!r}: every weight must be a positive finite number")
        out.append(float(v))
    if 1.0 not in out:
        out.insert(0, 1.0)  # the plain conditional is always a candidate
    return tuple(sorted(set(out)))


def _anchored(graph: Any, a: str) -> list[str]:
    """The interventions (image parents) that leave ``a`` invariant."""
    return [b for b in graph.image_parents() if b != a and roles(graph, [b])[a] == "invariant"]


@anchor_renamed
def plan_cost(graph: Any, n: int, steps: int, weights: Sequence[float], anchor_weights: Sequence[float], *,
              dcfg_form: str = "conditional", descendant_weight: float | str = 1.0, refine_steps: int = 0,
              predictor: str = "explicit", solver: str = "ddim") -> int:
    """The image-NFEs :func:`calibrate_guidance` will spend (inversion, then every decoding).

    Each amplified sweep point costs one DCFG decoding of ``n`` rows; each anchor sweep point one more, except
    weight 1, which is the amplified sweep's decoding at ``w_b`` (shared). ``w_b`` is not known before the
    first phase, so the anchor phase is costed at the largest amplified weight (an upper bound).
    """
    parents = list(graph.image_parents())
    total = solver_nfe(solver, steps, refine_steps, predictor)[0] * n
    for a in parents:
        for w in weights:
            g, ws = dcfg_groups(graph, [a], w, descendant_weight=descendant_weight)
            total += nfe_per_step("dcfg", g, ws, dcfg_form) * steps * n
    w_max = max(weights)
    for a in parents:
        for b in _anchored(graph, a):
            for v in anchor_weights:
                if v == 1.0:
                    continue
                g, ws = dcfg_groups(graph, [b], w_max, descendant_weight=descendant_weight, anchor_scales={a: v})
                total += nfe_per_step("dcfg", g, ws, dcfg_form) * steps * n
    return int(total)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _mean(values: np.ndarray) -> float | None:
    """The mean over the rows the oracles could measure (morphometry fails on a blank image: NaN); ``None``
    when none could be."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    return float(values[ok].mean()) if ok.any() else None


def _generator(seed: int, node: str) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) % (1 << 64), zlib.crc32(node.encode())]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & ((1 << 63) - 1))


def _best(curve: list[dict[str, Any]], key: str, higher_is_better: bool) -> float:
    """The curve's best weight; ties (within 1e-9) go to the weight nearest 1."""
    vals = [(c[key], c["weight"]) for c in curve if c.get(key) is not None]
    if not vals:
        return 1.0
    best = max(v for v, _ in vals) if higher_is_better else min(v for v, _ in vals)
    tied = [w for v, w in vals if abs(v - best) <= 1e-9]
    return float(min(tied, key=lambda w: (abs(w - 1.0), w)))


def calibrate_guidance(pipe: Any, images: Tensor, parents: Mapping[str, Any], oracles: Any, *,
                       n: int = DEFAULT_N, weights: Sequence[float] = WEIGHTS,
                       anchor_weights: Sequence[float] = ANCHOR_WEIGHTS, steps: int | None = None, seed: int = 0,
                       chunk_size: int | None = None, precision: str = "auto", compile: bool | str = "auto",
                       progress: bool = True, data_spec: str | None = None,
                       log: Callable[[str], None] | None = None) -> Calibration:
    """Measure every image parent's amplified weight ``w_a`` and anchor weight ``v_a`` (module docstring).

    Args:
        pipe: the pipeline; its SCM, image model and DCFG settings (formulation, descendant weight) are used.
        images: validation images ``(N, C, H, W)`` in [-1, 1] (never the test split).
        parents: their attributes, every attribute node -> ``(N,)``.
        oracles: what measures images and draws targets (``pipe.make_oracles(...)``).
        n: rows used (the first ``n`` of a seeded permutation).
        weights: amplified weights tried (1 is always among them).
        anchor_weights: anchor weights tried (1 is always among them).
        steps: DDIM steps (default: the pipeline's).
        seed: seed of the rows, the targets and the SCM's abduction.
        chunk_size: rows per batched forward.
        precision: the image model's inference precision for the run, ``"auto"`` (bf16 where the device has
            native bf16 units, else fp32), ``"fp32"`` or ``"bf16"``; the pipeline's own setting is restored after.
        compile: ``torch.compile`` the image model for the run (``"auto"``: when the plan has at least
            :data:`pipeline.evaluation.runner.COMPILE_AUTO_NFE` image-NFEs).
        progress: a tqdm bar over the image-NFEs.
        data_spec: the validation data's spec, recorded in the result.
        log: one-line messages (the cost estimate, each attribute's choice).

    Raises:
        ValueError: the data lack an attribute node, or the oracles cannot measure every image parent, or a
            weight is not a positive number.
    """
    graph, config = pipe.graph, pipe.config
    log = log or (lambda s: None)
    missing = [k for k in graph.attribute_nodes() if k not in parents]
    if missing:
        raise ValueError(f"the calibration data lack attribute(s) {missing}: every attribute node of the graph "
                         f"{list(graph.attribute_nodes())} needs a value per row")
    weights = _check_weights("weights", weights)
    anchor_weights = _check_weights("anchor_weights", anchor_weights)
    if not is_integer(n, 2, python_int=True):
        raise ValueError(f"n={n!r} must be an integer >= 2 (validation rows)")
    steps = int(config.steps if steps is None else steps)
    dcfg_form = config.dcfg_form
    desc = config.descendant_weight
    image_parents = list(graph.image_parents())

    n_all = len(images)
    sel = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:min(n, n_all)]
    x = torch.as_tensor(images)[sel].float()
    pa = {k: torch.as_tensor(v)[sel] for k, v in parents.items() if k in graph.attribute_nodes()}
    m = len(x)
    fmeas = oracles.measure(x)
    lacking = [p for p in image_parents if p not in fmeas]
    if lacking:
        raise ValueError(f"the oracles do not measure {lacking}; calibration needs every image parent measured")

    total = plan_cost(graph, m, steps, weights, anchor_weights, dcfg_form=dcfg_form, descendant_weight=desc,
                      refine_steps=int(config.refine_steps),
                      predictor=inversion_predictor(config, int(config.refine_steps)), solver=config.solver)
    model = pipe.image_model
    before = dict(model.inference_settings) if hasattr(model, "inference_settings") else None
    if before is not None:
        from diffusion.model import resolve_precision

        from .evaluation.runner import COMPILE_AUTO_NFE

        if compile not in (True, False, "auto"):
            raise ValueError(f"compile={compile!r} must be True, False or 'auto'")
        device = next(model.parameters()).device
        model.set_inference(precision=resolve_precision(precision, device),
                            compile=bool(total >= COMPILE_AUTO_NFE) if compile == "auto" else bool(compile))
    try:
        return _calibrate(pipe, x, pa, oracles, fmeas, total, steps, seed, weights, anchor_weights, chunk_size,
                          progress, data_spec, log)
    finally:
        if before is not None:
            model.set_inference(**before)


def _calibrate(pipe: Any, x: Tensor, pa: dict[str, Tensor], oracles: Any, fmeas: Mapping[str, np.ndarray],
               total: int, steps: int, seed: int, weights: tuple[float, ...], anchor_weights: tuple[float, ...],
               chunk_size: int | None, progress: bool, data_spec: str | None, log: Callable[[str], None]
               ) -> Calibration:
    from tqdm.auto import tqdm

    graph, config = pipe.graph, pipe.config
    dcfg_form, desc = config.dcfg_form, config.descendant_weight
    image_parents = list(graph.image_parents())
    m = len(x)
    ms = _ms_per_nfe(pipe, x[:min(8, m)], pa, steps)
    log(f"calibration: {m} rows, {steps} steps, weights {list(weights)}, anchor weights {list(anchor_weights)}: "
        f"at most {total:,} image-NFEs, about {total * ms / 60e3:.1f} min at {ms:.2f} ms per image-NFE")

    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="nfe", unit_scale=True, disable=not progress, desc="calibrate")
    engine = QueryEngine(pipe, chunk_size=chunk_size, bar=bar)
    with torch.no_grad():
        x_T = engine.invert(x, pa, steps)
        u = pipe.scm.abduct(pa, seed=seed)
    cf_of: dict[str, dict[str, Tensor]] = {}
    for a in image_parents:
        target = torch.as_tensor(oracles.draw_targets(a, pa, _generator(seed, a))).to(pa[a].dtype)
        cf_of[a] = pipe.scm.predict(u, do={a: target})

    cache: dict[tuple, dict[str, np.ndarray]] = {}

    def measured(b: str, g: list[list[str]], ws: list[float]) -> dict[str, np.ndarray]:
        if dcfg_form == "conditional":  # groups at weight 1 contribute nothing: equal keys for equal computations
            key = (b, tuple(sorted((tuple(gg), w) for gg, w in zip(g, ws) if w != 1.0)))
        else:
            key = (b, tuple(map(tuple, g)), tuple(ws))
        if key not in cache:
            cf = {k: cf_of[b][k] for k in image_parents}
            imgs = engine.decode(x_T, cf, "dcfg", g, ws, steps, dcfg_form=dcfg_form)
            cache[key] = oracles.measure(imgs)
        return cache[key]

    # 1. amplified weights
    amplified: dict[str, list[dict[str, Any]]] = {}
    attribute_scales: dict[str, float] = {}
    for a in image_parents:
        discrete = graph.spec(a).is_discrete
        target = cf_of[a][a].double().numpy()
        curve = []
        for w in weights:
            g, ws = dcfg_groups(graph, [a], w, descendant_weight=desc, invariant_weight=config.invariant_weight)
            meas = np.asarray(measured(a, g, ws)[a], dtype=np.float64)
            point: dict[str, Any] = {"weight": w}
            if discrete:
                point["accuracy"] = _mean(np.where(np.isfinite(meas), meas == target, np.nan))
            else:
                point["mae"] = _mean(np.abs(meas - target))
            curve.append(point)
        attribute_scales[a] = _best(curve, "accuracy" if discrete else "mae", discrete)
        amplified[a] = curve
        log(f"  w_{a} = {attribute_scales[a]:g}  (" + ", ".join(
            f"{c['weight']:g}: {_fmt(c.get('accuracy', c.get('mae')))}" for c in curve) + ")")

    # 2. anchor weights, with every intervention at its calibrated w_b
    anchor_curves: dict[str, list[dict[str, Any]]] = {}
    anchor_scales: dict[str, float] = {}
    for a in image_parents:
        interventions = _anchored(graph, a)
        if not interventions:
            continue
        discrete = graph.spec(a).is_discrete
        key = "flip_rate" if discrete else "abs_change"
        curve = []
        for v in anchor_weights:
            per = {}
            for b in interventions:
                g, ws = dcfg_groups(graph, [b], attribute_scales[b], descendant_weight=desc,
                                    invariant_weight=config.invariant_weight, anchor_scales={a: v})
                meas = np.asarray(measured(b, g, ws)[a], dtype=np.float64)
                fact = np.asarray(fmeas[a], dtype=np.float64)
                if discrete:
                    per[b] = _mean(np.where(np.isfinite(meas), meas != pa[a].double().numpy(), np.nan))
                else:
                    per[b] = _mean(np.abs(meas - fact))
            known = [p for p in per.values() if p is not None]
            curve.append({"weight": v, key: float(np.mean(known)) if known else None, "per_intervention": per})
        anchor_scales[a] = _best(curve, key, False)
        anchor_curves[a] = curve
        log(f"  v_{a} = {anchor_scales[a]:g}  (" + ", ".join(f"{c['weight']:g}: {_fmt(c[key])}" for c in curve) + ")")
    bar.close()
    settings = {"n": m, "steps": steps, "seed": seed, "weights": list(weights), "anchor_weights": list(anchor_weights),
                "dcfg_form": dcfg_form, "descendant_weight": desc, "data": data_spec,
                "refine_steps": int(config.refine_steps),
                "invert_predictor": inversion_predictor(config, int(config.refine_steps)),
                "inference": dict(getattr(pipe.image_model, "inference_settings", {}) or {})}
    return Calibration(attribute_scales, anchor_scales, amplified, anchor_curves, settings, engine.nfe,
                       time.perf_counter() - t0)


def _ms_per_nfe(pipe: Any, x: Tensor, parents: Mapping[str, Tensor], steps: int) -> float:
    """Milliseconds per image-NFE of one short batched inversion (for the cost estimate)."""
    names = list(pipe.graph.image_parents())
    cond = {k: parents[k][:len(x)] for k in names}
    with torch.no_grad():
        pipe.invert(x, cond, steps=1, refine_steps=0)  # warm-up
        t0 = time.perf_counter()
        pipe.invert(x, cond, steps=2, refine_steps=0)
    return (time.perf_counter() - t0) * 1e3 / (2 * len(x))


# ---------------------------------------------------------------------------------------------- report
def write_report(cal: Calibration, out: str | os.PathLike, *, command: str | None = None) -> Path:
    """Write ``report.md``, ``curves.png`` and ``calibration.json`` (last) into ``out``: a new, empty or earlier
    calibration folder (anything else is refused before anything is touched), swapped in crash-safely
    (:func:`dcfg_io.folders.save_dir`)."""
    from dcfg_io.folders import save_dir

    def write(tmp: Path) -> None:
        _plot(cal, tmp / "curves.png")
        (tmp / "report.md").write_text(_report_text(cal, command))
        (tmp / "calibration.json").write_text(json.dumps(cal.to_json(), indent=2) + "\n")  # the marker: last

    return save_dir(out, write, _calibration_kind())


def check_report_dir(out: str | os.PathLike) -> Path:
    """``ValueError`` unless :func:`write_report` may write ``out`` (checked before a calibration starts)."""
    from dcfg_io.folders import check_save_target

    return check_save_target(out, _calibration_kind())


def _report_text(cal: Calibration, command: str | None) -> str:
    s = cal.settings
    lines = ["# Guidance calibration", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [f"{s['n']} validation rows ({s.get('data') or 'given data'}), {s['steps']} DDIM steps, DCFG form "
              f"`{s['dcfg_form']}`, descendant weight {s['descendant_weight']}; {cal.nfe:,} image-NFEs in "
              f"{cal.seconds / 60:.1f} min. Seed {s['seed']}.", "",
              "| attribute | amplified weight w_a | anchor weight v_a |", "|---|---|---|"]
    for a in cal.amplified:
        v = cal.anchor_scales.get(a)
        lines.append(f"| {a} | {cal.attribute_scales[a]:g} | {'-' if v is None else f'{v:g}'} |")
    lines += ["", "## Amplified weight: do(a), the measured a against its target", "",
              "| attribute | " + " | ".join(f"w={w:g}" for w in s["weights"]) + " |",
              "|---|" + "---|" * len(s["weights"])]
    for a, curve in cal.amplified.items():
        k = "accuracy" if "accuracy" in curve[0] else "mae"
        lines.append(f"| {a} ({k}) | " + " | ".join(_fmt(c[k]) for c in curve) + " |")
    lines += ["", "## Anchor weight: a's change from its factual value under the interventions that leave it "
              "invariant", "", "| attribute | " + " | ".join(f"v={w:g}" for w in s["anchor_weights"]) + " |",
              "|---|" + "---|" * len(s["anchor_weights"])]
    for a, curve in cal.anchor.items():
        k = "flip_rate" if "flip_rate" in curve[0] else "abs_change"
        lines.append(f"| {a} ({k}, under do({', '.join(curve[0]['per_intervention'])})) | "
                     + " | ".join(_fmt(c[k]) for c in curve) + " |")
    lines += ["", "![the curves each weight was read off](curves.png)", ""]
    return "\n".join(lines)


def _plot(cal: Calibration, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(cal.amplified)
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.0), squeeze=False)
    for j, a in enumerate(names):
        ax = axes[0][j]
        curve = cal.amplified[a]
        k = "accuracy" if "accuracy" in curve[0] else "mae"
        ax.plot([c["weight"] for c in curve], [np.nan if c[k] is None else c[k] for c in curve], "o-")
        ax.axvline(cal.attribute_scales[a], color="tab:red", ls="--", lw=1)
        ax.set_title(f"do({a}): {k}", fontsize=9)
        ax.set_xlabel("amplified weight", fontsize=8)
        ax = axes[1][j]
        if a in cal.anchor:
            curve = cal.anchor[a]
            k = "flip_rate" if "flip_rate" in curve[0] else "abs_change"
            ax.plot([c["weight"] for c in curve], [np.nan if c[k] is None else c[k] for c in curve], "o-",
                    color="tab:green")
            ax.axvline(cal.anchor_scales[a], color="tab:red", ls="--", lw=1)
            ax.set_title(f"{a} held: {k}", fontsize=9)
            ax.set_xlabel("anchor weight", fontsize=8)
        else:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
