"""The benchmark command runs end to end on a tiny problem, and every docstring example runs."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.bench_scm import bench_scm


def test_bench_scm_small(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    res = bench_scm(n_rows=300, seed=0, out=out, fit_rows=400, epochs=1, repeats=1)
    printed = capsys.readouterr().out
    assert "dcfg scm.SCM" in printed and "dowhy.gcm" in printed and "speed ratio" in printed
    saved = json.loads(out.read_text())
    assert saved["config"]["n_rows"] == 300
    for side in ("ours", "dowhy"):
        r = saved[side]
        assert r["counterfactual_s"] > 0 and abs(r["rows_per_s"] - 300 / r["counterfactual_s"]) < 1e-6 * r["rows_per_s"]
    assert saved["ratio"] == pytest.approx(saved["ours"]["rows_per_s"] / saved["dowhy"]["rows_per_s"])
    assert res["ratio"] == saved["ratio"]


def test_bench_scm_cli(tmp_path) -> None:
    from pipeline.cli import main

    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", "scm", "--rows", "200", "--fit-rows", "300", "--epochs", "1",
                                       "--repeats", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "speed ratio" in result.output and json.loads(out.read_text())["config"]["n_rows"] == 200
