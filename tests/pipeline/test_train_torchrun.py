"""The whole ``dcfg train --data`` under ``torchrun --nproc_per_node=2`` (gloo, CPU) against one process with the
same global batch: the SCM and the predictors (fitted once, on rank 0) are byte-identical, the image model's loss
curve agrees to float tolerance, and the run directory is written once."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_data"


def _run(cmd: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _losses(path: Path) -> list[float]:
    with open(path, newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("torchrun")
    _run([sys.executable, str(EXAMPLE / "make_data.py"), str(tmp / "data"), "--n", "80"], tmp)
    train = ["-m", "pipeline.cli", "train", "--data", f"csv:{tmp / 'data' / 'attributes.csv'},split=train",
             "--graph", str(EXAMPLE / "graph.json"), "--steps", "4", "--batch-size", "8", "--predictor-epochs", "1",
             "--device", "cpu", "--threads", "1", "--quiet"]
    _run([sys.executable, *train, "--out", str(tmp / "one")], tmp)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train,
          "--out", str(tmp / "two")], tmp)
    return tmp


def test_torchrun_train_equals_one_process(runs):
    one, two = runs / "one", runs / "two"
    # the SCM and the predictors come from rank 0 alone: the same bytes as the 1-process run
    for rel in ("scm/config.json", "predictors/metrics.json", "predictors/warm/config.json"):
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    # (safetensors files are compared by content: their header's key order varies between processes)
    for rel in ("scm/scm.safetensors", "predictors/warm/model.safetensors", "predictors/size/model.safetensors",
                "predictors/shape/model.safetensors"):
        a, b = load_file(one / rel), load_file(two / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    l1, l2 = _losses(one / "image_model_run" / "loss.csv"), _losses(two / "image_model_run" / "loss.csv")
    assert len(l1) == len(l2) == 4
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-4, atol=1e-6)
    w1 = load_file(one / "pipeline" / "image_model" / "model.safetensors")
    w2 = load_file(two / "pipeline" / "image_model" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    card = (two / "pipeline" / "README.md").read_text()
    assert "- processes: 2" in card
    # one pipeline folder, no leftover temporaries of a second writer
    assert sorted(p.name for p in two.iterdir() if p.name.startswith(".")) == []
