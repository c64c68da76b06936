"""DistributedDataParallel: 2 CPU processes under torchrun (gloo) equal 1 process with the same global batch."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent('''
    import os
    import sys
    import torch
    from diffusion import AttributeSpec, TrainConfig, train

    sys.path.append(TESTS)  # the tiny UNet of the tests
    from tiny_unet import tiny_unet_config

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = 24
    images = (torch.rand(n, 1, 8, 8, generator=g) * 2 - 1)
    attrs = {"thickness": 1 + 3 * torch.rand(n, generator=g), "digit": torch.randint(0, 10, (n,), generator=g)}


    class Data(torch.utils.data.Dataset):
        fetched = 0

        def __len__(self):
            return n

        def __getitem__(self, i):
            Data.fetched += 1
            return images[i], {k: v[i] for k, v in attrs.items()}

    data = Data()
    cfg = tiny_unet_config(AttributeSpec("thickness", "continuous", mean=2.5),
                           AttributeSpec("digit", "categorical", cardinality=10), time_embedding_dim=16)
    res = train(cfg, TrainConfig(steps=int(sys.argv[2]), batch_size=8, lr=2e-3, warmup=1, ckpt_every=2),
                data, sys.argv[1], resume=True, progress=False)
    rank = os.environ.get("RANK", "0")
    with open(f"{sys.argv[1]}.rank{rank}.txt", "w") as fh:
        fh.write(f"world_size {res.world_size} step {res.step} fetched {Data.fetched}")
''').replace("TESTS", repr(str(Path(__file__).resolve().parents[1])))


def run(cmd, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def losses(path):
    with open(path, newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "train_ddp.py").write_text(SCRIPT)
    run([sys.executable, "train_ddp.py", "one", "4"], tmp)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train_ddp.py", "two", "4"], tmp)
    return tmp


def test_two_processes_equal_one(runs):
    tmp = runs
    # 1 item for validation, then 4 steps of the global batch of 8 ...
    assert (tmp / "one.rank0.txt").read_text() == "world_size 1 step 4 fetched 33"
    # ... while each of the 2 ranks loads only its half of every global batch
    assert (tmp / "two.rank0.txt").read_text() == (tmp / "two.rank1.txt").read_text() == \
        "world_size 2 step 4 fetched 17"
    l1, l2 = losses(tmp / "one" / "loss.csv"), losses(tmp / "two" / "loss.csv")
    assert len(l1) == len(l2) == 4
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-4, atol=1e-6)
    w1, w2 = (load_file(tmp / "one" / "model" / "model.safetensors"),
              load_file(tmp / "two" / "model" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    # and the model actually moved away from its initialisation identically in both runs
    init = load_file(tmp / "one" / "checkpoint.safetensors")
    assert any(not torch.equal(init[f"model/{k}"], w1[k]) for k in w1)


def test_ddp_checkpoint_resumes_on_one_process(runs):
    """Rank 0's checkpoint is the whole state: a 1-process resume continues the 2-process run."""
    tmp = runs
    run([sys.executable, "train_ddp.py", "two", "6"], tmp)
    run([sys.executable, "train_ddp.py", "one", "6"], tmp)
    torch.testing.assert_close(torch.tensor(losses(tmp / "two" / "loss.csv")),
                               torch.tensor(losses(tmp / "one" / "loss.csv")), rtol=1e-4, atol=1e-6)
