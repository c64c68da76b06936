"""The pipeline's ``solver`` option: inversion and decoding with DDIM, DPM-Solver++(2M) or UniPC."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.core import CounterfactualPipeline, PipelineConfig


def _forward_rows(pipe, fn) -> int:
    rows = [0]
    handle = pipe.image_model.unet.register_forward_pre_hook(
        lambda m, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    try:
        fn()
    finally:
        handle.remove()
    return rows[0]


@pytest.mark.parametrize("solver, rows_per_image", [("ddim", 1 + 8 + 8 * 2), ("dpmpp_2m", 8 + 8 * 2),
                                                    ("unipc", 1 + 8 + 8 * 2)])
def test_a_counterfactual_costs_what_its_solver_says(tiny_pipeline, tiny_batch, solver, rows_per_image):
    """8 steps, refine 1 from the extrapolated guess: DDIM / UniPC invert with one row for x_0 and one per step,
    DPM-Solver++ with 1 per step; CFG decodes with 2 per step."""
    images, attrs = tiny_batch
    images, attrs = images[:2], {k: v[:2] for k, v in attrs.items()}
    res = None

    def run():
        nonlocal res
        res = tiny_pipeline.counterfactual(images, attrs, do={"thickness": 3.5}, guidance="cfg", scale=2.0,
                                           steps=8, solver=solver, seed=0)
    assert _forward_rows(tiny_pipeline, run) == 2 * rows_per_image
    assert res.image.shape == images.shape and torch.isfinite(res.image).all()


def test_the_solvers_reconstruct_the_factual_image(tiny_pipeline, tiny_batch):
    """The null query decodes the inverted noise under the factual parents: each solver gives back the image."""
    images, attrs = tiny_batch
    err = {}
    for solver in ("ddim", "dpmpp_2m", "unipc"):
        res = tiny_pipeline.counterfactual(images, attrs, do={}, guidance="none", steps=20, solver=solver, seed=0)
        err[solver] = float((res.image - images).abs().mean())
    assert max(err.values()) < 0.05, err


def test_the_config_solver_is_the_default_and_round_trips(tiny_pipeline, tiny_batch, tmp_path):
    images, attrs = tiny_batch
    images, attrs = images[:2], {k: v[:2] for k, v in attrs.items()}
    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                  dataclasses.replace(tiny_pipeline.config, solver="dpmpp_2m", steps=4))
    a = pipe.counterfactual(images, attrs, do={"thickness": 3.0}, seed=0)
    b = pipe.counterfactual(images, attrs, do={"thickness": 3.0}, seed=0, solver="dpmpp_2m")
    c = pipe.counterfactual(images, attrs, do={"thickness": 3.0}, seed=0, solver="ddim")
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)
    back = CounterfactualPipeline.load(pipe.save(tmp_path / "pipe"))
    assert back.config.solver == "dpmpp_2m"


def test_bad_solvers_are_refused(tiny_pipeline, tiny_batch):
    images, attrs = tiny_batch
    images, attrs = images[:1], {k: v[:1] for k, v in attrs.items()}
    with pytest.raises(ValueError, match="solver='heun'"):
        tiny_pipeline.counterfactual(images, attrs, do={"thickness": 3.0}, steps=2, solver="heun")
    with pytest.raises(ValueError, match="needs solver='ddim'"):
        tiny_pipeline.counterfactual(images, attrs, do={"thickness": 3.0}, steps=2, solver="dpmpp_2m",
                                     variant="cfgpp")
    with pytest.raises(ValueError, match="pipeline config solver="):
        PipelineConfig(solver="euler")


def test_the_inversion_predictor_is_a_config_choice_that_round_trips(tiny_pipeline, tiny_batch, tmp_path):
    images, attrs = tiny_batch
    images, attrs = images[:2], {k: v[:2] for k, v in attrs.items()}
    explicit = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                      dataclasses.replace(tiny_pipeline.config, invert_predictor="explicit"))
    rows = {}
    for name, pipe in (("explicit", explicit), ("extrapolated", tiny_pipeline)):
        rows[name] = _forward_rows(pipe, lambda p=pipe: p.invert(images, attrs, steps=6))
    assert rows == {"explicit": 2 * (2 * 6), "extrapolated": 2 * (1 + 6)}
    # both reconstruct the factual image: decoding the inversion gives it back
    for pipe in (explicit, tiny_pipeline):
        back = pipe.decode(pipe.invert(images, attrs, steps=20), attrs, steps=20)
        assert float((back - images).abs().mean()) < 0.05
    loaded = CounterfactualPipeline.load(explicit.save(tmp_path / "pipe"))
    assert loaded.config.invert_predictor == "explicit"
    # without refinement the inversion is plain DDIM, whatever the predictor says
    assert _forward_rows(tiny_pipeline, lambda: tiny_pipeline.invert(images, attrs, steps=6, refine_steps=0)) == 12
    with pytest.raises(ValueError, match="invert_predictor='guess'"):
        PipelineConfig(invert_predictor="guess")


def test_a_config_saved_without_a_predictor_loads_as_the_explicit_one():
    """Pipelines saved before the extrapolated predictor existed invert as they did (explicit), while a new
    config defaults to the extrapolated guess."""
    assert PipelineConfig().invert_predictor == "extrapolated"
    assert PipelineConfig.from_saved({"steps": 50, "refine_steps": 1}).invert_predictor == "explicit"
    assert PipelineConfig.from_saved({"invert_predictor": "extrapolated"}).invert_predictor == "extrapolated"


def test_the_grid_power_is_a_config_choice_that_round_trips(tiny_pipeline, tiny_batch, tmp_path):
    images, attrs = tiny_batch
    images, attrs = images[:2], {k: v[:2] for k, v in attrs.items()}
    assert tiny_pipeline.config.timestep_power == 1.5
    uniform = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                     dataclasses.replace(tiny_pipeline.config, timestep_power=1.0))
    seen = {}
    for name, pipe in (("uniform", uniform), ("powered", tiny_pipeline)):
        ts = []
        handle = pipe.image_model.unet.register_forward_pre_hook(
            lambda m, args, ts=ts: ts.append(int(args[1].flatten()[0])))
        try:
            pipe.decode(torch.zeros_like(images), attrs, steps=4)
        finally:
            handle.remove()
        seen[name] = ts
    assert seen == {"uniform": [999, 749, 499, 249], "powered": [999, 649, 353, 124]}
    # the diffusers solvers keep their uniform grid: the power changes nothing there
    a = tiny_pipeline.counterfactual(images, attrs, do={"thickness": 3.0}, steps=4, seed=0, solver="dpmpp_2m")
    b = uniform.counterfactual(images, attrs, do={"thickness": 3.0}, steps=4, seed=0, solver="dpmpp_2m")
    assert torch.equal(a.image, b.image)
    assert CounterfactualPipeline.load(uniform.save(tmp_path / "pipe")).config.timestep_power == 1.0
    assert PipelineConfig.from_saved({"steps": 50}).timestep_power == 1.0  # saved before the power existed
    with pytest.raises(ValueError, match=r"pipeline config timestep_power=0.5 must be a number in \[1, 4\]"):
        PipelineConfig(timestep_power=0.5)
