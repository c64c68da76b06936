"""Bulk counterfactual generation (pipeline.generate, `dcfg generate`) on the tiny pipeline.

Data: 12 rows of the tiny 8x8 squares (pipeline_helpers.render) written as PNGs plus a CSV, read through the
``csv:`` data spec. Shards of 4 rows: [0, 4), [4, 8), [8, 12).

Every comparison of files is byte for byte; every run uses one torch thread, in this process and in
the subprocesses (kill-and-restart, torchrun with two ranks).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pipeline_helpers import draw_attributes, render
from safetensors.torch import load_file

from pipeline.cli import main
from pipeline.core import CounterfactualPipeline
from pipeline.generate import (
    ChoiceDraw,
    Manifest,
    NormalDraw,
    ShiftDo,
    UniformDraw,
    generate,
    open_dataset,
    parse_interventions,
    per_image_uniform,
    pipeline_sha256,
)
from pipeline.generate.randomness import shard_seed
from pipeline.images import save_image

N_ROWS = 12
DO = "thickness=+1"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tiny_pipeline, tmp_path_factory):
    """A saved tiny pipeline and a CSV + PNG dataset of N_ROWS rows."""
    root = tmp_path_factory.mktemp("generate")
    tiny_pipeline.save(root / "pipe")
    attrs = draw_attributes(N_ROWS, seed=11)
    images = render(attrs)
    (root / "img").mkdir()
    lines = ["path,thickness,intensity,digit"]
    for k in range(N_ROWS):
        save_image(images[k:k + 1], root / "img" / f"{k}.png")
        lines.append(f"{k}.png,{float(attrs['thickness'][k]):.5f},{float(attrs['intensity'][k]):.4f},"
                     f"{int(attrs['digit'][k])}")
    (root / "img" / "attrs.csv").write_text("\n".join(lines) + "\n")
    return root, f"csv:{root / 'img' / 'attrs.csv'}"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _generate(setup, out, **kwargs):
    root, data = setup
    args = dict(out=out, steps=3, shard_size=4, progress=False)
    args.update(kwargs)
    return generate(str(root / "pipe"), args.pop("data", data), args.pop("do", DO), **args)


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """An uninterrupted single-process run: the files every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    manifest = _generate(setup, out)
    return out, manifest, _files(out)


# ---------------------------------------------------------------------------- parsing and draws
@pytest.mark.parametrize("text, expected", [
    ("thickness=3", {"thickness": 3}),
    ("thickness=+1", {"thickness": ShiftDo(1.0)}),
    ("thickness-=0.5,digit=2", {"thickness": ShiftDo(-0.5), "digit": 2}),
    ("thickness~uniform(1, 4)", {"thickness": UniformDraw(1.0, 4.0)}),
    (" intensity ~ normal(200,20) ", {"intensity": NormalDraw(200.0, 20.0)}),
    ("digit~choice(0,...,3),thickness+=2", {"digit": ChoiceDraw((0, 1, 2, 3)), "thickness": ShiftDo(2.0)}),
    ("digit~choice(7,1,...,2)", {"digit": ChoiceDraw((7, 1, 2))}),
])
def test_parse_interventions(text, expected):
    assert parse_interventions(text) == expected


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("thickness~gauss(1,2)", "unknown distribution 'gauss'"),
    ("thickness~uniform(4,1)", "low < high"),
    ("thickness~uniform(1)", "low < high"),
    ("thickness~normal(2,0)", "std > 0"),
    ("thickness~normal(2,0.5", "unclosed"),
    ("thickness~uniform(1,4))", "unmatched"),
    ("digit~choice(0,...)", r"'\.\.\.' once, between two integers"),
    ("digit~choice(5,...,1)", "a <= b"),
    ("thickness~uniform(a,4)", "not a number"),
    ("thickness=1,thickness~uniform(1,2)", "given twice"),
    ("thickness~__import__('os')", "unknown distribution '__import__'"),
    ("thickness~uniform(1,2)+1", "cannot parse"),
])
def test_parse_interventions_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_interventions(text)


@pytest.mark.parametrize("text, message", [
    ("", "--do: empty; write e.g. thickness=3, thickness=+1 or thickness~uniform(1,4)"),
    ("thickness=1,,digit=2", "--do: 'thickness=1,,digit=2' has an empty item (a doubled or trailing comma)"),
    ("thickness~gauss(1,2)", "--do: unknown distribution 'gauss' in 'thickness~gauss(1,2)'; use uniform(low,high), "
                             "normal(mean,std) or choice(v1,v2,...)"),
    ("thickness~uniform(4,1)", "--do: thickness~uniform(4, 1) needs two numbers low < high, e.g. "
                               "thickness~uniform(1,4)"),
    ("thickness~normal(2,-1)", "--do: thickness~normal(2, -1) needs a mean and a std > 0, e.g. "
                               "thickness~normal(2,0.5)"),
    ("digit~choice(0,...)", "--do: digit~choice(0,...): write '...' once, between two integers, e.g. choice(0,...,9)"),
    ("thickness~uniform(1,)", "--do: thickness~uniform(1,) has an empty argument; write uniform(low,high), "
                              "normal(mean,std) or choice(v1,v2,...)"),
    ("thickness~uniform(1,2)+1", "--do: cannot parse 'thickness~uniform(1,2)+1'; a per-image draw reads "
                                 "name~uniform(low,high), normal(mean,std) or choice(v1,v2,...), e.g. "
                                 "thickness~uniform(1,4)"),
    ("thickness", "--do: cannot parse 'thickness'; write name=value pairs separated by commas, e.g. "
                  "thickness=2.5,digit=3"),
    ("thickness+=big", "--do: the value 'big' of 'thickness' is not a number; write e.g. thickness=2.5"),
    ("digit=1,digit~choice(1,2)", "--do: node 'digit' is given twice"),
])
def test_grammar_error_messages(text, message):
    """Each malformed --do text gets one message that names the flag, the item and the fix."""
    with pytest.raises(ValueError) as info:
        parse_interventions(text)
    assert str(info.value) == message


def test_grammar_without_draws_is_parse_do():
    from pipeline.parsing import parse_do

    assert parse_do("thickness=+1,digit=2") == parse_interventions("thickness=+1,digit=2", draws=False) == {
        "thickness": ShiftDo(1.0), "digit": 2}
    for parse in (parse_do, lambda text: parse_interventions(text, draws=False)):
        with pytest.raises(ValueError, match=r"^--do: 'thickness~uniform\(1,4\)' is a per-image draw, which is not "
                                             r"taken here; write a constant \(name=v\) or a shift \(name=\+d\)$"):
            parse("thickness~uniform(1,4)")


def test_shift_do_is_the_shift_everywhere(tiny_pipeline, tiny_batch):
    """ShiftDo is what --do, the Python API and the experiment specs give for a shift; the pipeline applies it."""
    from pipeline.experiment.spec import InterventionSpec

    shift = parse_interventions("thickness=+1")["thickness"]
    assert shift == ShiftDo(1.0) and InterventionSpec("thickness", shift=1.0).intervention == shift
    assert InterventionSpec("thickness", shift=-0.5).describe() == ShiftDo(-0.5).describe("thickness") == \
        "do(thickness := thickness - 0.5)"
    x, a = tiny_batch
    res = tiny_pipeline.counterfactual(x[:2], {k: v[:2] for k, v in a.items()}, do={"thickness": shift}, steps=1)
    torch.testing.assert_close(res.parents["thickness"], a["thickness"][:2] + 1)
    with pytest.raises(ValueError, match="a shift of the categorical node 'digit' is not allowed"):
        tiny_pipeline.counterfactual(x[:2], {k: v[:2] for k, v in a.items()}, do={"digit": ShiftDo(1.0)}, steps=1)
    with pytest.raises(TypeError, match="is a per-image draw; draw it first"):
        tiny_pipeline.counterfactual(x[:2], {k: v[:2] for k, v in a.items()}, do={"thickness": UniformDraw(1, 2)},
                                     steps=1)


@pytest.mark.parametrize("old, new", [("Shift", ShiftDo), ("Uniform", UniformDraw), ("Normal", NormalDraw),
                                      ("Choice", ChoiceDraw)])
def test_old_class_names_warn(old, new):
    import pipeline.generate

    with pytest.warns(DeprecationWarning, match=f"pipeline.generate.{old} is deprecated; use "
                                                f"pipeline.generate.{new.__name__}"):
        cls = getattr(pipeline.generate, old)
    assert cls is new
    with pytest.warns(DeprecationWarning):
        exec(f"from pipeline.generate import {old}", {})
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        getattr(pipeline.generate, "Nope")  # noqa: B009 (the module's __getattr__ is the subject)


def test_per_image_draws_depend_only_on_seed_and_row():
    rows = np.arange(100)
    u = per_image_uniform(3, "do/thickness", rows)
    assert ((u > 0) & (u < 1)).all() and 0.4 < u.mean() < 0.6
    np.testing.assert_array_equal(per_image_uniform(3, "do/thickness", rows[37:41]), u[37:41])
    assert not np.array_equal(per_image_uniform(4, "do/thickness", rows), u)
    assert not np.array_equal(per_image_uniform(3, "do/digit", rows), u)


# ---------------------------------------------------------------------------- outputs
def test_manifest_and_shards(setup, reference, tiny_pipeline):
    root, _ = setup
    out, manifest, files = reference
    assert sorted(files) == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors",
                             "shard-00002.safetensors"]  # no sidecar or temporary file left
    m = json.loads(files["manifest.json"])
    assert m["format_version"] == 1 and m["complete"] is True
    assert m["pipeline"]["sha256"] == pipeline_sha256(root / "pipe")
    assert m["query"]["do"] == {"thickness": {"shift": 1.0}}
    assert m["query"]["steps"] == 3 and m["query"]["seed"] == 0 and m["query"]["shard_size"] == 4
    assert m["query"]["groups"] == [["thickness", "intensity"], ["digit"]]
    # the pipeline's inversion (extrapolated, one refinement) is part of the query: a resume checks it
    assert m["query"]["inversion"] == {"refine_steps": 1, "predictor": "extrapolated"}
    assert m["query"]["timestep_power"] == 1.5
    assert m["data"]["spec"] == "csv" and m["data"]["length"] == N_ROWS
    assert [(s["start"], s["stop"], s["status"]) for s in m["shards"]] == [
        (0, 4, "complete"), (4, 8, "complete"), (8, 12, "complete")]
    for s in m["shards"]:
        assert hashlib.sha256(files[s["file"]]).hexdigest() == s["sha256"]
    assert Manifest.load(out) == manifest

    shard = load_file(out / "shard-00001.safetensors")
    assert shard["index"].tolist() == [4, 5, 6, 7]
    assert shard["image"].dtype == torch.uint8 and shard["image"].shape == (4, 1, 8, 8)
    assert shard["noise/x_T"].shape == (4, 1, 8, 8) and shard["noise/digit"].shape == (4, 10)
    ds = open_dataset(setup[1], graph=tiny_pipeline.graph)
    x, parents = ds.fetch(4, 8)
    for k in ("thickness", "intensity", "digit"):
        torch.testing.assert_close(shard[f"factual/{k}"], parents[k])
    torch.testing.assert_close(shard["counterfactual/thickness"], parents["thickness"] + 1)
    assert torch.equal(shard["counterfactual/digit"], parents["digit"])  # not a descendant of thickness
    assert not torch.allclose(shard["counterfactual/intensity"], parents["intensity"])  # a descendant
    # the shard is exactly the pipeline's answer for its rows and its seed
    res = tiny_pipeline.counterfactual(x, parents, do={"thickness": lambda t: t + 1.0}, steps=3,
                                       seed=shard_seed(0, 1))
    assert torch.equal(shard["image"], res.image.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8))
    assert torch.equal(shard["noise/x_T"], res.noise["x_T"])


def test_per_image_draws_do_not_depend_on_sharding(setup, tmp_path):
    do = "thickness~uniform(1,4),digit~choice(0,...,9),intensity~normal(150,40)"
    shards = {}
    for size in (4, 5):
        _generate(setup, tmp_path / f"s{size}", do=do, shard_size=size, steps=1)
        parts = [load_file(p) for p in sorted((tmp_path / f"s{size}").glob("shard-*.safetensors"))]
        shards[size] = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    a, b = shards[4], shards[5]
    assert torch.equal(a["index"], torch.arange(N_ROWS))
    for k in ("counterfactual/thickness", "counterfactual/digit", "counterfactual/intensity"):
        assert torch.equal(a[k], b[k]), k
    t, i = a["counterfactual/thickness"], a["counterfactual/intensity"]
    assert bool(((t > 1) & (t < 4)).all()) and bool(((i > 0) & (i < 255)).all())
    assert len(set(a["counterfactual/digit"].tolist())) > 3


def test_resume_skips_verified_shards_and_rewrites_broken_ones(setup, reference, tmp_path):
    out = tmp_path / "out"
    _generate(setup, out)
    broken = bytearray((out / "shard-00001.safetensors").read_bytes())
    broken[-3] ^= 0xFF
    (out / "shard-00001.safetensors").write_bytes(bytes(broken))  # corrupted
    (out / "shard-00002.safetensors").unlink()  # missing
    (out / ".shard-00000.x1y2.tmp").write_bytes(b"half a shard")  # left by a killed write
    written = []
    _generate(setup, out, on_shard=lambda rec, dt: written.append(rec.index))
    assert written == [1, 2]
    assert _files(out) == reference[2]
    written.clear()
    _generate(setup, out, on_shard=lambda rec, dt: written.append(rec.index))
    assert written == []  # a complete run is only verified


def test_a_run_resumes_after_the_pipeline_is_saved_again_in_another_process(setup, tmp_path):
    """Before: the safetensors metadata keys came out in varying order, so a re-saved pipeline had another sha256
    and dcfg generate refused to resume. Now: the pipeline re-saved by a fresh process (same weights) has the same
    bytes, and the interrupted run resumes where it stopped."""
    root, data = setup
    pipe = tmp_path / "pipe"
    CounterfactualPipeline.load(root / "pipe").save(pipe)
    out = tmp_path / "out"
    generate(str(pipe), data, DO, out=out, steps=3, shard_size=4, progress=False, limit=8)  # shards 0 and 1
    (out / "shard-00001.safetensors").unlink()  # as if killed before the second shard
    before = pipeline_sha256(pipe)
    code = ("import sys; from pipeline.core import CounterfactualPipeline as P; "
            "P.load(sys.argv[1]).save(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(pipe)], check=True, cwd=Path(__file__).resolve().parents[3])
    assert pipeline_sha256(pipe) == before
    written = []
    generate(str(pipe), data, DO, out=out, steps=3, shard_size=4, progress=False, limit=8,
             on_shard=lambda rec, dt: written.append(rec.index))
    assert written == [1]


@pytest.mark.parametrize("change, match", [
    (dict(do="thickness=+2"), "query.do"),
    (dict(seed=1), "query.seed"),
    (dict(steps=4), "query.steps"),
    (dict(limit=8), "data.length"),
])
def test_restart_with_another_query_refuses(setup, reference, tmp_path, change, match):
    out = tmp_path / "out"
    _generate(setup, out, limit=4)
    before = _files(out)
    args = dict(limit=4)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        _generate(setup, out, **args)
    assert _files(out) == before


def test_the_same_query_written_differently_resumes(setup, tmp_path):
    out = tmp_path / "out"
    _generate(setup, out, do="thickness=2,digit~choice(1,2)", limit=4)
    written = []
    _generate(setup, out, do="digit~choice(1.0,2), thickness=2.0", limit=4,
              on_shard=lambda rec, dt: written.append(rec.index))
    assert written == []


def test_restart_with_another_pipeline_refuses(setup, tiny_pipeline, tmp_path):
    root, data = setup
    out = tmp_path / "out"
    _generate(setup, out, limit=4)
    with pytest.raises(ValueError, match="pipeline_sha256"):
        generate(tiny_pipeline, data, DO, out=out, steps=3, shard_size=4, limit=4, progress=False)


def test_refuses_a_folder_of_other_files(setup, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and has no manifest.json"):
        _generate(setup, tmp_path, limit=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_python_api_with_a_dataset_object(tiny_pipeline, tiny_batch, tmp_path):
    x, a = tiny_batch

    class Pairs(torch.utils.data.Dataset):
        attributes = a

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], {k: v[i] for k, v in a.items()}

    m = generate(tiny_pipeline, Pairs(), {"digit": ChoiceDraw((1, 2)), "thickness": 2.0}, out=tmp_path / "o",
                 steps=2, shard_size=4, image_dtype="float16", progress=False)
    assert m.data["spec"] == "<Pairs>" and m.data["length"] == len(x) and m.pipeline["hashed"] == "weights"
    s = load_file(tmp_path / "o" / "shard-00000.safetensors")
    assert set(s["counterfactual/digit"].tolist()) <= {1, 2} and bool((s["counterfactual/thickness"] == 2).all())
    assert s["image"].dtype == torch.float16 and -1 <= float(s["image"].min()) <= float(s["image"].max()) <= 1
    with pytest.raises(TypeError, match="Shift"):
        generate(tiny_pipeline, Pairs(), {"thickness": lambda t: t + 1}, out=tmp_path / "p", progress=False)
    with pytest.raises(ValueError, match="support"):
        generate(tiny_pipeline, Pairs(), {"thickness": UniformDraw(-1.0, 2.0)}, out=tmp_path / "p", progress=False)
    with pytest.raises(ValueError, match="the shift -10 leaves the support"):  # checked on the data's attributes
        generate(tiny_pipeline, Pairs(), {"thickness": ShiftDo(-10.0)}, out=tmp_path / "p", progress=False)
    for bad, err, match in ((3, TypeError, "map-style dataset"), ([], ValueError, "no rows"),
                            ([x[0]], TypeError, "pairs; item 0 of list")):
        with pytest.raises(err, match=match):
            generate(tiny_pipeline, bad, {"thickness": 2.0}, out=tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------- data specs
def test_morpho_spec_renders_the_rows_of_MorphoMNIST():
    from pipeline.datasets import MorphoMNIST

    lazy = open_dataset("morpho-test", limit=6)
    x, a = lazy.fetch(2, 6)
    assert len(lazy) == 6 and torch.equal(lazy[-1][0], lazy.fetch(5, 6)[0][0])
    with pytest.raises(IndexError, match="out of range"):
        lazy[6]
    full = MorphoMNIST("test", samples_per_digit=1, seed=0, n_jobs=1, progress=False)
    assert torch.equal(x, full.images[2:6])
    for k in ("thickness", "intensity", "digit"):
        assert torch.equal(a[k], full.attributes[k][2:6])
    two = open_dataset("morpho-train:samples=2,seed=3", limit=4)
    _, b = two.fetch(0, 4)
    assert b["digit"][0] == b["digit"][1] and not torch.equal(b["thickness"][0], b["thickness"][1])


def _idx(array: np.ndarray) -> bytes:
    code = 0x08  # unsigned byte
    return struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_mnist_folder_spec_with_morpho_csv(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(images))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([3, 1, 4, 1, 5], np.uint8)))
    (tmp_path / "t10k-morpho.csv").write_text("index,thickness,intensity\n" + "".join(
        f"{k},{1.5 + k},{100 + k}\n" for k in range(5)))
    ds = open_dataset(str(tmp_path))  # a bare folder means mnist:DIR
    assert len(ds) == 5 and ds.spec["morpho_csv"] is True
    x, a = ds.fetch(1, 3)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images[1:3]).float() / 127.5 - 1)
    assert a["digit"].tolist() == [1, 4] and a["thickness"].tolist() == [2.5, 3.5]
    with pytest.raises(ValueError, match="samples= and seed="):
        open_dataset(f"mnist:{tmp_path},samples=2")


# ---------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("data, do, match", [
    ("nope", DO, "not a data spec"),
    ("morpho-test:samples=0", DO, "samples=0"),
    ("morpho-test:colour=red", DO, "unknown option 'colour'"),
    ("mnist:/no/such/dir", DO, "does not exist"),
    ("csv:/no/such/file.csv", DO, "does not exist"),
    ("morpho-test", DO, r"images are \(1, 28, 28\)"),  # the tiny pipeline makes 8x8 images
    ("CSV", "zz=1", "unknown node 'zz'"),
    ("CSV", "image=1", "image node"),
    ("CSV", "thickness~gauss(1,2)", "unknown distribution"),
    ("CSV", "thickness~uniform(-1,2)", "support"),
    ("CSV", "digit~normal(3,1)", "continuous node"),
    ("CSV", "digit~choice(0,...,10)", "out of range"),
    ("CSV", "digit+=1", "shift of the categorical"),
    ("CSV", "thickness-=10", r"shift -10 leaves the support .*node 'thickness'.* at row 0 "),
    ("CSV", "thickness=abc", "not a number"),
])
def test_cli_bad_specs_exit_2_and_write_nothing(setup, tmp_path, data, do, match):
    root, csv = setup
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["generate", "--pipeline", str(root / "pipe"), "--data",
                                    csv if data == "CSV" else data, "--do", do, "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and re.search(match, error[0]), res.output
    assert not out.exists()


def test_cli_generate_resumes_the_reference_run(setup, reference, tmp_path):
    root, csv = setup
    out = tmp_path / "out"
    args = ["generate", "--pipeline", str(root / "pipe"), "--data", csv, "--do", DO, "--steps", "3",
            "--shard-size", "4", "--out", str(out), "--quiet"]
    # a partial copy of the reference (shard 0 only, manifest still pending) is finished by the CLI
    out.mkdir()
    _, _, ref_files = reference
    (out / "shard-00000.safetensors").write_bytes(ref_files["shard-00000.safetensors"])
    pending = json.loads(ref_files["manifest.json"])
    pending["complete"] = False
    for s in pending["shards"][1:]:
        s["status"], s["sha256"] = "pending", None
    (out / "manifest.json").write_text(json.dumps(pending, indent=2) + "\n")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert _files(out) == ref_files


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _cli_args(setup, out) -> list[str]:
    root, csv = setup
    return ["generate", "--pipeline", str(root / "pipe"), "--data", csv, "--do", DO, "--steps", "3",
            "--shard-size", "4", "--out", str(out), "--quiet"]


def test_killed_mid_run_and_restarted_gives_identical_files(setup, tmp_path):
    """SIGKILL once a shard is complete, restart the same command: the files equal an uninterrupted run."""
    root, csv = setup
    out = tmp_path / "out"
    # many small shards and more steps, so that the kill lands between the first and the last shard
    args = ["generate", "--pipeline", str(root / "pipe"), "--data", csv, "--do", DO, "--steps", "20",
            "--shard-size", "1", "--out", str(out), "--quiet"]
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("shard-*.safetensors")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = sorted(p.name for p in out.glob("shard-*.safetensors"))
    assert 1 <= len(done) < N_ROWS, done
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    res = CliRunner().invoke(main, args)  # the same command again (in this process, also one thread)
    assert res.exit_code == 0, res.output
    uninterrupted = tmp_path / "uninterrupted"
    _generate(setup, uninterrupted, steps=20, shard_size=1)
    assert _files(out) == _files(uninterrupted)


def test_two_ranks_under_torchrun_equal_one_process(setup, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pipeline.cli", *_cli_args(setup, out)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    assert _files(out) == reference[2]


def test_bench_generate_command(setup, tmp_path):
    root, csv = setup
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["bench", "generate", "--pipeline", str(root / "pipe"), "--data", csv,
                                    "--n", "6", "--steps", "1", "--shard-size", "4", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["n"] == 6 and r["images_per_s"] > 0 and len(r["rss_after_shard_mib"]) == 2
    assert r["peak_rss_mib"] >= max(r["rss_after_shard_mib"]) > 0
    assert "img/s" in res.output and "peak RSS" in res.output
