"""``dcfg data preview``: writes a PNG grid with measured attributes and histograms."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.datasets.preview import preview_morpho


def test_preview_writes_png_with_measured_attributes(tmp_path, monkeypatch):
    monkeypatch.setenv("DCFG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["data", "preview", "--out", str(out), "--n", "10", "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "median |t measured - requested|" in result.output
    assert list((tmp_path / "cache").glob("morpho-mnist-test-*.npz"))  # rendered through the cache
    assert not list(tmp_path.glob("*.tmp"))


def test_preview_function_returns_attributes(tmp_path):
    res = preview_morpho(tmp_path / "p.png", split="train", n=6, attribute_sampling="independent", n_hist=200,
                         cache_dir=tmp_path, progress=False)
    assert res["requested"]["digit"].tolist() == [0, 1, 2, 3, 4, 5]
    assert np.median(np.abs(res["measured"]["thickness"] - res["requested"]["thickness"])) <= 0.15


def test_preview_errors(tmp_path):
    result = CliRunner().invoke(main, ["data", "preview", "--out", str(tmp_path / "grid.jpg")])
    assert result.exit_code != 0 and ".png" in result.output
    result = CliRunner().invoke(main, ["data", "preview", "--out", str(tmp_path / "g.png"),
                                       "--root", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "does not exist" in result.output
