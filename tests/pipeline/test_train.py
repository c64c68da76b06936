"""train_pipeline: stages are resumable, a run can be warm-started, and the result loads."""
from __future__ import annotations

import torch
from pipeline_helpers import TINY_ATTRIBUTES, draw_attributes, render, tiny_graph
from tiny_unet import tiny_unet_config

from diffusion import TrainConfig
from pipeline.core import CounterfactualPipeline
from pipeline.train import plot_training_curve, train_pipeline

CFG = tiny_unet_config(*TINY_ATTRIBUTES, block_out_channels=(8, 8))


def _data(n=64):
    a = draw_attributes(n, seed=3)
    x = render(a)
    return a, [(x[k], {name: a[name][k] for name in a}) for k in range(n)]


def test_stages_resume_and_warm_start(tmp_path):
    attrs, data = _data()
    graph = tiny_graph()
    out = tmp_path / "run"
    tc = TrainConfig(steps=3, batch_size=8, warmup=0, ckpt_every=2)
    pipe = train_pipeline(graph, attrs, data, out, image_config=CFG, train_config=tc,
                          scm_fit={"epochs": 2}, progress=False)
    assert (out / "pipeline" / "config.json").is_file()
    assert (out / "training_curve.png").is_file()
    scm_mtime = (out / "scm" / "config.json").stat().st_mtime_ns
    # resuming to more steps reuses the fitted SCM and continues the diffusion run
    pipe2 = train_pipeline(graph, attrs, data, out, image_config=CFG,
                           train_config=TrainConfig(steps=5, batch_size=8, warmup=0, ckpt_every=2),
                           scm_fit={"epochs": 2}, progress=False)
    assert (out / "scm" / "config.json").stat().st_mtime_ns == scm_mtime
    lines = (out / "image_model_run" / "loss.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 5
    loaded = CounterfactualPipeline.load(out / "pipeline")
    w_loaded = dict(loaded.image_model.named_parameters())
    for k, v in pipe2.image_model.named_parameters():
        assert torch.equal(v, w_loaded[k])
    assert not all(torch.equal(v, dict(pipe.image_model.named_parameters())[k])
                   for k, v in pipe2.image_model.named_parameters())
    # a fresh run warm-started from the saved pipeline takes its weights and config
    warm = train_pipeline(graph, attrs, data, tmp_path / "warm", train_config=tc,
                          scm_fit={"epochs": 2}, init_from=out / "pipeline", progress=False)
    assert warm.image_model.config == CFG


def test_training_curve_plot(tmp_path):
    csv = tmp_path / "loss.csv"
    csv.write_text("step,loss,lr,wall_time\n" + "".join(
        f"{s},{1.0 / s:.5f},0.001,{s * 0.5}\n" for s in range(1, 51)))
    out = plot_training_curve(csv, tmp_path / "curve.png")
    assert out.is_file() and out.stat().st_size > 1000
