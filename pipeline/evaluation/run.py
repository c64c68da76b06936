"""One evaluation of ``dcfg evaluate``: CFG vs DCFG on the counterfactual benchmark, within a fixed compute budget.

:func:`evaluate` scores a pipeline on given test images. What runs (for each pipeline: the evaluated one, and an
optional ablation evaluated the same way):

1. **Rows and targets.** ``n`` test rows are drawn by a seeded permutation; the scale sweep uses its
   first ``sweep_n`` rows and composition/reversibility its first ``cycle_n`` rows, so the subsets are
   random samples nested in the main rows. Intervention values come from :meth:`Oracles.draw_targets`,
   each intervention from its own stream seeded by (seed, node): a run on some of the interventions draws
   the same targets for them as a run on all, and the first ``m`` targets do not depend on ``n``.
   ``do(random parent)`` gives every row one intervened parent drawn uniformly, with the same target
   value as that row's single-parent query, so its counterfactuals are those queries' (no extra cost).
2. **Abduction, once.** Every row is DDIM-inverted once per step count, under its factual parents; that
   ``x_T`` is shared by every intervention, guidance method and scale (and by composition's first
   cycle). The SCM's noise is abducted once and pushed through each ``do``.
3. **Sweep** (``sweep_n`` rows): CFG and DCFG (and optionally DCFG with one group per attribute) at
   every scale of ``scales``. CFG at ``w = 1`` is the plain conditional, i.e. guidance ``none``, and
   reuses it. A swept method may carry guidance variants, ``BASE[+apg|+cfgpp][+interval]`` (``cfg+apg``,
   ``dcfg+cfgpp``, ``cfg+interval``, ``dcfg+apg+interval``;
   :func:`~pipeline.evaluation.config.parse_method`): the base method with
   APG, CFG++ (whose rows are inverted with CFG++'s own pair, once per step count) or the guidance interval
   ``interval``; each is compared with CFG like the other methods.
4. **Main table** (``n`` rows): guidance none, CFG at its best sweep scale for that intervention (the
   one with the best effectiveness; ``cfg_scale`` overrides it) and DCFG at ``scale`` (default: the
   pipeline's). Rows already decoded by the sweep are reused. DCFG with one group per attribute runs at
   the same scale on ``per_attribute_n`` rows (default ``sweep_n``).
5. **Composition** (``cycle_n`` rows, ``cycle_steps``): ``cycles`` invert-decode cycles, no guidance.
   **Reversibility** (``cycle_n`` rows): the main table's counterfactuals, queried back to the factual
   value with the same guidance.

The cost of these steps is planned before the run (:mod:`pipeline.evaluation.plan`).

Metric definitions (docs/evaluation.md; the single definitions live in :mod:`pipeline.evaluation.metrics` and
:mod:`pipeline.evaluation.scores`):

=================  =========================================================================================
effectiveness t/i  MAE between the target ``t'`` (``i'``) and the measured thickness (intensity) of the
                   counterfactual; for do(t) the intensity target is the SCM's counterfactual ``i'``
effectiveness y    accuracy of the digit classifier on the counterfactual against the target digit
spurious change    digit flips (classifier) under do(t)/do(i); measured ``|delta t|``, ``|delta i|`` under
                   do(y) (and ``|delta t|`` under do(i)); under do(t) the intensity change beyond the SCM's:
                   ``|(m_i(x') - m_i(x)) - (i' - i)|``
ground truth       L1 on [0, 1] and PSNR between counterfactual and true counterfactual, do(t) and do(i)
composition        L1 (0-255) between x and invert-then-decode of x under its own parents, no guidance,
                   after 1 and 10 cycles
reversibility      L1 (0-255) between x and do(a') followed by do(a) back
realism            Frechet distance between counterfactuals and the real test images in the digit
                   classifier's penultimate features
=================  =========================================================================================

**Spurious change, DCFG / CFG at equal effectiveness** (:func:`~pipeline.evaluation.metrics.
equal_effectiveness_ratio`): for each intervention and each of its spurious metrics, each method's sweep
points (effectiveness, spurious), reduced to their Pareto front and interpolated linearly in
effectiveness, are averaged over 101 evenly spaced effectiveness values of the range both fronts cover;
the ratio is DCFG's mean over CFG's (``None`` if the ranges do not overlap). Beside it, the ratio at
CFG's best effectiveness compares the two fronts at the most effective point of CFG's (``None`` where
DCFG's front does not reach it).
"""
from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from pipeline.evaluation.config import COMPILE_AUTO_NFE, EvaluationConfig, resolve_config
from pipeline.evaluation.engine import QueryEngine, num_timesteps
from pipeline.evaluation.headline import headline_rows, primary_metric, recommend_scales, targets_of, tradeoff_ratios
from pipeline.evaluation.metrics import frechet_distance
from pipeline.evaluation.oracles import Oracles
from pipeline.evaluation.plan import (
    estimate_nfe,
    groups_for,
    power_of,
    predictor_of,
    query_for,
    query_key,
    refine_steps_of,
)
from pipeline.evaluation.scores import effectiveness, ground_truth_error, roles, spurious_change
from pipeline.machine import cpu_facts

__all__ = ["EvaluationResult", "RunData", "evaluate", "prepare_rows", "total_spurious"]

@dataclass
class EvaluationResult:
    """What an evaluation produced: ``metrics`` (JSON-ready) and the images of ``grid.png``."""

    metrics: dict[str, Any]
    grid: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class RunData:
    """The rows an evaluation scores, shared by every pipeline it runs (:func:`prepare_rows`).

    Attributes:
        images, parents, rows: the drawn test images, their factual attributes and their dataset rows.
        targets: per intervened node, each row's target value.
        random_choice: per row, the index of the intervention that ``do(random parent)`` picks.
        measured: the oracles' measurements of the factual images.
        truth: per intervened node, the true counterfactual images (``None`` where the oracles have none).
        reference_features: the realism reference's features.
        oracles: the oracles that score the run.
        attribute_sd: the test data's standard deviation of each continuous attribute.
    """

    images: Tensor
    parents: dict[str, Tensor]
    rows: Tensor
    targets: dict[str, Tensor]
    random_choice: np.ndarray
    measured: dict[str, np.ndarray]
    truth: dict[str, Tensor | None]
    reference_features: np.ndarray
    oracles: Oracles
    attribute_sd: dict[str, float] = field(default_factory=dict)


def total_spurious(graph: Any, node: str, row: Mapping[str, Any], sd: Mapping[str, float]) -> float | None:
    """The total spurious change of one row: over the invariant image parents, each continuous one's
    ``abs_change`` in units of its standard deviation in the test data, plus each discrete one's flip rate."""
    total, parts = 0.0, 0
    for name, role in roles(graph, [node]).items():
        if role != "invariant":
            continue
        if f"{name}_flip_rate" in row:
            total += float(row[f"{name}_flip_rate"])
        elif f"{name}_abs_change" in row and sd.get(name):
            total += float(row[f"{name}_abs_change"]) / sd[name]
        else:
            continue
        parts += 1
    return total if parts else None


def _target_generator(seed: int, node: str) -> torch.Generator:
    """The random stream of one intervention's targets: seeded by (seed, node name) alone, so that a run
    on a subset of the interventions (``--interventions digit``) draws the same targets as a full run."""
    state = np.random.SeedSequence([int(seed) % (1 << 64), zlib.crc32(node.encode())]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & ((1 << 63) - 1))


def prepare_rows(images: Tensor, parents: Mapping[str, Tensor], oracles: Oracles, c: EvaluationConfig,
                  rows: Tensor | None, reference_images: Tensor | None, graph: Any) -> tuple[RunData, dict[str, Any]]:
    """Draw the evaluation's rows and targets under a resolved ``c`` and score the factual images.

    ``c.n`` rows are drawn by a permutation seeded by ``c.seed``; each intervention's targets come from its own
    stream, seeded by (seed, node), so that they do not depend on the other interventions or on ``n``.

    Returns:
        ``(data, factual)``: the :class:`RunData` of the rows, and the factual images' scores (the oracles'
        accuracy / MAE on them, and their realism).
    """
    n_all = len(images)
    gen = torch.Generator().manual_seed(c.seed)
    sel = torch.randperm(n_all, generator=gen)[:c.n]
    x = images[sel]
    pa = {k: torch.as_tensor(v)[sel] for k, v in parents.items()}
    data_rows = (torch.arange(n_all) if rows is None else torch.as_tensor(rows).long())[sel]
    targets = {node: torch.as_tensor(oracles.draw_targets(node, pa, _target_generator(c.seed, node)))
               for node in c.interventions}
    choice = torch.randint(0, len(c.interventions), (c.n,), generator=gen).numpy()
    measured = oracles.measure(x)
    missing = [p for p in graph.image_parents() if p not in measured]
    if missing:
        raise ValueError(f"the oracles' measure() gives {sorted(measured)}, but it must measure every image "
                         f"parent: {missing} missing")
    truth: dict[str, Tensor | None] = {}
    for node in c.interventions:
        value = targets[node].to(pa[node].dtype)
        truth[node] = oracles.true_counterfactual(data_rows, {node: value})
    ref = images if reference_images is None else reference_images
    ref_feats = oracles.embed(ref)
    factual: dict[str, Any] = {"n": c.n, "reference_n": len(ref)}
    for p in graph.image_parents():
        if graph.spec(p).is_discrete:
            factual[f"{p}_accuracy"] = float(np.mean(measured[p].astype(np.int64) == pa[p].numpy().astype(np.int64)))
        else:
            factual[f"{p}_measurement_mae"] = float(np.mean(np.abs(measured[p] - pa[p].double().numpy())))
    if c.n >= 2:
        factual["realism_fd"] = frechet_distance(oracles.embed(x), ref_feats)
    sd = {k: float(torch.as_tensor(v).double().std()) for k, v in parents.items()
          if graph.spec(k).is_continuous and len(v) > 1}
    data = RunData(x, pa, data_rows, targets, choice, measured, truth, ref_feats, oracles, sd)
    return data, factual


# ---------------------------------------------------------------------------------------------- one pipeline
class _Run:
    """Evaluation of one pipeline on fixed rows and targets, with caches of inversions and decodings."""

    def __init__(self, name: str, pipe: Any, data: "RunData", config: EvaluationConfig, bar: Any) -> None:
        self.name, self.pipe, self.data, self.c = name, pipe, data, config
        self.graph = pipe.graph
        self.engine = QueryEngine(pipe, chunk_size=config.chunk_size, bar=bar)
        self._x_T: dict[int, Tensor] = {}
        self._decoded: dict[tuple, dict[str, Any]] = {}
        self.timing: dict[str, float] = {}
        self.nfe: dict[str, int] = {}
        self.measure_s = 0.0
        # Abduction (attributes) once; action + prediction per intervened node.
        u = pipe.scm.abduct(data.parents, seed=config.seed)
        self.cf_parents: dict[str, dict[str, Tensor]] = {}
        for node in config.interventions:
            value = data.targets[node].to(data.parents[node].dtype)
            self.cf_parents[node] = pipe.scm.predict(u, do={node: value})

    # -- caches -------------------------------------------------------------------------------------
    def x_T(self, steps: int, m: int, inversion: tuple | None = None) -> Tensor:
        """The inversion of rows [0, m) at ``steps``: the shared plain one, or CFG++'s (``("cfgpp", interval)``)."""
        key: Any = steps if inversion is None else (steps, inversion)
        have = self._x_T.get(key)
        done = 0 if have is None else len(have)
        if done < m:
            d = self.data
            kw = {} if inversion is None else {"variant": "cfgpp", "dcfg_form": "paper", "interval": inversion[1]}
            new = self.engine.invert(d.images[done:m], {k: v[done:m] for k, v in d.parents.items()}, steps, **kw)
            self._x_T[key] = new if have is None else torch.cat([have, new])
        return self._x_T[key][:m]

    def decode(self, node: str, method: str, scale: float, m: int, steps: int) -> dict[str, Any]:
        """Counterfactual images (and their measurements) of rows [0, m) for one method and scale."""
        q = query_for(self.graph, node, method, scale, self.c)
        guidance, groups, weights, dcfg_form = q["guidance"], q["groups"], q["weights"], q["dcfg_form"]
        key = query_key(node, q, steps)
        entry = self._decoded.get(key)
        done = 0 if entry is None else len(entry["images"])
        if done < m:
            z = self.x_T(steps, m, q["inversion"])[done:m]
            cf = {k: v[done:m] for k, v in self.cf_parents[node].items()}
            kw = {} if q["variant"] is None and q["interval"] is None else {
                "variant": q["variant"], "interval": q["interval"], "apg": q["apg"]}
            imgs = self.engine.decode(z, cf, guidance, groups, weights, steps, dcfg_form=dcfg_form, **kw)
            t0 = time.perf_counter()
            meas = self.data.oracles.measure(imgs)
            self.measure_s += time.perf_counter() - t0
            if entry is None:
                entry = {"images": imgs, "measured": meas}
            else:
                entry["images"] = torch.cat([entry["images"], imgs])
                entry["measured"] = {k: np.concatenate([entry["measured"][k], meas[k]]) for k in meas}
            self._decoded[key] = entry
        # the request's own groups and weights (a shared key can hold an equivalent grouping's decodings)
        return {"images": entry["images"][:m], "measured": {k: v[:m] for k, v in entry["measured"].items()},
                "guidance": guidance, "groups": groups, "weights": weights, "dcfg_form": dcfg_form}

    # -- scoring ------------------------------------------------------------------------------------
    def score(self, node: str, method: str, scale: float, m: int, steps: int, extras: bool) -> dict[str, Any]:
        d = self.data
        out = self.decode(node, method, scale, m, steps)
        tgt = {k: v[:m] for k, v in self.cf_parents[node].items()}
        fact = {k: v[:m] for k, v in d.parents.items()}
        fmeas = {k: v[:m] for k, v in d.measured.items()}
        row: dict[str, Any] = {"method": method, "scale": None if method == "none" else scale,
                               "guidance": out["guidance"], "groups": out["groups"], "weights": out["weights"],
                               "dcfg_form": out["dcfg_form"], "n": m, "steps": steps}
        row.update(effectiveness(self.graph, [node], tgt, out["measured"]))
        row.update(spurious_change(self.graph, [node], fact, fmeas, tgt, out["measured"]))
        total = total_spurious(self.graph, node, row, d.attribute_sd)
        if total is not None:
            row["total_spurious_change"] = total
        if extras:
            truth = d.truth.get(node)
            if truth is not None:
                row.update(ground_truth_error(out["images"], truth[:m]))
            if m >= 2:
                row["realism_fd"] = frechet_distance(d.oracles.embed(out["images"]), d.reference_features)
        return row

    def _phase(self, name: str, start: float, nfe0: int) -> None:
        self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - start
        self.nfe[name] = self.nfe.get(name, 0) + self.engine.nfe - nfe0

    # -- the evaluation -------------------------------------------------------------------------------
    def run(self, dcfg_scale: float | str, log: Callable[[str], None]) -> dict[str, Any]:
        c, nodes = self.c, list(self.c.interventions)
        t0, n0 = time.perf_counter(), self.engine.nfe
        self.x_T(c.steps, c.n)
        self._phase("inversion", t0, n0)

        # Sweep: every guided method at every scale on the first sweep_n rows.
        t0, n0 = time.perf_counter(), self.engine.nfe
        sweep: dict[str, list[dict]] = {}
        for node in nodes:
            rows = [self.score(node, "none", 1.0, c.sweep_n, c.sweep_steps, extras=False)]
            for method in c.sweep_methods:
                for s in c.scales:
                    rows.append(self.score(node, method, s, c.sweep_n, c.sweep_steps, extras=False))
            sweep[node] = rows
        self._phase("sweep", t0, n0)

        # Scales of the main table.
        chosen: dict[str, dict[str, float]] = {}
        for node in nodes:
            key, higher = primary_metric(self.graph, node)
            chosen[node] = {}
            for method, requested in (("cfg", c.cfg_scale), ("dcfg", dcfg_scale)):
                if requested == "best":
                    if method not in c.sweep_methods:
                        raise ValueError(f"scale='best' for {method} needs {method!r} in sweep_methods")
                    cands = [r for r in sweep[node] if r["method"] == method]
                    best = max(cands, key=lambda r: (r[key] if higher else -r[key], -r["scale"]))
                    chosen[node][method] = float(best["scale"])
                elif requested == "pipeline":  # what pipe.counterfactual(..., scale=None) would use
                    chosen[node][method] = float(self.pipe.config.default_scale([node]))
                else:
                    chosen[node][method] = float(requested)
        log(f"[{self.name}] main-table scales: " + ", ".join(
            f"do({n}) CFG {v['cfg']:g} DCFG {v['dcfg']:g}" for n, v in chosen.items()))

        # Main table on n rows (+ DCFG with one group per attribute on per_attribute_n rows).
        t0, n0 = time.perf_counter(), self.engine.nfe
        main: dict[str, list[dict]] = {}
        for node in nodes:
            main[node] = [self.score(node, "none", 1.0, c.n, c.steps, extras=True),
                          self.score(node, "cfg", chosen[node]["cfg"], c.n, c.steps, extras=True),
                          self.score(node, "dcfg", chosen[node]["dcfg"], c.n, c.steps, extras=True)]
        self._phase("main", t0, n0)
        t0, n0 = time.perf_counter(), self.engine.nfe
        if c.per_attribute_n:
            for node in nodes:
                main[node].append(self.score(node, "dcfg_per_attribute", chosen[node]["dcfg"], c.per_attribute_n,
                                             c.steps, extras=c.per_attribute_n == c.n))
        self._phase("per_attribute", t0, n0)

        random_parent = self._random_parent(chosen) if len(nodes) > 1 else None

        # Composition and reversibility on the first cycle_n rows.
        t0, n0 = time.perf_counter(), self.engine.nfe
        composition = self._composition() if c.cycle_n else None
        self._phase("composition", t0, n0)
        t0, n0 = time.perf_counter(), self.engine.nfe
        reversibility = self._reversibility(chosen) if c.cycle_n else None
        self._phase("reversibility", t0, n0)

        tradeoff = tradeoff_ratios(self.graph, sweep, c.sweep_methods)
        return {"scales": chosen, "recommended": recommend_scales(self.graph, sweep, c.sweep_methods), "main": main,
                "sweep": sweep, "random_parent": random_parent,
                "composition": composition, "reversibility": reversibility, "tradeoff": tradeoff,
                "nfe": dict(self.nfe, total=self.engine.nfe),
                "seconds": dict(self.timing, measure_oracles=self.measure_s)}

    def _random_parent(self, chosen: dict[str, dict[str, float]]) -> dict[str, Any]:
        """do(random parent): row j's query is do(node_j) with that row's single-parent target."""
        c, d = self.c, self.data
        nodes = list(c.interventions)
        pick = d.random_choice[:c.n]
        out: dict[str, Any] = {"counts": {node: int((pick == k).sum()) for k, node in enumerate(nodes)},
                               "methods": []}
        for method in ("none", "cfg", "dcfg"):
            imgs = torch.empty_like(d.images[:c.n])
            row: dict[str, Any] = {"method": method}
            for k, node in enumerate(nodes):
                sel = np.flatnonzero(pick == k)
                scale = 1.0 if method == "none" else chosen[node][method]
                dec = self.decode(node, method, scale, c.n, c.steps)
                imgs[sel] = dec["images"][sel]
                if len(sel) == 0:
                    continue
                tgt = {a: v[sel] for a, v in self.cf_parents[node].items()}
                fact = {a: v[sel] for a, v in d.parents.items()}
                fmeas = {a: v[sel] for a, v in d.measured.items()}
                meas = {a: v[sel] for a, v in dec["measured"].items()}
                for key, val in {**effectiveness(self.graph, [node], tgt, meas),
                                 **spurious_change(self.graph, [node], fact, fmeas, tgt, meas)}.items():
                    row[f"do({node}) {key}"] = val
            if c.n >= 2:
                row["realism_fd"] = frechet_distance(d.oracles.embed(imgs), d.reference_features)
            out["methods"].append(row)
        return out

    def _composition(self) -> dict[str, Any]:
        from pipeline.evaluation.scores import composition

        c, d = self.c, self.data
        m = c.cycle_n
        curve = composition(self.pipe, d.images[:m], {k: v[:m] for k, v in d.parents.items()}, cycles=c.cycles,
                            steps=c.cycle_steps, x_T=self.x_T(c.cycle_steps, m), engine=self.engine)
        mean = curve.mean(0)
        return {"n": m, "steps": c.cycle_steps, "cycles": c.cycles, "l1_per_cycle": [float(v) for v in mean],
                "cycle_1": float(mean[0]), f"cycle_{c.cycles}": float(mean[-1])}

    def _reversibility(self, chosen: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
        from pipeline.evaluation.scores import reversibility

        c, d = self.c, self.data
        m = c.cycle_n
        rows = []
        for node in c.interventions:
            for method in ("none", "cfg", "dcfg"):
                scale = 1.0 if method == "none" else chosen[node][method]
                dec = self.decode(node, method, scale, m, c.steps)
                guidance, groups, weights, dcfg_form = groups_for(self.graph, node, method, scale,
                                                                  c.invariant_weight, c.descendant_weight,
                                                                  c.dcfg_form or "paper", c.anchor_scales)
                dist = reversibility(
                    self.pipe, d.images[:m], {k: v[:m] for k, v in d.parents.items()},
                    {node: d.targets[node][:m]}, guidance, scale, c.steps, counterfactual=dec["images"],
                    counterfactual_parents={k: v[:m] for k, v in self.cf_parents[node].items()},
                    invariant_weight=c.invariant_weight, groups=groups if guidance == "dcfg" else None,
                    weights=weights if guidance == "dcfg" else None, seed=c.seed, engine=self.engine,
                    dcfg_form=dcfg_form)
                rows.append({"intervention": node, "method": method, "scale": None if method == "none" else scale,
                             "n": m, "steps": c.steps, "l1": float(np.mean(dist))})
        return rows


def evaluate(pipe: Any, images: Tensor, parents: Mapping[str, Tensor], oracles: Oracles,
             config: EvaluationConfig | None = None, *, rows: Tensor | None = None,
             reference_images: Tensor | None = None, ablation: Any = None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Evaluate counterfactuals of ``pipe`` (and optionally an ``ablation`` pipeline) on a test set.

    Args:
        pipe: the :class:`~pipeline.core.CounterfactualPipeline` under test.
        images: candidate test images (N, C, H, W) in [-1, 1]; ``config.n`` of them are drawn.
        parents: their factual attributes (every attribute node), name -> (N,).
        oracles: measurement, features, intervention values and ground truth of this dataset.
        config: settings (see :class:`EvaluationConfig`; ``None`` values are resolved here).
        rows: dataset row index of each image, for ``oracles.true_counterfactual`` (default 0..N-1).
        reference_images: real images for realism (default: all of ``images``).
        ablation: a second pipeline over the same graph, evaluated the same way (same rows, targets,
            oracles and DCFG scale) and reported beside the first.
        progress: a tqdm bar over image-NFEs.
        log: called with one-line progress messages (e.g. ``print``).

    Returns:
        An :class:`EvaluationResult`.

    Example:
        >>> res = evaluate(pipe, test.images, test.attributes, MorphoOracles(test, pipe.classifier),
        ...                EvaluationConfig(n=50))                                    # doctest: +SKIP
        >>> res.metrics["pipelines"]["main"]["main"]["thickness"][2]["thickness_mae"]  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    log = log or (lambda s: None)
    if not isinstance(oracles, Oracles):
        raise TypeError(f"oracles must be a pipeline.evaluation.Oracles, got {type(oracles).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise TypeError("images must be a (N, C, H, W) tensor in [-1, 1]")
    missing = [k for k in pipe.graph.attribute_nodes() if k not in parents]
    if missing:
        raise ValueError(f"parents lacks attribute node(s) {missing}; the SCM needs every one of "
                         f"{list(pipe.graph.attribute_nodes())}")
    c = resolve_config(config or EvaluationConfig(), pipe, len(images))
    if ablation is not None and sorted(ablation.graph.image_parents()) != sorted(pipe.graph.image_parents()):
        raise ValueError(f"the ablation pipeline's image parents {ablation.graph.image_parents()} differ from "
                         f"{pipe.graph.image_parents()}; both must answer the same queries")
    pipelines = {"main": pipe} if ablation is None else {"main": pipe, "ablation": ablation}
    plans = [estimate_nfe(c, p.graph, refine_steps=refine_steps_of(p), predictor=predictor_of(p),
                          power=power_of(p), num_timesteps=num_timesteps(p),
                          pipeline_config=p.config) for p in pipelines.values()]
    plan = {k: sum(pl[k] for pl in plans) for k in plans[0]}
    log(f"plan: {plan['total']:,} image-NFEs ({', '.join(f'{k} {v:,}' for k, v in plan.items() if k != 'total')})")

    compile_ = bool(plan["total"] >= COMPILE_AUTO_NFE) if c.compile == "auto" else bool(c.compile)
    if compile_ or c.precision != "fp32":
        log(f"image model inference: precision {c.precision}, compile {compile_}")

    t_start = time.perf_counter()
    t0 = time.perf_counter()
    data, factual = prepare_rows(images, parents, oracles, c, rows, reference_images, pipe.graph)
    prep_s = time.perf_counter() - t0

    bar = tqdm(total=plan["total"], unit="nfe", unit_scale=True, desc="evaluate", disable=not progress)
    results: dict[str, Any] = {}
    runs: dict[str, _Run] = {}
    before = {name: _inference_settings(p) for name, p in pipelines.items()}
    try:
        for name, p in pipelines.items():
            _set_inference(p, c.precision, compile_)
            run = _Run(name, p, data, c, bar)
            results[name] = run.run(c.scale, log)
            runs[name] = run
    finally:
        bar.close()
        for name, p in pipelines.items():
            if before[name] is not None:
                _set_inference(p, **before[name])
    wall = time.perf_counter() - t_start
    nfe_total = sum(r["nfe"]["total"] for r in results.values())
    diffusion_s = sum(sum(v for k, v in r["seconds"].items() if k != "measure_oracles")
                      - r["seconds"]["measure_oracles"]
                      for r in results.values())
    metrics = {
        "settings": _settings(c),
        "plan_nfe": plan,
        "factual": factual,
        "pipelines": results,
        "headline": headline_rows(pipe.graph, results, targets_of(pipe)),
        "solver": getattr(pipe.config, "solver", "ddim"),
        "timing": {"wall_s": wall, "prepare_s": prep_s, "nfe": nfe_total,
                   "ms_per_nfe": 1000.0 * max(diffusion_s, 0.0) / max(nfe_total, 1),
                   "torch_threads": torch.get_num_threads(),
                   "precision": c.precision, "compile": compile_, "machine": cpu_facts()},
    }
    return EvaluationResult(metrics=metrics, grid=_grid(runs["main"], results["main"]["scales"]))


def _inference_settings(pipe: Any) -> dict[str, Any] | None:
    model = getattr(pipe, "image_model", None)
    return dict(model.inference_settings) if hasattr(model, "inference_settings") else None


def _set_inference(pipe: Any, precision: str, compile: bool) -> None:
    """Apply the run's inference settings where the pipeline's image model has them (test doubles may not)."""
    model = getattr(pipe, "image_model", None)
    if hasattr(model, "set_inference"):
        model.set_inference(precision=precision, compile=compile)
    elif compile or precision != "fp32":
        raise ValueError(f"precision={precision!r}/compile={compile!r} need an image model with set_inference(); "
                         f"{type(model).__name__} has none")


def _settings(c: EvaluationConfig) -> dict[str, Any]:
    s = asdict(c)
    s["scales"] = list(c.scales)
    s["interventions"] = list(c.interventions or ())
    s["sweep_methods"] = list(c.sweep_methods)
    s["subset_rule"] = ("rows = first n of a seeded permutation of the test set; sweep = first sweep_n of them, "
                        "composition/reversibility = first cycle_n, DCFG per attribute = first per_attribute_n; "
                        "one DDIM inversion per row and step count is shared by every query")
    return s


def _grid(run: _Run, chosen: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    c, d = run.c, run.data
    m = min(c.grid_n, c.n)
    out: dict[str, dict[str, Any]] = {}
    if m == 0:
        return out
    for node in c.interventions:
        cfg = run.decode(node, "cfg", chosen[node]["cfg"], m, c.steps)
        dc = run.decode(node, "dcfg", chosen[node]["dcfg"], m, c.steps)
        truth = d.truth.get(node)
        out[node] = {
            "target": d.targets[node][:m], "columns": ["factual", f"CFG w={chosen[node]['cfg']:g}",
                                                      f"DCFG w={chosen[node]['dcfg']:g}"]
            + (["ground truth"] if truth is not None else []),
            "images": [d.images[:m], cfg["images"], dc["images"]] + ([truth[:m]] if truth is not None else []),
            "measured": [{k: v[:m] for k, v in d.measured.items()}, cfg["measured"], dc["measured"]]
            + ([d.oracles.measure(truth[:m])] if truth is not None else [])}
    return out
