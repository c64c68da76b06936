"""The evaluation's metrics on hand-made inputs with known answers.

Graph of the role tests (the Morpho-MNIST graph):  thickness -> intensity;  (t, i, digit) -> image
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.metrics import (
    abs_change,
    equal_effectiveness_ratio,
    excess_change,
    flip_rate,
    frechet_distance,
    pareto_front,
)
from pipeline.evaluation.scores import effectiveness, ground_truth_error, realism, roles, spurious_change
from pipeline.presets import morphomnist_graph


@pytest.fixture(scope="module")
def graph():
    return morphomnist_graph()


# ---------------------------------------------------------------------------------------------- change measures
def test_change_measures_known_values():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert abs_change(a, a) == 0.0
    assert abs_change(a, a + 0.25) == pytest.approx(0.25)
    # measured change equals the implied change -> no excess; an extra +5 on every row -> 5
    assert excess_change(a, a + 10, a, a + 10) == 0.0
    assert excess_change(a, a + 15, a, a + 10) == pytest.approx(5.0)
    assert excess_change(a, a + 5, a, a + 10) == pytest.approx(5.0)  # too little change counts too
    assert flip_rate([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert flip_rate([1, 2, 0, 0], [1, 2, 3, 4]) == 0.5
    with pytest.raises(ValueError, match="one shape"):
        excess_change(a, a, a, a[:2])


def test_roles_follow_the_dag(graph):
    assert roles(graph, ["thickness"]) == {"thickness": "intervened", "intensity": "descendant", "digit": "invariant"}
    assert roles(graph, ["intensity"]) == {"thickness": "invariant", "intensity": "intervened", "digit": "invariant"}
    assert roles(graph, ["digit"]) == {"thickness": "invariant", "intensity": "invariant", "digit": "intervened"}
    with pytest.raises(ValueError, match="'colour'"):
        roles(graph, ["colour"])


def _attrs(t, i, y):
    return {"thickness": np.asarray(t, float), "intensity": np.asarray(i, float), "digit": np.asarray(y)}


def test_effectiveness_and_spurious_under_do_thickness(graph):
    factual = _attrs([2.0, 3.0], [100.0, 150.0], [1, 7])
    fmeas = _attrs([2.1, 2.9], [102.0, 149.0], [1, 7])
    target = _attrs([4.0, 1.0], [180.0, 90.0], [1, 7])            # the SCM's i' follows t'
    cmeas = _attrs([3.8, 1.2], [190.0, 91.0], [1, 3])              # second digit flipped
    eff = effectiveness(graph, ["thickness"], target, cmeas)
    assert eff == pytest.approx({"thickness_mae": 0.2, "intensity_mae": 5.5})
    spur = spurious_change(graph, ["thickness"], factual, fmeas, target, cmeas)
    # intensity: measured changes +88 and -58, implied +80 and -60 -> excess 8 and 2
    assert spur == pytest.approx({"intensity_excess_change": 5.0, "digit_flip_rate": 0.5})


def test_effectiveness_and_spurious_under_do_digit(graph):
    factual = _attrs([2.0, 3.0], [100.0, 150.0], [1, 7])
    fmeas = _attrs([2.0, 3.0], [100.0, 150.0], [1, 7])
    target = _attrs([2.0, 3.0], [100.0, 150.0], [4, 2])
    cmeas = _attrs([2.5, 3.0], [100.0, 120.0], [4, 7])
    assert effectiveness(graph, ["digit"], target, cmeas) == {"digit_accuracy": 0.5}
    assert spurious_change(graph, ["digit"], factual, fmeas, target, cmeas) == pytest.approx(
        {"thickness_abs_change": 0.25, "intensity_abs_change": 15.0})
    # an identical pair gives zero spurious change
    same = spurious_change(graph, ["digit"], factual, fmeas, target, fmeas)
    assert same == {"thickness_abs_change": 0.0, "intensity_abs_change": 0.0}


def test_ground_truth_error_and_realism_known_values():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    same = ground_truth_error(x, x)
    assert same["gt_l1"] == 0.0 and same["gt_psnr"] == float("inf")
    black = torch.full((3, 1, 8, 8), -1.0)
    res = ground_truth_error(black + 0.1, black)  # +0.05 on [0, 1]
    assert res["gt_l1"] == pytest.approx(0.05)
    assert res["gt_psnr"] == pytest.approx(-10 * np.log10(0.05 ** 2), abs=1e-4)
    f = np.random.default_rng(1).normal(size=(3000, 6))
    assert realism(f, f) == pytest.approx(0.0, abs=1e-6)
    assert realism(f + 2.0, f) == pytest.approx(24.0, rel=0.05)  # ||mu||^2 = 6 * 4
    assert frechet_distance(f, f + 2.0) == realism(f, f + 2.0)


# ---------------------------------------------------------------------------------------------- trade-off
def test_pareto_front_drops_dominated_points():
    # MAE (lower is better): (0.6, 0.4) is dominated by (0.5, 0.2); duplicates collapse
    e, s = pareto_front([0.9, 0.5, 0.3, 0.6, 0.3], [0.1, 0.2, 0.3, 0.4, 0.3], higher_is_better=False)
    assert (-e).tolist() == [0.9, 0.5, 0.3] and s.tolist() == [0.1, 0.2, 0.3]
    e, s = pareto_front([0.5, 0.9, 0.7], [0.1, 0.3, 0.5], higher_is_better=True)  # accuracy
    assert e.tolist() == [0.5, 0.9] and s.tolist() == [0.1, 0.3]
    with pytest.raises(ValueError, match="same non-zero length"):
        pareto_front([1.0], [1.0, 2.0], True)


@pytest.mark.parametrize("factor", [0.5, 0.25, 2.0])
def test_equal_effectiveness_ratio_on_linear_curves(factor):
    # CFG: spurious = 1 - MAE on MAE in [0.2, 1.0]; the method: factor * that, sampled at other MAEs and over a
    # wider range; on the common range [0.3, 1.0] the ratio of means is exactly `factor`.
    cfg = (np.array([1.0, 0.7, 0.4, 0.2]), 1 - np.array([1.0, 0.7, 0.4, 0.2]) + 0.1)
    mae = np.array([1.3, 0.9, 0.55, 0.3])
    method = (mae, factor * (1 - mae + 0.1))
    res = equal_effectiveness_ratio(method, cfg, higher_is_better=False)
    assert res["ratio"] == pytest.approx(factor, rel=1e-9)
    assert res["range"] == pytest.approx([0.3, 1.0])


def test_equal_effectiveness_ratio_ignores_dominated_overshoot_and_handles_accuracy():
    # accuracy (higher is better); CFG's last scale overshoots: less accurate and more spurious (dominated)
    cfg = ([0.6, 0.8, 1.0, 0.9], [0.2, 0.4, 0.6, 0.9])
    dcfg = ([0.6, 0.8, 1.0], [0.1, 0.2, 0.3])
    res = equal_effectiveness_ratio(dcfg, cfg, higher_is_better=True)
    assert res["ratio"] == pytest.approx(0.5)
    assert res["range"] == pytest.approx([0.6, 1.0])


def test_equal_effectiveness_ratio_undefined_cases():
    # MAE: the method (0.2 -> 0.1) is more effective than the baseline everywhere (0.6 -> 0.5)
    res = equal_effectiveness_ratio(([0.2, 0.1], [1.0, 2.0]), ([0.6, 0.5], [4.0, 8.0]), higher_is_better=False)
    assert res["ratio"] is None and "do not overlap" in res["reason"]
    # nearest ends: the method's least effective point (0.2, 1.0) vs the baseline's best (0.5, 8.0)
    assert res["nearest"] == {"ratio": pytest.approx(1.0 / 8.0), "method_more_effective": True}
    res = equal_effectiveness_ratio(([0.6, 0.5], [4.0, 8.0]), ([0.2, 0.1], [1.0, 2.0]), higher_is_better=False)
    assert res["nearest"] == {"ratio": pytest.approx(8.0 / 1.0), "method_more_effective": False}
    res = equal_effectiveness_ratio(([0.6, 0.1], [1.0, 2.0]), ([0.5, 0.2], [0.0, 0.0]), higher_is_better=False)
    assert res["ratio"] is None and "no spurious change" in res["reason"]
    # ranges touching at one point: the ratio at that point
    res = equal_effectiveness_ratio(([0.5, 0.9], [0.1, 0.3]), ([0.1, 0.5], [0.4, 0.8]), higher_is_better=True)
    assert res["ratio"] == pytest.approx(0.1 / 0.8)
    with pytest.raises(ValueError, match="grid"):
        equal_effectiveness_ratio(([0.5], [0.1]), ([0.5], [0.1]), True, grid=1)


def test_ratio_at_the_baselines_best_effectiveness():
    # MAE (lower is better). CFG's front: (1.0, 2), (0.5, 6), (0.3, 10); its (0.4, 12) overshoot is dominated.
    cfg = ([1.0, 0.5, 0.3, 0.4], [2.0, 6.0, 10.0, 12.0])
    # the method reaches MAE 0.2; at CFG's best, MAE 0.3, its front interpolates between (0.4, 3) and (0.2, 5): 4
    method = ([1.0, 0.4, 0.2], [2.0, 3.0, 5.0])
    best = equal_effectiveness_ratio(method, cfg, higher_is_better=False)["at_baseline_best"]
    assert best["effectiveness"] == pytest.approx(0.3)
    assert best["method"] == pytest.approx(4.0) and best["baseline"] == pytest.approx(10.0)
    assert best["ratio"] == pytest.approx(0.4) and best["reason"] is None
    # identical fronts: 1 at every effectiveness
    same = equal_effectiveness_ratio(cfg, cfg, higher_is_better=False)
    assert same["ratio"] == pytest.approx(1.0) and same["at_baseline_best"]["ratio"] == pytest.approx(1.0)
    # accuracy (higher is better): CFG's best is 1.0; a method that only reaches 0.9 has no ratio there
    short = equal_effectiveness_ratio(([0.7, 0.9], [0.1, 0.2]), ([0.7, 1.0], [0.3, 0.6]), higher_is_better=True)
    assert short["at_baseline_best"]["ratio"] is None
    assert "does not reach the baseline's best effectiveness 1" in short["at_baseline_best"]["reason"]
    assert short["ratio"] is not None  # the mean over the common range [0.7, 0.9] still exists
    # a method whose whole front is more effective than CFG's best: its least spurious point counts there
    ahead = equal_effectiveness_ratio(([0.2, 0.1], [3.0, 6.0]), cfg, higher_is_better=False)["at_baseline_best"]
    assert ahead["method"] == pytest.approx(3.0) and ahead["ratio"] == pytest.approx(0.3)
    zero = equal_effectiveness_ratio(([0.7, 1.0], [0.1, 0.2]), ([0.7, 1.0], [0.0, 0.0]), higher_is_better=True)
    assert zero["at_baseline_best"]["ratio"] is None and "no spurious change" in zero["at_baseline_best"]["reason"]
