"""`dcfg bench diffusion`: the figures' structure and consistency on a tiny model (timings are not asserted)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from diffusion import ConditionalUNet
from pipeline.bench_diffusion import bench_diffusion
from pipeline.cli import main

from diffusion_helpers import tiny_config


def test_bench_sections_and_json(tmp_path):
    torch.manual_seed(0)
    res = bench_diffusion(ConditionalUNet(tiny_config()), batch_sizes=(1, 4), sample_batch=4, steps=3, repeats=1,
                          train_steps=2, train_batch=4, out=tmp_path / "b.json", verbose=False)
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads(json.dumps(res))
    assert set(res["forward_ms"]) == {"1", "4"} and all(v > 0 for v in res["forward_ms"].values())
    assert res["forward_ms_per_image"]["4"] == pytest.approx(res["forward_ms"]["4"] / 4)
    assert res["sampling"]["nfe"] == 3  # one network evaluation per DDIM step
    assert res["sampling"]["ratio"] > 0
    g = res["guidance"]
    assert sorted(sum(g["groups"], [])) == ["digit", "intensity", "thickness"] and len(g["groups"]) == 2
    assert g["ratio"] == g["dcfg_s"] / g["cfg_s"]
    assert res["training"]["images_per_s"] > 0 and res["training"]["batch_size"] == 4


def test_bench_skips_dcfg_with_one_attribute():
    net = ConditionalUNet(tiny_config(attributes=tiny_config().attributes[:1]))
    res = bench_diffusion(net, batch_sizes=(2,), sample_batch=2, steps=2, repeats=1, train_steps=0, verbose=False)
    assert "skipped" in res["guidance"] and "training" not in res


def test_cli_bench_diffusion(tmp_path):
    model_dir = ConditionalUNet(tiny_config()).save_pretrained(tmp_path / "m")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "diffusion", "--model", str(model_dir), "--batch-sizes", "1,2",
                                       "--sample-batch", "2", "--steps", "2", "--repeats", "1", "--train-steps", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "DCFG (M=2) / CFG" in result.output and "ms per forward (NFE), batch 2" in result.output
    assert json.loads(out.read_text())["sampling"]["steps"] == 2
    bad = CliRunner().invoke(main, ["bench", "diffusion", "--batch-sizes", "1,x", "--out", str(out)])
    assert bad.exit_code == 2 and "--batch-sizes" in bad.output


def test_bench_inline_ratio_is_at_least_one():
    """Sampling can never take less time than the network evaluations it makes."""
    res = bench_diffusion(ConditionalUNet(tiny_config()), batch_sizes=(2,), sample_batch=2, steps=3, repeats=2,
                          train_steps=0, verbose=False)
    assert res["sampling"]["ratio_inline"] >= 1.0
