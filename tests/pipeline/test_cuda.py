"""The CUDA paths: a pipeline on a GPU follows its model's device, and ``dcfg train`` trains there in bf16.

``@pytest.mark.cuda`` (tests/conftest.py): they run only where CUDA exists and are reported as skipped elsewhere
(CI has no GPU); ``DCFG_REQUIRE_CUDA=1`` makes a missing GPU a failure."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hardening_helpers import query_batch, small_pipeline

pytestmark = pytest.mark.cuda
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_data"


def test_counterfactual_and_sample_follow_the_model_device():
    cpu = small_pipeline()
    gpu = small_pipeline().to("cuda")
    assert gpu.device.type == "cuda"
    x, parents = query_batch(3)
    a = cpu.counterfactual(x, parents, do={"t": 2.0}, steps=3, seed=0)
    b = gpu.counterfactual(x, parents, do={"t": 2.0}, steps=3, seed=0)  # CPU inputs, moved to the model
    assert b.image.device.type == "cuda"
    torch.testing.assert_close(b.image.cpu(), a.image, atol=2e-3, rtol=0)
    sa, _ = cpu.sample(4, steps=3, seed=1)
    sb, _ = gpu.sample(4, steps=3, seed=1)  # the noise is drawn on the CPU: the same images
    torch.testing.assert_close(sb.cpu(), sa, atol=2e-3, rtol=0)


def test_train_on_cuda_in_bf16(tmp_path):
    from pipeline.train import train_from_data

    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(tmp_path / "data"), "--n", "64"], check=True,
                   capture_output=True)
    pipe = train_from_data(f"csv:{tmp_path / 'data' / 'attributes.csv'},split=train", EXAMPLE / "graph.json",
                           tmp_path / "run", steps=4, batch_size=8, predictor_epochs=1, device="cuda",
                           precision="bf16", progress=False)
    assert pipe is not None and (tmp_path / "run" / "pipeline" / "README.md").is_file()
    assert "- precision: bf16" in (tmp_path / "run" / "pipeline" / "README.md").read_text()
