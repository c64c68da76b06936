"""Calibrated DCFG weights (pipeline.calibrate): the curves, the choice, the config, the CLI's refusals."""
import dataclasses
import json
import subprocess
import sys

import pytest

from pipeline.calibrate import calibrate_guidance, plan_cost, validation_spec, write_report
from pipeline.core import CounterfactualPipeline
from pipeline.evaluation.runner import EvaluationConfig, groups_for, resolve_config

WEIGHTS, ANCHORS = (1.0, 2.0, 4.0), (1.0, 3.0)


@pytest.fixture(scope="module")
def calibration(tiny_pipeline, toy_data):
    images, parents, oracles = toy_data
    return calibrate_guidance(tiny_pipeline, images, parents, oracles, n=8, weights=WEIGHTS,
                              anchor_weights=ANCHORS, steps=3, progress=False)


def test_each_weight_is_the_best_point_of_its_curve(calibration):
    assert set(calibration.attribute_scales) == {"thickness", "intensity", "digit"}
    for a, curve in calibration.amplified.items():
        assert [c["weight"] for c in curve] == list(WEIGHTS)
        key = "accuracy" if a == "digit" else "mae"
        vals = [c[key] for c in curve]
        best = max(vals) if a == "digit" else min(vals)
        chosen = [c["weight"] for c in curve if c[key] == best]
        assert calibration.attribute_scales[a] == min(chosen, key=lambda w: abs(w - 1.0))
    # thickness is invariant under do(intensity) and do(digit); intensity under do(digit); digit under both others
    per = {a: sorted(c[0]["per_intervention"]) for a, c in calibration.anchor.items()}
    assert per == {"thickness": ["digit", "intensity"], "intensity": ["digit"], "digit": ["intensity", "thickness"]}
    for a, curve in calibration.anchor.items():
        key = "flip_rate" if a == "digit" else "abs_change"
        assert calibration.anchor_scales[a] == min(curve, key=lambda c: (c[key], abs(c["weight"] - 1)))["weight"]


def test_cost_is_announced_up_front_and_bounds_the_spend(calibration, tiny_pipeline):
    planned = plan_cost(tiny_pipeline.graph, 8, 3, WEIGHTS, ANCHORS, dcfg_form=tiny_pipeline.config.dcfg_form,
                        descendant_weight=tiny_pipeline.config.descendant_weight,
                        refine_steps=tiny_pipeline.config.refine_steps)
    assert 0 < calibration.nfe <= planned


def test_the_pipeline_stores_and_uses_the_weights(tiny_pipeline, toy_data, tmp_path):
    images, parents, oracles = toy_data
    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                  dataclasses.replace(tiny_pipeline.config))
    cal = pipe.calibrate_guidance((images, parents), oracles, n=6, weights=(1.0, 2.0), anchor_weights=(1.0, 2.0),
                                  steps=2, progress=False)
    assert pipe.config.attribute_scales == cal.attribute_scales
    assert pipe.config.anchor_scales == cal.anchor_scales
    pipe.config = dataclasses.replace(pipe.config, anchor_scales={"digit": 2.5})
    res = pipe.counterfactual(images[:2], {k: v[:2] for k, v in parents.items()}, do={"thickness": 3.0}, steps=2)
    assert ["digit"] in res.groups and res.weights[res.groups.index(["digit"])] == 2.5
    # explicit groups are the caller's: no anchor weights added
    res = pipe.counterfactual(images[:2], {k: v[:2] for k, v in parents.items()}, do={"thickness": 3.0}, steps=2,
                              groups="per_attribute")
    assert res.weights[res.groups.index(["digit"])] == 1.0
    # the evaluation's dcfg method follows the pipeline's anchor weights, the paper's variant does not
    c = resolve_config(EvaluationConfig(n=4, steps=2), pipe, 40)
    assert c.anchor_scales == {"digit": 2.5}
    _, g, w, _ = groups_for(pipe.graph, "thickness", "dcfg", 2.0, 1.0, c.descendant_weight, c.dcfg_form,
                            c.anchor_scales)
    assert w[g.index(["digit"])] == 2.5
    _, g, w, _ = groups_for(pipe.graph, "thickness", "dcfg_paper", 2.0, 1.0, c.descendant_weight, c.dcfg_form,
                            c.anchor_scales)
    assert ["digit"] in g and w[g.index(["digit"])] == 1.0
    saved = pipe.save(tmp_path / "calibrated")
    assert CounterfactualPipeline.load(saved).config.anchor_scales == {"digit": 2.5}


def test_report_shows_the_curves(calibration, tmp_path):
    out = write_report(calibration, tmp_path / "cal", command="dcfg calibrate --n 8")
    blob = json.loads((out / "calibration.json").read_text())
    assert blob["attribute_scales"] == calibration.attribute_scales
    report = (out / "report.md").read_text()
    assert "dcfg calibrate --n 8" in report and "| thickness (mae) |" in report
    assert (out / "curves.png").stat().st_size > 1000


def test_bad_calibration_input_is_a_clear_error(tiny_pipeline, toy_data):
    images, parents, oracles = toy_data
    lacking = {k: v for k, v in parents.items() if k != "intensity"}
    with pytest.raises(ValueError, match=r"lack attribute\(s\) \['intensity'\]"):
        calibrate_guidance(tiny_pipeline, images, lacking, oracles, n=4, steps=2, progress=False)
    with pytest.raises(ValueError, match="every weight must be a positive finite number"):
        calibrate_guidance(tiny_pipeline, images, parents, oracles, n=4, weights=(1.0, -2.0), progress=False)
    with pytest.raises(ValueError, match="is a test split"):
        validation_spec(tiny_pipeline, "csv:faces.csv,split=test")
    with pytest.raises(ValueError, match="give validation rows with --data"):
        validation_spec(tiny_pipeline, None)
    with pytest.raises(ValueError, match=r"anchor_scales\['digit'\]=-1"):
        dataclasses.replace(tiny_pipeline.config, anchor_scales={"digit": -1.0})


def test_cli_refuses_the_test_split_in_one_line(tmp_path):
    out = tmp_path / "cal"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "calibrate", "--data", "morpho-colour-test",
                          "--pipeline", "morpho-colour", "--out", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a test split" in lines[0], res.stderr
    assert not out.exists()
