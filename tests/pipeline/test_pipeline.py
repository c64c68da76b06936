"""End-to-end counterfactual queries on the tiny trained pipeline (see conftest.py)."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.core import CounterfactualPipeline, CounterfactualResult

STEPS = 20


def test_result_fields_and_shapes(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    res = tiny_pipeline.counterfactual(x, a, do={"thickness": 3.5}, steps=STEPS, seed=0)
    assert isinstance(res, CounterfactualResult)
    assert res.image.shape == x.shape and res.image.abs().max() <= 1
    assert res.groups == [["thickness", "intensity"], ["digit"]]
    assert res.weights == [tiny_pipeline.config.scale, 1.0]
    assert torch.allclose(res.parents["thickness"], torch.full((6,), 3.5))
    assert torch.equal(res.parents["digit"], a["digit"])           # not downstream of thickness
    assert not torch.allclose(res.parents["intensity"], a["intensity"])  # downstream: changes
    assert res.noise["x_T"].shape == x.shape
    assert set(res.noise) == {"thickness", "intensity", "digit", "x_T"}


def test_same_seed_gives_identical_counterfactual(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    do = {"digit": 3, "thickness": torch.linspace(1.5, 4.0, 6)}
    r1 = tiny_pipeline.counterfactual(x, a, do=do, steps=STEPS, seed=7)
    r2 = tiny_pipeline.counterfactual(x, a, do=do, steps=STEPS, seed=7)
    assert torch.equal(r1.image, r2.image)
    for k in r1.parents:
        assert torch.equal(r1.parents[k], r2.parents[k])


def test_null_intervention_reconstructs(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    res = tiny_pipeline.counterfactual(x, a, do={}, guidance="dcfg", steps=50, seed=0)
    assert res.groups == [["thickness", "intensity", "digit"]] and res.weights == [1.0]
    err = (res.image - x).abs().mean().item()
    assert err < 0.05, err


def test_dcfg_with_one_group_equals_cfg(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    parents = ["thickness", "intensity", "digit"]
    r_cfg = tiny_pipeline.counterfactual(x, a, do={"thickness": 4.0}, guidance="cfg", scale=2.5,
                                         steps=STEPS, seed=0)
    r_dcfg = tiny_pipeline.counterfactual(x, a, do={"thickness": 4.0}, guidance="dcfg",
                                          groups=[parents], weights=[2.5], steps=STEPS, seed=0)
    assert torch.allclose(r_cfg.image, r_dcfg.image, atol=1e-5)


def test_guidance_changes_the_answer_and_shift_do(tiny_pipeline, tiny_batch):
    """Seeded queries are deterministic (test_same_seed_gives_identical_counterfactual): every difference below is
    the shift's or the guidance's."""
    x, a = tiny_batch

    def query(do, **kwargs):
        return tiny_pipeline.counterfactual(x, a, do=do, steps=10, seed=0, **kwargs)

    # a shift moves each image's own factual value: the same query as the per-image values a + 1 ...
    shift = query({"thickness": lambda t: t + 1.0})
    assert torch.allclose(shift.parents["thickness"], a["thickness"] + 1.0, atol=1e-4)
    assert torch.allclose(shift.image, query({"thickness": a["thickness"] + 1.0}).image, atol=1e-5)
    # ... and the image follows it, away from the factual image (which the null query reconstructs)
    assert (shift.image - x).abs().max() > 0.5
    # CFG at weight 1 is the plain conditional: no guidance
    none = query({"thickness": 4.0}, guidance="none")
    assert torch.allclose(query({"thickness": 4.0}, guidance="cfg", scale=1.0).image, none.image, atol=1e-5)
    # a larger DCFG weight pushes the image further in the intervention's direction: the square of do(thickness=4)
    # grows larger and brighter (the mean pixel rises) in every image, that of do(thickness=1) smaller and darker
    # (over the batch: the thin square is nearly background already, so single images move by little)
    brightness = {(t, w): query({"thickness": t}, guidance="dcfg", scale=w).image.mean((1, 2, 3))
                  for t in (1.0, 4.0) for w in (1.0, 3.0)}
    assert (brightness[4.0, 3.0] > brightness[4.0, 1.0] + 0.1).all()
    assert brightness[1.0, 3.0].mean() < brightness[1.0, 1.0].mean() - 0.02


def test_chunking_does_not_change_the_result(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    whole = tiny_pipeline.counterfactual(x, a, do={"digit": 1}, steps=10, seed=0)
    chunked = tiny_pipeline.counterfactual(x, a, do={"digit": 1}, steps=10, seed=0, chunk_size=4)
    assert (whole.image - chunked.image).abs().max() < 1e-3


def test_save_load_roundtrip(tiny_pipeline, tiny_batch, tmp_path):
    x, a = tiny_batch
    path = tiny_pipeline.save(tmp_path / "pipe")
    assert (path / "config.json").is_file()
    loaded = CounterfactualPipeline.load(path)
    r1 = tiny_pipeline.counterfactual(x, a, do={"intensity": 200.0}, steps=10, seed=1)
    r2 = loaded.counterfactual(x, a, do={"intensity": 200.0}, steps=10, seed=1)
    assert torch.equal(r1.image, r2.image)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, exc, match", [
    (lambda x: x[0], ValueError, "batched"),
    (lambda x: x[:, :, :4], ValueError, "expects"),
    (lambda x: torch.cat([x, x], 1), ValueError, "expects"),
    (lambda x: x * 255, ValueError, "outside \\[-1, 1\\]"),
    (lambda x: x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill(0, torch.tensor([0]), True),
                             float("nan")),
     ValueError, "NaN"),
    (lambda x: ((x + 1) * 127).to(torch.uint8), TypeError, "float"),
    (lambda x: x.numpy(), TypeError, "torch.Tensor"),
])
def test_bad_images(tiny_pipeline, tiny_batch, make, exc, match):
    x, a = tiny_batch
    with pytest.raises(exc, match=match):
        tiny_pipeline.counterfactual(make(x), a, do={"thickness": 3.0}, steps=2)


@pytest.mark.parametrize("edit, match", [
    (lambda a: {k: v for k, v in a.items() if k != "digit"}, "missing node\\(s\\) \\['digit'\\]"),
    (lambda a: {**a, "zz": a["digit"]}, "unknown node\\(s\\) \\['zz'\\]"),
    (lambda a: {**a, "thickness": a["thickness"][:3]}, "expected \\(6,\\)"),
    (lambda a: {**a, "thickness": -a["thickness"]}, "thickness"),
    (lambda a: {**a, "digit": a["digit"] + 20}, "digit"),
])
def test_bad_parents(tiny_pipeline, tiny_batch, edit, match):
    x, a = tiny_batch
    with pytest.raises(ValueError, match=match):
        tiny_pipeline.counterfactual(x, edit(a), do={"thickness": 3.0}, steps=2)


@pytest.mark.parametrize("do, match", [
    ({"image": 0.0}, "image node"),
    ({"zz": 1.0}, "unknown node 'zz'"),
    ({"thickness": -1.0}, "thickness"),
    ({"digit": 11}, "digit"),
])
def test_bad_do(tiny_pipeline, tiny_batch, do, match):
    x, a = tiny_batch
    with pytest.raises(ValueError, match=match):
        tiny_pipeline.counterfactual(x, a, do=do, steps=2)


def test_bad_guidance_arguments(tiny_pipeline, tiny_batch):
    x, a = tiny_batch
    with pytest.raises(ValueError, match="steps"):
        tiny_pipeline.counterfactual(x, a, do={"digit": 1}, steps=0)
    with pytest.raises(ValueError, match="partition"):
        tiny_pipeline.counterfactual(x, a, do={"digit": 1}, groups=[["digit"]], weights=[2.0], steps=2)


def test_load_errors(tiny_pipeline, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        CounterfactualPipeline.load(tmp_path / "nope")
    path = tiny_pipeline.save(tmp_path / "pipe")
    # a config whose graph no longer matches the saved SCM and image model
    cfg = json.loads((path / "config.json").read_text())
    cfg["graph"]["edges"].remove(["digit", "image"])
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        CounterfactualPipeline.load(path)
    # truncated weights
    path2 = tiny_pipeline.save(tmp_path / "pipe2")
    w = path2 / "image_model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ValueError, match="safetensors"):
        CounterfactualPipeline.load(path2)


def test_truncated_scm_weights_are_reported(tiny_pipeline, tmp_path):
    path = tiny_pipeline.save(tmp_path / "pipe")
    w = next((path / "scm").glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:50])
    with pytest.raises(ValueError, match="safetensors"):
        CounterfactualPipeline.load(path)


def test_descendant_weight_from_config_and_per_query(tiny_pipeline, tiny_batch, tmp_path):
    """thickness -> intensity: under do(thickness) intensity is a descendant; a descendant weight gives it a
    group of its own, the query argument overrides the config, and the value survives save/load."""
    from dataclasses import replace

    x, a = tiny_batch
    do = {"thickness": 4.0}
    paper = tiny_pipeline.counterfactual(x, a, do=do, scale=3.0, steps=10, seed=0)
    assert paper.groups == [["thickness", "intensity"], ["digit"]] and paper.weights == [3.0, 1.0]
    split = tiny_pipeline.counterfactual(x, a, do=do, scale=3.0, steps=10, seed=0, descendant_weight=1.0)
    assert split.groups == [["thickness"], ["intensity"], ["digit"]] and split.weights == [3.0, 1.0, 1.0]
    assert not torch.allclose(paper.image, split.image)
    explicit = tiny_pipeline.counterfactual(x, a, do=do, steps=10, seed=0, groups=split.groups,
                                            weights=split.weights)
    assert torch.equal(explicit.image, split.image)

    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                  replace(tiny_pipeline.config, descendant_weight=1.0))
    loaded = CounterfactualPipeline.load(pipe.save(tmp_path / "pipe"))
    assert loaded.config.descendant_weight == 1.0
    from_config = loaded.counterfactual(x, a, do=do, scale=3.0, steps=10, seed=0)
    assert from_config.groups == split.groups and torch.equal(from_config.image, split.image)
    back_to_paper = loaded.counterfactual(x, a, do=do, scale=3.0, steps=10, seed=0, descendant_weight="scale")
    assert back_to_paper.groups == paper.groups and torch.equal(back_to_paper.image, paper.image)
    with pytest.raises(ValueError, match="descendant_weight"):
        PipelineConfigCls = type(tiny_pipeline.config)
        PipelineConfigCls(descendant_weight=float("nan"))


def test_dcfg_anchor_from_config_and_per_query(tiny_pipeline, tiny_batch, tmp_path):
    """dcfg_form='conditional' decodes with eps(c) + sum_m (w_m - 1)(eps(c) - eps(c^-m)): one group is CFG again,
    weight 1 everywhere is the plain conditional; the query argument overrides the config, and the value survives
    save/load."""
    from dataclasses import replace

    x, a = tiny_batch
    do = {"thickness": 4.0}
    paper = tiny_pipeline.counterfactual(x, a, do=do, scale=3.0, steps=6, seed=0, descendant_weight=1.0)
    assert paper.dcfg_form == "paper"
    full = tiny_pipeline.counterfactual(x, a, do=do, scale=3.0, steps=6, seed=0, descendant_weight=1.0,
                                        dcfg_form="conditional")
    assert full.dcfg_form == "conditional" and full.groups == paper.groups and full.weights == paper.weights
    assert not torch.allclose(full.image, paper.image, atol=1e-4)
    one_group = tiny_pipeline.counterfactual(x, a, do=do, steps=6, seed=0, dcfg_form="conditional",
                                             groups=[list(tiny_pipeline.graph.image_parents())], weights=[2.5])
    as_cfg = tiny_pipeline.counterfactual(x, a, do=do, guidance="cfg", scale=2.5, steps=6, seed=0)
    torch.testing.assert_close(one_group.image, as_cfg.image, rtol=1e-4, atol=1e-4)
    at_one = tiny_pipeline.counterfactual(x, a, do=do, scale=1.0, steps=6, seed=0, descendant_weight=1.0,
                                          dcfg_form="conditional")
    plain = tiny_pipeline.counterfactual(x, a, do=do, guidance="none", steps=6, seed=0)
    torch.testing.assert_close(at_one.image, plain.image, rtol=0, atol=1e-5)

    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                  replace(tiny_pipeline.config, dcfg_form="conditional"))
    loaded = CounterfactualPipeline.load(pipe.save(tmp_path / "pipe"))
    assert loaded.config.dcfg_form == "conditional"
    from_config = loaded.counterfactual(x, a, do=do, scale=3.0, steps=6, seed=0, descendant_weight=1.0)
    assert from_config.dcfg_form == "conditional" and torch.equal(from_config.image, full.image)
    back = loaded.counterfactual(x, a, do=do, scale=3.0, steps=6, seed=0, descendant_weight=1.0, dcfg_form="paper")
    assert torch.equal(back.image, paper.image)
    with pytest.raises(ValueError, match="dcfg_form='half' must be 'paper'"):
        type(tiny_pipeline.config)(dcfg_form="half")
    with pytest.raises(ValueError, match="dcfg_form='half' must be 'paper'"):
        tiny_pipeline.counterfactual(x, a, do=do, steps=2, dcfg_form="half")
