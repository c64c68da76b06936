"""`dcfg bench diffusion` (pipeline.bench_diffusion): the figures' structure and consistency on a tiny model; timings
are asserted only on a fake clock."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from click.testing import CliRunner
from pipeline_helpers import TINY_ATTRIBUTES
from tiny_unet import tiny_unet_config

from diffusion import ConditionalUNet
from pipeline import bench_diffusion as bench
from pipeline.bench_diffusion import bench_diffusion
from pipeline.cli import main


def tiny_net(attributes=TINY_ATTRIBUTES) -> ConditionalUNet:
    """An untrained tiny UNet (the timings do not depend on the weights)."""
    return ConditionalUNet(tiny_unet_config(*attributes))


def test_bench_sections_and_json(tmp_path):
    torch.manual_seed(0)
    res = bench_diffusion(tiny_net(), batch_sizes=(1, 4), sample_batch=4, steps=3, repeats=1,
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
    net = tiny_net(TINY_ATTRIBUTES[:1])
    res = bench_diffusion(net, batch_sizes=(2,), sample_batch=2, steps=2, repeats=1, train_steps=0, verbose=False)
    assert "skipped" in res["guidance"] and "training" not in res


def test_cli_bench_diffusion(tmp_path):
    model_dir = tiny_net().save_pretrained(tmp_path / "m")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "diffusion", "--model", str(model_dir), "--batch-sizes", "1,2",
                                       "--sample-batch", "2", "--steps", "2", "--repeats", "1", "--train-steps", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "DCFG (M=2) / CFG" in result.output and "ms per forward (NFE), batch 2" in result.output
    assert json.loads(out.read_text())["sampling"]["steps"] == 2
    bad = CliRunner().invoke(main, ["bench", "diffusion", "--batch-sizes", "1,x", "--out", str(out)])
    assert bad.exit_code == 2 and "--batch-sizes" in bad.output


class FakeClock:
    """The benchmark's ``time`` module, where time passes only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_bench_inline_ratio_is_each_runs_wall_time_over_its_own_network_time(monkeypatch):
    """``ratio_inline`` divides each sampling run's wall time by the network time measured inside that same run.

    On a fake clock, every sampling run costs a different time per network evaluation (1, 2, 3, ... in the order
    the runs happen) and the sampler adds half of its run's network time: each run's ratio is 1.5 exactly, and
    only if its wall time is divided by its own evaluations (not the warm-up's, another run's, or a count of them
    that is not the number of DDIM steps)."""
    clock, costs, per_call = FakeClock(), itertools.count(1), [0.0]
    net = tiny_net()
    network, sampler = net.eps, bench.ddim_sample

    def eps(*args, **kwargs):
        clock.now += per_call[0]
        return network(*args, **kwargs)

    def ddim_sample(*args, **kwargs):
        per_call[0] = float(next(costs))
        start = clock.now
        out = sampler(*args, **kwargs)
        clock.now += 0.5 * (clock.now - start)  # the sampler's own work
        return out

    monkeypatch.setattr(net, "eps", eps)
    monkeypatch.setattr(bench, "ddim_sample", ddim_sample)
    monkeypatch.setattr(bench, "time", clock)
    res = bench.bench_diffusion(net, batch_sizes=(2,), sample_batch=2, steps=3, repeats=3, train_steps=0,
                                verbose=False)
    assert res["sampling"]["nfe"] == 3
    assert res["sampling"]["ratio_inline"] == pytest.approx(1.5)
