"""``pipeline.bench.bench_pipeline`` on the tiny pipeline: figures are consistent and nothing is left patched."""
import json

import pytest

from pipeline.bench import _NetworkTimer, bench_pipeline


def test_bench_rows_are_consistent(tiny_pipeline, tmp_path):
    out = tmp_path / "bench.json"
    result = bench_pipeline(tiny_pipeline, batch=4, steps=(1, 2), repeats=2, out=out, verbose=False)
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = result["rows"]
    assert [(r["guidance"], r["steps"]) for r in rows] == [("cfg", 1), ("cfg", 2), ("dcfg", 1), ("dcfg", 2)]
    for r in rows:
        # the network calls happen inside the query, so they can never take longer than it
        assert 0 < r["in_network_s"] <= r["wall_s"]
        assert r["in_situ_ratio"] == pytest.approx(r["wall_s"] / r["in_network_s"])
        assert r["ms_per_counterfactual"] == pytest.approx(1000 * r["wall_s"] / 4)
        assert r["repeats"] == 2
    # the timer is removed again: eps is the class's method, not the wrapper
    assert "eps" not in vars(tiny_pipeline.image_model)


def test_network_timer_counts_only_inside_calls(tiny_pipeline, tiny_batch):
    model = tiny_pipeline.image_model
    with _NetworkTimer(model) as timer:
        pass
    assert timer.seconds == 0.0
    x, parents = tiny_batch
    with _NetworkTimer(model) as timer:
        tiny_pipeline.counterfactual(x[:2], {k: v[:2] for k, v in parents.items()}, do={}, steps=2)
    assert timer.seconds > 0
    assert "eps" not in vars(model)
