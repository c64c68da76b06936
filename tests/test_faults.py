"""Fault injection: a training run killed with SIGKILL while it writes a checkpoint, and damaged saved files.

1. Training is run in a subprocess that kills itself (SIGKILL, no clean-up possible) in the middle of writing a
   checkpoint file: either half-way through the bytes of the temporary file, or after the temporary file is
   complete but before ``os.replace``. The previous checkpoint must still load, and resuming with the same
   command must finish the run with exactly the loss sequence (``loss.csv``) and weights of an uninterrupted run.
2. Truncated, bit-flipped and otherwise corrupted safetensors files of the SCM, the image model, the classifier,
   a whole pipeline directory and a training checkpoint are refused with a clear ``ValueError`` (for truncated and
   overwritten weights it names the file), a flipped byte anywhere (length, JSON header, tensor data) included;
   never garbage weights.
3. A ``config.json`` whose graph was edited (edges, kinds, supports, cardinalities, image shape) is refused.

This file is also the subprocess' script: ``python -c "runpy.run_path('tests/test_faults.py', ...)"``.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion import AttributeSpec, ConditionalUNet, TrainConfig, train
from diffusion._checkpoint import CHECKPOINT_NAME, load_checkpoint
from hardening_helpers import query_batch, small_pipeline, tiny_unet_config
from pipeline.classifier import DigitClassifier
from pipeline.core import CounterfactualPipeline
from scm import SCM

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tiny_unet_config(AttributeSpec("y", "categorical", cardinality=2),
                          AttributeSpec("s", "continuous", mean=0.0, std=1.0))
TRAIN = dict(steps=6, batch_size=8, lr=2e-3, warmup=2, ckpt_every=2, log_every=1)


def toy_data(n: int = 20) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    y, s = torch.randint(0, 2, (n,), generator=g), torch.randn(n, generator=g)
    return [(x[k], {"y": y[k], "s": s[k]}) for k in range(n)]


# --------------------------------------------------------------------------------- the subprocess that dies
class _DyingFile:
    """Writes half of what it is given, then SIGKILLs its own process (a crash in the middle of a write)."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        self.fh.write(data[:len(data) // 2])
        self.fh.flush()
        os.fsync(self.fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    def __getattr__(self, name):
        return getattr(self.fh, name)


def _install_killer(target: str, when: str, nth: int) -> None:
    """SIGKILL this process during the ``nth`` write of a file named ``target`` (its temporary file)."""
    seen = [0]

    def hit(name: str) -> bool:
        if name != target:
            return False
        seen[0] += 1
        return seen[0] == nth

    if when == "mid-write":
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            fh = real_fdopen(fd, *args, **kwargs)
            tmp = Path(os.readlink(f"/proc/self/fd/{fd}")).name  # ".<target>.<random>.tmp"
            return _DyingFile(fh) if tmp.startswith(".") and hit(tmp[1:].rsplit(".", 2)[0]) else fh
        os.fdopen = fdopen
    else:  # "before-rename": the temporary file is complete, os.replace has not run
        real_replace = os.replace

        def replace(src, dst):
            if hit(Path(dst).name):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = replace


def _main(argv: list[str]) -> None:
    out, target, when, nth = argv
    torch.set_num_threads(1)
    _install_killer(target, when, int(nth))
    train(CONFIG, TrainConfig(**TRAIN), toy_data(), out, progress=False)
    sys.exit(3)  # the run finished: the killer never fired


def _run_until_killed(out: Path, target: str, when: str, nth: int) -> subprocess.CompletedProcess:
    here = Path(__file__).resolve()
    # run from the repository root ('' first on sys.path), with tests/ last for hardening_helpers
    code = (f"import runpy, sys; sys.path.append({str(here.parent)!r}); "
            f"sys.argv = ['test_faults', {str(out)!r}, {target!r}, {when!r}, '{nth}']; "
            f"runpy.run_path({str(here)!r}, run_name='__main__')")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _loss_rows(path: Path) -> list[tuple[str, str, str]]:
    """(step, loss, lr) of every row of loss.csv (wall_time differs between runs)."""
    with path.open(newline="") as fh:
        return [(r["step"], r["loss"], r["lr"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("uninterrupted")
    res = train(CONFIG, TrainConfig(**TRAIN), toy_data(), out, progress=False)
    return res, _loss_rows(out / "loss.csv")


@pytest.mark.parametrize("target, when, resumes_at", [
    (CHECKPOINT_NAME, "mid-write", 2),  # dies writing the step-4 checkpoint: the step-2 one stays
    (CHECKPOINT_NAME, "before-rename", 2),
    ("model.safetensors", "mid-write", 4),  # the step-4 checkpoint is in place, model/ is still step 2's
])
def test_sigkill_during_checkpoint_write_then_resume(tmp_path, uninterrupted, target, when, resumes_at):
    full, full_rows = uninterrupted
    run = tmp_path / "run"
    proc = _run_until_killed(run, target, when, nth=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # the half-written file is a hidden temporary; the visible checkpoint and model are complete
    leftovers = list(run.rglob(f".{target}.*.tmp"))
    assert len(leftovers) == 1
    if target == CHECKPOINT_NAME and when == "before-rename":
        assert load_checkpoint(leftovers[0])[0]["step"] == 4  # complete, but never renamed into place
    else:
        finished = next(full.out_dir.rglob(target)).stat().st_size
        assert 0 < leftovers[0].stat().st_size < finished  # cut off half-way
    state, _ = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["step"] == resumes_at
    ConditionalUNet.from_pretrained(run / "model")
    assert [int(r[0]) for r in _loss_rows(run / "loss.csv")] == [1, 2, 3, 4]  # flushed before the write
    # the same command, with resume: it finishes exactly like the uninterrupted run
    rest = train(CONFIG, TrainConfig(**TRAIN), toy_data(), run, resume=True, progress=False)
    assert rest.start_step == resumes_at and rest.step == TRAIN["steps"]
    assert rest.losses == full.losses[resumes_at:]
    assert _loss_rows(run / "loss.csv") == full_rows
    for a, b in zip(rest.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(run.rglob("*.tmp"))  # the resumed run removed the dead write's temporary


# ------------------------------------------------------------------------------------------ damaged files


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.set_num_threads(1)
    pipe = small_pipeline()
    path = pipe.save(tmp_path_factory.mktemp("saved") / "pipe")
    return pipe, path


WEIGHTS = {
    "scm": ("scm/scm.safetensors", lambda p: SCM.load(p / "scm").state_dict()),
    "image model": ("image_model/model.safetensors",
                    lambda p: ConditionalUNet.from_pretrained(p / "image_model").state_dict()),
    "classifier": ("classifier/model.safetensors",
                   lambda p: DigitClassifier.from_pretrained(p / "classifier").state_dict()),
    "pipeline": (None, lambda p: CounterfactualPipeline.load(p).image_model.state_dict()),
}


def _damage(data: bytes, how: str) -> bytes:
    header = int.from_bytes(data[:8], "little")
    if how == "empty":
        return b""
    if how == "7 bytes":
        return data[:7]
    if how == "header cut":
        return data[:8 + header // 2]
    if how == "half":
        return data[:len(data) // 2]
    if how == "last byte cut":
        return data[:-1]
    if how == "bytes appended":
        return data + b"\x00" * 16
    if how == "header length too big":
        return (len(data) * 4).to_bytes(8, "little") + data[8:]
    if how == "garbage":
        return bytes((i * 7919) % 251 for i in range(len(data)))
    raise ValueError(how)


DAMAGE = ["empty", "7 bytes", "header cut", "half", "last byte cut", "bytes appended", "header length too big",
          "garbage"]


@pytest.mark.parametrize("component", sorted(WEIGHTS))
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_weights_are_refused(saved, tmp_path, component, how):
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    rel, load = WEIGHTS[component]
    for f in [rel] if rel else ["scm/scm.safetensors", "image_model/model.safetensors",
                                "classifier/model.safetensors"]:
        target = copy / f
        target.write_bytes(_damage(target.read_bytes(), how))
        with pytest.raises(ValueError, match=r"safetensors|corrupted") as info:
            load(copy)
        assert str(target.name) in str(info.value)
        shutil.copy(path / f, target)
    load(copy)  # restored: loads again


@pytest.mark.parametrize("component", ["scm", "image model", "classifier"])
def test_a_flipped_byte_is_refused(saved, tmp_path, component):
    """Flip one byte at ~50 places across the file (length, JSON header, tensor data): every load is refused."""
    _, path = saved
    rel, load = WEIGHTS[component]
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    target, original = copy / rel, (path / rel).read_bytes()
    reference = load(path)
    header = int.from_bytes(original[:8], "little")
    places = sorted({*range(0, 8), *range(8, 8 + header, max(1, header // 20)),
                     *range(8 + header, len(original), max(1, (len(original) - 8 - header) // 20)), len(original) - 1})
    for at in places:
        damaged = bytearray(original)
        damaged[at] ^= 0xFF
        target.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=r"safetensors|corrupted"):
            state = load(copy)
            # what it loaded, had it not refused (the report of a failure)
            print(f"byte {at} flipped; same weights: {all(torch.equal(state[k], reference[k]) for k in state)}")
    target.write_bytes(original)
    assert all(torch.equal(a, b) for a, b in zip(load(copy).values(), reference.values()))


def test_damaged_training_checkpoint_refuses_to_resume(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(**dict(TRAIN, steps=2))
    train(CONFIG, cfg, toy_data(), tmp_path, progress=False)
    ckpt = tmp_path / CHECKPOINT_NAME
    data = ckpt.read_bytes()
    header = int.from_bytes(data[:8], "little")
    for damaged in (data[:len(data) // 2], data[:8 + header] + bytes([data[8 + header] ^ 0xFF]) + data[9 + header:]):
        ckpt.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"safetensors|corrupted"):
            train(CONFIG, TrainConfig(**dict(TRAIN, steps=4)), toy_data(), tmp_path, resume=True, progress=False)
        assert ckpt.read_bytes() == damaged  # refused before anything was written


def _edit_graph(path: Path, edit) -> None:
    """Apply ``edit`` to the graph in both the pipeline's and the SCM's config.json (a consistent-looking edit)."""
    for f in (path / "config.json", path / "scm" / "config.json"):
        cfg = json.loads(f.read_text())
        edit(cfg["graph"])
        f.write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit, names", [
    (lambda g: g["edges"].remove(["t", "i"]), "'i'"),
    (lambda g: g["edges"].append(["d", "i"]), "'i'"),
    (lambda g: g["edges"].remove(["d", "image"]), "'image'"),
    (lambda g: g["nodes"]["i"].update(high=300), "'i'"),
    (lambda g: g["nodes"]["d"].update(cardinality=5), "'d'"),
    (lambda g: g["nodes"]["t"].update(kind="real"), "'t'"),
    (lambda g: g["nodes"]["image"].update(shape=[1, 16, 16]), "'image'"),
    (lambda g: g["nodes"].update(u={"kind": "real"}), "'u'"),
    (lambda g: g["edges"].append(["i", "t"]), "cycle"),
    (lambda g: g.pop("nodes"), "nodes"),
])
def test_config_with_a_changed_graph_is_refused(saved, tmp_path, edit, names):
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    _edit_graph(copy, edit)
    with pytest.raises(ValueError) as info:
        CounterfactualPipeline.load(copy)
    assert names in str(info.value), str(info.value)


def test_graph_edited_in_one_config_only_is_refused(saved, tmp_path):
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["graph"]["nodes"]["i"]["high"] = 200
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="graph does not match"):
        CounterfactualPipeline.load(copy)


@pytest.mark.parametrize("where, edit, match", [
    ("config.json", lambda c: c["pipeline"].update(steps=0), "steps"),
    ("config.json", lambda c: c["pipeline"].update(guidance="best"), "guidance"),
    ("config.json", lambda c: c["pipeline"].update(scale=float("nan")), "scale"),
    ("config.json", lambda c: c.update(format_version=99), "format_version"),
    ("scm/config.json", lambda c: c["mechanisms"]["t"].pop("type"), "'t'"),
    ("scm/config.json", lambda c: c.update(mechanisms=["t"]), "mechanisms"),
    ("scm/config.json", lambda c: c["mechanisms"]["t"].update(type="os:system"), "os:system"),
    ("image_model/config.json", lambda c: c.update(block_dim=6), "do not match the config"),
    ("image_model/config.json", lambda c: c.pop("format"), "format"),
    ("classifier/config.json", lambda c: c.update(width=-4), "width"),
])
def test_edited_configs_are_refused(saved, tmp_path, where, edit, match):
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    f = copy / where
    cfg = json.loads(f.read_text())
    edit(cfg)
    f.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        CounterfactualPipeline.load(copy)


@pytest.mark.parametrize("remove", ["config.json", "scm", "image_model/model.safetensors",
                                    "image_model/config.json", "classifier/model.safetensors"])
def test_incomplete_pipeline_directory_is_refused(saved, tmp_path, remove):
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    victim = copy / remove
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    with pytest.raises(ValueError, match=Path(remove).name.replace(".", r"\.")):
        CounterfactualPipeline.load(copy)


def test_intact_copy_answers_like_the_original(saved, tmp_path):
    pipe, path = saved
    back = CounterfactualPipeline.load(path)
    x, parents = query_batch()
    a = pipe.counterfactual(x, parents, do={"t": 2.0}, steps=2, seed=0)
    b = back.counterfactual(x, parents, do={"t": 2.0}, steps=2, seed=0)
    assert torch.equal(a.image, b.image)


if __name__ == "__main__":
    _main(sys.argv[1:])
