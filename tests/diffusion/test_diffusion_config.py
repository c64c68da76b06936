"""Configs: JSON round trips, validation messages, and the float64 schedules against diffusers."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler
from diffusion_helpers import tiny_config

from diffusion import AttributeSpec, ImageModelConfig, TrainConfig, alphas_cumprod
from diffusion.schedule import betas


def test_model_config_json_round_trip():
    cfg = tiny_config(beta_schedule="squaredcos_cap_v2")
    back = ImageModelConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.attributes[0], AttributeSpec)
    assert back.block_out_channels == (8, 16)
    assert json.loads(cfg.to_json())["attributes"][2]["cardinality"] == 10


def test_train_config_round_trip():
    tc = TrainConfig(steps=7, batch_size=4, adam_betas=(0.8, 0.99), dropout_mode="whole")
    assert TrainConfig.from_dict(json.loads(json.dumps(tc.to_dict()))) == tc


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="y", kind="categorical"), "cardinality=None must be an integer >= 2"),
    (dict(name="y", kind="categorical", cardinality=1), "cardinality=1"),
    (dict(name="t", kind="continuous", cardinality=3), "must be None"),
    (dict(name="t", kind="ordinal"), "kind='ordinal' is not one of"),
    (dict(name="t", kind="continuous", std=0.0), "std=0.0 must be a finite number > 0"),
    (dict(name="", kind="continuous"), "non-empty string"),
])
def test_attribute_spec_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttributeSpec(**kwargs)


@pytest.mark.parametrize("overrides, match", [
    (dict(image_shape=(1, 9, 9)), "not divisible by 2"),
    (dict(block_out_channels=(8, 10)), r"\[10\] are not divisible by norm_num_groups=4"),
    (dict(attention_levels=(False,)), "needs one bool per level"),
    (dict(beta_schedule="cosine"), "beta_schedule='cosine' is not one of"),
    (dict(attributes=(AttributeSpec("a", "continuous"), AttributeSpec("a", "continuous"))),
     r"\['a'\] appear more than once"),
    (dict(beta_start=0.1, beta_end=0.01), "beta_start < beta_end"),
])
def test_model_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_from_dict_rejects_unknown_keys():
    d = tiny_config().to_dict()
    d["blockdim"] = 3
    with pytest.raises(ValueError, match=r"unknown ImageModelConfig keys \['blockdim'\]"):
        ImageModelConfig.from_dict(d)
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['step'\]"):
        TrainConfig.from_dict({"step": 3})


@pytest.mark.parametrize("kwargs, match", [
    (dict(p_attr=1.5), "p_attr=1.5 must be a probability"),
    (dict(dropout_mode="subset"), "dropout_mode='subset' is not one of"),
    (dict(batch_size=0), "batch_size=0 must be a positive integer"),
    (dict(ema_decay=1.0), "ema_decay=1.0 must be in"),
])
def test_train_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("schedule, start, end", [
    ("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02)])
def test_schedule_matches_diffusers(schedule, start, end):
    ours = alphas_cumprod(tiny_config(beta_schedule=schedule, beta_start=start, beta_end=end))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, beta_start=start,
                        beta_end=end).alphas_cumprod
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-6)
    assert bool((ours[1:] < ours[:-1]).all())


def test_betas_linear_endpoints():
    b = betas(11, "linear", 0.1, 0.2)
    assert b[0].item() == pytest.approx(0.1) and b[-1].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="not one of"):
        betas(10, "quadratic")
