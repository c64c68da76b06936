"""The Morpho-MNIST oracles, an ideal pipeline's figures, and ``dcfg evaluate`` end to end.

Graph (the benchmark's):  thickness -> intensity;  (thickness, intensity, digit) -> image (1x28x28)

The CLI pipeline's image model is tiny and untrained and its classifier random: those tests check the
plumbing (flags, files, errors). The *ideal* pipeline (identity inversion; decoding = the benchmark's own
set_thickness / set_intensity towards the counterfactual parents; the exact SCM equations) checks that rows,
targets, the SCM's i' and the ground truth line up: its figures must sit at the renderer's floor.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_unet import tiny_unet

from pipeline.classifier import DigitClassifier
from pipeline.cli import main
from pipeline.core import CounterfactualPipeline
from pipeline.datasets import MorphoMNIST
from pipeline.datasets import morpho_equations as eq
from pipeline.evaluation.oracles import MorphoOracles
from pipeline.evaluation.report import OUTPUT_FILES
from pipeline.presets import morphomnist_graph
from pipeline.train import image_model_config_for
from scm import SCM, AffineSigmoidMechanism, GammaMechanism


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("morpho_cache")


@pytest.fixture(scope="module")
def test_digits(cache_dir):
    return MorphoMNIST("test", samples_per_digit=1, seed=0, attribute_sampling="scm", progress=False, n_jobs=1,
                       cache_dir=cache_dir, max_sources=20)


def _pipeline(with_classifier: bool) -> CounterfactualPipeline:
    from diffusion import ConditionalUNet

    torch.manual_seed(0)
    graph = morphomnist_graph()
    noise = eq.sample_noise(512, torch.Generator().manual_seed(0))
    t = eq.thickness_from_noise(noise["u_t"]).float()
    attrs = {"thickness": t, "intensity": eq.intensity_from(t, noise["e_i"]).float(),
             "digit": torch.randint(0, 10, (512,), generator=torch.Generator().manual_seed(1))}
    scm = SCM(graph)
    scm.fit(attrs, epochs=3, progress=False, seed=0)
    cfg = image_model_config_for(graph, attrs, **tiny_unet())
    return CounterfactualPipeline(graph, scm, ConditionalUNet(cfg).eval(),
                                  classifier=DigitClassifier().eval() if with_classifier else None)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    _pipeline(True).save(root / "with_clf")
    _pipeline(False).save(root / "no_clf")
    return root


def _run(args, cache_dir, monkeypatch):
    monkeypatch.setenv("DCFG_CACHE", str(cache_dir))
    return CliRunner().invoke(main, ["evaluate", *args], catch_exceptions=False)


QUICK = ["--n", "6", "--steps", "2", "--scales", "1,2", "--scale", "2", "--max-sources", "20", "--cycle-n", "2",
         "--cycles", "2", "--n-jobs", "1", "--quiet"]


def test_morpho_oracles(test_digits):
    oracles = MorphoOracles(test_digits, DigitClassifier().eval(), n_jobs=1)
    m = oracles.measure(test_digits.images)
    assert set(m) == {"thickness", "intensity", "digit"} and m["digit"].shape == (20,)
    # morphometry reads back the rendered attributes
    assert np.mean(np.abs(m["thickness"] - test_digits.attributes["thickness"].numpy())) < 0.2
    assert np.mean(np.abs(m["intensity"] - test_digits.attributes["intensity"].numpy())) < 2.0
    assert oracles.embed(test_digits.images).shape == (20, 128)
    # the ground truth at the factual value is the factual image; none exists for do(digit)
    rows = torch.arange(5)
    truth = oracles.true_counterfactual(rows, {"thickness": test_digits.attributes["thickness"][:5]})
    assert (truth - test_digits.images[:5]).abs().max() < 1e-5
    assert oracles.true_counterfactual(rows, {"digit": torch.zeros(5, dtype=torch.long)}) is None
    # intervention values: the training marginals, and always another digit
    gen = torch.Generator().manual_seed(0)
    fact = {k: v for k, v in test_digits.attributes.items()}
    t = oracles.draw_targets("thickness", fact, gen)
    i = oracles.draw_targets("intensity", fact, gen)
    y = oracles.draw_targets("digit", fact, gen)
    assert t.shape == (20,) and bool((t > 0.5).all()) and bool(((i > 64) & (i < 255)).all())
    assert bool((y != fact["digit"]).all()) and bool(((y >= 0) & (y <= 9)).all())
    with pytest.raises(ValueError, match="classifier"):
        MorphoOracles(test_digits, None)


class IdealPipeline(CounterfactualPipeline):
    """Abduction = the image itself; prediction = set_thickness / set_intensity to the counterfactual parents."""

    def invert(self, images, parents, steps=None, progress=False):
        return images.clone()

    def decode(self, x_T, parents, guidance="none", groups=None, weights=None, scale=1.0, steps=None,
               progress=False, dcfg_form=None):
        from pipeline.morphometry import set_intensity, set_thickness

        x = set_thickness(x_T, parents["thickness"].double().numpy(), n_jobs=1)
        return set_intensity(x, parents["intensity"].double().numpy())


def test_an_ideal_pipeline_scores_at_the_renderer_floor(test_digits):
    from diffusion import ConditionalUNet
    from pipeline.evaluation.runner import EvaluationConfig, evaluate

    graph = morphomnist_graph()
    scm = SCM(graph, {"thickness": GammaMechanism(10.0, 5.0, shift=0.5),
                      "intensity": AffineSigmoidMechanism({"thickness": 2.0}, bias=-5.0, noise_scale=0.5, low=64.0,
                                                          high=255.0)})
    attrs = dict(test_digits.attributes)
    cfg = image_model_config_for(graph, attrs, **tiny_unet())
    pipe = IdealPipeline(graph, scm, ConditionalUNet(cfg).eval())
    oracles = MorphoOracles(test_digits, DigitClassifier().eval(), n_jobs=1)
    res = evaluate(pipe, test_digits.images, attrs, oracles,
                   EvaluationConfig(n=10, steps=1, scales=(1.0, 2.0), scale=2.0, sweep_n=5, cycle_n=3, cycles=2,
                                    per_attribute_n=0, grid_n=1, interventions=("thickness", "intensity")),
                   rows=torch.arange(len(test_digits)), progress=False)
    main = res.metrics["pipelines"]["main"]["main"]
    for row in main["thickness"]:  # every guidance decodes the same way here
        assert row["thickness_mae"] < 0.2
        assert row["intensity_mae"] < 1.0 and row["intensity_excess_change"] < 1.0  # i' is the SCM's
        assert row["gt_l1"] < 0.015 and row["gt_psnr"] > 30  # the true counterfactual, on the same rows
    for row in main["intensity"]:
        assert row["intensity_mae"] < 1.0 and row["thickness_abs_change"] < 0.2
        assert row["gt_l1"] < 0.015
    comp = res.metrics["pipelines"]["main"]["composition"]
    assert comp["cycle_1"] < 3.0
    assert all(r["l1"] < 6.0 for r in res.metrics["pipelines"]["main"]["reversibility"])


def test_cli_writes_every_output(saved, cache_dir, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    res = _run(["--pipeline", str(saved / "with_clf"), *QUICK, "--out", str(out)], cache_dir, monkeypatch)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert "## Headline" in res.output and "image-NFEs" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    s = metrics["settings"]
    assert (s["n"], s["steps"], s["scales"], s["scale"], s["cfg_scale"]) == (6, 2, [1.0, 2.0], 2.0, "best")
    assert s["cycle_n"] == 2 and s["max_sources"] == 20 and s["command"].startswith("dcfg evaluate --pipeline")
    assert "--n 6" in s["command"] and "--quiet" in s["command"]
    run = metrics["pipelines"]["main"]
    assert {"gt_l1", "gt_psnr", "realism_fd", "thickness_mae", "intensity_excess_change"} <= set(
        run["main"]["thickness"][2])
    assert run["nfe"]["total"] == metrics["timing"]["nfe"] > 0


def test_cli_ablation_and_classifier_flags(saved, cache_dir, tmp_path, monkeypatch):
    clf = tmp_path / "clf"
    DigitClassifier().save_pretrained(clf)
    out = tmp_path / "eval"
    res = _run(["--pipeline", str(saved / "no_clf"), "--classifier", str(clf), "--ablation-pipeline",
                str(saved / "with_clf"), "--interventions", "digit", "--per-attribute-n", "0", "--descendant-weight",
                "1", *QUICK, "--out", str(out)], cache_dir, monkeypatch)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    # a zero is recorded in the command (leaving --per-attribute-n out would mean the default, not 0)
    assert "--per-attribute-n 0" in metrics["settings"]["command"]
    assert "--descendant-weight 1" in metrics["settings"]["command"]
    assert metrics["settings"]["descendant_weight"] == 1.0
    assert set(metrics["pipelines"]) == {"main", "ablation"}
    assert list(metrics["pipelines"]["ablation"]["main"]) == ["digit"]
    assert "DCFG (ablation)" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, match", [
    (["--scales", "1,two"], "--scales"),
    (["--scale", "big"], "--scale 'big'"),
    (["--interventions", "colour"], "colour"),
    (["--sweep-methods", "dcfg"], "must include 'cfg'"),
    (["--n", "21"], "exceeds the 20 test rows"),
])
def test_cli_user_errors_write_nothing(saved, cache_dir, tmp_path, monkeypatch, args, match):
    out = tmp_path / "eval"
    quick = [a for a in QUICK]
    res = CliRunner().invoke(main, ["evaluate", "--pipeline", str(saved / "with_clf"), *quick, *args, "--out",
                                    str(out)], env={"DCFG_CACHE": str(cache_dir)})
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert not out.exists()


def test_cli_needs_a_classifier_and_a_free_out_dir(saved, cache_dir, tmp_path, monkeypatch):
    res = _run(["--pipeline", str(saved / "no_clf"), *QUICK, "--out", str(tmp_path / "e")], cache_dir, monkeypatch)
    assert res.exit_code == 2 and "--classifier" in res.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("keep me")
    res = _run(["--pipeline", str(saved / "with_clf"), *QUICK, "--out", str(busy)], cache_dir, monkeypatch)
    assert res.exit_code == 2 and "other content" in res.output
    assert (busy / "thesis.tex").read_text() == "keep me"
