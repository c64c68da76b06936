"""``pipeline.bench.bench_pipeline`` on the tiny pipeline: the counted image-NFEs follow the solver's and the
guidance's arithmetic, the floor is the sum of the recorded calls' stand-alone times, and nothing is left patched."""
import json

import pytest

from pipeline.bench import NetworkCalls, bench_pipeline


def test_bench_rows_count_the_network_calls(tiny_pipeline, tmp_path):
    out = tmp_path / "bench.json"
    result = bench_pipeline(tiny_pipeline, batch=4, steps=(1, 2), methods=("none", "cfg", "dcfg+interval"),
                            interval=(0, 500), repeats=2, out=out, verbose=False)
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = result["rows"]
    assert [(r["method"], r["steps"]) for r in rows] == [
        ("none", 1), ("none", 2), ("cfg", 1), ("cfg", 2), ("dcfg+interval", 1), ("dcfg+interval", 2)]
    assert (tiny_pipeline.config.refine_steps, tiny_pipeline.config.invert_predictor) == (1, "extrapolated")
    inv = 1 + 2  # the default DDIM inversion of 2 steps: one call for x_0, one refinement per step
    nfe = {(r["method"], r["steps"]): r["nfe_per_counterfactual"] for r in rows}
    assert nfe[("none", 2)] == inv + 2          # decoding: the plain conditional, one row per image
    assert nfe[("cfg", 2)] == inv + 2 * 2       # decoding: null and full condition
    assert nfe[("none", 2)] <= nfe[("dcfg+interval", 2)] <= nfe[("cfg", 2)] + 2  # guided only inside the interval
    fwd = {int(k): v / 1000 for k, v in result["forward_ms"].items()}
    for r in rows:
        assert sum(int(k) * n for k, n in r["calls"].items()) == pytest.approx(r["nfe_per_counterfactual"] * 4)
        assert r["floor_s"] == pytest.approx(sum(fwd[int(k)] * n for k, n in r["calls"].items()))
        assert r["ratio"] == pytest.approx(r["wall_s"] / r["floor_s"])
        # the network calls happen inside the query, so they can never take longer than it
        assert 0 < r["in_network_s"] <= r["wall_s"]
        assert r["in_situ_ratio"] == pytest.approx(r["wall_s"] / r["in_network_s"])
        assert r["repeats"] == 2
    assert set(result["machine"]) >= {"cpu", "avx512_bf16", "amx_bf16"}
    # the recorder is removed again: eps is the class's method, not the wrapper
    assert "eps" not in vars(tiny_pipeline.image_model)


def test_bench_refuses_unknown_methods_before_any_work(tiny_pipeline):
    with pytest.raises(ValueError, match="dcfg\\+foo"):
        bench_pipeline(tiny_pipeline, batch=2, methods=("cfg", "dcfg+foo"), verbose=False)
    with pytest.raises(ValueError, match="BASE 'cfg' or 'dcfg'"):
        bench_pipeline(tiny_pipeline, batch=2, methods=("dcfg_paper",), verbose=False)


def test_network_calls_record_only_inside_calls(tiny_pipeline, tiny_batch):
    model = tiny_pipeline.image_model
    with NetworkCalls(model) as calls:
        pass
    assert calls.seconds == 0.0 and calls.rows == []
    x, parents = tiny_batch
    with NetworkCalls(model) as calls:
        tiny_pipeline.counterfactual(x[:2], {k: v[:2] for k, v in parents.items()}, do={}, steps=2,
                                     guidance="none")
    assert calls.seconds > 0 and calls.rows == [2] * ((1 + 2) + 2)  # inversion 1 + r S, decoding S
    assert "eps" not in vars(model)
