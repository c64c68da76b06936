"""The evaluation runner's plumbing on the tiny 8x8 pipeline of tests/pipeline/conftest.py, with exact toy oracles.

Graph:  thickness -> intensity;  (thickness, intensity, digit) -> image (1x8x8)

The toy image is a bright square (pipeline_helpers.render): its side follows thickness, its grey level intensity,
its quadrant ``digit % 4``. The toy oracles (pipeline_helpers.SquareOracles, the ``toy_data`` fixture) read those
back exactly, so the factual images measure as their labels; digits are kept in 0..3 so that the quadrant *is*
the digit.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.evaluation.engine import QueryEngine
from pipeline.evaluation.report import OUTPUT_FILES, check_out_dir, write_outputs
from pipeline.evaluation.runner import EvaluationConfig, estimate_nfe, evaluate, resolve_config
from pipeline.evaluation.scores import composition, reversibility

SMALL = EvaluationConfig(n=12, steps=3, scales=(1.0, 2.0, 4.0), scale=2.0, sweep_n=6, cycle_n=3, cycles=2,
                         per_attribute_n=6, grid_n=2, seed=3)


@pytest.fixture(scope="module")
def result(tiny_pipeline, toy_data):
    images, parents, oracles = toy_data
    oracles.truth_calls.clear()
    res = evaluate(tiny_pipeline, images, parents, oracles, SMALL, progress=False)
    res.truth_calls = list(oracles.truth_calls)  # other tests reuse the oracles
    return res


def test_toy_oracles_read_back_the_labels(toy_data):
    images, parents, oracles = toy_data
    m = oracles.measure(images)
    assert np.array_equal(m["digit"], parents["digit"].numpy())
    assert np.allclose(m["intensity"], parents["intensity"].numpy(), atol=0.01)


def test_result_has_every_section_and_metric(result):
    m = result.metrics
    assert set(m) == {"settings", "plan_nfe", "factual", "pipelines", "headline", "solver", "timing"}
    run = m["pipelines"]["main"]
    assert set(run["main"]) == {"thickness", "intensity", "digit"}
    methods = [r["method"] for r in run["main"]["thickness"]]
    assert methods == ["none", "cfg", "dcfg", "dcfg_per_attribute"]
    t_row = run["main"]["thickness"][2]
    for key in ("thickness_mae", "intensity_mae", "intensity_excess_change", "digit_flip_rate", "gt_l1", "gt_psnr",
                "realism_fd"):
        assert key in t_row and math.isfinite(t_row[key]), key
    assert t_row["groups"] == [["thickness", "intensity"], ["digit"]] and t_row["weights"] == [2.0, 1.0]
    i_row = run["main"]["intensity"][2]
    assert {"intensity_mae", "thickness_abs_change", "digit_flip_rate", "gt_l1"} <= set(i_row)
    y_row = run["main"]["digit"][2]
    assert {"digit_accuracy", "thickness_abs_change", "intensity_abs_change"} <= set(y_row)
    assert "gt_l1" not in y_row  # no ground truth for do(digit)
    assert run["main"]["thickness"][3]["groups"] == [["thickness"], ["intensity"], ["digit"]]
    assert run["main"]["thickness"][3]["n"] == 6
    # sweep: none + every method at every scale; CFG at w = 1 is guidance none
    sweep = run["sweep"]["digit"]
    assert [(r["method"], r["scale"]) for r in sweep] == [("none", None)] + [
        (mth, s) for mth in ("cfg", "dcfg") for s in (1.0, 2.0, 4.0)]
    assert sweep[1]["guidance"] == "none" and sweep[1]["digit_accuracy"] == sweep[0]["digit_accuracy"]
    assert all(r["n"] == 6 for r in sweep)
    # composition and reversibility on cycle_n rows
    assert run["composition"]["n"] == 3 and len(run["composition"]["l1_per_cycle"]) == 2
    assert {(r["intervention"], r["method"]) for r in run["reversibility"]} == {
        (n, mth) for n in ("thickness", "intensity", "digit") for mth in ("none", "cfg", "dcfg")}
    # do(random parent): row counts add up to n
    assert sum(run["random_parent"]["counts"].values()) == 12
    # the factual floor: the toy oracles are exact on the factual images
    assert m["factual"]["digit_accuracy"] == 1.0
    assert m["factual"]["intensity_measurement_mae"] < 0.01


def test_scales_best_cfg_and_fixed_dcfg(result):
    run = result.metrics["pipelines"]["main"]
    for node, chosen in run["scales"].items():
        assert chosen["dcfg"] == 2.0
        sweep = [r for r in run["sweep"][node] if r["method"] == "cfg"]
        key = "digit_accuracy" if node == "digit" else f"{node}_mae"
        vals = {r["scale"]: r[key] for r in sweep}
        best = max(vals.values()) if node == "digit" else min(vals.values())
        assert vals[chosen["cfg"]] == best
        assert chosen["cfg"] == min(s for s, v in vals.items() if v == best)  # ties -> the smaller scale


def test_recommended_scales_follow_the_rule(result):
    run = result.metrics["pipelines"]["main"]
    rec = run["recommended"]["dcfg"]
    rel = {}
    for node, rows in run["sweep"].items():
        key = "digit_accuracy" if node == "digit" else f"{node}_mae"
        loss = {r["scale"]: (1 - r[key]) if node == "digit" else r[key] for r in rows if r["method"] == "dcfg"}
        none = next((1 - r[key]) if node == "digit" else r[key] for r in rows if r["method"] == "none")
        assert loss[rec["per_intervention"][node]] == min(loss.values())
        for s, v in loss.items():
            rel.setdefault(s, []).append(v / max(none, 1e-9))
    means = {s: float(np.mean(v)) for s, v in rel.items()}
    assert means[rec["overall"]] == pytest.approx(min(means.values()))


def test_main_table_reuses_the_sweep_decodings(result, tiny_pipeline):
    run = result.metrics["pipelines"]["main"]
    for node in ("thickness", "intensity", "digit"):
        sweep_dcfg = next(r for r in run["sweep"][node] if r["method"] == "dcfg" and r["scale"] == 2.0)
        assert sweep_dcfg["steps"] == 3
    plan = result.metrics["plan_nfe"]
    spent = run["nfe"]
    # the plan of estimate_nfe is what the run spent when the chosen CFG scales are >= 1 and in the sweep
    assert spent["total"] <= plan["total"]
    c = tiny_pipeline.config
    assert (c.refine_steps, c.invert_predictor) == (1, "extrapolated")  # the default inversion: 1 + r S calls
    assert spent["inversion"] == (1 + 3) * 12


def test_nfe_accounting_of_the_engine(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    eng = QueryEngine(tiny_pipeline, chunk_size=4)
    z = eng.invert(x, a, steps=2)
    assert (tiny_pipeline.config.refine_steps, tiny_pipeline.config.invert_predictor) == (1, "extrapolated")
    inv = (1 + 2) * len(x)  # 1 + r S
    assert eng.nfe == inv
    eng.decode(z, a, "dcfg", [["thickness", "intensity"], ["digit"]], [2.0, 1.0], steps=2)
    assert eng.nfe == inv + 3 * 2 * len(x)
    # chunking does not change the result
    z_one = QueryEngine(tiny_pipeline, chunk_size=64).invert(x, a, steps=2)
    assert torch.allclose(z, z_one, atol=1e-5)


def test_estimate_nfe_counts_a_small_plan(tiny_pipeline):
    c = resolve_config(EvaluationConfig(n=10, steps=2, scales=(1.0, 3.0), scale=3.0, cfg_scale=3.0, sweep_n=4,
                                        cycle_n=2, cycles=3, per_attribute_n=4, interventions=("digit",)),
                       tiny_pipeline, 40)
    est = estimate_nfe(c, tiny_pipeline.graph)
    assert est["inversion"] == 20
    assert est["sweep"] == 2 * 4 * (1 + 2 + 3 + 3)  # none (= CFG 1), CFG 3 (k=2), DCFG 1 and 3 (k=3)
    assert est["main"] == 2 * 6 * (1 + 2 + 3)       # none, CFG, DCFG on the 6 rows past the sweep
    assert est["per_attribute"] == 4 * 2 * 4
    assert est["composition"] == 2 * 2 * 5
    assert est["reversibility"] == 2 * 2 * (3 + 1 + 2 + 3)
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    # with one fixed-point refinement per inversion step, every inversion costs twice as much
    ref = estimate_nfe(c, tiny_pipeline.graph, refine_steps=1)
    assert ref["inversion"] == 40 and ref["composition"] == 2 * 2 * (3 + 2 * 2)
    assert ref["reversibility"] == 2 * 2 * (6 + 1 + 2 + 3) and ref["sweep"] == est["sweep"]


@pytest.mark.parametrize("scale, refine", [(4.0, 0), (3.0, 0), (4.0, 1)])  # scale in the sweep or not
def test_plan_equals_spent_nfe(tiny_pipeline, toy_data, scale, refine):
    import copy
    from dataclasses import replace

    images, parents, oracles = toy_data
    if refine:
        tiny_pipeline = copy.copy(tiny_pipeline)  # the session fixture stays as it is
        tiny_pipeline.config = replace(tiny_pipeline.config, refine_steps=refine)
    cfg = EvaluationConfig(n=7, steps=2, scales=(1.0, 2.0, 4.0), scale=scale, cfg_scale=2.0, sweep_n=4, cycle_n=2,
                           cycles=2, per_attribute_n=5, grid_n=1, interventions=("thickness", "digit"))
    res = evaluate(tiny_pipeline, images, parents, oracles, cfg, progress=False)
    spent = res.metrics["pipelines"]["main"]["nfe"]
    assert {k: v for k, v in spent.items()} == res.metrics["plan_nfe"]


def test_composition_and_reversibility_functions(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    curve = composition(tiny_pipeline, x, a, cycles=2, steps=4)
    assert curve.shape == (len(x), 2) and np.isfinite(curve).all() and (curve >= 0).all()
    # reusing a precomputed inversion gives the same first cycle
    z = tiny_pipeline.invert(x, {k: a[k] for k in tiny_pipeline.graph.image_parents()}, steps=4)
    again = composition(tiny_pipeline, x, a, cycles=1, steps=4, x_T=z)
    assert np.allclose(again[:, 0], curve[:, 0], atol=1e-4)
    d = reversibility(tiny_pipeline, x, a, {"thickness": torch.full((len(x),), 3.0)}, "dcfg", 2.0, steps=4)
    assert d.shape == (len(x),) and np.isfinite(d).all()
    with pytest.raises(ValueError, match="cycles"):
        composition(tiny_pipeline, x, a, cycles=0)


def test_ground_truth_is_asked_once_per_intervention(result):
    # asked once per intervened node (the toy oracles answer None for digit, as Morpho-MNIST does)
    assert sorted(map(tuple, result.truth_calls)) == [("digit",), ("intensity",), ("thickness",)]


def test_same_seed_same_metrics(tiny_pipeline, toy_data, result):
    images, parents, oracles = toy_data
    cfg = EvaluationConfig(n=12, steps=3, scales=(1.0, 2.0, 4.0), scale=2.0, sweep_n=6, cycle_n=3, cycles=2,
                           per_attribute_n=6, grid_n=2, seed=3, interventions=("thickness",))
    again = evaluate(tiny_pipeline, images, parents, oracles, cfg, progress=False)
    a = result.metrics["pipelines"]["main"]["main"]["thickness"][2]
    b = again.metrics["pipelines"]["main"]["main"]["thickness"][2]
    assert a["thickness_mae"] == pytest.approx(b["thickness_mae"], abs=1e-6)
    assert a["gt_l1"] == pytest.approx(b["gt_l1"], abs=1e-6)


def test_ablation_is_evaluated_the_same_way(tiny_pipeline, toy_data):
    images, parents, oracles = toy_data
    cfg = EvaluationConfig(n=6, steps=2, scales=(1.0, 2.0), scale=2.0, sweep_n=4, cycle_n=2, cycles=1,
                           per_attribute_n=0, grid_n=1, interventions=("digit", "thickness"))
    res = evaluate(tiny_pipeline, images, parents, oracles, cfg, ablation=tiny_pipeline, progress=False)
    runs = res.metrics["pipelines"]
    assert set(runs) == {"main", "ablation"}
    # the same pipeline twice: identical numbers, columns side by side in the headline
    assert runs["main"]["main"]["digit"] == runs["ablation"]["main"]["digit"]
    row = next(r for r in res.metrics["headline"] if r["metric"] == "do(digit): digit_accuracy")
    assert {"main/dcfg", "ablation/dcfg", "main/cfg", "ablation/none"} <= set(row["values"])
    assert all(len(r["method"]) for r in runs["main"]["main"]["thickness"])
    assert [r["method"] for r in runs["main"]["main"]["thickness"]] == ["none", "cfg", "dcfg"]


def test_outputs_are_written_atomically(result, tmp_path, monkeypatch):
    out = write_outputs(result, tmp_path / "eval")
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["n"] == 12 and metrics["settings"]["steps"] == 3
    assert metrics["settings"]["scales"] == [1.0, 2.0, 4.0] and metrics["settings"]["sweep_n"] == 6
    report = (out / "report.md").read_text()
    for heading in ("## Headline", "## do(thickness)", "## do(intensity)", "## do(digit)",
                    "## Spurious change at equal effectiveness", "## Composition", "## do(random parent)"):
        assert heading in report
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG" and (out / "grid.png").stat().st_size > 1000
    # a failure while writing leaves the earlier evaluation in place and no temporary folder behind
    before = (out / "metrics.json").read_text()
    import pipeline.evaluation.report as report_mod

    def boom(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report_mod, "plot_grid", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_outputs(result, out)
    assert (out / "metrics.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    with pytest.raises(RuntimeError):
        write_outputs(result, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_out_dir_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_out_dir(tmp_path / "file")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="other content"):
        check_out_dir(other)
    assert check_out_dir(tmp_path / "new" / "eval") == tmp_path / "new" / "eval"


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n=0"), ({"n": 500}, "exceeds the 40 test rows"), ({"steps": 0}, "steps=0"),
    ({"scales": ()}, "scales is empty"), ({"scales": (1.0, float("nan"))}, "scales=nan"),
    ({"sweep_methods": ("dcfg",)}, "must include 'cfg'"), ({"sweep_methods": ("cfg", "magic")}, "magic"),
    ({"sweep_n": 50, "n": 10}, "sweep_n=50 exceeds n=10"), ({"cycle_n": 11, "n": 10}, "cycle_n=11"),
    ({"interventions": ("colour",)}, "colour"), ({"scale": -1.0}, "scale=-1.0"), ({"cfg_scale": "worst"}, "worst"),
    ({"scale": "best", "sweep_methods": ("cfg",)}, "has no 'dcfg'"),
    ({"precision": "fp16"}, "precision='fp16' must be 'auto', 'fp32' or 'bf16'"),
])
def test_config_errors_name_the_setting(tiny_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(EvaluationConfig(**{"n": 10, **kwargs}), tiny_pipeline, 40)


def test_evaluate_input_errors(tiny_pipeline, toy_data):
    images, parents, oracles = toy_data
    with pytest.raises(TypeError, match="Oracles"):
        evaluate(tiny_pipeline, images, parents, object(), SMALL, progress=False)
    with pytest.raises(ValueError, match="'digit'"):
        evaluate(tiny_pipeline, images, {k: v for k, v in parents.items() if k != "digit"}, oracles, SMALL,
                 progress=False)


def test_default_dcfg_scale_is_the_pipelines_per_intervention(tiny_pipeline, toy_data):
    """scale=None: each intervention's DCFG row uses PipelineConfig.default_scale([node]), as
    ``pipe.counterfactual(..., scale=None)`` would; attribute_scales override the global scale."""
    import copy
    from dataclasses import replace

    images, parents, oracles = toy_data
    pipe = copy.copy(tiny_pipeline)
    pipe.config = replace(pipe.config, scale=3.0, attribute_scales={"thickness": 1.5})
    cfg = EvaluationConfig(n=4, steps=2, scales=(1.0, 2.0), scale=None, cfg_scale=2.0, sweep_n=4, cycle_n=0,
                           per_attribute_n=0, grid_n=1, interventions=("thickness", "digit"))
    assert resolve_config(cfg, pipe, len(images)).scale == "pipeline"
    res = evaluate(pipe, images, parents, oracles, cfg, progress=False)
    run = res.metrics["pipelines"]["main"]
    assert run["scales"]["thickness"]["dcfg"] == 1.5 and run["scales"]["digit"]["dcfg"] == 3.0
    dcfg_rows = {node: next(r for r in rows if r["method"] == "dcfg") for node, rows in run["main"].items()}
    assert dcfg_rows["thickness"]["scale"] == 1.5 and dcfg_rows["digit"]["scale"] == 3.0


def test_descendant_weight_setting(tiny_pipeline, toy_data):
    """descendant_weight: None -> the pipeline's (None there: 'scale', the paper's grouping); a number splits
    the intervention's descendants (intensity under do(thickness)) into their own group, in every decoding and
    in the NFE plan; reversibility uses the same groups."""
    import copy
    from dataclasses import replace

    images, parents, oracles = toy_data
    base = dict(n=4, steps=2, scales=(1.0, 2.0), scale=2.0, cfg_scale=2.0, sweep_n=4, cycle_n=2, cycles=1,
                per_attribute_n=0, grid_n=1, interventions=("thickness",))
    assert resolve_config(EvaluationConfig(**base), tiny_pipeline, 40).descendant_weight == "scale"
    pipe = copy.copy(tiny_pipeline)
    pipe.config = replace(pipe.config, descendant_weight=1.0)
    assert resolve_config(EvaluationConfig(**base), pipe, 40).descendant_weight == 1.0
    assert resolve_config(EvaluationConfig(**base, descendant_weight="scale"), pipe, 40).descendant_weight == "scale"
    for bad in ("half", float("nan"), True):
        with pytest.raises(ValueError, match="descendant_weight"):
            resolve_config(EvaluationConfig(**base, descendant_weight=bad), pipe, 40)

    res = evaluate(pipe, images, parents, oracles, EvaluationConfig(**base), progress=False)
    run = res.metrics["pipelines"]["main"]
    dcfg_rows = [r for r in run["sweep"]["thickness"] + run["main"]["thickness"] if r["method"] == "dcfg"]
    assert dcfg_rows and all(r["groups"] == [["thickness"], ["intensity"], ["digit"]] for r in dcfg_rows)
    assert all(r["weights"][1:] == [1.0, 1.0] for r in dcfg_rows)
    assert run["nfe"] == res.metrics["plan_nfe"]  # 4 rows per DCFG step, counted before the run
    paper = evaluate(tiny_pipeline, images, parents, oracles, EvaluationConfig(**base), progress=False)
    prow = next(r for r in paper.metrics["pipelines"]["main"]["main"]["thickness"] if r["method"] == "dcfg")
    assert prow["groups"] == [["thickness", "intensity"], ["digit"]]
    assert paper.metrics["pipelines"]["main"]["nfe"]["sweep"] < run["nfe"]["sweep"]


def test_targets_do_not_depend_on_the_other_interventions_or_n(tiny_pipeline, toy_data):
    """Each intervention's targets come from its own (seed, node) stream: evaluating do(digit) alone, or
    fewer rows, gives the same digit targets (and counterfactuals) as the full run."""
    from pipeline.evaluation.run import prepare_rows

    images, parents, oracles = toy_data
    full = resolve_config(EvaluationConfig(n=8, steps=2, sweep_n=4, cycle_n=0, per_attribute_n=0,
                                           interventions=("thickness", "intensity", "digit")), tiny_pipeline, 40)
    alone = resolve_config(EvaluationConfig(n=5, steps=2, sweep_n=4, cycle_n=0, per_attribute_n=0,
                                            interventions=("digit",)), tiny_pipeline, 40)
    g = tiny_pipeline.graph
    d_full, _ = prepare_rows(images, parents, oracles, full, None, None, g)
    d_alone, _ = prepare_rows(images, parents, oracles, alone, None, None, g)
    assert torch.equal(d_full.rows[:5], d_alone.rows)
    assert torch.equal(d_full.targets["digit"][:5], d_alone.targets["digit"])
    assert not torch.equal(d_full.targets["thickness"], d_full.targets["intensity"])
    other_seed = resolve_config(EvaluationConfig(n=8, steps=2, sweep_n=4, cycle_n=0, per_attribute_n=0,
                                                 interventions=("digit",), seed=1), tiny_pipeline, 40)
    d_seed, _ = prepare_rows(images, parents, oracles, other_seed, None, None, g)
    assert not torch.equal(d_seed.rows, d_full.rows) or not torch.equal(d_seed.targets["digit"],
                                                                         d_full.targets["digit"])


def test_anchor_setting_and_the_paper_method(tiny_pipeline, toy_data):
    """dcfg_form: None -> the pipeline's; 'conditional' decodes DCFG with 1 + (groups not at weight 1) rows per step,
    which the plan counts; conditional DCFG at weight 1 is guidance none and reuses it; dcfg_paper is always the paper's
    equation and grouping."""
    import copy
    from dataclasses import replace

    images, parents, oracles = toy_data
    pipe = copy.copy(tiny_pipeline)
    pipe.config = replace(pipe.config, descendant_weight=1.0, dcfg_form="conditional")
    base = dict(n=5, steps=2, scales=(1.0, 2.0), scale=2.0, cfg_scale=2.0, sweep_n=4, cycle_n=2, cycles=1,
                per_attribute_n=4, grid_n=1, interventions=("thickness", "digit"),
                sweep_methods=("cfg", "dcfg", "dcfg_paper"))
    assert resolve_config(EvaluationConfig(**base), tiny_pipeline, 40).dcfg_form == "paper"
    assert resolve_config(EvaluationConfig(**base), pipe, 40).dcfg_form == "conditional"
    with pytest.raises(ValueError, match="dcfg_form='half' must be 'paper'"):
        resolve_config(EvaluationConfig(**base, dcfg_form="half"), pipe, 40)
    res = evaluate(pipe, images, parents, oracles, EvaluationConfig(**base), progress=False)
    run = res.metrics["pipelines"]["main"]
    assert run["nfe"] == res.metrics["plan_nfe"]
    assert res.metrics["settings"]["dcfg_form"] == "conditional"
    sweep = run["sweep"]["thickness"]
    dc = {r["scale"]: r for r in sweep if r["method"] == "dcfg"}
    assert dc[2.0]["dcfg_form"] == "conditional" and dc[2.0]["groups"] == [["thickness"], ["intensity"], ["digit"]]
    assert dc[1.0]["guidance"] == "none"  # eps(c) exactly: the unguided decodings
    none = next(r for r in sweep if r["method"] == "none")
    assert dc[1.0]["thickness_mae"] == none["thickness_mae"]
    paper = {r["scale"]: r for r in sweep if r["method"] == "dcfg_paper"}
    assert paper[2.0]["dcfg_form"] == "paper" and paper[2.0]["groups"] == [["thickness", "intensity"], ["digit"]]
    assert {(t["method"], t["spurious"]) for t in run["tradeoff"] if t["intervention"] == "thickness"} >= {
        ("dcfg", "intensity_excess_change"), ("dcfg_paper", "intensity_excess_change")}
    # the same evaluation with dcfg_form='paper' spends more: 4 rows per DCFG step instead of 2 under do(thickness)
    null = evaluate(pipe, images, parents, oracles, EvaluationConfig(**base, dcfg_form="paper"), progress=False)
    assert null.metrics["pipelines"]["main"]["nfe"] == null.metrics["plan_nfe"]
    assert null.metrics["plan_nfe"]["main"] > res.metrics["plan_nfe"]["main"]


def test_precision_auto_resolves_on_the_image_models_hardware(tiny_pipeline, monkeypatch):
    """precision='auto' (the default) is recorded resolved: bf16 where the CPU has native bf16 units, fp32 where
    it has not or where the image model has no inference settings; explicit settings pass through."""
    import copy

    base = dict(n=5, steps=2, sweep_n=4, cycle_n=0, per_attribute_n=0)
    assert EvaluationConfig().precision == "auto"
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=native: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=native: v, raising=False)
        assert resolve_config(EvaluationConfig(**base), tiny_pipeline, 40).precision == want
        assert resolve_config(EvaluationConfig(**base, precision="fp32"), tiny_pipeline, 40).precision == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    bare = copy.copy(tiny_pipeline)
    bare.image_model = object()  # an image model without set_inference()
    assert resolve_config(EvaluationConfig(**base), bare, 40).precision == "fp32"


def test_runner_still_exports_every_name_and_warns_for_its_former_private_ones():
    """runner.py was split into config, plan, run and headline: its public names still import from it, and the
    private names other code used resolve to their public successors with a DeprecationWarning."""
    import pipeline.evaluation.runner as runner
    from pipeline.evaluation import config, headline, plan, run

    for module in (config, plan, run, headline):
        for name in module.__all__:
            assert getattr(runner, name) is getattr(module, name), name
    for old, new in (("_groups_for", plan.groups_for), ("_prepare", run.prepare_rows),
                     ("_total_spurious", run.total_spurious), ("_headline", headline.headline_rows)):
        with pytest.warns(DeprecationWarning, match=old):
            assert getattr(runner, old) is new
    with pytest.raises(AttributeError):
        getattr(runner, "_no_such_name")  # noqa: B009 (the module's __getattr__ is the subject)


def test_total_spurious_change_sums_invariants_in_sd_units():
    """Invariant continuous parents count in units of their test sd, invariant discrete ones by their flip rate;
    the intervened node and its descendants do not count."""
    from pipeline.evaluation.run import total_spurious
    from scm import CausalGraph

    g = CausalGraph.from_dict({"nodes": {"a": {"kind": "real"}, "b": {"kind": "real"}, "c": {"kind": "real"},
                                         "d": {"kind": "binary"}, "x": {"kind": "image", "shape": [1, 8, 8]}},
                               "edges": [["a", "b"], ["a", "x"], ["b", "x"], ["c", "x"], ["d", "x"]]})
    row = {"a_mae": 0.1, "b_excess_change": 9.0, "c_abs_change": 0.5, "d_flip_rate": 0.25}
    assert total_spurious(g, "a", row, {"a": 1.0, "b": 1.0, "c": 2.0}) == pytest.approx(0.5 / 2.0 + 0.25)
    assert total_spurious(g, "a", {"a_mae": 0.1}, {"c": 2.0}) is None
