"""The `dcfg` CLI on the tiny pipeline: the main commands work, bad input exits 2 and writes nothing."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.images import read_image, save_image


@pytest.fixture(scope="module")
def saved(tiny_pipeline, tiny_batch, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_pipeline.save(root / "pipe")
    x, a = tiny_batch
    save_image(x[:1], root / "in.png")
    parents = ",".join(f"{k}={float(v[0]):.4f}" if k != "digit" else f"digit={int(v[0])}"
                       for k, v in a.items())
    return root, parents


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_counterfactual_command_writes_png(saved):
    root, parents = saved
    out = root / "out" / "cf.png"
    res = _run(["counterfactual", "--pipeline", str(root / "pipe"), "--image", str(root / "in.png"),
                "--parents", parents, "--do", "thickness+=1", "--steps", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "groups: [['thickness', 'intensity'], ['digit']]" in res.output
    img = read_image(out, channels=1)
    assert img.shape == (1, 1, 8, 8) and torch.isfinite(img).all()


@pytest.mark.parametrize("do, node", [("thickness~uniform(1,4)", "thickness"), ("digit~choice(0,...,3)", "digit"),
                                      ("intensity~normal(150,30)", "intensity")])
def test_counterfactual_command_takes_a_per_image_draw(saved, do, node):
    """`--do name~dist(...)` draws one value from --seed, the draw `dcfg generate --seed` gives its row 0."""
    from pipeline.core import CounterfactualPipeline
    from pipeline.generate import check_interventions, draw_interventions, parse_interventions

    root, parents = saved
    pipe = CounterfactualPipeline.load(root / "pipe")
    drawn = {}
    for seed in (3, 4):
        out = root / "draw" / f"cf-{seed}.png"
        res = _run(["counterfactual", "--pipeline", str(root / "pipe"), "--image", str(root / "in.png"),
                    "--parents", parents, "--do", do, "--seed", str(seed), "--steps", "2", "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert out.is_file()
        printed = dict(kv.split("=") for kv in res.output.splitlines()[0].split(": ", 1)[1].split(", "))
        expected = draw_interventions(check_interventions(parse_interventions(do), pipe.scm, 1, draws=True),
                                      pipe.graph, seed, [0])[node]
        assert float(printed[node]) == pytest.approx(float(expected[0]), rel=5e-3)  # printed with 3 digits
        drawn[seed] = float(printed[node])
    assert node == "digit" or drawn[3] != drawn[4]  # another seed, another draw


def test_sample_command(saved):
    root, _ = saved
    out = root / "grid.png"
    res = _run(["sample", "--pipeline", str(root / "pipe"), "--parents", "digit=3", "--n", "4",
                "--steps", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()


@pytest.mark.parametrize("edit, match", [
    (dict(parents="thickness=abc"), "not a number"),
    (dict(parents="thickness"), "cannot parse"),
    (dict(do="image=1"), "image node"),
    (dict(do="zz=1"), "unknown node 'zz'"),
    (dict(do="thickness=-2"), "thickness"),
    (dict(image="missing.png"), "does not exist"),
    (dict(pipeline="no_such_dir"), "does not exist"),
    (dict(out="file_not_dir/cf.png"), "not a writable directory"),
])
def test_bad_input_exits_2_and_writes_nothing(saved, edit, match):
    root, parents = saved
    (root / "file_not_dir").write_text("x")
    args = {"pipeline": str(root / "pipe"), "image": str(root / "in.png"), "parents": parents,
            "do": "thickness=3", "out": str(root / "bad" / "cf.png")}
    for k, v in edit.items():
        args[k] = str(root / v) if k in ("image", "pipeline", "out") else v
    res = CliRunner().invoke(main, ["counterfactual", "--steps", "2"] +
                             [f"--{k}={v}" for k, v in args.items()])
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert not (root / "bad").exists()


def test_wrong_image_size_is_reported(saved):
    root, parents = saved
    save_image(torch.zeros(1, 1, 12, 12), root / "big.png")
    res = CliRunner().invoke(main, ["counterfactual", "--pipeline", str(root / "pipe"), "--image",
                                    str(root / "big.png"), "--parents", parents, "--do", "digit=1",
                                    "--out", str(root / "x.png")])
    assert res.exit_code == 2 and "12x12" in res.output
    assert not (root / "x.png").exists()


def test_every_command_has_help():
    for cmd in (["demo"], ["counterfactual"], ["sample"], ["train"], ["bench", "pipeline"]):
        res = _run(cmd + ["--help"])
        assert res.exit_code == 0 and "Usage" in res.output


def test_train_passes_its_options_to_train_morphomnist(tmp_path, monkeypatch):
    import pipeline.train

    seen = {}
    monkeypatch.setattr(pipeline.train, "train_morphomnist", lambda out, **kw: seen.update(out=out, **kw))
    res = _run(["train", "--out", str(tmp_path / "run"), "--steps", "7", "--samples-per-digit", "2",
                "--classifier-epochs", "3", "--dropout-mode", "whole", "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen["out"] == str(tmp_path / "run")
    assert (seen["steps"], seen["samples_per_digit"], seen["classifier_epochs"]) == (7, 2, 3)
    assert seen["dropout_mode"] == "whole" and seen["progress"] is False
