"""ConditionalUNet: the eps() contract, masking through the backbone, save/load without pickle."""
from __future__ import annotations

import json
import os

import pytest
import torch
from diffusion_helpers import random_attrs, tiny_config

from diffusion import ConditionalUNet
from diffusion.schedule import alphas_cumprod


@pytest.fixture
def net(config):
    torch.manual_seed(0)
    return ConditionalUNet(config).eval()


def test_eps_shape_dtype_and_conditioning(net):
    x = torch.randn(4, 1, 8, 8)
    attrs = random_attrs(4)
    e = net.eps(x, torch.tensor([0, 10, 500, 999]), attrs)
    assert e.shape == x.shape and e.dtype == x.dtype
    # scalar t broadcasts
    torch.testing.assert_close(net.eps(x, 500, attrs), net.eps(x, torch.full((4,), 500), attrs))
    # the condition matters: a different digit changes the prediction
    other = dict(attrs, digit=(attrs["digit"] + 1) % 10)
    assert not torch.allclose(net.eps(x, 500, attrs), net.eps(x, 500, other))


def test_missing_attribute_equals_masked(net):
    x, attrs = torch.randn(3, 1, 8, 8), random_attrs(3)
    masked = net.eps(x, 100, attrs, {"digit": torch.zeros(3, dtype=torch.bool)})
    missing = net.eps(x, 100, {k: v for k, v in attrs.items() if k != "digit"})
    torch.testing.assert_close(masked, missing, rtol=0, atol=0)
    torch.testing.assert_close(net.eps(x, 100, attrs, None),
                               net.eps(x, 100, attrs, {k: torch.ones(3, dtype=torch.bool) for k in attrs}))


def test_null_condition_ignores_attribute_values(net):
    x = torch.randn(3, 1, 8, 8)
    off = {k: torch.zeros(3, dtype=torch.bool) for k in ("thickness", "intensity", "digit")}
    a, b = random_attrs(3, seed=1), random_attrs(3, seed=2)
    torch.testing.assert_close(net.eps(x, 7, a, off), net.eps(x, 7, b, off), rtol=0, atol=0)
    torch.testing.assert_close(net.eps(x, 7, a, off), net.eps(x, 7, {}), rtol=0, atol=0)


def test_rows_are_independent(net):
    """Masking row 0 must not change row 1's prediction (no batch coupling)."""
    x, attrs = torch.randn(2, 1, 8, 8), random_attrs(2)
    mask = {"digit": torch.tensor([False, True])}
    torch.testing.assert_close(net.eps(x, 5, attrs, mask)[1], net.eps(x, 5, attrs)[1], rtol=1e-5, atol=1e-6)


def test_alphas_cumprod_buffer(net, config):
    assert net.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(net.alphas_cumprod, alphas_cumprod(config), rtol=0, atol=0)


@pytest.mark.parametrize("x_shape, t, exc, match", [
    ((2, 1, 9, 8), 3, ValueError, r"expected \(B, 1, 8, 8\)"),
    ((2, 1, 8, 8), 1000, ValueError, r"timesteps must lie in \[0, 999\]"),
    ((2, 1, 8, 8), 0.5, TypeError, "timesteps t must be integers"),
    ((2, 1, 8, 8), torch.tensor([1, 2, 3]), ValueError, r"expected \(\) or \(2,\)"),
])
def test_eps_input_errors(net, x_shape, t, exc, match):
    with pytest.raises(exc, match=match):
        net.eps(torch.zeros(x_shape), t, random_attrs(2))


def test_save_load_round_trip(net, tmp_path):
    d = net.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    back = ConditionalUNet.from_pretrained(d)
    assert back.config == net.config
    x, attrs = torch.randn(2, 1, 8, 8), random_attrs(2)
    torch.testing.assert_close(back.eps(x, 3, attrs), net.eps(x, 3, attrs), rtol=0, atol=0)


def test_load_rejects_mismatched_config(net, tmp_path):
    d = net.save_pretrained(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["block_dim"] = 6
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match the config.*mis-shaped"):
        ConditionalUNet.from_pretrained(d)


def test_load_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ConditionalUNet.from_pretrained(tmp_path)


def test_unconditional_model_rejects_attributes():
    net = ConditionalUNet(tiny_config(attributes=()))
    x = torch.randn(2, 1, 8, 8)
    assert net.eps(x, 1).shape == x.shape
    with pytest.raises(ValueError, match="unknown attributes"):
        net.eps(x, 1, {"digit": torch.tensor([1, 2])})


def test_default_config_is_about_one_million_parameters():
    from diffusion_helpers import ATTRS

    from diffusion import ImageModelConfig
    n = sum(p.numel() for p in ConditionalUNet(ImageModelConfig(attributes=ATTRS)).parameters())
    assert 0.9e6 < n < 1.3e6


def test_cpu_micro_batching_changes_nothing_but_speed(net):
    x, attrs = torch.randn(10, 1, 8, 8), random_attrs(10)
    mask = {"digit": torch.arange(10) % 2 == 0}
    t = torch.arange(10) * 99
    with torch.no_grad():
        net.cpu_chunk_size = None
        whole = net.eps(x, t, attrs, mask)
        net.cpu_chunk_size = 4
        chunked = net.eps(x, t, attrs, mask)
        net.cpu_chunk_size = 64
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_inference_settings_keep_the_weights_and_bf16_stays_close():
    """set_inference changes neither the state dict nor training-mode calls; bf16 inference stays within a few
    percent of fp32; bad settings are refused."""
    torch.manual_seed(0)
    net = ConditionalUNet(tiny_config()).eval()
    keys = sorted(net.state_dict())
    x, t, attrs = torch.randn(3, 1, 8, 8), torch.tensor([5, 400, 900]), random_attrs(3)
    with torch.no_grad():
        ref = net.eps(x, t, attrs)
        net.set_inference(precision="bf16")
        assert net.inference_settings == {"precision": "bf16", "compile": False}
        low = net.eps(x, t, attrs)
    assert low.dtype == ref.dtype and sorted(net.state_dict()) == keys
    assert not torch.equal(low, ref)
    assert float((low - ref).norm() / ref.norm()) < 0.05
    with torch.enable_grad():  # training calls are never autocast
        torch.testing.assert_close(net.eps(x, t, attrs), ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(net.set_inference().eps(x, t, attrs), ref, rtol=0, atol=0)
    for kw, match in ((dict(precision="fp16"), r"precision='fp16' must be one of \('auto', 'fp32', 'bf16'\)"),
                      (dict(compile="yes"), "compile='yes' must be True or False")):
        with pytest.raises(ValueError, match=match):
            net.set_inference(**kw)


def test_auto_precision_follows_the_hardware_probe(monkeypatch):
    """precision='auto' is bf16 exactly where the CPU reports AMX or AVX512-BF16 units, fp32 otherwise."""
    import diffusion.model as dm

    net = ConditionalUNet(tiny_config()).eval()
    for amx, avx, want in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v, raising=False)
        assert dm.native_bf16("cpu") is (want == "bf16")
        assert dm.resolve_precision("auto") == want
        assert net.set_inference(precision="auto").inference_settings["precision"] == want
        assert dm.resolve_precision("fp32") == "fp32" and dm.resolve_precision("bf16") == "bf16"

    def broken():
        raise RuntimeError("probe failed")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert dm.native_bf16("cpu") is False
    assert dm.native_bf16("meta") is False


@pytest.mark.slow
def test_compiled_inference_matches_eager():
    """torch.compile (inductor, CPU) with micro-batches padded to one shape gives eager's numbers."""
    torch.manual_seed(0)
    net = ConditionalUNet(tiny_config()).eval()
    net.cpu_chunk_size = 4
    x, t, attrs = torch.randn(7, 1, 8, 8), torch.full((7,), 300), random_attrs(7)
    with torch.no_grad():
        ref = net.eps(x, t, attrs)
        out = net.set_inference(compile=True).eps(x, t, attrs)  # 4 + 3 rows: the second part is padded
        torch.testing.assert_close(net.eps(x[:5], t[:5], {k: v[:5] for k, v in attrs.items()}), ref[:5],
                                   rtol=1e-4, atol=1e-5)  # 4 + 1 rows: the remainder runs eagerly
    assert net.inference_settings["compile"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
