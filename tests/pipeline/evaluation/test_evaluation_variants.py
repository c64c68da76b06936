"""Guidance variants in the evaluation: the method grammar, the sweep, the NFE plan, the report and the CLI."""
from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from pipeline.evaluation.engine import QueryEngine, decode_nfe, invert_nfe
from pipeline.evaluation.runner import EvaluationConfig, estimate_nfe, evaluate, parse_method, resolve_config


@pytest.mark.parametrize("name, parsed", [
    ("cfg", ("cfg", None, False)), ("cfg+apg", ("cfg", "apg", False)), ("dcfg+cfgpp", ("dcfg", "cfgpp", False)),
    ("cfg+interval", ("cfg", None, True)), ("dcfg_paper+apg+interval", ("dcfg_paper", "apg", True)),
])
def test_method_grammar(name, parsed):
    assert parse_method(name) == parsed


@pytest.mark.parametrize("name, match", [
    ("none+apg", "unknown"), ("magic+apg", "unknown"), ("cfg+foo", "'foo' is not allowed"),
    ("cfg+interval+apg", "'apg' is not allowed"), ("cfg+apg+cfgpp", "'cfgpp' is not allowed"),
    ("cfg+interval+interval", "'interval' is not allowed"), ("cfg+", "'' is not allowed"),
])
def test_method_grammar_errors(name, match):
    with pytest.raises(ValueError, match=match):
        parse_method(name)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sweep_methods=("cfg", "cfg+interval")), r"sweep method\(s\) \['cfg\+interval'\] need a guidance interval"),
    (dict(sweep_methods=("cfg", "cfg+interval"), interval=(0, 1200)), r"interval=\(0, 1200\) is outside \[0, 1000\]"),
    (dict(interval=(400, 100)), r"interval=\(400, 100\) must be \(lo, hi\) with lo < hi"),
    (dict(sweep_methods=("cfg", "cfg+apg"), apg_eta=1.5), r"apg_eta=1.5 must be a number in \[0, 1\]"),
    (dict(sweep_methods=("cfg", "dcfg+fancy")), r"sweep method 'dcfg\+fancy'"),
])
def test_variant_config_errors(tiny_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(EvaluationConfig(n=10, **kwargs), tiny_pipeline, 40)


def test_nfe_of_the_variants_by_hand():
    # trailing grid of 4 steps: 999, 749, 499, 249; the interval [300, 800] holds 749 and 499
    assert decode_nfe("cfg", steps=4) == 8 and decode_nfe("cfg", steps=4, interval=(300, 800)) == 2 + 2 + 1 + 1
    assert decode_nfe("dcfg", [["a"], ["b"]], [3.0, 1.0], steps=4, interval=(300, 800)) == 3 + 3 + 1 + 1
    assert decode_nfe("dcfg", [["a"], ["b"]], [3.0, 1.0], "conditional", steps=4, interval=(300, 800)) == 2 + 2 + 1 + 1
    # CFG++'s inversion at null: 2 rows per evaluation (inside the interval); 4 steps, 1 refinement: 8 evaluations at
    # 249, 249, 249, 499, 499, 749, 749, 999 -> inside [300, 800]: 4 of them
    assert invert_nfe(4, 1, "cfgpp") == 16 and invert_nfe(4, 1, "cfgpp", interval=(300, 800)) == 4 * 2 + 4 * 1
    assert invert_nfe(4, 1, "apg") == invert_nfe(4, 1) == invert_nfe(4, 1, "cfgpp", "conditional") == 8


def test_engine_counts_what_the_variants_cost(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    eng = QueryEngine(tiny_pipeline, chunk_size=4)
    r = tiny_pipeline.config.refine_steps
    z = eng.invert(x, a, steps=4, variant="cfgpp", dcfg_form="paper", interval=(300, 800))
    assert tiny_pipeline.config.invert_predictor == "extrapolated"
    # the calls at 249 (x_0), 249, 499, 749, 999 (one corrector each); 2 rows inside [300, 800]
    assert eng.nfe == invert_nfe(4, r, "cfgpp", "paper", (300, 800), predictor="extrapolated") * len(x) == 7 * len(x)
    before = eng.nfe
    eng.decode(z, a, "cfg", None, [2.0], steps=4, variant="apg", interval=(300, 800),
               apg={"apg_eta": 0.0, "apg_threshold": 0.0, "apg_momentum": 0.0})
    assert eng.nfe - before == 6 * len(x)


SWEEP = ("cfg", "dcfg", "cfg+apg", "cfg+cfgpp", "dcfg+cfgpp", "cfg+interval", "dcfg+apg+interval")


@pytest.fixture(scope="module")
def variant_result(tiny_pipeline, toy_data):
    images, parents, oracles = toy_data
    cfg = EvaluationConfig(n=5, steps=2, scales=(1.0, 3.0), scale=3.0, cfg_scale=3.0, sweep_n=4, cycle_n=2,
                           cycles=1, per_attribute_n=0, grid_n=1, interventions=("thickness", "digit"),
                           sweep_methods=SWEEP, interval=(0, 600), apg_eta=0.5)
    return evaluate(tiny_pipeline, images, parents, oracles, cfg, progress=False)


def test_the_sweep_runs_every_variant_and_the_plan_is_exact(variant_result):
    m = variant_result.metrics
    run = m["pipelines"]["main"]
    assert run["nfe"] == m["plan_nfe"]
    assert list(m["settings"]["interval"]) == [0.0, 600.0] and m["settings"]["apg_eta"] == 0.5
    sweep = run["sweep"]["thickness"]
    assert {r["method"] for r in sweep} == {"none", *SWEEP}
    by = {(r["method"], r["scale"]): r for r in sweep}
    none = next(r for r in sweep if r["method"] == "none")
    # APG and the interval at w = 1 are the plain conditional (guidance none, the same decodings)
    for method in ("cfg+apg", "cfg+interval"):
        assert by[(method, 1.0)]["guidance"] == "none" and by[(method, 1.0)]["thickness_mae"] == none["thickness_mae"]
    # CFG++ at w = 1 is not: it re-noises with eps(null)
    assert by[("cfg+cfgpp", 1.0)]["guidance"] == "cfg"
    for method in SWEEP:
        assert math.isfinite(by[(method, 3.0)]["thickness_mae"]), method
    assert by[("cfg+apg", 3.0)]["thickness_mae"] != by[("cfg", 3.0)]["thickness_mae"]
    traded = {t["method"] for t in run["tradeoff"] if t["intervention"] == "thickness"}
    assert traded == set(SWEEP) - {"cfg"}
    assert set(run["recommended"]) >= set(SWEEP)


def test_the_plan_counts_the_interval_and_cfgpp_inversion(tiny_pipeline):
    base = dict(n=6, steps=4, scales=(3.0,), scale=3.0, cfg_scale=3.0, sweep_n=4, cycle_n=0, per_attribute_n=0,
                interventions=("digit",), interval=(300, 800))
    plain = estimate_nfe(resolve_config(EvaluationConfig(**base, sweep_methods=("cfg",)), tiny_pipeline, 40),
                         tiny_pipeline.graph)
    more = {}
    for extra in ("cfg+apg", "cfg+interval", "cfg+cfgpp"):
        c = resolve_config(EvaluationConfig(**base, sweep_methods=("cfg", extra)), tiny_pipeline, 40)
        more[extra] = estimate_nfe(c, tiny_pipeline.graph)["sweep"] - plain["sweep"]
    assert more["cfg+apg"] == 4 * 8                                       # CFG's 2 rows x 4 steps x 4 rows
    assert more["cfg+interval"] == 4 * 6                                   # 2 + 2 + 1 + 1 per row
    assert more["cfg+cfgpp"] == 4 * 8 + 4 * invert_nfe(4, 0, "cfgpp")     # and CFG++'s own inversion


def test_report_and_plot_name_the_variants(variant_result, tmp_path):
    from pipeline.evaluation.report import format_report, to_json, write_outputs

    text = format_report(to_json(variant_result.metrics))
    for label in ("CFG + APG", "DCFG + CFG++", "CFG + interval", "DCFG + APG + interval"):
        assert label in text, label
    write_outputs(variant_result, tmp_path / "eval")
    assert (tmp_path / "eval" / "tradeoff.png").stat().st_size > 0


def test_cli_evaluate_rejects_bad_variant_methods(tmp_path):
    from pipeline.cli import main

    for args, fragment in ((["--sweep-methods", "cfg,cfg+magic"], "--sweep-methods: sweep method 'cfg+magic'"),
                           (["--sweep-methods", "cfg,cfg+interval", "--interval", "9,3"],
                            "--interval '9,3' must be LO,HI"),
                           (["--sweep-methods", "cfg,cfg+interval"], "need a guidance interval"),
                           (["--sweep-methods", "cfg,cfg+interval", "--interval", "0,5000"],
                            "interval=(0.0, 5000.0) is outside [0, 1000]"),
                           (["--apg-eta", "2"], "--apg-eta")):
        res = CliRunner().invoke(main, ["evaluate", "--out", str(tmp_path / "ev"), "--n", "2"] + args)
        errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert res.exit_code == 2 and len(errors) == 1 and fragment in errors[0], res.output
        assert not (tmp_path / "ev").exists()
