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
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hardening_helpers import query_batch, set_json_field, small_pipeline
from tiny_unet import tiny_unet_config

from diffusion import AttributeSpec, ConditionalUNet, TrainConfig, train
from diffusion.checkpoint import CHECKPOINT_NAME, load_checkpoint
from pipeline.classifier import DigitClassifier
from pipeline.core import CounterfactualPipeline
from scm import SCM

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tiny_unet_config(AttributeSpec("y", "categorical", cardinality=2),
                          AttributeSpec("s", "continuous", mean=0.0, std=1.0), block_out_channels=(8, 8))
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
    (lambda g: g["nodes"]["i"].update(low="0"), "interval node 'i' needs numeric 'low' and 'high'"),
    (lambda g: g["nodes"]["i"].update(high=True), "interval node 'i' needs numeric 'low' and 'high'"),
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


CONFIGS = ["config.json", "scm/config.json", "image_model/config.json", "classifier/config.json"]


@pytest.mark.parametrize("where", CONFIGS)
@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
                                  '{"format": "dcfg-scm", "é": 1}'.encode("latin-1")], ids=["binary", "latin-1"])
def test_a_binary_config_json_is_refused_naming_the_file(saved, tmp_path, where, data):
    """Before: a binary config.json gave UnicodeDecodeError without naming the file. Now: one ValueError line
    naming the file, the first byte that is not UTF-8, and what the file should have been."""
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    (copy / where).write_bytes(data)
    with pytest.raises(ValueError, match=r"is not a JSON text file \(byte \d+ is 0x[0-9a-f]{2}, not UTF-8\); it is "
                                         r"damaged or not an? [a-zA-Z ]*config") as info:
        CounterfactualPipeline.load(copy)
    msg = str(info.value)
    assert str(copy / where) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("where, keys, match", [
    ("config.json", [], r"config\.json: unknown key 'colour' in the pipeline config; the known keys are \["),
    ("config.json", ["pipeline"], r"config\.json: 'pipeline': unknown key 'colour' in the pipeline settings"),
    ("scm/config.json", [], r"config\.json: unknown key 'colour' in the SCM config; the known keys are \["),
    ("scm/config.json", ["scm"], r"config\.json: 'scm': unknown key 'colour' in the SCM settings"),
    ("scm/config.json", ["mechanisms", "t"], r"config\.json: mechanism of node 't': unknown key 'colour' in the "
                                             r"mechanism entry"),
    ("scm/config.json", ["mechanisms", "t", "config"], r"config\.json: config of node 't' does not fit "
                                                       r"scm\.mechanisms:FlowMechanism: .*'colour'"),
    ("image_model/config.json", [], r"config\.json: unknown ImageModelConfig keys \['colour'\]"),
    ("classifier/config.json", [], r"config\.json: unknown key 'colour' in the classifier config"),
])
def test_an_unknown_config_key_is_refused_naming_the_key(saved, tmp_path, where, keys, match):
    """Before: unknown keys in a config.json were accepted (and ignored). Now: the load of a saved pipeline, SCM,
    image model or classifier folder refuses an unknown key at any level, in one line naming the key and the file
    (docs/saving.md: 'an unknown key in any config is an error naming the key and the file')."""
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    cfg = json.loads((copy / where).read_text())
    node = cfg
    for k in keys:
        node = node[k]
    node["colour"] = "red"
    (copy / where).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match) as info:
        CounterfactualPipeline.load(copy)
    assert str(copy / where) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("key, value", [("hidden", [16, 16]), ("count_bins", 3), ("bound", 5.0)])
def test_an_scm_setting_that_no_mechanism_uses_is_refused(saved, tmp_path, key, value):
    """Before: an edited scm.hidden that no mechanism uses was accepted and silently ignored. Now (docs/saving.md):
    the SCM's settings must agree with the built-in mechanisms they describe, or the load is refused naming the
    key, the node and the file; a mechanism entry marked "custom": true keeps its own settings and loads."""
    _, path = saved
    copy = tmp_path / "pipe"
    shutil.copytree(path, copy)
    f = copy / "scm" / "config.json"
    cfg = json.loads(f.read_text())
    own = cfg["mechanisms"]["t"]["config"][key]
    cfg["scm"][key] = value
    f.write_text(json.dumps(cfg))
    match = (rf"scm\.{key}={re.escape(repr(value))} does not match the {key}=.* of node '.'.s built-in mechanism; "
             rf".*would be ignored.*\"custom\": true")
    with pytest.raises(ValueError, match=match) as info:
        CounterfactualPipeline.load(copy)
    assert str(f) in str(info.value)
    for entry in cfg["mechanisms"].values():
        entry["custom"] = True
    f.write_text(json.dumps(cfg))
    back = SCM.load(copy / "scm")  # the documented exemption: each mechanism keeps its own saved settings
    assert back.mechanisms["t"].get_config()[key] == own != value
    reference = SCM.load(path / "scm").state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in back.state_dict().items())


@pytest.mark.parametrize("do", [{"d": True}, {"d": False}, {"t": True}, {"d": torch.tensor([True, False])}])
def test_a_bool_do_is_refused_for_a_node_that_is_not_binary(saved, do):
    """Before: do={"digit": True} was accepted (as class 1). Now: a TypeError naming the node; a bool means 1/0
    for a binary node only (docs/saving.md). The toy graph has no binary node."""
    pipe, _ = saved
    x, parents = query_batch()
    (node, value), = do.items()
    with pytest.raises(TypeError, match=rf"do\[{node!r}\]=.*not a bool \(a class index is an integer, e\.g\. 1\)"):
        pipe.counterfactual(x, parents, do=do, steps=1)


def test_factual_parents_are_copies_of_the_callers_tensors(saved):
    """Before: res.factual_parents held the caller's own tensors, so editing the result edited the caller's input.
    Now: copies with the same values; editing either side leaves the other unchanged."""
    pipe, _ = saved
    x, parents = query_batch()
    before = {k: v.clone() for k, v in parents.items()}
    res = pipe.counterfactual(x, parents, do={"t": 2.0}, steps=1, seed=0)
    assert res.factual_parents.keys() == parents.keys()
    for k, v in res.factual_parents.items():
        assert torch.equal(v, before[k]) and v.data_ptr() != parents[k].data_ptr(), k
        v.add_(1)  # editing the result ...
    assert all(torch.equal(parents[k], before[k]) for k in parents)  # ... leaves the caller's input as it was
    parents["t"].mul_(3)  # and editing the input afterwards leaves the result as it was
    assert torch.equal(res.factual_parents["t"], before["t"] + 1)


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



# ------------------------------------------------------------------------------------------ save targets
def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (``root`` itself included): relative path -> bytes (None for a folder)."""
    if root.is_file():
        return {".": root.read_bytes()}
    out: dict[str, bytes | None] = {".": None}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


def _savers(saved_pipe) -> dict[str, Any]:
    """artefact -> a function saving one of that kind to a path (each goes through the same target check)."""
    from pipeline.calibrate import check_report_dir
    from pipeline.evaluation.report import check_out_dir
    from pipeline.experiment.run import check_experiment_dir
    from pipeline.predictors import AttributePredictor, PredictorConfig, PredictorSet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pred = AttributePredictor(PredictorConfig("t", "regressor", (1, 8, 8), widths=(4,), feature_dim=4))
    return {
        "pipeline": saved_pipe.save,
        "image model": saved_pipe.image_model.save_pretrained,
        "scm": saved_pipe.scm.save,
        "classifier": saved_pipe.classifier.save_pretrained,
        "predictor": pred.save_pretrained,
        "predictor set": PredictorSet({"t": pred}).save,
        "evaluation": check_out_dir,
        "calibration": check_report_dir,
        "experiment": check_experiment_dir,
    }


ARTEFACTS = ["pipeline", "image model", "scm", "classifier", "predictor", "predictor set", "evaluation",
             "calibration", "experiment"]


def _foreign_folder(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    (results / "figs").mkdir(parents=True)
    (results / "thesis.tex").write_text("\\documentclass{article}\n")
    (results / "figs" / "plot.pdf").write_bytes(b"%PDF-1.4 not a pipeline")
    return results


@pytest.mark.parametrize("artefact", ARTEFACTS)
@pytest.mark.parametrize("target", ["foreign folder", "file", "below a file", ".", "..", "/", "symlink"])
def test_a_save_never_touches_what_it_did_not_write(saved, tmp_path, monkeypatch, artefact, target):
    """Before: pipe.save('results/') deleted thesis.tex and figs/; a save over a file replaced it (leaving a hidden
    .NAME.old); save('.') / save('..') failed with a bare PosixPath / EBUSY error. Now: refused, nothing changed."""
    save = _savers(saved[0])[artefact]
    monkeypatch.chdir(tmp_path)
    foreign = _foreign_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "link").symlink_to(foreign, target_is_directory=True)
    path = {"foreign folder": "results", "file": "notes.txt", "below a file": "notes.txt/pipe", ".": ".",
            "..": "..", "/": "/", "symlink": "link"}[target]
    before = _tree(tmp_path)
    with pytest.raises(ValueError) as err:
        save(path)
    msg = str(err.value)
    assert "\n" not in msg and (path.split("/")[0] or "/") in msg, msg  # one line, naming the target
    assert _tree(tmp_path) == before  # nothing written, moved or removed, no hidden temporaries
    assert sorted(os.listdir(tmp_path)) == ["link", "notes.txt", "results"]


@pytest.mark.parametrize("artefact", ["pipeline", "image model", "scm", "classifier", "predictor set"])
def test_a_save_replaces_an_earlier_save_of_its_kind_and_fills_an_empty_folder(saved, tmp_path, artefact):
    save = _savers(saved[0])[artefact]
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty")
    first = _tree(tmp_path / "empty")
    save(tmp_path / "empty")  # over its own earlier save
    assert _tree(tmp_path / "empty") == first
    assert sorted(os.listdir(tmp_path)) == ["empty"]  # no temporaries left behind
    other = {"pipeline": "scm", "scm": "pipeline"}.get(artefact, "pipeline")
    with pytest.raises(ValueError, match="refusing to overwrite"):  # a save of another kind is foreign
        _savers(saved[0])[other](tmp_path / "empty")
    assert _tree(tmp_path / "empty") == first


# ------------------------------------------------------------------------------ kill -9 in the middle of a save
KILLER = Path(__file__).with_name("save_killer.py")


def _run_killer(*args: str) -> str:
    code = (f"import runpy, sys; sys.path.append({str(KILLER.parent)!r}); sys.argv = ['save_killer', *{list(args)!r}]; "
            f"runpy.run_path({str(KILLER)!r}, run_name='__main__')")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_sigkill_at_20_points_of_a_save_always_leaves_a_loadable_old_or_new_save(saved, tmp_path):
    """Before: a kill between the two renames left no pipeline at the path ('does not exist'), and 10 of 12 killed
    saves left .NAME.* temporaries for good. Now: at each of 20 seeded kill points (all four events of the final
    two renames among them) the path loads, as the old or the new save, and the next save leaves no temporary."""
    import random

    from save_killer import new_pipeline

    _, src = saved
    count = json.loads(_run_killer("count", str(src), str(tmp_path / "count")))
    n = count["events"]
    swap = count["renames"][-4:]  # start/end of 'path -> .old' and of '.tmp -> path'
    rest = sorted(set(range(1, n - 1)) - set(swap))
    points = sorted(swap + random.Random(0).sample(rest, 20 - len(swap)))
    _run_killer("kill", str(src), str(tmp_path / "kill"), *map(str, points))

    old = CounterfactualPipeline.load(src)
    new = new_pipeline(src)
    refs = {"old": old, "new": new}
    seen = []
    for p in points:
        path = tmp_path / "kill" / str(p) / "pipe"
        back = CounterfactualPipeline.load(path)
        which = [name for name, ref in refs.items()
                 if all(torch.equal(a, b) for a, b in zip(back.image_model.state_dict().values(),
                                                          ref.image_model.state_dict().values()))
                 and all(torch.equal(a, b) for a, b in zip(back.scm.state_dict().values(),
                                                          ref.scm.state_dict().values()))]
        assert len(which) == 1, f"kill point {p}: the loaded pipeline is neither the old nor the new save"
        seen.append(which[0])
        old.save(path)  # the next save puts the folder in place and removes every stale temporary
        assert os.listdir(path.parent) == ["pipe"], f"kill point {p}: {os.listdir(path.parent)}"
        again = CounterfactualPipeline.load(path).image_model.state_dict()
        assert all(torch.equal(again[k], v) for k, v in old.image_model.state_dict().items())
    # the points span the save: early kills load the old save, kills after the final rename the new one
    assert seen[0] == "old" and seen[-1] == "new" and seen.count("old") >= 2
    between = [s for p, s in zip(points, seen) if swap[1] <= p <= swap[2]]  # '.old' renamed away, '.tmp' not in
    assert between == ["new", "new"]  # the complete new folder is found beside the missing path


# ---------------------------------------------------------------------------- named pipes and /dev/zero
def _positions(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".json", ".safetensors"))


class _Timeout(Exception):
    pass


def _load_with_alarm(path: Path, seconds: float = 5.0) -> tuple[BaseException | None, float]:
    """Load ``path``; an alarm turns a hang into :class:`_Timeout` after ``seconds``. Returns (error, elapsed)."""
    import time

    def ring(*_):
        raise _Timeout(f"load of {path} still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.perf_counter()
    try:
        CounterfactualPipeline.load(path)
        err = None
    except (ValueError, _Timeout) as e:
        err = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return err, time.perf_counter() - t0


@pytest.mark.parametrize("special", ["named pipe", "/dev/zero symlink"])
def test_a_named_pipe_or_dev_zero_in_any_position_is_refused_at_once(saved, tmp_path, special):
    """Before: classifier/config.json as a FIFO hung CounterfactualPipeline.load forever; as a symlink to
    /dev/zero it read without end. Now: every config and weights position is refused within 1 s, naming it."""
    _, src = saved
    positions = _positions(src)
    assert len(positions) >= 7  # the pipeline, SCM, image model and classifier configs and weights
    for pos in positions:
        copy = tmp_path / pos.replace("/", "_") / "pipe"
        shutil.copytree(src, copy)
        (copy / pos).unlink()
        if special == "named pipe":
            os.mkfifo(copy / pos)
        else:
            (copy / pos).symlink_to("/dev/zero")
        err, elapsed = _load_with_alarm(copy)
        assert isinstance(err, ValueError), f"{pos}: {err!r}"
        assert elapsed < 1.0, f"{pos}: refused after {elapsed:.2f} s"
        assert Path(pos).name in str(err) and "\n" not in str(err), f"{pos}: {err}"


# ------------------------------------------------------------------------------------------ oversized fields
OVERSIZED = {
    "layers_per_block": ("image_model/config.json", ["layers_per_block"], 100000),
    "block_out_channels": ("image_model/config.json", ["block_out_channels"], [100000, 100000]),
    "image_shape": ("image_model/config.json", ["image_shape"], [1, 100000, 100000]),
    "scm hidden": ("scm/config.json", ["scm", "hidden"], [100000, 100000]),
    "mechanism hidden": ("scm/config.json", ["mechanisms", "i", "config", "hidden"], [100000, 100000]),
    "count_bins": ("scm/config.json", ["mechanisms", "t", "config", "count_bins"], 10 ** 8),
    "cardinality": ("scm/config.json", ["mechanisms", "d", "config", "cardinality"], 10 ** 9),
    # within the bounds, but far more than the weights hold: refused from the safetensors header (meta device)
    "widths the weights lack": ("image_model/config.json", ["block_out_channels"], [4096, 4096]),
    "hidden the weights lack": ("scm/config.json", ["mechanisms", "i", "config", "hidden"], [4096] * 8),
    "classifier width": ("classifier/config.json", ["width"], 100000),
    "classifier feature_dim": ("classifier/config.json", ["feature_dim"], 10 ** 8),
    "classifier classes": ("classifier/config.json", ["num_classes"], 10 ** 9),
}

_RSS_CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from pipeline.core import CounterfactualPipeline
cases = json.loads(sys.argv[1])
CounterfactualPipeline.load(cases.pop("intact"))  # every lazy import and first-use allocation done
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name, path in cases.items():
    try:
        CounterfactualPipeline.load(path)
        out[name] = ["loaded", 0]
    except ValueError as e:
        out[name] = [str(e), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024]
print(json.dumps(out))
"""


def test_oversized_fields_are_refused_before_any_large_allocation(saved, tmp_path):
    """Before: layers_per_block 100000, SCM hidden [100000, 100000] (40 GB) and classifier width 100000 (360 GB)
    built their modules before the weights were compared. Now: each is refused with a line naming the file, and the
    peak RSS of the loading process rises by less than 100 MB over all of them (measured in a fresh process)."""
    _, src = saved
    cases = {"intact": str(src)}
    for name, (file, keys, value) in OVERSIZED.items():
        copy = tmp_path / name.replace(" ", "_") / "pipe"
        shutil.copytree(src, copy)
        set_json_field(copy / file, keys, value)
        cases[name] = str(copy)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _RSS_CHILD, json.dumps(cases)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    for name, (file, _, _) in OVERSIZED.items():
        msg, rise_mb = out[name]
        assert msg != "loaded", f"{name}: loaded"
        assert Path(file).name in msg or Path(file).parent.name in msg, f"{name}: {msg}"
        assert rise_mb < 100, f"{name}: peak RSS rose {rise_mb:.0f} MB ({msg})"


# ------------------------------------------------------------------------------------------ failed fits
def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _fails_on_call(module: torch.nn.Module, n: int, exc: type[BaseException]):
    """Make ``module``'s forward raise ``exc`` on its ``n``-th call (after ``n - 1`` optimizer steps)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1
        if calls[0] == n:
            raise exc("the fit fails here")
    return module.register_forward_pre_hook(hook), calls


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_failed_image_model_fit_restores_every_parameter(tmp_path, exc):
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConditionalUNet(CONFIG).train()
    before = _snapshot(model)
    handle, calls = _fails_on_call(model, 4, exc)
    with pytest.raises(exc):
        train(CONFIG, TrainConfig(**{**TRAIN, "ckpt_every": 100}), toy_data(), tmp_path / "run", progress=False,
              model=model)
    handle.remove()
    assert calls[0] == 4  # three optimizer steps ran before the failure
    assert model.training
    after = _snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_failed_classifier_fit_restores_every_parameter(exc):
    from pipeline.classifier import ClassifierConfig, train_classifier

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 3, (64,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitClassifier(ClassifierConfig(num_classes=3, width=4, feature_dim=8)).eval()
    before = _snapshot(model)
    handle, calls = _fails_on_call(model, 3, exc)
    with pytest.raises(exc):
        train_classifier(images, labels, epochs=2, batch_size=16, progress=False, model=model,
                         config=model.config)
    handle.remove()
    assert calls[0] == 3 and not model.training
    after = _snapshot(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_failed_predictor_fit_restores_every_parameter(exc):
    from pipeline.predictors import AttributePredictor, PredictorConfig, PredictorSet, train_predictors
    from scm import CausalGraph

    torch.set_num_threads(1)
    graph = CausalGraph.from_dict({"nodes": {"t": {"kind": "positive"}, "image": {"kind": "image",
                                                                                  "shape": [1, 8, 8]}},
                                   "edges": [["t", "image"]]})
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(1, 8, 8, generator=g) * 2 - 1, {"t": torch.rand((), generator=g) + 0.5}) for _ in range(40)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pred = AttributePredictor(PredictorConfig("t", "regressor", (1, 8, 8), mean=1.0, std=0.3, low=0.0,
                                                  widths=(4,), feature_dim=4)).eval()
    before = _snapshot(pred)
    handle, calls = _fails_on_call(pred, 3, exc)
    with pytest.raises(exc):
        train_predictors(graph, data, epochs=3, batch_size=8, progress=False, init=PredictorSet({"t": pred}))
    handle.remove()
    assert calls[0] == 3 and not pred.training
    after = _snapshot(pred)
    assert all(torch.equal(after[k], before[k]) for k in before)


if __name__ == "__main__":
    _main(sys.argv[1:])
