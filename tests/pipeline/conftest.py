"""A tiny trained pipeline (8x8 images, Morpho-like graph) shared by the pipeline tests.

Graph:  thickness -> intensity;  (thickness, intensity, digit) -> image (1x8x8)

The image is a bright square whose size follows thickness, whose brightness follows intensity and
whose position follows digit (mod 4), so every parent visibly matters. The image model is trained
for a few hundred steps (seconds on one core): enough for DDIM inversion to reconstruct.
"""
from __future__ import annotations

import pytest
import torch
from pipeline_helpers import TINY_ATTRIBUTES, draw_attributes, render, square_toy_data, tiny_graph
from tiny_unet import tiny_unet_config

from diffusion import TrainConfig
from diffusion import train as train_diffusion
from pipeline.core import CounterfactualPipeline
from scm import SCM


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> CounterfactualPipeline:
    torch.manual_seed(0)
    graph = tiny_graph()
    obs = draw_attributes(2048, seed=0)
    scm = SCM(graph)
    scm.fit(obs, epochs=30, progress=False, seed=0)
    # the image model sees thickness and intensity drawn independently
    wide = draw_attributes(1024, seed=1)
    wide["intensity"] = 64 + 191 * torch.rand(1024, generator=torch.Generator().manual_seed(2))
    images = render(wide)
    data = [(images[k], {n: wide[n][k] for n in wide}) for k in range(len(images))]
    # the tiny UNet twice as wide: it is trained, and DDIM inversion must reconstruct
    cfg = tiny_unet_config(*TINY_ATTRIBUTES, block_dim=8, block_out_channels=(16, 32), norm_num_groups=8)
    res = train_diffusion(cfg, TrainConfig(steps=400, batch_size=32, lr=2e-3, warmup=20,
                                           ema_decay=0.99, p_attr=0.3, p_all=0.1, ckpt_every=400),
                          data, tmp_path_factory.mktemp("tiny_run"), progress=False)
    return CounterfactualPipeline(graph, scm, res.model.eval())


@pytest.fixture(scope="session")
def tiny_batch(tiny_pipeline):
    attrs = draw_attributes(6, seed=5)
    return render(attrs), attrs


@pytest.fixture(scope="module")
def toy_data():
    """40 square images with digits 0..3, their attributes and their exact oracles (new ones per test module: the
    oracles record the true counterfactuals asked of them)."""
    return square_toy_data()
