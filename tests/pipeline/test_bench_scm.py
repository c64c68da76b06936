"""``dcfg bench scm`` (pipeline.bench_scm): our SCM against dowhy.gcm, end to end on a tiny problem."""
from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from pipeline.bench_scm import bench_scm
from pipeline.cli import main


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
    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", "scm", "--rows", "200", "--fit-rows", "300", "--epochs", "1",
                                       "--repeats", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "speed ratio" in result.output and json.loads(out.read_text())["config"]["n_rows"] == 200


def test_bench_scm_cli_times_both_fits(tmp_path) -> None:
    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", "scm", "--rows", "200", "--fit-rows", "400", "--repeats", "1",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "fit time ratio" in result.output and "held-out NLL" in result.output
    res = json.loads(out.read_text())
    fit = res["fit"]
    for key in ("ours_s", "dowhy_s", "dowhy_assign_s", "dowhy_fit_only_s", "ratio", "heldout_nll",
                "true_heldout_nll", "meets_targets", "ours_warmup_s", "dowhy_warmup_s"):
        assert key in fit, key
    assert fit["rows"] == 400 and fit["ours_method"] == "default (lbfgs)"
    assert fit["ratio"] == pytest.approx(fit["ours_s"] / fit["dowhy_s"])
    assert math.isfinite(fit["heldout_nll"]) and sorted(fit["heldout_nll_per_node"]) == ["digit", "intensity",
                                                                                         "thickness"]
    for key in ("cpu", "avx512_bf16", "amx_bf16", "cores", "torch_threads", "load_avg_1min"):
        assert key in res["system"], key
    assert res["system"]["torch_threads"] == 1
    assert res["ours"]["intensity_median_abs_error"] >= 0 and res["dowhy"]["counterfactual_s"] > 0
