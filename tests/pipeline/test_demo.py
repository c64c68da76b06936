"""`dcfg demo` end to end on a tiny untrained 28x28 pipeline (the plumbing, not the quality)."""
from __future__ import annotations

import torch
from click.testing import CliRunner
from tiny_unet import tiny_unet

from diffusion import ConditionalUNet
from pipeline.classifier import DigitClassifier
from pipeline.cli import main
from pipeline.core import CounterfactualPipeline
from pipeline.datasets import morpho_equations as eq
from pipeline.presets import morphomnist_graph
from pipeline.train import image_model_config_for
from scm import SCM


def test_demo_writes_grid_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("DCFG_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    graph = morphomnist_graph()
    noise = eq.sample_noise(256, torch.Generator().manual_seed(0))
    t = eq.thickness_from_noise(noise["u_t"]).float()
    attrs = {"thickness": t, "intensity": eq.intensity_from(t, noise["e_i"]).float(),
             "digit": torch.arange(256) % 10}
    scm = SCM(graph)
    scm.fit(attrs, epochs=2, progress=False, seed=0)
    cfg = image_model_config_for(graph, attrs, **tiny_unet())
    CounterfactualPipeline(graph, scm, ConditionalUNet(cfg).eval(),
                           classifier=DigitClassifier().eval()).save(tmp_path / "pipe")
    res = CliRunner().invoke(main, ["demo", "--pipeline", str(tmp_path / "pipe"), "--out",
                                    str(tmp_path / "out"), "--n", "2", "--steps", "3", "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "demo.png").stat().st_size > 5000
    lines = [ln for ln in res.output.splitlines() if ln.startswith("do(")]
    assert len(lines) == 3 * 2 * 4  # 3 interventions x 2 digits x (factual, none, cfg, dcfg)
    assert any(ln.startswith("do(thickness=") for ln in lines)
    assert any(ln.startswith("do(digit=") for ln in lines)
