"""Guidance variants (APG, CFG++, a guidance interval) in the pipeline: queries, inversion, config, save/load."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pipeline.core import CounterfactualPipeline, PipelineConfig

STEPS = 3
DO = {"thickness": 4.0}


@pytest.mark.parametrize("guidance, dcfg_form", [("cfg", "paper"), ("dcfg", "paper"), ("dcfg", "conditional")])
@pytest.mark.parametrize("variant, interval", [("apg", None), ("cfgpp", None), (None, (200, 700)),
                                               ("apg", (200, 700)), ("cfgpp", (200, 700))])
def test_each_variant_runs_and_changes_the_answer(tiny_pipeline, tiny_batch, guidance, dcfg_form, variant,
                                                  interval):
    x, a = tiny_batch
    kw = dict(do=DO, guidance=guidance, scale=3.0, steps=STEPS, seed=0, dcfg_form=dcfg_form)
    base = tiny_pipeline.counterfactual(x, a, **kw)
    res = tiny_pipeline.counterfactual(x, a, variant=variant, interval=interval, **kw)
    assert res.variant == variant and res.interval == (None if interval is None else tuple(map(float, interval)))
    assert res.image.shape == x.shape and torch.isfinite(res.image).all() and res.image.abs().max() <= 1
    assert res.groups == base.groups and res.weights == base.weights
    assert not torch.allclose(res.image, base.image, atol=1e-4)


def test_cfgpp_inverts_with_its_own_pair_and_reconstructs(tiny_pipeline, tiny_batch):
    """The null query with CFG++ at weight 1 decodes what CFG++'s inversion encoded: it reconstructs."""
    x, a = tiny_batch
    pipe = tiny_pipeline
    fact = {k: a[k] for k in pipe.graph.image_parents()}
    plain = pipe.invert(x, fact, steps=10)
    pair = pipe.invert(x, fact, steps=10, variant="cfgpp")
    assert not torch.allclose(plain, pair, atol=1e-3)
    # in DCFG's conditional form, CFG++ re-noises with eps(c): the plain inversion; APG inverts plainly
    torch.testing.assert_close(pipe.invert(x, fact, steps=10, variant="cfgpp", dcfg_form="conditional"), plain)
    torch.testing.assert_close(pipe.invert(x, fact, steps=10, variant="apg"), plain)
    res = pipe.counterfactual(x, a, do={}, guidance="cfg", scale=1.0, variant="cfgpp", steps=20, seed=0)
    assert (res.image - x).abs().mean() < 0.05
    # decoding CFG++'s noise without the variant does not reconstruct as well: the inversion is CFG++'s own
    wrong = pipe.decode(res.noise["x_T"], fact, guidance="cfg", scale=1.0, steps=20)
    assert (wrong - x).abs().mean() > (res.image - x).abs().mean()


def test_variants_from_config_save_load_and_old_configs(tiny_pipeline, tiny_batch, tmp_path):
    x, a = tiny_batch
    cfg = replace(tiny_pipeline.config, variant="apg", interval=[150, 850], apg_eta=0.25)
    assert cfg.interval == (150.0, 850.0)
    pipe = CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model, cfg)
    loaded = CounterfactualPipeline.load(pipe.save(tmp_path / "pipe"))
    assert (loaded.config.variant, loaded.config.interval, loaded.config.apg_eta) == ("apg", (150.0, 850.0), 0.25)
    kw = dict(do=DO, guidance="cfg", scale=3.0, steps=STEPS, seed=0)
    from_config = loaded.counterfactual(x, a, **kw)
    explicit = tiny_pipeline.counterfactual(x, a, variant="apg", interval=(150, 850), apg_eta=0.25, **kw)
    assert from_config.variant == "apg" and torch.equal(from_config.image, explicit.image)
    off = loaded.counterfactual(x, a, variant=None, interval=None, **kw)
    assert off.variant is None and torch.equal(off.image, tiny_pipeline.counterfactual(x, a, **kw).image)
    # guidance 'none' ignores the config's variant and interval
    none = loaded.counterfactual(x, a, do=DO, guidance="none", steps=STEPS, seed=0)
    assert none.variant is None and none.interval is None
    # an old config.json without the new keys loads with the defaults
    cfg_file = tmp_path / "pipe" / "config.json"
    data = json.loads(cfg_file.read_text())
    for key in ("variant", "interval", "apg_eta", "apg_threshold", "apg_momentum"):
        data["pipeline"].pop(key)
    cfg_file.write_text(json.dumps(data))
    old = CounterfactualPipeline.load(tmp_path / "pipe")
    assert old.config.variant is None and old.config.interval is None and old.config.apg_eta == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(guidance="none", variant="apg"), r"variant='apg' modifies guidance, but guidance='none'"),
    (dict(guidance="none", interval=(1, 5)), r"interval=\(1, 5\) modifies guidance"),
    (dict(guidance="cfg", variant="apgg"), r"variant='apgg' must be None, 'apg'"),
    (dict(guidance="cfg", interval=(0, 1001)), r"interval=\(0, 1001\) is outside \[0, 1000\]"),
    (dict(guidance="cfg", interval=(-5, 100)), r"interval=\(-5, 100\) is outside \[0, 1000\]"),
    (dict(guidance="dcfg", interval=(600, 300)), r"interval=\(600, 300\) must be \(lo, hi\) with lo < hi"),
    (dict(guidance="dcfg", variant="apg", apg_eta=2.0), r"apg_eta=2.0 must be a number in \[0, 1\]"),
])
def test_bad_variant_arguments_are_refused_up_front(tiny_pipeline, tiny_batch, kwargs, match, monkeypatch):
    x, a = tiny_batch
    calls = []
    monkeypatch.setattr(tiny_pipeline.scm, "abduct", lambda *a_, **k: calls.append(1))
    with pytest.raises(ValueError, match=match):
        tiny_pipeline.counterfactual(x, a, do=DO, steps=STEPS, **kwargs)
    assert calls == []  # nothing ran


@pytest.mark.parametrize("kwargs, match", [
    (dict(variant="cfg++"), r"pipeline config variant='cfg\+\+' must be None"),
    (dict(interval=(5, 5)), r"pipeline config interval=\(5, 5\) must be \(lo, hi\) with lo < hi"),
    (dict(apg_eta=-1), r"pipeline config apg_eta=-1 must be a number in \[0, 1\]"),
    (dict(apg_momentum=-1.5), r"pipeline config apg_momentum=-1.5"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PipelineConfig(**kwargs)


def test_config_interval_beyond_the_schedule(tiny_pipeline):
    with pytest.raises(ValueError, match=r"pipeline config interval=\(10.0, 2000.0\) is outside \[0, 1000\]"):
        CounterfactualPipeline(tiny_pipeline.graph, tiny_pipeline.scm, tiny_pipeline.image_model,
                               PipelineConfig(interval=(10, 2000)))


def test_cli_counterfactual_with_a_variant(tiny_pipeline, tiny_batch, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.images import save_image

    x, a = tiny_batch
    tiny_pipeline.save(tmp_path / "pipe")
    save_image(x[:1], tmp_path / "in.png")
    parents = ",".join(f"{k}={float(v[0]):.4f}" if k != "digit" else f"digit={int(v[0])}" for k, v in a.items())
    for extra, echo in ((["--variant", "apg", "--interval", "100,900", "--apg-eta", "0.5"],
                         "variant: apg interval: 100,900"),
                        (["--guidance", "cfg", "--variant", "cfgpp"], "variant: cfgpp")):
        out = tmp_path / "out" / "cf.png"
        res = CliRunner().invoke(main, ["counterfactual", "--pipeline", str(tmp_path / "pipe"), "--image",
                                        str(tmp_path / "in.png"), "--parents", parents, "--do", "thickness=3.5",
                                        "--steps", "3", "--out", str(out)] + extra, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert echo in res.output and out.is_file()
        out.unlink()


def test_generate_records_and_applies_the_variant(tiny_pipeline, tiny_batch, tmp_path):
    from safetensors.torch import load_file

    from pipeline.generate import Manifest, generate

    x, a = tiny_batch

    class Pairs(torch.utils.data.Dataset):
        attributes = a

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], {k: v[i] for k, v in a.items()}

    kw = dict(steps=3, shard_size=6, progress=False, seed=0, guidance="cfg", scale=3.0)
    m = generate(tiny_pipeline, Pairs(), {"thickness": 3.0}, out=tmp_path / "v", variant="apg", interval=(100, 900),
                 **kw)
    assert m.query["variant"] == "apg" and m.query["interval"] == [100.0, 900.0] and "apg" in m.query
    plain = generate(tiny_pipeline, Pairs(), {"thickness": 3.0}, out=tmp_path / "p", **kw)
    assert "variant" not in plain.query and "interval" not in plain.query  # a query without stays as it was
    got = load_file(tmp_path / "v" / "shard-00000.safetensors")["image"]
    ref = tiny_pipeline.counterfactual(x, a, do={"thickness": 3.0}, guidance="cfg", scale=3.0, steps=3,
                                       variant="apg", interval=(100, 900), seed=0).image
    assert (got.float() / 127.5 - 1 - ref).abs().max() < 0.02  # uint8 storage
    assert Manifest.load(tmp_path / "v").query == m.query
    with pytest.raises(ValueError, match=r"variant='cfgpp' modifies guidance, but guidance='none'"):
        generate(tiny_pipeline, Pairs(), {"thickness": 3.0}, out=tmp_path / "n", steps=2, guidance="none",
                 variant="cfgpp", progress=False)
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--guidance", "none", "--variant", "apg"], "--variant apg modifies guidance, but --guidance none"),
    (["--interval", "700,100"], "--interval '700,100' must be LO,HI with 0 <= LO < HI"),
    (["--interval", "0,4000"], "interval=(0.0, 4000.0) is outside [0, 1000]"),
])
def test_cli_generate_variant_errors(tiny_pipeline, tmp_path, args, fragment):
    from click.testing import CliRunner
    from pipeline_helpers import draw_attributes, render

    from pipeline.cli import main
    from pipeline.images import save_image

    tiny_pipeline.save(tmp_path / "pipe")
    attrs = draw_attributes(2, seed=1)
    lines = ["path,thickness,intensity,digit"]
    for k, img in enumerate(render(attrs)):
        save_image(img[None], tmp_path / f"{k}.png")
        lines.append(f"{k}.png,{float(attrs['thickness'][k]):.4f},{float(attrs['intensity'][k]):.3f},"
                     f"{int(attrs['digit'][k])}")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(main, ["generate", "--pipeline", str(tmp_path / "pipe"), "--data",
                                    f"csv:{tmp_path / 'rows.csv'}", "--do", "thickness=3", "--steps", "1",
                                    "--out", str(tmp_path / "out"), "--quiet"] + args)
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and fragment in errors[0], res.output
    assert not (tmp_path / "out").exists()
