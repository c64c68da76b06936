"""``dcfg bench inference`` on a tiny image model: every setting computes the same forward, the figures are
consistent, and a bad setting is refused before any work."""
import pytest
import torch

from diffusion import AttributeSpec, ConditionalUNet, ImageModelConfig
from pipeline.bench_inference import SETTINGS, bench_inference, random_inputs, setting_forward


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ConditionalUNet(ImageModelConfig(
        image_shape=(1, 8, 8), block_out_channels=(8, 8), attention_levels=(False, False), mid_attention=False,
        norm_num_groups=4, block_dim=4,
        attributes=(AttributeSpec("a", "continuous"), AttributeSpec("b", "categorical", cardinality=3)))).eval()


def test_settings_compute_the_same_forward_on_a_copy(model):
    x, t, attrs = random_inputs(model, 6, seed=0)
    with torch.no_grad():
        want = model.eps(x, t, attrs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("chunk-32", "channels-last", "threads-1"):
        got = setting_forward(model, SETTINGS[name])(x, t, attrs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    got = setting_forward(model, SETTINGS["bf16"])(x, t, attrs)  # bf16 autocast: close, not equal
    assert (got - want).abs().max() < 0.1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].is_contiguous() for k in before)


def test_bench_rows_and_refusals(model):
    res = bench_inference(model, rows=4, repeats=2, settings=["chunk-32", "channels-last"])
    names = [r["setting"] for r in res["rows"]]
    assert names == ["eager", "chunk-32", "channels-last"]
    base = res["rows"][0]
    assert base["speedup"] == pytest.approx(1.0)
    for r in res["rows"]:
        assert 0 < r["ms_per_image_min"] <= r["ms_per_image_median"]
        assert r["speedup"] == pytest.approx(base["ms_per_image_median"] / r["ms_per_image_median"])
    assert res["machine"]["cpu"] and res["batch"] == 4
    with pytest.raises(ValueError, match="unknown settings \\['turbo'\\]"):
        bench_inference(model, rows=4, settings=["turbo"])
