"""Guidance variants in experiment specs: the [guidance] keys variant / interval / apg_eta, and what the run passes."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from test_experiment import BASE, mutate, write_toml

from pipeline.cli import main
from pipeline.evaluation.runner import parse_method
from pipeline.experiment import SpecError, parse_spec


def test_variant_keys_and_the_swept_methods():
    g = parse_spec(mutate(guidance__variant="apg", guidance__apg_eta=0.5), path=None).guidance
    assert (g.variant, g.interval, g.apg_eta) == ("apg", None, 0.5)
    assert g.swept_methods == ("cfg", "dcfg", "cfg+apg", "dcfg+apg")
    g = parse_spec(mutate(guidance__methods=["cfg", "dcfg+cfgpp", "cfg+interval"], guidance__interval=[100, 900]),
                   path=None).guidance
    assert g.interval == (100.0, 900.0) and g.swept_methods == ("cfg", "dcfg+cfgpp", "cfg+interval")
    g = parse_spec(mutate(guidance__variant="cfgpp", guidance__interval=[0, 500]), path=None).guidance
    assert g.swept_methods == ("cfg", "dcfg", "cfg+cfgpp+interval", "dcfg+cfgpp+interval")
    default = parse_spec(BASE, path=None).guidance
    assert (default.variant, default.interval, default.apg_eta, default.swept_methods) == (None, None, 0.0,
                                                                                          ("cfg", "dcfg"))
    assert parse_spec(mutate(guidance__variant="none"), path=None).guidance.variant is None
    for m in parse_spec(mutate(guidance__variant="apg", guidance__interval=[1, 2]), path=None).guidance.swept_methods:
        parse_method(m)  # the evaluation's grammar accepts every swept name


VARIANT_CATALOGUE = [
    ("unknown variant", mutate(guidance__variant="apgg"), r"\[guidance\] variant: 'apgg' is not allowed"),
    ("interval lo >= hi", mutate(guidance__interval=[800, 200]), r"\[guidance\] interval: \[800, 200\] must be"),
    ("interval beyond T", mutate(guidance__interval=[0, 1001]),
     r"\[guidance\] interval: \[0, 1001\] must be .* <= 1000"),
    ("interval below 0", mutate(guidance__interval=[-1, 10]), r"\[guidance\] interval\[0\]: -1 is out of range"),
    ("interval not a pair", mutate(guidance__interval=[5]), r"\[guidance\] interval: expected two numbers"),
    ("APG eta above 1", mutate(guidance__apg_eta=1.5), r"\[guidance\] apg_eta: 1.5 is out of range"),
    ("method with an unknown variant", mutate(guidance__methods=["cfg", "cfg+fancy"]),
     r"\[guidance\] methods\[1\]: 'cfg\+fancy': 'fancy' is not allowed"),
    ("interval method without an interval", mutate(guidance__methods=["cfg", "dcfg+interval"]),
     r"\[guidance\] interval: missing; the methods \['dcfg\+interval'\]"),
]


@pytest.mark.parametrize("label,spec,message", VARIANT_CATALOGUE, ids=[c[0] for c in VARIANT_CATALOGUE])
def test_bad_variant_keys(label, spec, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("label,spec,message", VARIANT_CATALOGUE[:3], ids=[c[0] for c in VARIANT_CATALOGUE[:3]])
def test_bad_variant_keys_on_the_command_line_write_nothing(tmp_path, label, spec, message):
    spec_file = write_toml(spec, tmp_path / "bad.toml")
    res = CliRunner().invoke(main, ["experiment", "run", str(spec_file), "--out", str(tmp_path / "out"), "--quiet"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and re.search(message, lines[0]), res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_the_evaluation_stage_passes_the_variants(monkeypatch, tmp_path):
    import pipeline.evaluation.runner as runner
    from pipeline.experiment.run import evaluation_stage

    spec = parse_spec(mutate(guidance__variant="apg", guidance__interval=[100, 900], guidance__apg_eta=0.25),
                      path=None)
    seen = {}

    def fake_evaluate(pipe, images, parents, oracles, config, **kw):
        seen["config"] = config
        raise RuntimeError("stop")

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    data = SimpleNamespace(test_images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8), test_attributes={})
    with pytest.raises(RuntimeError, match="stop"):
        evaluation_stage(spec, None, data, SimpleNamespace(complete=True), False, lambda s: None)(tmp_path)
    c = seen["config"]
    assert c.sweep_methods == ("cfg", "dcfg", "cfg+apg+interval", "dcfg+apg+interval")
    assert c.interval == (100.0, 900.0) and c.apg_eta == 0.25
