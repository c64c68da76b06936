"""DAG-defined experiments (pipeline.experiment): spec validation, data from equations, stages, report, CLI.

The spec used throughout (a richer graph with a confounder):

    digit -> slant -> thickness -> intensity,   slant -> intensity;   all four -> image (1x28x28)

slant, thickness and intensity render by shear / set_thickness / set_intensity; digit is the source's class.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.experiment import SpecError, load_spec, parse_spec, summarize_spec
from pipeline.experiment.data import ExperimentOracles, build_data, true_scm

BASE: dict = {
    "name": "tiny",
    "seed": 0,
    "graph": {"nodes": {"digit": {"kind": "categorical", "cardinality": 10}, "slant": {"kind": "real"},
                        "thickness": {"kind": "interval", "low": 1.0, "high": 5.0},
                        "intensity": {"kind": "interval", "low": 64, "high": 255},
                        "image": {"kind": "image", "shape": [1, 28, 28]}},
              "edges": [["digit", "slant"], ["slant", "thickness"], ["thickness", "intensity"],
                        ["slant", "intensity"], ["digit", "image"], ["slant", "image"], ["thickness", "image"],
                        ["intensity", "image"]]},
    "equations": {"slant": {"form": "linear", "weights": {"digit": 0.04}, "bias": -0.18, "scale": 0.1},
                  "thickness": {"form": "affine_sigmoid", "weights": {"slant": 4.0}, "noise_scale": 0.5,
                                "low": 1.0, "high": 5.0},
                  "intensity": {"form": "affine_sigmoid", "weights": {"thickness": 1.5, "slant": -2.0},
                                "bias": -4.0, "noise_scale": 0.5, "low": 64.0, "high": 255.0}},
    "render": {"digit": "digit", "slant": "slant", "thickness": "thickness", "intensity": "intensity"},
    "data": {"source": "morpho", "train_digits": 10, "test_digits": 6, "samples_per_digit": 1, "scm_rows": 300},
    "model": {"block_out_channels": [8, 8], "attention_levels": [False, False], "mid_attention": False,
              "block_dim": 4, "norm_num_groups": 4},
    "scm": {"epochs": 1, "hidden": [8]},
    "training": {"steps": 4, "batch_size": 4, "warmup": 0, "ckpt_every": 2},
    "evaluation": {"n": 4, "steps": 2, "sweep_n": 2, "cycle_n": 2, "cycles": 1, "grid_n": 2},
    "guidance": {"scales": [1.0, 2.0], "dcfg_scale": 2.0},
    "interventions": [{"node": "slant", "shift": 0.2}, {"node": "thickness", "value": 3.0}],
    "effects": [{"treatment": "thickness", "outcome": "intensity", "control": 2.0, "treated": 3.0,
                 "image_outcome": "intensity", "units": 2, "num_simulations": 2, "scm_samples": 1000,
                 "refuters": []}],
}


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_toml(spec: dict, path: Path) -> Path:
    """A spec dict as TOML (tables of scalars, arrays of tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in spec.items() if not isinstance(v, (dict, list))]
    for k, v in spec.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list):
            for entry in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def mutate(**changes):
    """A copy of BASE with dotted keys set (``None`` deletes the key)."""
    spec = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        table = spec
        for p in parents:
            table = table[int(p)] if isinstance(table, list) else table.setdefault(p, {})
        if value is None:
            del table[last]
        else:
            table[last] = value
    return spec


# ------------------------------------------------------------------------------------------ validation catalogue
CATALOGUE = [
    ("unknown top-level key", mutate(sede=1), r"spec: unknown key 'sede' \(did you mean 'seed'\?\)"),
    ("wrong type", mutate(seed="zero"), r"spec seed: expected an integer, got string 'zero'"),
    ("unknown key in a table", mutate(training__stpes=3), r"\[training\]: unknown key 'stpes' \(did you mean 'steps'"),
    ("wrong type in a table", mutate(training__steps="many"), r"\[training\] steps: expected an integer, got string"),
    ("missing [data]", mutate(data=None), r"missing table \[data\]"),
    ("unknown data source", mutate(data__source="imagenet"), r"\[data\] source: 'imagenet' is not allowed"),
    ("unknown DCFG form", mutate(guidance__dcfg_form="half"), r"\[guidance\] dcfg_form: 'half' is not allowed"),
    ("unknown precision", mutate(evaluation__precision="fp16"), r"\[evaluation\] precision: 'fp16' is not allowed"),
    ("edge to a node not in the DAG", mutate(graph__edges=BASE["graph"]["edges"] + [["depth", "image"]]),
     r"\[graph\] edges\[8\]: node 'depth' is not in the DAG"),
    ("a cycle", mutate(graph__edges=BASE["graph"]["edges"] + [["intensity", "slant"]]),
     r"\[graph\]: the graph has a cycle: .*slant.*intensity"),
    ("no image node", mutate(graph__nodes={k: v for k, v in BASE["graph"]["nodes"].items() if k != "image"},
                             graph__edges=[e for e in BASE["graph"]["edges"] if e[1] != "image"]),
     r"no node of kind 'image'"),
    ("unknown equation form", mutate(equations__slant__form="exponential"),
     r"\[equations.slant\] form: 'exponential' is not allowed"),
    ("weight on a non-parent", mutate(equations__thickness__weights={"slant": 4.0, "digit": 1.0}),
     r"\[equations.thickness\] weights: 'digit' is not a parent of 'thickness'"),
    ("parent without a weight", mutate(equations__intensity__weights={"thickness": 1.5}),
     r"parent 'slant' of 'intensity' has no weight"),
    ("missing equation", mutate(equations__intensity=None), r"\[equations\]: node 'intensity' has no equation"),
    ("root form with parents", mutate(equations__thickness={"form": "gamma", "concentration": 2.0, "rate": 1.0}),
     r"'gamma' is for a root"),
    ("form range outside the support", mutate(equations__intensity__low=0.0),
     r"the range \[0, 255\] leaves the support of 'intensity' \[64, 255\]"),
    ("unbounded form on a bounded node", mutate(equations__thickness={"form": "linear", "weights": {"slant": 1.0}}),
     r"'linear' can give any real number, but 'thickness' is interval"),
    ("bad parameter type", mutate(equations__slant__scale="wide"),
     r"\[equations.slant\] scale: expected a finite number"),
    ("probabilities not summing to 1",
     mutate(graph__nodes={**BASE["graph"]["nodes"], "style": {"kind": "categorical", "cardinality": 2}},
            equations__style={"form": "categorical", "probs": [0.3, 0.3]}),
     r"\[equations.style\] probs: they sum to 0.6"),
    ("unknown render op", mutate(render__slant="shear"), r"\[render\] slant: 'shear' is not allowed"),
    ("image parent not rendered", mutate(render__intensity=None), r"image parent 'intensity' is not rendered"),
    ("digit op on a non-root", mutate(render__slant="digit", render__digit=None),
     r"\[render\] slant: 'digit' is the class of the source digit"),
    ("intervention on an unknown node", mutate(interventions=[{"node": "width"}]),
     r"\[\[interventions\]\] #1 node: 'width' is not in the DAG"),
    ("intervention value outside the support", mutate(interventions=[{"node": "thickness", "value": 9.0}]),
     r"\[\[interventions\]\] #1 value: node 'thickness'.* 9"),
    ("intervention twice", mutate(interventions=[{"node": "slant"}, {"node": "slant", "shift": 1.0}]),
     r"'slant' is intervened on twice"),
    ("guidance without the CFG baseline", mutate(guidance__methods=["dcfg"]), r"lacks 'cfg'"),
    ("negative guidance scale", mutate(guidance__scales=[1.0, -1.0]), r"\[guidance\] scales\[1\]: -1 is out of range"),
    ("subset larger than the rows", mutate(evaluation__sweep_n=10), r"\[evaluation\] sweep_n: 10 exceeds n = 4"),
    ("inconsistent model sizes", mutate(model__norm_num_groups=3), r"\[model\]: block_out_channels \[8, 8\] are not"),
    ("equations with CSV data", mutate(data={"source": "csv", "csv": "a.csv", "image_dir": "."}),
     r"a CSV dataset observes its attributes"),
    ("pretrained on another graph", mutate(model__pipeline="pretrained"),
     r"\[model\] pipeline: the bundled pipeline was trained on the graph"),
    ("effect of a node on itself", mutate(effects__0__outcome="thickness"), r"the same node as the treatment"),
    ("effect on the image node", mutate(effects__0__outcome="image"), r"use image_outcome"),
    ("glm family without a GLM", mutate(effects__0__glm_family="binomial"), r"glm_family: only used with method"),
    ("unknown quick table", mutate(quick={"render": {"slant": "slant"}}), r"\[quick\]: unknown key 'render'"),
]


@pytest.mark.parametrize("label,spec,message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_malformed_spec_catalogue(label, spec, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("label,spec,message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_malformed_spec_catalogue_on_the_command_line(tmp_path, label, spec, message):
    """The catalogue as TOML files through ``dcfg experiment run``: one Error line, exit code 2, nothing written."""
    spec_file = write_toml(spec, tmp_path / "bad.toml")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["experiment", "run", str(spec_file), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: bad.toml: ") and re.search(message, lines[0]), res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_catalogue_messages_are_distinct():
    messages = []
    for _, spec, _ in CATALOGUE:
        with pytest.raises(SpecError) as info:
            parse_spec(spec)
        messages.append(str(info.value))
    assert len(CATALOGUE) >= 10 and len(set(messages)) == len(messages)


def test_valid_spec_and_defaults():
    spec = parse_spec(BASE)
    assert spec.digit_node() == "digit" and spec.synthetic
    assert [iv.describe() for iv in spec.interventions] == ["do(slant := slant + 0.2)", "do(thickness := 3)"]
    assert spec.equations["intensity"].describe().startswith("intensity = 64 + 191 * sigmoid(-4 + 1.5 * thickness")
    default = parse_spec(mutate(interventions=None, guidance=None))
    assert [iv.node for iv in default.interventions] == ["digit", "slant", "thickness", "intensity"]
    assert default.guidance.methods == ("cfg", "dcfg") and default.guidance.cfg_scale == "best"


def test_quick_caps_budgets_and_keeps_quick_overrides():
    spec = parse_spec(mutate(training__steps=5000, training__lr=3e-4, data__train_digits=4000,
                             model={"block_out_channels": [32, 64, 64]},
                             quick={"evaluation": {"steps": 3}}), quick=True)
    assert spec.quick and spec.training.steps == 300 and spec.training.lr == 1e-3
    assert spec.data.train_digits == 300 and spec.evaluation.steps == 3 and spec.evaluation.n == 4
    assert spec.model.block_out_channels == (16, 32, 32) and not any(spec.model.attention_levels)
    assert parse_spec(BASE, quick=True).training.steps == 4   # smaller than the cap: kept


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[graph\n")
    with pytest.raises(SpecError, match=r"broken.toml: not valid TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.toml")
    csv_spec = write_toml(mutate(equations=None, data={"source": "csv", "csv": "nope.csv", "image_dir": "."}),
                          tmp_path / "csv.toml")
    with pytest.raises(SpecError, match=r"\[data\] csv: file .*nope.csv' does not exist"):
        load_spec(csv_spec)


def test_cli_validate_and_bad_run_write_nothing(tmp_path):
    good = write_toml(BASE, tmp_path / "good.toml")
    res = CliRunner().invoke(main, ["experiment", "validate", str(good)])
    assert res.exit_code == 0 and res.output.startswith("ok: tiny: 5 nodes, 8 edges")
    bad = write_toml(mutate(equations__slant__form="exponential"), tmp_path / "bad.toml")
    out = tmp_path / "out"
    for args in (["validate", str(bad)], ["run", str(bad), "--out", str(out)]):
        res = CliRunner().invoke(main, ["experiment", *args])
        assert res.exit_code == 2
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and re.match(r"Error: bad.toml: \[equations.slant\] form", lines[0])
    assert not out.exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    res = CliRunner().invoke(main, ["experiment", "run", str(good), "--out", str(occupied)])
    assert res.exit_code == 2 and "holds other files" in res.output
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------------ data from equations
@pytest.fixture(scope="module")
def tiny_data():
    spec = parse_spec(BASE)
    return spec, build_data(spec, n_jobs=1, progress=False)


def test_observational_rows_follow_the_equations(tiny_data):
    spec, data = tiny_data
    rows = data.scm_rows
    assert sorted(rows) == ["digit", "intensity", "slant", "thickness"] and len(rows["slant"]) == 300
    # abduction with the equations recovers standard-normal noise
    u = true_scm(spec).abduct(rows)
    for node in ("slant", "thickness", "intensity"):
        assert abs(float(u[node].mean())) < 0.2 and abs(float(u[node].std()) - 1.0) < 0.15
    # slant = -0.18 + 0.04 digit + 0.1 u
    expected = -0.18 + 0.04 * rows["digit"].float() + 0.1 * u["slant"]
    assert torch.allclose(rows["slant"], expected, atol=1e-5)


def test_rendered_images_show_their_attributes(tiny_data):
    from pipeline.morphometry import measure

    spec, data = tiny_data
    m = measure(data.test_images, n_jobs=1)
    a = data.test_attributes
    assert np.median(np.abs(m["thickness"] - a["thickness"].numpy())) < 0.3
    assert np.median(np.abs(m["intensity"] - a["intensity"].numpy())) < 2.0
    assert np.median(np.abs(m["slant"] - a["slant"].numpy())) < 0.1
    assert data.test_sources.dtype == torch.uint8 and data.info["clipped_test"] == 0


def test_image_parents_drawn_independently(tiny_data):
    spec, data = tiny_data
    joint = build_data(parse_spec(mutate(data__image_parents="scm")), n_jobs=1, progress=False)
    assert data.train_images.shape == (10, 1, 28, 28)
    # the same SCM draw, each continuous parent shuffled on its own; the digit stays with its source
    assert torch.equal(data.train_attributes["digit"], joint.train_attributes["digit"])
    shuffled = []
    for p in ("slant", "thickness", "intensity"):
        ind, scm = data.train_attributes[p], joint.train_attributes[p]
        assert torch.equal(ind.sort().values, scm.sort().values)
        shuffled.append(not torch.equal(ind, scm))
    assert all(shuffled)
    assert torch.equal(joint.test_images, data.test_images)  # test rows are always drawn from the SCM


def test_ground_truth_counterfactual(tiny_data):
    spec, data = tiny_data
    rows = torch.tensor([0, 3])
    values, images = data.true_counterfactual(rows, {"thickness": 3.0})
    assert values["thickness"].tolist() == [3.0, 3.0]
    assert torch.equal(values["slant"], data.test_attributes["slant"][rows])      # upstream: unchanged
    assert torch.equal(values["digit"], data.test_attributes["digit"][rows])
    # the descendant re-runs its equation with the row's own noise
    e = data.test_noise["intensity"][rows].double()
    s = data.test_attributes["slant"][rows].double()
    implied = 64 + 191 * torch.sigmoid(-4 + 1.5 * 3.0 - 2.0 * s + 0.5 * e)
    assert torch.allclose(values["intensity"].double(), implied, atol=1e-3)
    same, again = data.true_counterfactual(rows, {})
    assert torch.allclose(again, data.test_images[rows], atol=1e-6)                # no intervention: factual
    assert data.true_counterfactual(rows, {"digit": torch.tensor([1, 2])}) is None  # no source of another class


def test_oracles_targets_and_measurements(tiny_data):
    spec, data = tiny_data
    from pipeline.experiment.data import bundled_classifier

    oracles = ExperimentOracles(spec, data, bundled_classifier(), n_jobs=1)
    gen = torch.Generator().manual_seed(0)
    fact = {k: v[:4] for k, v in data.test_attributes.items()}
    assert oracles.draw_targets("thickness", fact, gen).tolist() == [3.0] * 4
    assert torch.allclose(oracles.draw_targets("slant", fact, gen), fact["slant"].double() + 0.2)
    digits = oracles.draw_targets("digit", fact, gen)
    assert (digits != fact["digit"]).all()
    m = oracles.measure(data.test_images[:4])
    assert sorted(m) == ["digit", "intensity", "slant", "thickness"] and oracles.complete


# ------------------------------------------------------------------------------------------ the run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pipeline.experiment import run_experiment

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("exp")
    spec_file = write_toml(BASE, folder / "tiny.toml")
    out = folder / "out"
    first = run_experiment(spec_file, out, n_jobs=1, progress=False)
    return spec_file, out, first


def test_run_writes_the_report_folder(tiny_run):
    _, out, res = tiny_run
    for name in ("report.md", "metrics.json", "groups.json", "evaluation.md", "spec.toml", "figures/dag.png",
                 "figures/groups.png", "figures/data.png", "figures/tradeoff.png", "figures/grid.png",
                 "figures/effect_1.png", "figures/training_curve.png", "pipeline/config.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["settings"]["interventions"] == ["slant", "thickness"]
    from diffusion.model import resolve_precision  # [evaluation] precision defaults to "auto", recorded resolved
    assert metrics["evaluation"]["settings"]["precision"] == resolve_precision("auto")
    assert parse_spec(mutate(evaluation__precision="fp32"), path=None).evaluation.precision == "fp32"
    effect = metrics["effects"][0]
    assert set(effect) >= {"dowhy", "scm", "truth", "image", "image_truth", "image_vs_renderer"}
    assert effect["dowhy"]["adjustment_set"] == ["slant"]          # the backdoor through the confounder
    report = (out / "report.md").read_text()
    assert "## Guidance groups per intervention" in report and "adjusting for ['slant']" in report


def test_descendants_join_the_affected_group(tiny_run):
    _, out, _ = tiny_run
    groups = json.loads((out / "groups.json").read_text())
    assert groups["slant"]["affected"] == ["slant", "thickness", "intensity"]
    assert groups["slant"]["invariant"] == ["digit"]
    assert groups["thickness"]["affected"] == ["thickness", "intensity"]
    assert groups["thickness"]["invariant"] == ["digit", "slant"]
    assert groups["slant"]["dcfg"] == {"groups": [["slant", "thickness", "intensity"], ["digit"]],
                                       "weights": [2.0, 1.0]}


def test_rerun_reuses_stages_and_recomputes_only_what_changed(tiny_run, tmp_path):
    from pipeline.experiment import run_experiment

    spec_file, out, first = tiny_run
    assert not any(r.cached for r in first.stages)
    again = run_experiment(spec_file, out, n_jobs=1, progress=False)
    assert [r.name for r in again.stages] == [r.name for r in first.stages]
    assert all(r.cached for r in again.stages)
    assert again.metrics["evaluation"] == first.metrics["evaluation"]
    changed = write_toml(mutate(evaluation__steps=3), tmp_path / "tiny.toml")
    third = run_experiment(changed, out, n_jobs=1, progress=False)
    cached = {r.name: r.cached for r in third.stages}
    assert cached == {"data": True, "scm": True, "image_model": True, "evaluation": False, "effects": False}


def test_summary_line():
    assert summarize_spec(parse_spec(BASE)) == (
        "tiny: 5 nodes, 8 edges, image parents ['digit', 'slant', 'thickness', 'intensity']; data morpho; "
        "pipeline train (4 steps); interventions do(slant), do(thickness); 1 effect(s)")


def test_logistic_glm_uses_the_equation_range_and_scm_bootstrap(tiny_data):
    from pipeline.experiment.run import dowhy_inputs, scm_bootstrap

    _, data = tiny_data
    spec = parse_spec(mutate(graph__nodes={**BASE["graph"]["nodes"], "intensity": {"kind": "interval", "low": 0,
                                                                                   "high": 255}},
                             effects__0__method="backdoor.generalized_linear_model",
                             effects__0__glm_family="binomial", effects__0__scm_bootstrap=3))
    e = spec.effects[0]
    graph, rows, params, unit = dowhy_inputs(spec, data.scm_rows, e)
    assert unit == 191.0 and graph.spec("intensity").high == 1.0 and "init_params" in params
    assert torch.allclose(rows["intensity"], (data.scm_rows["intensity"].double() - 64) / 191)
    boot = scm_bootstrap(spec, data.scm_rows, e, 50.0)
    lo, hi = boot["confidence_interval"]
    assert len(boot["bootstrap"]) == 3 and lo < 50.0 < hi and hi - lo > 0


def test_mnist_folder_source(tmp_path):
    import struct

    from pipeline.datasets import load_mnist5k

    def idx(array: np.ndarray) -> bytes:
        return bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + \
            array.astype(np.uint8).tobytes()

    images, labels = load_mnist5k()
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, rows in (("train", slice(0, 12)), ("t10k", slice(12, 16))):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx(images[rows]))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(labels[rows]))
    spec_file = write_toml(mutate(data={"source": "mnist_folder", "root": "mnist", "train_digits": 10,
                                        "test_digits": 4, "samples_per_digit": 1, "scm_rows": 100}),
                           tmp_path / "folder.toml")
    data = build_data(load_spec(spec_file), n_jobs=1, progress=False)
    assert data.test_images.shape == (4, 1, 28, 28)
    assert sorted(data.test_attributes["digit"].tolist()) == sorted(labels[12:16].tolist())
    assert set(data.train_attributes["digit"].tolist()) <= set(labels[:12].tolist())
    missing = write_toml(mutate(data={"source": "mnist_folder", "root": "nowhere"}), tmp_path / "missing.toml")
    with pytest.raises(SpecError, match=r"\[data\] root: folder .*nowhere' does not exist"):
        load_spec(missing)
    with pytest.raises(SpecError, match=r"\[data\] root: missing"):
        parse_spec(mutate(data={"source": "mnist_folder"}))


def test_csv_with_a_bad_value_fails_in_one_line_and_writes_nothing(tmp_path):
    from pipeline.experiment.data import write_morpho_csv

    folder = write_morpho_csv(tmp_path / "data", 10, n_jobs=1)
    table = (folder / "train.csv").read_text().splitlines()
    path, _, rest = table[1].partition(",")
    table[1] = f"{path},-1.0,{rest.split(',', 1)[1]}"                     # a negative thickness
    (folder / "train.csv").write_text("\n".join(table) + "\n")
    spec = mutate(equations=None, data={"source": "csv", "csv": "data/train.csv", "test_csv": "data/test.csv",
                                        "image_dir": "data"},
                  graph={"nodes": {"thickness": {"kind": "positive"},
                                   "intensity": {"kind": "interval", "low": 0, "high": 255},
                                   "digit": {"kind": "categorical", "cardinality": 10},
                                   "image": {"kind": "image", "shape": [1, 28, 28]}},
                         "edges": [["thickness", "intensity"], ["thickness", "image"], ["intensity", "image"],
                                   ["digit", "image"]]},
                  render={"thickness": "thickness", "intensity": "intensity", "digit": "digit"},
                  interventions=[{"node": "thickness"}], effects=[])
    spec.pop("effects")
    spec_file = write_toml(spec, tmp_path / "csv.toml")
    assert load_spec(spec_file).data.source == "csv"
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["experiment", "run", str(spec_file), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "[data] csv:" in lines[0] and "thickness" in lines[0] and "-1" in lines[0]
    assert not out.exists()


def test_guidance_anchor_reaches_the_pipeline_and_the_groups():
    from pipeline.experiment.run import guidance_groups

    spec = parse_spec(mutate(guidance__dcfg_form="conditional"), path=None)
    assert spec.guidance.dcfg_form == "conditional" and parse_spec(BASE, path=None).guidance.dcfg_form == "paper"
    g = guidance_groups(spec, {"slant": 2.0, "thickness": 2.0}, {"slant": 2.0, "thickness": 2.0})
    assert g["slant"]["dcfg"]["dcfg_form"] == "conditional"
    base = guidance_groups(parse_spec(BASE, path=None), {"slant": 2.0}, {"slant": 2.0})
    assert "dcfg_form" not in base["slant"]["dcfg"]


def test_csv_without_render_is_scored_by_predictors_and_stored_as_uint8(tmp_path):
    """CSV data with no [render] ops: the images are held as uint8, anti-causal predictors are trained on the
    training split, and the evaluation scores every image parent with them instead of being skipped."""
    from pipeline.experiment import run_experiment
    from pipeline.experiment.data import ExperimentData, write_morpho_csv

    write_morpho_csv(tmp_path / "data", 40, n_jobs=1)
    spec = mutate(equations=None, data={"source": "csv", "csv": "data/train.csv", "test_csv": "data/test.csv",
                                        "image_dir": "data"},
                  graph={"nodes": {"thickness": {"kind": "positive"},
                                   "intensity": {"kind": "interval", "low": 0, "high": 255},
                                   "digit": {"kind": "categorical", "cardinality": 10},
                                   "image": {"kind": "image", "shape": [1, 28, 28]}},
                         "edges": [["thickness", "intensity"], ["thickness", "image"], ["intensity", "image"],
                                   ["digit", "image"]]},
                  interventions=[{"node": "thickness"}, {"node": "digit"}], effects=[])
    spec.pop("effects")
    spec.pop("render", None)
    spec_file = write_toml(spec, tmp_path / "csv.toml")
    out = tmp_path / "out"
    run_experiment(spec_file, out, n_jobs=1, progress=False)
    data_dir = next((out / "stages").glob("data-*"))
    data = ExperimentData.load(data_dir)
    assert data.train_images.dtype == torch.uint8 and data.test_images.dtype == torch.uint8
    assert any((out / "stages").glob("predictors-*/predictors/metrics.json"))
    metrics = json.loads((out / "metrics.json").read_text())
    evaluation = metrics["evaluation"]
    assert "skipped" not in evaluation
    rows = evaluation["pipelines"]["main"]["main"]
    assert sorted(rows) == ["digit", "thickness"]
    assert {"thickness_mae", "digit_flip_rate", "realism_fd"} <= {k for r in rows["thickness"] for k in r}
