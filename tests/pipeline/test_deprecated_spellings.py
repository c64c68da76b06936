"""The former spellings of the guidance options warn with a DeprecationWarning naming the new one, and mean what
they meant; saved files in the former spelling load silently and mean the same (:mod:`pipeline.options`)."""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from pipeline.core import CounterfactualPipeline, PipelineConfig
from pipeline.evaluation.engine import decode_nfe, invert_nfe, nfe_per_step
from pipeline.evaluation.runner import EvaluationConfig, resolve_config
from pipeline.groups import resolve_guidance
from pipeline.options import FROM_CONFIG, check_dcfg_form, check_descendant_weight, diffusion_anchor
from pipeline.presets import morphomnist_graph

DO = {"thickness": 4.0}


def _query(pipe, batch, **kw):
    x, a = batch
    return pipe.counterfactual(x, a, do=DO, scale=3.0, steps=4, seed=0, **kw)


def test_the_vocabulary():
    assert check_dcfg_form("paper") == "paper" and diffusion_anchor("conditional") == "full"
    assert check_descendant_weight("scale") == "scale" and check_descendant_weight(2) == 2.0
    with pytest.warns(DeprecationWarning, match="use dcfg_form='conditional'"):
        assert check_dcfg_form("full") == "conditional"
    for bad in ("half", None, 1):
        with pytest.raises(ValueError, match="must be 'paper'"):
            check_dcfg_form(bad)
    for bad in (None, "config", float("nan"), True):
        with pytest.raises(ValueError, match="descendant_weight"):
            check_descendant_weight(bad)
    assert repr(FROM_CONFIG) == "<the pipeline's config>"


def test_pipeline_config_former_spellings_warn_and_mean_the_same():
    with pytest.warns(DeprecationWarning, match=r"dcfg_anchor= is deprecated: use dcfg_form='conditional'"):
        c = PipelineConfig(dcfg_anchor="full")
    assert c.dcfg_form == "conditional"
    with pytest.warns(DeprecationWarning, match="dcfg_anchor= is deprecated: use dcfg_form='paper'"):
        assert replace(c, dcfg_anchor="null").dcfg_form == "paper"
    with pytest.warns(DeprecationWarning, match="read dcfg_form"):
        assert c.dcfg_anchor == "full"
    with pytest.warns(DeprecationWarning, match="use descendant_weight='scale'"):
        assert PipelineConfig(descendant_weight=None).descendant_weight == "scale"
    assert PipelineConfig() == PipelineConfig(descendant_weight="scale", dcfg_form="paper")
    with pytest.raises(ValueError, match="dcfg_anchor='half' must be 'paper'"):
        PipelineConfig(dcfg_anchor="half")


def test_an_old_saved_config_loads_silently_and_means_the_same(tiny_pipeline, tiny_batch, tmp_path):
    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                  replace(tiny_pipeline.config, dcfg_form="conditional", descendant_weight="scale"))
    folder = pipe.save(tmp_path / "pipe")
    cfg_file = folder / "config.json"
    saved = json.loads(cfg_file.read_text())
    assert saved["pipeline"]["dcfg_form"] == "conditional" and "dcfg_anchor" not in saved["pipeline"]
    # as an earlier version wrote it: dcfg_anchor, and null for the paper's grouping
    settings = saved["pipeline"]
    settings["dcfg_anchor"] = settings.pop("dcfg_form").replace("conditional", "full")
    settings["descendant_weight"] = None
    cfg_file.write_text(json.dumps(saved, indent=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        old = CounterfactualPipeline.load(folder)
    assert old.config.dcfg_form == "conditional" and old.config.descendant_weight == "scale"
    assert old.config == pipe.config
    torch.testing.assert_close(_query(old, tiny_batch).image, _query(pipe, tiny_batch).image)
    resaved = json.loads((old.save(tmp_path / "again") / "config.json").read_text())["pipeline"]
    assert resaved["dcfg_form"] == "conditional" and "dcfg_anchor" not in resaved
    assert resaved["descendant_weight"] == "scale"


def test_query_former_spellings_warn_and_mean_the_same(tiny_pipeline, tiny_batch):
    pipe = tiny_pipeline
    plain = _query(pipe, tiny_batch)
    with pytest.warns(DeprecationWarning, match="anchor= is deprecated: use dcfg_form='conditional'"):
        full = _query(pipe, tiny_batch, descendant_weight=1.0, anchor="full")
    assert full.dcfg_form == "conditional"
    assert torch.equal(full.image, _query(pipe, tiny_batch, descendant_weight=1.0, dcfg_form="conditional").image)
    with pytest.warns(DeprecationWarning, match="read dcfg_form"):
        assert full.anchor == "full"
    with pytest.warns(DeprecationWarning, match="descendant_weight='config' is deprecated: leave the argument out"):
        assert torch.equal(_query(pipe, tiny_batch, descendant_weight="config").image, plain.image)
    with pytest.warns(DeprecationWarning, match="use descendant_weight='scale'"):
        paper = _query(pipe, tiny_batch, descendant_weight=None)
    assert torch.equal(paper.image, _query(pipe, tiny_batch, descendant_weight="scale").image)
    for name in ("variant", "interval"):
        with pytest.warns(DeprecationWarning, match=f"{name}='config' is deprecated: leave the argument out"):
            assert torch.equal(_query(pipe, tiny_batch, **{name: "config"}).image, plain.image)
    # explicit values keep their meaning: None is no variant, no interval
    assert _query(pipe, tiny_batch, variant=None, interval=None).variant is None


def test_the_pipelines_variant_and_interval_apply_when_left_out(tiny_pipeline, tiny_batch):
    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                  replace(tiny_pipeline.config, variant="apg", interval=(200, 800)))
    res = _query(pipe, tiny_batch)
    assert res.variant == "apg" and res.interval == (200.0, 800.0)
    off = _query(pipe, tiny_batch, variant=None, interval=None)
    assert off.variant is None and off.interval is None


def test_groups_evaluation_and_costs_take_the_former_spellings():
    graph = morphomnist_graph()
    with pytest.warns(DeprecationWarning, match="use descendant_weight='scale'"):
        assert resolve_guidance(graph, ["thickness"], "dcfg", 3.0, descendant_weight=None) == resolve_guidance(
            graph, ["thickness"], "dcfg", 3.0, descendant_weight="scale")
    groups, weights = [["thickness"], ["intensity"], ["digit"]], [3.0, 1.0, 1.0]
    with pytest.warns(DeprecationWarning, match="use dcfg_form='conditional'"):
        assert nfe_per_step("dcfg", groups, weights, anchor="full") == 2
    with pytest.warns(DeprecationWarning, match="use dcfg_form='conditional'"):
        assert decode_nfe("dcfg", groups, weights, "full", steps=3) == 6
    with pytest.warns(DeprecationWarning, match="use dcfg_form='paper'"):
        assert invert_nfe(10, 0, "cfgpp", anchor="null") == invert_nfe(10, 0, "cfgpp", dcfg_form="paper") == 20
    with pytest.warns(DeprecationWarning, match="anchor= is deprecated: use dcfg_form='conditional'"):
        c = EvaluationConfig(n=4, anchor="full")
    assert c.dcfg_form == "conditional"
    with pytest.warns(DeprecationWarning, match="read dcfg_form"):
        assert c.anchor == "full"


def test_evaluation_config_none_is_the_pipelines(tiny_pipeline):
    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                                  replace(tiny_pipeline.config, descendant_weight=1.0, dcfg_form="conditional"))
    c = resolve_config(EvaluationConfig(n=4, steps=2), pipe, 40)
    assert c.descendant_weight == 1.0 and c.dcfg_form == "conditional"
    c = resolve_config(EvaluationConfig(n=4, steps=2, descendant_weight="scale", dcfg_form="paper"), pipe, 40)
    assert c.descendant_weight == "scale" and c.dcfg_form == "paper"


def test_experiment_spec_former_anchor_key():
    import copy
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

    from pipeline.experiment.spec import SpecError, parse_spec

    example = Path(__file__).resolve().parents[2] / "examples" / "morphomnist.toml"
    base = tomllib.loads(example.read_text())
    assert parse_spec(base, path=example).guidance.dcfg_form == "paper"
    old = copy.deepcopy(base)
    del old["guidance"]["dcfg_form"]
    old["guidance"]["anchor"] = "full"
    with pytest.warns(DeprecationWarning, match="write dcfg_form = 'conditional'"):
        spec = parse_spec(old, path=example)
    assert spec.guidance.dcfg_form == "conditional"
    with pytest.warns(DeprecationWarning, match="read dcfg_form"):
        assert spec.guidance.anchor == "full"
    old["guidance"]["dcfg_form"] = "paper"
    with pytest.raises(SpecError, match="give dcfg_form only"):
        parse_spec(old, path=example)


def test_a_manifest_with_the_former_anchor_resumes(tmp_path):
    from pipeline.generate.manifest import Manifest

    text = json.dumps({"format_version": 1, "complete": False, "pipeline": {"sha256": "x"},
                       "query": {"guidance": "dcfg", "anchor": "full"}, "data": {}, "contents": {}, "shards": []})
    (tmp_path / "manifest.json").write_text(text)
    assert Manifest.load(tmp_path).query == {"guidance": "dcfg", "dcfg_form": "conditional"}


def test_cli_former_anchor_option_warns_and_means_the_same(tiny_pipeline, tiny_batch, tmp_path):
    from pipeline.cli import main
    from pipeline.images import save_image

    tiny_pipeline.save(tmp_path / "pipe")
    x, a = tiny_batch
    save_image(x[:1], tmp_path / "in.png")
    parents = ",".join(f"{k}={float(v[0]):.4f}" if k != "digit" else f"digit={int(v[0])}" for k, v in a.items())
    outputs, logs = {}, {}
    for option in (["--anchor", "full"], ["--dcfg-form", "conditional"]):
        out = tmp_path / f"{option[0][2:]}.png"
        res = CliRunner().invoke(main, ["counterfactual", "--pipeline", str(tmp_path / "pipe"), "--image",
                                        str(tmp_path / "in.png"), "--parents", parents, "--do", "thickness=3",
                                        "--steps", "2", "--out", str(out), *option], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "dcfg_form: conditional" in res.output
        outputs[option[0]], logs[option[0]] = out.read_bytes(), res.output
    assert "--anchor full is deprecated: use --dcfg-form conditional" in logs["--anchor"]
    assert "deprecated" not in logs["--dcfg-form"]
    assert outputs["--anchor"] == outputs["--dcfg-form"]
