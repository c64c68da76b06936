"""Colour Morpho-MNIST: the renderer against the equations, exact ground-truth counterfactuals, and bad do values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.datasets import MorphoColour
from pipeline.datasets import colour_equations as ceq
from pipeline.morphometry.colour import measure_background, measure_hue, saturation

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> MorphoColour:
    return MorphoColour("test", samples_per_digit=1, seed=3, attribute_sampling="scm", max_sources=20,
                        cache_dir=tmp_path_factory.mktemp("cache"), n_jobs=1, progress=False)


def test_equations_have_exact_inverses():
    g = torch.Generator().manual_seed(0)
    noise = ceq.sample_noise(500, g)
    digits = torch.randint(0, 10, (500,), generator=g)
    a = ceq.attributes_from_noise(digits, noise)
    torch.testing.assert_close(ceq.noise_from_slant(digits, a["slant"]), noise["e_s"], atol=1e-9, rtol=0)
    torch.testing.assert_close(ceq.noise_from_hue(a["hue"]), noise["e_h"], atol=1e-7, rtol=0)
    torch.testing.assert_close(ceq.noise_from_background(a["hue"], a["background"]), noise["e_b"], atol=1e-7, rtol=0)
    lo, hi = ceq.HUE_RANGE
    assert float(a["hue"].min()) > lo and float(a["hue"].max()) < hi
    assert float(a["background"].min()) > 0 and float(a["background"].max()) < 0.35


def test_renderer_matches_the_equations(data):
    """Hue and background are read back exactly; the saturation is the Morpho grey digit (its morphometry)."""
    from pipeline.morphometry import measure

    x, a = data.images, data.attributes
    np.testing.assert_allclose(measure_hue(x), a["hue"].numpy(), atol=1e-5)
    np.testing.assert_allclose(measure_background(x), a["background"].numpy(), atol=1e-5)
    m = measure(saturation(x), n_jobs=1, value_range=(-1.0, 1.0))
    assert np.median(np.abs(m["thickness"] - a["thickness"].numpy())) < 0.25
    assert np.median(np.abs(m["intensity"] - a["intensity"].numpy())) < 6.0
    assert np.median(np.abs(m["slant"] - a["slant"].numpy())) < 0.05
    # the stroke's maximum channel is the intensity; the background pixels' channels are all b
    x01 = (x + 1) / 2
    corner = x01[:, :, 0, 0]
    torch.testing.assert_close(corner, a["background"][:, None].expand(-1, 3).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("node", ["slant", "thickness", "intensity", "hue", "background"])
def test_do_own_value_returns_the_image_itself(data, node):
    rows = torch.arange(len(data))
    noise = data.noise_of(rows)
    attrs, images = data.true_counterfactual(noise, {node: data.attributes[node].double()})
    torch.testing.assert_close(images, data.images, atol=1e-5, rtol=0)
    for k in ("slant", "thickness", "intensity", "hue", "background"):
        torch.testing.assert_close(attrs[k].double(), data.attributes[k].double(), atol=1e-5, rtol=1e-6)


def test_do_hue_moves_the_background_and_keeps_the_coverage(data):
    rows = torch.arange(len(data))
    noise = data.noise_of(rows)
    new_hue = torch.where(data.attributes["hue"] < 0.375, 0.6, 0.15).double()
    attrs, images = data.true_counterfactual(noise, {"hue": new_hue})
    assert (attrs["background"] - data.attributes["background"]).abs().min() > 1e-4  # through b's equation
    np.testing.assert_allclose(measure_hue(images), new_hue.numpy(), atol=1e-5)

    def coverage(x, i):
        return ((saturation(x) + 1) / 2) / (i[:, None, None, None].float() / 255)

    torch.testing.assert_close(coverage(images, attrs["intensity"]),
                               coverage(data.images, data.attributes["intensity"]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("do, fragment", [({"hue": 0.8}, "hue"), ({"hue": 0.01}, "hue"),
                                          ({"background": -0.1}, "background")])
def test_bad_do_values_name_the_node_and_its_range(data, do, fragment):
    noise = data.noise_of(torch.arange(2))
    with pytest.raises(ValueError, match=fragment) as info:
        data.true_counterfactual(noise, do)
    lo, hi = {"hue": ceq.HUE_RANGE, "background": ceq.BACKGROUND_RANGE}[fragment]
    assert f"{lo:g}" in str(info.value) and f"{hi:g}" in str(info.value)


@pytest.mark.parametrize("do, fragment", [({"hue": 0.8}, "hue"), ({"background": -0.1}, "background")])
def test_bad_do_values_in_the_scm(do, fragment):
    """The pipeline's SCM over the colour graph refuses the same values, naming the node and its support."""
    from pipeline.presets import morpho_colour_graph
    from scm import SCM

    scm = SCM(morpho_colour_graph())
    g = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 10, (64,), generator=g)
    obs = {k: (v if k == "digit" else v.float()) for k, v in
           ceq.attributes_from_noise(digits, ceq.sample_noise(64, g)).items()}
    obs["digit"] = digits
    u = scm.abduct({k: v[:2] for k, v in obs.items()})
    with pytest.raises(ValueError, match=fragment) as info:
        scm.predict(u, do={k: torch.full((2,), v) for k, v in do.items()})
    assert "0.05" in str(info.value) or "0.35" in str(info.value) or "0" in str(info.value)
