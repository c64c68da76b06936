"""Sample grids: seeded sampling and the PNG layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusion_helpers import tiny_config
from PIL import Image

from diffusion import ConditionalUNet
from diffusion.grid import sample_images, save_grid


def test_sample_images_is_seeded():
    net = ConditionalUNet(tiny_config()).eval()
    attrs = {"digit": torch.tensor([0, 5, 9])}
    a = sample_images(net, attrs, steps=3, seed=1)
    assert a.shape == (3, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, sample_images(net, attrs, steps=3, seed=1))
    assert not torch.equal(a, sample_images(net, attrs, steps=3, seed=2))
    with pytest.raises(ValueError, match="attrs is empty"):
        sample_images(net, {}, steps=3)


def test_save_grid_layout(tmp_path):
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 1.0, 0.0)])
    path = save_grid(images, tmp_path / "g.png", nrow=2, padding=1, scale=1)
    png = np.asarray(Image.open(path))
    assert png.shape == (2 * 5 + 1, 2 * 5 + 1)
    assert (png[1:5, 1:5] == 0).all() and (png[1:5, 6:10] == 255).all() and (png[6:10, 1:5] == 128).all()
    assert (png[0] == 255).all()  # white padding
    with pytest.raises(ValueError, match=r"images must be \(B, 1 or 3, H, W\)"):
        save_grid(torch.zeros(2, 2, 4, 4), tmp_path / "bad.png")
