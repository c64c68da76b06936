"""The CLI's malformed-input catalogue: every user error is one ``Error: ...`` line, exit code 2, nothing written.

Each case runs a ``dcfg`` command (click's CliRunner, in an empty working directory) with one bad input among
good ones: malformed ``--parents`` / ``--do`` texts, wrong image files, a missing or damaged pipeline directory,
an unwritable ``--out``. The checks: exit code 2, no traceback, exactly one ``Error:`` line that says what is
wrong (a fragment of it is given per case), the output folder never created, the working directory still
empty and the pipeline directory unchanged.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hardening_helpers import set_json_field, small_pipeline
from PIL import Image

from pipeline.cli import main
from pipeline.images import save_image

torch.set_num_threads(1)

GOOD_PARENTS = "t=1.5,i=130,d=1"
#: name -> (file in the saved pipeline, path of keys in its JSON, an oversized value)
OVERSIZED = {
    "layers_per_block": ("image_model/config.json", ["layers_per_block"], 100000),
    "scm hidden": ("scm/config.json", ["scm", "hidden"], [100000, 100000]),
    "mechanism count_bins": ("scm/config.json", ["mechanisms", "t", "config", "count_bins"], 10 ** 8),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A saved toy pipeline, a good 8x8 input image and assorted bad files."""
    root = tmp_path_factory.mktemp("cli_files")
    pipe = small_pipeline(classifier=False)
    pipe.save(root / "pipe")
    save_image(torch.zeros(1, 1, 8, 8), root / "in.png")
    save_image(torch.zeros(1, 1, 12, 12), root / "big.png")
    (root / "notes.png").write_text("this is not an image\n")
    (root / "cut.png").write_bytes((root / "in.png").read_bytes()[:40])
    (root / "a_file").write_text("x")
    (root / "a_dir").mkdir()
    (root / "empty_pipe").mkdir()
    red = torch.full((1, 3, 8, 8), -1.0)
    red[:, 0] = 1.0
    save_image(red, root / "red.png")  # colour, for the grey pipeline
    (root / "bad.toml").write_text("[nonsense\n")
    (root / "graph.json").write_text('{"nodes": 3}')
    damaged = root / "damaged_pipe"
    pipe.save(damaged)
    w = damaged / "image_model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    for name, (file, keys, value) in OVERSIZED.items():  # saved pipelines with one oversized config field
        folder = root / f"oversized_{name.replace(' ', '_')}"
        pipe.save(folder)
        set_json_field(folder / file, keys, value)
    binary = root / "binary_config_pipe"
    pipe.save(binary)
    (binary / "scm" / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff binary, not JSON")
    return root


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def run_user_error(files: Path, tmp_path: Path, args: list[str], fragment: str) -> str:
    """Run ``dcfg args`` (``{F}`` = the fixture folder, ``{OUT}`` = a fresh output folder); check the contract."""
    out = tmp_path / "out"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [a.replace("{F}", str(files)).replace("{OUT}", str(out)) for a in args]
    before = _snapshot(files)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(main, args)
    finally:
        os.chdir(old)
    text = res.output
    assert res.exit_code == 2, f"exit {res.exit_code}: {text}\n{res.exception!r}"
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    assert res.stderr.splitlines() == errors, f"stderr must hold exactly the one Error line: {res.stderr!r}"
    assert fragment in errors[0], text
    assert not out.exists(), "the failed command wrote its output folder"
    assert list(cwd.iterdir()) == [], "the failed command wrote into the working directory"
    assert _snapshot(files) == before, "the failed command modified its inputs"
    return errors[0]


CF = ["counterfactual", "--pipeline", "{F}/pipe", "--image", "{F}/in.png", "--steps", "1",
      "--out", "{OUT}/cf.png"]


def _cf(**changes: str) -> list[str]:
    """The counterfactual command line with some options replaced (``parents``, ``do``, ``image``, ...)."""
    opts = {"parents": GOOD_PARENTS, "do": "t=2"}
    opts.update(changes)
    args = list(CF)
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = v
        else:
            args += [flag, v]
    return args


COUNTERFACTUAL_CASES = {
    # --parents
    "parents: missing '='": (dict(parents="t"), "cannot parse 't'"),
    "parents: unknown node": (dict(parents=GOOD_PARENTS + ",zz=3"), "unknown node(s) ['zz']"),
    "parents: non-numeric": (dict(parents="t=thick,i=130,d=1"), "'thick' of 't' is not a number"),
    "parents: out of support": (dict(parents="t=-1,i=130,d=1"), "node 't'"),
    "parents: interval overflow": (dict(parents="t=1.5,i=256,d=1"), "node 'i'"),
    "parents: image node": (dict(parents=GOOD_PARENTS + ",image=1"), "'image'"),
    "parents: duplicate key": (dict(parents="t=1.5,t=2,i=130,d=1"), "node 't' is given twice"),
    "parents: empty": (dict(parents=""), "--parents: empty"),
    "parents: blank": (dict(parents="  "), "--parents: empty"),
    "parents: NaN": (dict(parents="t=nan,i=130,d=1"), "finite"),
    "parents: inf": (dict(parents="t=1.5,i=inf,d=1"), "finite"),
    "parents: non-integer class": (dict(parents="t=1.5,i=130,d=1.5"), "node 'd'"),
    "parents: class out of range": (dict(parents="t=1.5,i=130,d=3"), "node 'd'"),
    "parents: missing node": (dict(parents="t=1.5,i=130"), "missing node(s) ['d']"),
    "parents: a shift": (dict(parents="t+=1,i=130,d=1"), "shift"),
    "parents: trailing comma": (dict(parents=GOOD_PARENTS + ","), "empty item"),
    "parents: bad name": (dict(parents="t t=1"), "not a valid node name"),
    # --do
    "do: missing '='": (dict(do="t"), "cannot parse 't'"),
    "do: unknown node": (dict(do="zz=1"), "unknown node 'zz'"),
    "do: non-numeric": (dict(do="t=big"), "'big' of 't' is not a number"),
    "do: out of support": (dict(do="i=300"), "node 'i'"),
    "do: float32 underflow": (dict(do="t=1e-300"), "node 't'"),
    "do: image node": (dict(do="image=0"), "image node 'image'"),
    "do: duplicate key": (dict(do="t=1,t=2"), "node 't' is given twice"),
    "do: empty": (dict(do=""), "--do: empty"),
    "do: NaN": (dict(do="t=nan"), "finite"),
    "do: -inf": (dict(do="t=-inf"), "finite"),
    "do: class out of range": (dict(do="d=7"), "node 'd'"),
    "do: double comma": (dict(do="t=1,,d=2"), "empty item"),
    "do: value missing": (dict(do="t="), "cannot parse 't='"),
    # --do: per-image draws (the grammar of dcfg generate)
    "do: unknown distribution": (dict(do="t~gauss(1,2)"), "unknown distribution 'gauss' in 't~gauss(1,2)'"),
    "do: draw outside the support": (dict(do="t~uniform(-1,2)"), "uniform(-1.0, 2.0) leaves the support"),
    "do: normal draw of a class": (dict(do="d~normal(1,1)"), "normal draws need a continuous node"),
    "do: choice out of range": (dict(do="d~choice(0,...,5)"), "node 'd'"),
    "do: unclosed draw": (dict(do="t~uniform(1,2"), "has an unclosed '('"),
    "do: draw with a negative seed": (dict(do="t~uniform(1,2)", seed="-1"),
                                      "seed=-1 must be an integer >= 0 for the per-image draw of 't'"),
    # images
    "image: missing file": (dict(image="{F}/nope.png"), "does not exist"),
    "image: a directory": (dict(image="{F}/a_dir"), "is a directory"),
    "image: not an image": (dict(image="{F}/notes.png"), "not a readable PNG/JPEG"),
    "image: truncated PNG": (dict(image="{F}/cut.png"), "not a readable PNG/JPEG"),
    "image: wrong size": (dict(image="{F}/big.png"), "12x12"),
    "image: colour for a grey pipeline": (dict(image="{F}/red.png"), "is a colour (RGB, 3-channel) image"),
    "do: a shift of a categorical node": (dict(do="d=+1"), "a shift of the categorical node 'd' is not allowed"),
    "out: not a PNG": (dict(out="{OUT}/cf.jpg"), "images are written as PNG only"),
    "out: in /proc": (dict(out="/proc/x.png"), "'/proc' is not a writable directory"),
    # the pipeline directory
    "pipeline: missing": (dict(pipeline="{F}/no_such_pipe"), "does not exist"),
    "pipeline: empty folder": (dict(pipeline="{F}/empty_pipe"), "no config.json"),
    "pipeline: a file": (dict(pipeline="{F}/a_file"), "does not exist"),
    "pipeline: damaged weights": (dict(pipeline="{F}/damaged_pipe"), "model.safetensors"),
    # --out and other options
    "out: parent is a file": (dict(out="{F}/a_file/cf.png"), "not a writable directory"),
    "out: an existing folder": (dict(out="{F}/a_dir"), "is a directory"),
    "scale: NaN": (dict(scale="nan"), "scale=nan"),
    "steps: 0": (dict(steps="0"), "--steps"),
    "threads: -1": (dict(threads="-1"), "--threads"),
    "seed: too large": (dict(seed=str(2 ** 70)), "seed="),
    "guidance: unknown": (dict(guidance="dcfg2"), "--guidance"),
    "descendant weight: not a number": (dict(descendant_weight="half"), "--descendant-weight 'half'"),
    "descendant weight: inf": (dict(descendant_weight="inf"), "finite"),
    # guidance variants
    "variant: unknown": (dict(variant="cfg++"), "--variant"),
    "variant: with guidance none": (dict(variant="apg", guidance="none"), "--variant apg modifies guidance"),
    "interval: with guidance none": (dict(interval="100,500", guidance="none"), "--interval 100,500 modifies"),
    "interval: lo >= hi": (dict(interval="500,100"), "--interval '500,100' must be LO,HI with 0 <= LO < HI"),
    "interval: negative": (dict(interval="-1,100"), "--interval '-1,100' must be LO,HI"),
    "interval: beyond T": (dict(interval="10,1001"), "interval=(10.0, 1001.0) is outside [0, 1000]"),
    "interval: not numbers": (dict(interval="early,late"), "--interval 'early,late' must be two numbers"),
    "interval: one number": (dict(interval="300"), "--interval '300' must be two numbers"),
    "apg eta: above 1": (dict(variant="apg", apg_eta="1.5"), "--apg-eta"),
}


@pytest.mark.parametrize("case", sorted(COUNTERFACTUAL_CASES))
def test_counterfactual_user_errors(files, tmp_path, case):
    changes, fragment = COUNTERFACTUAL_CASES[case]
    run_user_error(files, tmp_path, _cf(**changes), fragment)


SAMPLE = ["sample", "--pipeline", "{F}/pipe", "--n", "2", "--steps", "1"]
SAMPLE_CASES = {
    "parents: unknown node": (["--parents", "zz=1", "--out", "{OUT}/g.png"], "unknown node 'zz'"),
    "parents: non-numeric": (["--parents", "d=three", "--out", "{OUT}/g.png"], "not a number"),
    "parents: out of support": (["--parents", "t=0", "--out", "{OUT}/g.png"], "node 't'"),
    "parents: image node": (["--parents", "image=1", "--out", "{OUT}/g.png"], "image node"),
    "parents: duplicate key": (["--parents", "d=1,d=2", "--out", "{OUT}/g.png"], "given twice"),
    "parents: missing '='": (["--parents", "d", "--out", "{OUT}/g.png"], "cannot parse"),
    "parents: NaN": (["--parents", "i=nan", "--out", "{OUT}/g.png"], "finite"),
    "parents: blank": (["--parents", " ", "--out", "{OUT}/g.png"], "--parents: empty"),
    "scale: inf": (["--scale", "inf", "--out", "{OUT}/g.png"], "scale=inf"),
    "n: 0": (["--n", "0", "--out", "{OUT}/g.png"], "--n"),
    "out: parent is a file": (["--out", "{F}/a_file/g.png"], "not a writable directory"),
    "out: an existing folder": (["--out", "{F}/a_dir"], "is a directory"),
    "pipeline: missing": (["--pipeline", "{F}/nope", "--out", "{OUT}/g.png"], "does not exist"),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sample_user_errors(files, tmp_path, case):
    extra, fragment = SAMPLE_CASES[case]
    run_user_error(files, tmp_path, SAMPLE + extra, fragment)


OTHER_CASES = {
    "demo: --out under a file": (["demo", "--out", "{F}/a_file/demo"], "not a writable directory"),
    "demo: missing pipeline": (["demo", "--pipeline", "{F}/nope", "--out", "{OUT}"], "does not exist"),
    "train: --out under a file": (["train", "--out", "{F}/a_file/run"], "not a writable directory"),
    "train: --steps 0": (["train", "--steps", "0", "--out", "{OUT}"], "--steps"),
    "bench scm: --out under a file": (["bench", "scm", "--out", "{F}/a_file/b.json"], "not a writable directory"),
    "bench diffusion: bad --batch-sizes": (["bench", "diffusion", "--batch-sizes", "1,a", "--out", "{OUT}/b.json"],
                                           "--batch-sizes"),
    "bench diffusion: --out under a file": (["bench", "diffusion", "--out", "{F}/a_file/b.json"],
                                            "not a writable directory"),
    "bench diffusion: --model not a model": (["bench", "diffusion", "--model", "{F}/a_dir", "--train-steps", "0",
                                              "--out", "{OUT}/b.json"], "config.json"),
    "bench morphometry: --out under a file": (["bench", "morphometry", "--out", "{F}/a_file/b.json"],
                                              "not a writable directory"),
    "bench pipeline: bad --steps": (["bench", "pipeline", "--pipeline", "{F}/pipe", "--steps", "10,x",
                                     "--out", "{OUT}/b.json"], "--steps"),
    "bench pipeline: --out under a file": (["bench", "pipeline", "--pipeline", "{F}/pipe", "--out",
                                            "{F}/a_file/b.json"], "not a writable directory"),
    "data preview: --out not a PNG": (["data", "preview", "--out", "{OUT}/p.jpg"], ".png"),
    "data preview: --out under a file": (["data", "preview", "--out", "{F}/a_file/p.png"],
                                         "not a writable directory"),
    "evaluate: --out under a file": (["evaluate", "--pipeline", "{F}/pipe", "--out", "{F}/a_file/ev"],
                                     "not a writable directory"),
    "evaluate: bad --scales": (["evaluate", "--pipeline", "{F}/pipe", "--scales", "1,two", "--out", "{OUT}"],
                               "--scales"),
    "evaluate: bad --descendant-weight": (["evaluate", "--pipeline", "{F}/pipe", "--descendant-weight", "paper",
                                           "--out", "{OUT}"], "--descendant-weight 'paper'"),
    "unknown option": (["counterfactual", "--dose", "t=1"], "No such option"),
    "unknown command": (["bench", "nosuch"], "No such command 'nosuch'"),
    "generate: unknown --data": (["generate", "--pipeline", "{F}/pipe", "--data", "nosuch:thing", "--do", "t=2",
                                  "--out", "{OUT}"], "is not a data spec"),
    "generate: --out a file": (["generate", "--pipeline", "{F}/pipe", "--data", "morpho-test", "--do", "t=2",
                                "--out", "{F}/a_file"], "is a file"),
    "experiment run: missing spec": (["experiment", "run", "{F}/nope.toml"], "spec file not found"),
    "experiment run: bad TOML": (["experiment", "run", "{F}/bad.toml"], "not valid TOML"),
    "app: port out of range": (["app", "--pipeline", "{F}/pipe", "--port", "99999"], "--port"),
    "app: missing pipeline": (["app", "--pipeline", "{F}/nope"], "does not exist"),
    "train: a bad graph file": (["train", "--data", "csv:{F}/nope.csv", "--graph", "{F}/graph.json", "--out",
                                 "{OUT}"], "graph.json"),
    "train: --data without --graph": (["train", "--data", "csv:{F}/nope.csv", "--out", "{OUT}"],
                                      "--data and --graph go together"),
    "data preview: unknown dataset": (["data", "preview", "--dataset", "nosuch", "--out", "{OUT}/p.png"],
                                      "--dataset"),
    "bench generate: --out under a file": (["bench", "generate", "--pipeline", "{F}/pipe", "--out",
                                            "{F}/a_file/b.json"], "not a writable directory"),
    "bench generate: unknown --data": (["bench", "generate", "--pipeline", "{F}/pipe", "--data", "nosuch:thing",
                                        "--out", "{OUT}/b.json"], "--data 'nosuch:thing' is not a data spec"),
    "bench oracles: --out under a file": (["bench", "oracles", "--pipeline", "{F}/pipe", "--out",
                                           "{F}/a_file/b.json"], "not a writable directory"),
    "bench oracles: --predictors not a predictors folder": (["bench", "oracles", "--pipeline", "{F}/pipe",
                                                             "--predictors", "{F}/a_dir", "--out", "{OUT}/b.json"],
                                                            "metrics.json is missing"),
    "bench app: --out under a file": (["bench", "app", "--pipeline", "{F}/pipe", "--out", "{F}/a_file/b.json"],
                                      "not a writable directory"),
    "bench app: --example -1": (["bench", "app", "--pipeline", "{F}/pipe", "--example", "-1", "--out",
                                 "{OUT}/b.json"], "--example"),
    "bench solvers: unknown --predictors": (["bench", "solvers", "--pipeline", "{F}/pipe", "--predictors", "guess",
                                             "--out", "{OUT}/b.json"], "--predictors 'guess'"),
    "bench solvers: --powers below 1": (["bench", "solvers", "--pipeline", "{F}/pipe", "--powers", "0.5",
                                         "--out", "{OUT}/b.json"], r"--powers '0.5': power=0.5 must be a number"),
    "bench solvers: --out under a file": (["bench", "solvers", "--pipeline", "{F}/pipe", "--out",
                                           "{F}/a_file/b.json"], "not a writable directory"),
    "bench inference: unknown --settings": (["bench", "inference", "--pipeline", "{F}/pipe", "--settings", "warp",
                                             "--out", "{OUT}/b.json"], "warp"),
    "bench inference: --out under a file": (["bench", "inference", "--pipeline", "{F}/pipe", "--out",
                                             "{F}/a_file/b.json"], "not a writable directory"),
}


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_other_commands_user_errors(files, tmp_path, case):
    args, fragment = OTHER_CASES[case]
    run_user_error(files, tmp_path, args, fragment)


@pytest.mark.parametrize("field", sorted(OVERSIZED))
def test_an_oversized_config_field_through_the_cli_is_one_error_line(files, tmp_path, field):
    """Before: an unbounded size field (layers_per_block 100000, SCM hidden [100000, 100000]) built huge modules,
    and through the CLI that was a traceback with exit code 1. Now: the load refuses it from the config's bounds,
    and ``dcfg counterfactual`` prints one ``Error:`` line naming the field and its file, exit code 2."""
    file, keys, value = OVERSIZED[field]
    folder = f"{{F}}/oversized_{field.replace(' ', '_')}"
    line = run_user_error(files, tmp_path, _cf(pipeline=folder), f"{keys[-1]}=")
    assert str(value) in line and Path(file).parent.name in line, line


def test_a_binary_config_json_through_the_cli_is_one_error_line(files, tmp_path):
    """Before: a binary config.json gave a bare UnicodeDecodeError without naming the file. Now: one ``Error:``
    line naming the file, exit code 2."""
    line = run_user_error(files, tmp_path, _cf(pipeline="{F}/binary_config_pipe"), "is not a JSON text file")
    assert "binary_config_pipe/scm/config.json" in line and "not UTF-8" in line, line


@pytest.mark.parametrize("command", ["counterfactual", "sample"])
def test_an_oserror_while_writing_is_one_error_line(files, tmp_path, monkeypatch, command):
    """Before: the write of --out was outside the error handling, so a full disk (like /proc) gave a traceback.
    Now: an OSError raised while the output is written, after every check passed, is one ``Error:`` line with
    exit code 2, and neither the output nor its temporary file is left behind. The full disk is simulated:
    ENOSPC from PIL writing the PNG into the temporary file (counterfactual), or from the fsync of the temporary
    file (sample)."""
    from PIL import Image

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "out"
    out.mkdir()
    if command == "counterfactual":
        args = _cf(out=f"{out}/cf.png")
        monkeypatch.setattr(Image.Image, "save", full_disk)
    else:
        args = SAMPLE + ["--parents", "d=2", "--out", f"{out}/g.png"]
        monkeypatch.setattr(os, "fsync", full_disk)
    res = CliRunner().invoke(main, [a.replace("{F}", str(files)) for a in args])
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.output}\n{res.exception!r}"
    assert res.stderr.splitlines() == [f"Error: {os.strerror(errno.ENOSPC)}"], res.stderr
    assert "Traceback" not in res.output
    assert list(out.iterdir()) == [], "the failed write left a file behind"


def test_the_good_command_line_works(files, tmp_path):
    """The base command lines of the catalogue succeed, so each case fails for its one bad input only."""
    out = tmp_path / "out"
    for args in (_cf(), SAMPLE + ["--parents", "d=2", "--out", "{OUT}/g.png"]):
        args = [a.replace("{F}", str(files)).replace("{OUT}", str(out)) for a in args]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["cf.png", "g.png"]


def test_an_rgb_file_with_equal_channels_is_a_grey_image(files, tmp_path):
    """An RGB PNG given to a grey pipeline is refused (see the catalogue), unless its three channels are equal:
    then it is the grey image it shows, and the answer is the grey file's."""
    save_image(torch.zeros(1, 3, 8, 8), tmp_path / "grey_rgb.png")
    assert Image.open(tmp_path / "grey_rgb.png").mode == "RGB"
    outs = {}
    for name, image in (("grey", str(files / "in.png")), ("rgb", str(tmp_path / "grey_rgb.png"))):
        out = tmp_path / f"{name}.png"
        args = [a.replace("{F}", str(files)) for a in _cf(image=image, out=str(out))]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        outs[name] = out.read_bytes()
    assert outs["grey"] == outs["rgb"]


@pytest.mark.parametrize("args", [["train", "--steps", "-3"], ["counterfactual", "--image", "/nonexistent.png",
                                                                  "--parents", "t=1", "--do", "t=2", "--out", "x.png"],
                                  ["evaluate", "--scales", "a,b"], ["bench", "train", "--sizes", "x"]])
def test_errors_are_one_line_without_usage(args, tmp_path, monkeypatch):
    """Click's own option errors take the same path as the project's: one ``Error:`` line, no ``Usage:``."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, args)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Usage:" not in res.output and "Try '" not in res.output


def test_debug_adds_the_traceback(files, tmp_path):
    """``--debug`` (or DCFG_DEBUG=1) prints the traceback before the same Error line; without it there is none."""
    args = [a.replace("{F}", str(files)) for a in _cf(out="/proc/x.png")]
    plain = CliRunner().invoke(main, args)
    debug = CliRunner().invoke(main, ["--debug", *args])
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.splitlines()[0]
