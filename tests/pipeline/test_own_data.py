"""Your own DAG and images, end to end: ``dcfg train`` -> ``dcfg evaluate`` -> ``dcfg counterfactual`` on the
``examples/own_data`` world (RGB, binary + categorical + continuous nodes), and every bad input of the training
command answered by one ``Error:`` line, exit code 2 and nothing written."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_data"
GRAPH = EXAMPLE / "graph.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """150 rows of the example world at 32x32 (the script the example's README runs)."""
    out = tmp_path_factory.mktemp("own") / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(out), "--n", "150"], check=True,
                   capture_output=True, text=True, timeout=120)
    return out


def _invoke(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def test_example_train_evaluate_counterfactual(world, tmp_path):
    """The three commands of examples/own_data/README.md, at tiny settings, and the files they must write."""
    run, ev, cf = tmp_path / "run", tmp_path / "eval", tmp_path / "cf.png"
    code, text = _invoke(["train", "--data", f"csv:{world}/attributes.csv,split=train", "--graph", str(GRAPH),
                          "--out", str(run), "--steps", "12", "--batch-size", "8", "--predictor-epochs", "2",
                          "--quiet"])
    assert code == 0, text
    pipe_dir = run / "pipeline"
    for f in ("config.json", "README.md", "scm/config.json", "image_model/config.json",
              "predictors/metrics.json", "predictors/warm/model.safetensors", "predictors/size/config.json",
              "predictors/shape/config.json"):
        assert (pipe_dir / f).is_file(), f
    card = (pipe_dir / "README.md").read_text()
    assert "| warm | binary | size |" in card and "held-out accuracy" in card and "dcfg train" in card
    index = json.loads((pipe_dir / "predictors" / "metrics.json").read_text())
    assert index["metrics"]["size"]["kind"] == "regressor" and "mae" in index["metrics"]["size"]
    assert index["metrics"]["shape"]["kind"] == "classifier" and index["metrics"]["shape"]["n_val"] == 12

    code, text = _invoke(["evaluate", "--pipeline", str(pipe_dir), "--data", f"csv:{world}/attributes.csv,split=test",
                          "--n", "4", "--steps", "2", "--scales", "1,2", "--out", str(ev), "--update-card", "--quiet"])
    assert code == 0, text
    card = (pipe_dir / "README.md").read_text()
    assert "## Evaluation" in card and "dcfg evaluate" in card and "(target <=" in card
    for f in ("metrics.json", "report.md", "tradeoff.png", "grid.png"):
        assert (ev / f).is_file(), f
    metrics = json.loads((ev / "metrics.json").read_text())
    main_rows = metrics["pipelines"]["main"]["main"]
    assert sorted(main_rows) == ["shape", "size", "warm"]  # every image parent has its rows
    by_method = {r["method"]: r for r in main_rows["size"]}
    assert {"none", "cfg", "dcfg"} <= set(by_method)
    row = by_method["dcfg"]
    # effectiveness of the intervened node, its descendant against its counterfactual, spurious change of shape
    assert {"size_mae", "warm_accuracy", "shape_flip_rate", "realism_fd"} <= set(row)
    assert "size_abs_change" in {k for r in main_rows["warm"] for k in r}  # size is an ancestor of warm
    assert metrics["settings"]["data"]["split"] == "test" and metrics["settings"]["test_rows"] == 30

    with open(world / "attributes.csv", newline="") as f:
        first_test = next(r for r in csv.DictReader(f) if r["split"] == "test")
    shape_index = ["circle", "square", "triangle"].index(first_test["shape"])
    code, text = _invoke(["counterfactual", "--pipeline", str(pipe_dir), "--image", str(world / first_test["path"]),
                          "--parents", f"age={first_test['age']},size={first_test['size']},warm={first_test['warm']},"
                                       f"shape={shape_index}",
                          "--do", f"warm={1 - int(first_test['warm'])}", "--steps", "2", "--out", str(cf)])
    assert code == 0, text
    assert Image.open(cf).size == (32, 32) and Image.open(cf).mode == "RGB"


# ----------------------------------------------------------------------------------- bad input, one line each
def _copy_world(world: Path, tmp: Path) -> Path:
    dst = tmp / "data"
    shutil.copytree(world, dst)
    return dst


def _edit_csv(path: Path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = edit(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _set(row_index: int, column: str, value: str):
    def edit(rows):
        rows[row_index][column] = value
        return rows
    return edit


def _drop(column: str):
    def edit(rows):
        return [{k: v for k, v in r.items() if k != column} for r in rows]
    return edit


def _binary_pm1(rows):
    for r in rows:
        r["warm"] = "1" if r["warm"] == "1" else "-1"
    return rows


def _shape_as_index(value_of_row3: str):
    def edit(rows):
        for r in rows:
            r["shape"] = str(["circle", "square", "triangle"].index(r["shape"]))
        rows[3]["shape"] = value_of_row3
        return rows
    return edit


def _resize_one(data: Path) -> None:
    Image.new("RGB", (40, 40)).save(data / "images" / "00002.png")


def _not_an_image(data: Path) -> None:
    (data / "images" / "00002.png").write_text("not a png\n")


def _missing_image(data: Path) -> None:
    (data / "images" / "00002.png").unlink()


BAD_INPUT = {
    "a CSV missing a graph node's column": (_drop("size"), None, [], "column 'size' is not in"),
    "a non-numeric value in a continuous column": (_set(4, "age", "forty"), None, [], "column 'age' holds text"),
    "a label outside a categorical node's cardinality": (_shape_as_index("3"), None, [],
                                                         "column 'shape' holds class 3 at row 3"),
    "a binary column holding -1/1": (_binary_pm1, None, [], "remap it with (x + 1) / 2"),
    "images of mixed sizes without --image-size": (None, _resize_one, [], "images differ in size"),
    "an image file that is missing": (None, _missing_image, [], "00002.png' does not exist"),
    "an image file that is not an image": (None, _not_an_image, ["--image-size", "32"], "cannot read image"),
    "a graph whose image shape disagrees with the images": (None, None, ["--graph64"], "(3, 32, 32)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_train_bad_input_is_one_line(case, world, tmp_path):
    edit_csv, edit_files, extra, fragment = BAD_INPUT[case]
    data = _copy_world(world, tmp_path)
    if edit_csv is not None:
        _edit_csv(data / "attributes.csv", edit_csv)
    if edit_files is not None:
        edit_files(data)
    graph = GRAPH
    if "--graph64" in extra:
        spec = json.loads(GRAPH.read_text())
        spec["nodes"]["image"]["shape"] = [3, 64, 64]
        graph = tmp_path / "graph64.json"
        graph.write_text(json.dumps(spec))
        extra = []
    out = tmp_path / "run"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, text = _invoke(["train", "--data", f"csv:{data}/attributes.csv,split=train", "--graph", str(graph),
                          "--out", str(out), "--steps", "2", "--batch-size", "4", "--quiet", *extra])
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert code == 2, text
    assert "Traceback" not in text and len(errors) == 1, text
    assert fragment in errors[0], errors[0]
    if "row" in fragment or case.startswith(("a CSV", "a non-numeric", "a binary", "an image file")):
        assert "attributes.csv" in errors[0] or "00002.png" in errors[0], errors[0]  # names the file / row
    assert not out.exists(), "a failed training wrote its run directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "counterfactual", "evaluate", "sample"])
def test_device_cuda_without_cuda_is_one_line(command, world, tmp_path):
    out = tmp_path / ("out.png" if command in ("counterfactual", "sample") else "out")
    args = {"train": ["train", "--data", f"csv:{world}/attributes.csv,split=train", "--graph", str(GRAPH),
                      "--out", str(out)],
            "counterfactual": ["counterfactual", "--image", str(world / "images" / "00000.png"), "--parents",
                               "thickness=2,intensity=100,digit=1", "--do", "thickness=3", "--out", str(out)],
            "evaluate": ["evaluate", "--out", str(out)],
            "sample": ["sample", "--out", str(out)]}[command]
    code, text = _invoke(args + ["--device", "cuda"])
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert code == 2 and len(errors) == 1 and "CUDA is not available" in errors[0], text
    assert not out.exists()


def test_csv_split_names_rows_of_the_whole_table(world, tmp_path):
    """Rows kept by split= keep the line numbers of the whole CSV in messages."""
    from pipeline.datasets import ImageAttributeFolder

    data = _copy_world(world, tmp_path)
    n_train = sum(1 for r in csv.DictReader(open(data / "attributes.csv")) if r["split"] == "train")
    _edit_csv(data / "attributes.csv", _set(n_train + 2, "age", "n/a"))  # a test row
    ds = ImageAttributeFolder(data / "attributes.csv", data, split="train", columns=["age"], progress=False)
    assert len(ds) == n_train and "split" not in ds.attributes
    with pytest.raises(ValueError, match=f"row {n_train + 2} of .*line {n_train + 4}"):
        ImageAttributeFolder(data / "attributes.csv", data, split="test", columns=["age"], continuous=["age"],
                             progress=False)


def test_predictors_learn_and_round_trip(world, tmp_path):
    """The anti-causal predictors learn the example's attributes far better than a constant, and load back
    with identical predictions."""
    from pipeline.generate import open_dataset
    from pipeline.predictors import PredictorSet, train_predictors
    from pipeline.train import read_graph

    graph = read_graph(GRAPH)
    data = open_dataset(f"csv:{world}/attributes.csv", graph=graph, image_size=None)
    preds = train_predictors(graph, data, epochs=12, batch_size=32, seed=0, progress=False)
    m = preds.metrics
    assert m["warm"]["accuracy"] >= 0.95 > m["warm"]["baseline_accuracy"]
    assert m["size"]["mae"] < 0.6 * m["size"]["baseline_mae"]
    preds.save(tmp_path / "p")
    back = PredictorSet.load(tmp_path / "p")
    x = torch.stack([data[i][0] for i in range(8)])
    for node, values in preds.measure(x).items():
        np.testing.assert_array_equal(values, back.measure(x)[node])
    assert back.metrics["warm"] == m["warm"]
