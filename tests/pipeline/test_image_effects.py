"""Image-level effects (pipeline.effects): outcomes, intervals, the estimator on a tiny pipeline, ground truth.

Toy graph of the tiny pipeline (conftest.py), 8x8 images:

    thickness -> intensity;  (thickness, intensity, digit) -> image = a bright square, side ~ thickness,
                                                                      brightness ~ intensity
"""
from __future__ import annotations

import types

import pytest
import torch
from pipeline_helpers import draw_attributes, render

from pipeline.effects import (
    ClassifierProbability,
    ImageEffect,
    Morphometric,
    StrokeArea,
    compare_effects,
    confidence_interval,
    effect_from_images,
    image_effect,
    morpho_true_effect,
    resolve_outcome,
)


def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


# ------------------------------------------------------------------------------------------ outcomes
@pytest.mark.parametrize("threshold,expected", [(0.5, [6.0, 0.0]), (0.9, [2.0, 0.0]), (0.0, [6.0, 64.0])])
def test_stroke_area_counts_pixels_above_threshold(threshold, expected):
    x = -torch.ones(2, 1, 8, 8)
    x[0, 0, 0, :4] = 0.5     # 0.75 on [0, 1]
    x[0, 0, 1, :2] = 0.9     # 0.95 on [0, 1]
    x[1] = -0.999            # just above 0 on [0, 1]
    assert StrokeArea(threshold)(x).tolist() == expected


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.5", True])
def test_stroke_area_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        StrokeArea(bad)


def test_morphometric_measures_a_bar():
    x = -torch.ones(2, 1, 28, 28)
    x[:, 0, 6:22, 12:15] = torch.tensor([0.2, 0.8])[:, None, None]
    assert Morphometric("intensity")(x).tolist() == pytest.approx([153.0, 229.5], abs=0.01)
    with pytest.raises(ValueError, match="unknown morphometric 'width'"):
        Morphometric("width")


def test_classifier_probability_is_a_distribution_over_targets():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.randn(5, 1, 4, 4)
    probs = torch.stack([ClassifierProbability(net, k)(x) for k in range(3)], 1)
    assert probs.shape == (5, 3)
    assert torch.allclose(probs.sum(1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="class 3 needs"):
        ClassifierProbability(net, 3)(x)
    assert net.training  # put back in training mode, also after the error
    with pytest.raises(ValueError, match="class index"):
        ClassifierProbability(net, -1)


def test_resolve_outcome_names_and_errors():
    assert resolve_outcome("stroke_area")[0] == "stroke_area"
    assert resolve_outcome(_brightness)[0] == "_brightness"
    with pytest.raises(ValueError, match="unknown outcome 'area'"):
        resolve_outcome("area")
    with pytest.raises(TypeError, match="outcome must be"):
        resolve_outcome(3)


# ------------------------------------------------------------------------------------------ intervals
def test_normal_interval_matches_the_formula():
    v = torch.tensor([1.0, 2.0, 4.0, 7.0])
    lo, hi = confidence_interval(v, "normal", confidence_level=0.9)
    half = 1.6448536 * float(v.std()) / 2.0
    assert (lo, hi) == pytest.approx((3.5 - half, 3.5 + half), abs=1e-6)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    v = torch.randn(50, generator=torch.Generator().manual_seed(0)) + 3.0
    a = confidence_interval(v, "bootstrap", n_bootstrap=500, seed=1)
    assert a == confidence_interval(v, "bootstrap", n_bootstrap=500, seed=1)
    assert a != confidence_interval(v, "bootstrap", n_bootstrap=500, seed=2)
    assert a[0] < float(v.mean()) < a[1]
    normal = confidence_interval(v, "normal")
    assert abs((a[1] - a[0]) - (normal[1] - normal[0])) < 0.25 * (normal[1] - normal[0])


@pytest.mark.parametrize("kwargs,match", [({"values": [1.0]}, "at least 2 units"),
                                          ({"method": "t"}, "unknown ci method"),
                                          ({"confidence_level": 1.0}, "confidence_level"),
                                          ({"n_bootstrap": 10}, "n_bootstrap")])
def test_interval_errors(kwargs, match):
    args = {"values": [1.0, 2.0, 3.0], **kwargs}
    with pytest.raises(ValueError, match=match):
        confidence_interval(args.pop("values"), **args)


# ------------------------------------------------------------------------------------------ from images
def test_effect_from_images_is_unit_by_unit():
    attrs = draw_attributes(6, seed=1)
    base = render(attrs)
    thick = render({**attrs, "thickness": attrs["thickness"] + 1.0})
    eff = effect_from_images(thick, base, _brightness, do={"thickness": 1.0}, ci="normal")
    assert torch.allclose(eff.individual, _brightness(thick).double() - _brightness(base).double())
    assert eff.value == pytest.approx(float(eff.individual.mean()))
    assert eff.value > 0 and eff.n == 6
    assert eff.confidence_interval[0] <= eff.value <= eff.confidence_interval[1]
    with pytest.raises(ValueError, match="same shape"):
        effect_from_images(thick[:3], base, _brightness)
    with pytest.raises(ValueError, match="one number per image"):
        effect_from_images(thick, base, lambda x: x.flatten(1))


# ------------------------------------------------------------------------------------------ the estimator
def test_identical_arms_give_zero_effect(tiny_pipeline, tiny_batch):
    x, attrs = tiny_batch
    eff = image_effect(tiny_pipeline, x, attrs, {"thickness": 3.0}, _brightness, control={"thickness": 3.0},
                       steps=4, ci="normal")
    assert torch.equal(eff.images, eff.baseline_images)
    assert eff.value == 0.0 and eff.individual.abs().max() == 0.0


def test_thicker_squares_cover_more_pixels(tiny_pipeline, tiny_batch):
    x, attrs = tiny_batch
    do, control = {"thickness": 4.0}, {"thickness": 1.5}
    eff = image_effect(tiny_pipeline, x, attrs, do, StrokeArea(), control=control, steps=10)
    # the renderer's truth, with the descendant intensity from the pipeline's own SCM
    u = tiny_pipeline.scm.abduct(attrs, seed=0)
    truth = effect_from_images(render(tiny_pipeline.scm.predict(u, do)), render(tiny_pipeline.scm.predict(u, control)),
                               StrokeArea())
    assert truth.value > 5
    assert eff.value > 0.5 * truth.value
    assert eff.groups == [["thickness", "intensity"], ["digit"]]
    assert eff.settings["steps"] == 10 and eff.describe_arms() == "do(thickness := 4) vs do(thickness := 1.5)"
    cmp = compare_effects(eff, truth)
    assert cmp.unit_mae is not None and cmp.difference == pytest.approx(eff.value - truth.value)


def test_factual_baseline(tiny_pipeline, tiny_batch):
    x, attrs = tiny_batch
    eff = image_effect(tiny_pipeline, x, attrs, {"thickness": lambda t: t + 1.0}, _brightness, steps=3,
                       ci="normal")
    assert eff.control is None and torch.equal(eff.baseline_images, x)
    assert torch.allclose(eff.baseline_outcome, _brightness(x).double())
    assert "vs factual" in str(eff)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"do": {}}, ValueError, "non-empty dict"),
    ({"do": {"width": 2.0}}, ValueError, "unknown node 'width'"),
    ({"do": {"thickness": -1.0}}, ValueError, "thickness"),
    ({"control": {}}, ValueError, "control"),
    ({"ci": "exact"}, ValueError, "unknown ci method"),
    ({"steps": 0}, ValueError, "steps"),
    ({"outcome": "area"}, ValueError, "unknown outcome"),
    ({"rows": 1}, ValueError, "at least 2 units"),
])
def test_estimator_errors_before_any_network_call(tiny_pipeline, tiny_batch, kwargs, err, match, monkeypatch):
    x, attrs = tiny_batch
    calls = []
    monkeypatch.setattr(tiny_pipeline, "invert", lambda *a, **k: calls.append(1))
    rows = kwargs.pop("rows", len(x))
    args = {"do": {"thickness": 3.0}, "outcome": _brightness, **kwargs}
    with pytest.raises(err, match=match):
        image_effect(tiny_pipeline, x[:rows], {k: v[:rows] for k, v in attrs.items()}, args.pop("do"),
                     args.pop("outcome"), **args)
    assert not calls


# ------------------------------------------------------------------------------------------ ground truth, comparison
def test_morpho_ground_truth_follows_the_equations():
    from pipeline.datasets import MorphoMNIST
    from pipeline.datasets import morpho_equations as eq

    ds = MorphoMNIST("test", max_sources=6, progress=False, n_jobs=1, cache=False)
    rows = list(range(6))
    truth = morpho_true_effect(ds, rows, {"thickness": 3.5}, "intensity", control={"thickness": 1.5}, ci="normal")
    e_i = ds.noise["e_i"][rows]
    implied = (eq.intensity_from(torch.tensor(3.5), e_i) - eq.intensity_from(torch.tensor(1.5), e_i)).double()
    assert torch.allclose(truth.individual, implied, atol=1.0)   # the renderer's intensity error is < 1 grey level
    area = morpho_true_effect(ds, rows, {"thickness": 3.5}, "stroke_area", control={"thickness": 1.5})
    assert (area.individual > 0).all()
    factual = morpho_true_effect(ds, rows, {"thickness": lambda t: t}, "stroke_area")
    assert factual.individual.abs().max() == 0  # re-rendering a row under its own values is its factual image


def test_compare_effects_with_attribute_level_estimates():
    c = compare_effects((10.0, (8.0, 12.0)), (11.5, (11.0, 13.0)))
    assert (c.covered, c.overlap, c.difference) == (True, True, -1.5)
    est = types.SimpleNamespace(value=20.0, confidence_interval=(19.0, 21.0))   # like scm.effects.EffectEstimate
    c = compare_effects((10.0, (8.0, 12.0)), est, name="image vs dowhy")
    assert (c.covered, c.overlap, c.reference_ci) == (False, False, (19.0, 21.0))
    assert "OUTSIDE" in str(c) and c.to_dict()["estimate_ci"] == [8.0, 12.0]
    with pytest.raises(TypeError, match="cannot compare"):
        compare_effects(10.0, "12")


def test_unit_level_comparison_needs_the_same_units():
    x = -torch.ones(4, 1, 4, 4)
    y = x.clone()
    y[:, :, :2, :2] = 1.0
    a = effect_from_images(y, x, "stroke_area", ci="normal")
    b = effect_from_images(y[:3], x[:3], "stroke_area", ci="normal")
    assert isinstance(a, ImageEffect)
    assert compare_effects(a, a).unit_mae == 0.0
    with pytest.raises(ValueError, match="same units"):
        compare_effects(a, b)
