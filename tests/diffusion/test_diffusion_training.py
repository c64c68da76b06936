"""Training: the loss falls, condition dropout draws the right masks, checkpoints are atomic and resume exactly."""
from __future__ import annotations

import csv
import os
import signal

import numpy as np
import pytest
import torch
from diffusion_helpers import ToyImages, tiny_config
from safetensors.torch import load_file

from diffusion import ConditionalUNet, TrainConfig, train
from diffusion.training import DataOrder, step_draws

FAST = dict(batch_size=8, lr=2e-3, warmup=2, ckpt_every=2, log_every=1)


def read_losses(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def test_training_reduces_loss_and_writes_run(tmp_path, config):
    res = train(config, TrainConfig(steps=40, **dict(FAST, batch_size=16)), ToyImages(48), tmp_path,
                progress=False)
    assert res.step == 40 and res.start_step == 0 and len(res.losses) == 40
    assert np.mean(res.losses[-10:]) < 0.6 * np.mean(res.losses[:5])
    assert res.images_per_second > 0
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "model.safetensors"]
    steps, losses = read_losses(tmp_path / "loss.csv")
    assert steps == list(range(1, 41))
    np.testing.assert_allclose(losses, res.losses, rtol=1e-5)
    # the saved model is the EMA model returned
    back = ConditionalUNet.from_pretrained(res.model_dir)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(back.eps(x, 5), res.model.eps(x, 5), rtol=0, atol=0)
    # no pickle anywhere in the run directory
    assert {p.suffix for p in tmp_path.rglob("*") if p.is_file()} <= {".json", ".safetensors", ".csv"}


def test_resume_equals_uninterrupted(tmp_path, config):
    data = ToyImages(20)  # 20 items, batch 8: epoch boundaries fall inside batches
    full = train(config, TrainConfig(steps=7, **FAST), data, tmp_path / "full", progress=False)
    part = train(config, TrainConfig(steps=3, **FAST), data, tmp_path / "part", progress=False)
    rest = train(config, TrainConfig(steps=7, **FAST), data, tmp_path / "part", resume=True, progress=False)
    assert rest.start_step == 3
    assert part.losses + rest.losses == full.losses  # bit-exact on the CPU
    for a, b in zip(full.model.parameters(), rest.model.parameters()):
        assert torch.equal(a, b)
    assert read_losses(tmp_path / "part" / "loss.csv") == read_losses(tmp_path / "full" / "loss.csv")


class Interrupting(ToyImages):
    """Raises KeyboardInterrupt, or sends this process SIGTERM, on the n-th item fetched."""

    def __init__(self, at: int, how: str) -> None:
        super().__init__(20)
        self.calls, self.at, self.how = 0, at, how

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at:
            if self.how == "keyboard":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # deferred by train() to the next step boundary
        return super().__getitem__(i)


@pytest.mark.parametrize("how, exc", [("keyboard", KeyboardInterrupt), ("sigterm", SystemExit)])
def test_interrupt_checkpoints_and_resumes_exactly(tmp_path, config, how, exc):
    full = train(config, TrainConfig(steps=6, **FAST), ToyImages(20), tmp_path / "full", progress=False)
    data = Interrupting(at=1 + 8 * 3 + 3, how=how)  # item 0 is read by validation; dies inside step 4
    with pytest.raises(exc) as info:
        train(config, TrainConfig(steps=6, **dict(FAST, ckpt_every=100)), data, tmp_path / "run", progress=False)
    if how == "sigterm":
        assert info.value.code == 128 + signal.SIGTERM
    done = 3 if how == "keyboard" else 4  # SIGTERM lets step 4 finish, Ctrl-C aborts it
    state = load_file(tmp_path / "run" / "checkpoint.safetensors")
    assert "ema/unet.conv_in.weight" in state and "optim/0/exp_avg" in state
    steps, _ = read_losses(tmp_path / "run" / "loss.csv")
    assert steps == list(range(1, done + 1))
    rest = train(config, TrainConfig(steps=6, **dict(FAST, ckpt_every=100)), ToyImages(20), tmp_path / "run",
                 resume=True, progress=False)
    assert rest.start_step == done
    assert rest.losses == full.losses[done:]
    assert read_losses(tmp_path / "run" / "loss.csv")[0] == list(range(1, 7))


def test_checkpoint_write_is_atomic(tmp_path, config, monkeypatch):
    train(config, TrainConfig(steps=2, **FAST), ToyImages(20), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        train(config, TrainConfig(steps=4, **FAST), ToyImages(20), tmp_path, resume=True, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_resume_rejects_changed_config_before_writing(tmp_path, config):
    train(config, TrainConfig(steps=2, **FAST), ToyImages(20), tmp_path, progress=False)
    stamp = (tmp_path / "checkpoint.safetensors").stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"train_config fields \['lr'\] differ"):
        train(config, TrainConfig(steps=4, **dict(FAST, lr=1e-3)), ToyImages(20), tmp_path, resume=True,
              progress=False)
    with pytest.raises(ValueError, match=r"model_config differs from the checkpoint's in \['block_dim'\]"):
        train(tiny_config(block_dim=6), TrainConfig(steps=4, **FAST), ToyImages(20), tmp_path, resume=True,
              progress=False)
    with pytest.raises(ValueError, match="the dataset has 21 items but the run was trained on 20"):
        train(config, TrainConfig(steps=4, **FAST), ToyImages(21), tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.safetensors").stat().st_mtime_ns == stamp


def test_resume_without_checkpoint_starts_fresh(tmp_path, config):
    a = train(config, TrainConfig(steps=2, **FAST), ToyImages(20), tmp_path / "a", resume=True, progress=False)
    b = train(config, TrainConfig(steps=2, **FAST), ToyImages(20), tmp_path / "b", progress=False)
    assert a.start_step == 0 and a.losses == b.losses


class BadImages(ToyImages):
    def __init__(self, kind):
        super().__init__(4)
        self.kind = kind

    def __getitem__(self, i):
        x, a = super().__getitem__(i)
        if self.kind == "range":
            return (x + 1) * 127.5, a
        if self.kind == "shape":
            return x[:, :4], a
        if self.kind == "missing":
            return x, {k: v for k, v in a.items() if k != "digit"}
        return x, dict(a, digit=torch.tensor(12))


@pytest.mark.parametrize("kind, match", [
    ("range", r"values in \[0, \d+\]; images must lie in \[-1, 1\]"),
    ("shape", r"image has shape \(1, 4, 8\); the model config expects image_shape=\(1, 8, 8\)"),
    ("missing", r"attrs lack \['digit'\]"),
    ("class", r"'digit' is 12; expected an integer class index in \[0, 9\]"),
])
def test_dataset_errors_before_any_write(tmp_path, config, kind, match):
    with pytest.raises(ValueError, match=match):
        train(config, TrainConfig(steps=2, **FAST), BadImages(kind), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_model_argument_must_match_config(tmp_path, config):
    with pytest.raises(ValueError, match=r"model.config differs from model_config in \['block_dim'\]"):
        train(config, TrainConfig(steps=1, **FAST), ToyImages(20), tmp_path,
              model=ConditionalUNet(tiny_config(block_dim=6)), progress=False)


@pytest.mark.parametrize("mode, p_attr, p_all", [("per_group", 0.3, 0.1), ("per_group", 0.5, 0.0),
                                                  ("whole", 0.3, 0.2)])
def test_condition_dropout_statistics(mode, p_attr, p_all):
    cfg = TrainConfig(batch_size=20000, dropout_mode=mode, p_attr=p_attr, p_all=p_all)
    _, _, keep = step_draws(cfg, step=0, shape=(1, 1, 1), num_attrs=3, T=1000)
    assert keep.shape == (20000, 3) and keep.dtype == torch.bool
    rate = keep.float().mean(0)
    expected = (1 - p_all) * ((1 - p_attr) if mode == "per_group" else 1.0)
    torch.testing.assert_close(rate, torch.full((3,), expected), atol=0.015, rtol=0)
    if mode == "whole":  # the whole condition is kept or dropped together
        assert bool((keep.all(1) | ~keep.any(1)).all())
    else:  # blocks drop independently: with p_attr = 0.5 every subset has probability 1/8
        subsets = torch.bincount((keep.long() * torch.tensor([1, 2, 4])).sum(1), minlength=8).float() / 20000
        if p_attr == 0.5 and p_all == 0.0:
            torch.testing.assert_close(subsets, torch.full((8,), 0.125), atol=0.015, rtol=0)
        assert bool((subsets > 0).all())


def test_step_draws_are_a_function_of_seed_and_step():
    cfg = TrainConfig(batch_size=4)
    a, b = step_draws(cfg, 5, (1, 2, 2), 3, 1000), step_draws(cfg, 5, (1, 2, 2), 3, 1000)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = step_draws(cfg, 6, (1, 2, 2), 3, 1000)
    assert not torch.equal(a[1], c[1])


def test_data_order_covers_each_epoch_once():
    order = DataOrder(10, seed=3)
    stream = [i for s in range(5) for i in order.batch(s, 4)]  # 20 indices = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]
    assert DataOrder(10, seed=3).batch(3, 4) == order.batch(3, 4)


class Redrawn(ToyImages):
    """Redraws its images every epoch (deterministically), like MorphoMNIST(redraw_each_epoch=True)."""

    def __init__(self):
        super().__init__(12)
        self.base, self.calls = self.images.clone(), []

    def set_epoch(self, epoch):
        self.calls.append(epoch)
        self.images = (self.base * (1 - 0.1 * epoch)).clamp(-1, 1)


def test_set_epoch_is_called_and_resume_stays_exact(tmp_path, config):
    full_data = Redrawn()
    full = train(config, TrainConfig(steps=5, **FAST), full_data, tmp_path / "full", progress=False)
    assert full_data.calls == [0, 1, 2, 3]  # 5 batches of 8 rows over 12 items: epochs 0..3
    train(config, TrainConfig(steps=2, **FAST), Redrawn(), tmp_path / "part", progress=False)
    resumed_data = Redrawn()
    rest = train(config, TrainConfig(steps=5, **FAST), resumed_data, tmp_path / "part", resume=True, progress=False)
    assert resumed_data.calls == [1, 2, 3]  # step 2 starts at row 16, inside epoch 1
    assert rest.losses == full.losses[2:]


class NaNAfter(ToyImages):
    def __init__(self, after):
        super().__init__(20)
        self.calls, self.after = 0, after

    def __getitem__(self, i):
        self.calls += 1
        x, a = super().__getitem__(i)
        return (x * float("nan"), a) if self.calls > self.after else (x, a)


def test_non_finite_loss_stops_before_the_update(tmp_path, config):
    with pytest.raises(FloatingPointError, match="the loss became nan at step 3"):
        train(config, TrainConfig(steps=6, **FAST), NaNAfter(1 + 2 * 8), tmp_path, progress=False)
    state = load_file(tmp_path / "checkpoint.safetensors")
    assert all(torch.isfinite(v).all() for k, v in state.items() if k.startswith(("model/", "ema/")))
    assert read_losses(tmp_path / "loss.csv")[0] == [1, 2]
