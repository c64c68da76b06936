"""Tiny synthetic Morpho-like data shared by the pipeline tests (see conftest.py)."""
from __future__ import annotations

import copy

import torch

from diffusion import AttributeSpec
from pipeline.presets import MORPHOMNIST_GRAPH
from scm import CausalGraph

#: the image model's attributes of the tiny Morpho-like pipeline (means and stds of :func:`draw_attributes`)
TINY_ATTRIBUTES = (AttributeSpec("thickness", "continuous", mean=2.5, std=0.7),
                   AttributeSpec("intensity", "continuous", mean=160.0, std=55.0),
                   AttributeSpec("digit", "categorical", cardinality=10))


def tiny_graph() -> CausalGraph:
    g = copy.deepcopy(MORPHOMNIST_GRAPH)
    g["nodes"]["image"]["shape"] = [1, 8, 8]
    return CausalGraph.from_dict(g)


def draw_attributes(n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t = 0.5 + torch.distributions.Gamma(10.0, 5.0).sample((n,))
    e = torch.randn(n, generator=gen)
    i = 64 + 191 * torch.sigmoid(0.5 * e + 2 * t - 5)
    y = torch.randint(0, 10, (n,), generator=gen)
    return {"thickness": t, "intensity": i, "digit": y}


def render(attrs: dict[str, torch.Tensor]) -> torch.Tensor:
    t, i, y = attrs["thickness"], attrs["intensity"], attrs["digit"]
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    cy = 2.5 + 3.0 * ((y % 4) // 2).float()
    cx = 2.5 + 3.0 * ((y % 4) % 2).float()
    half = (t / 2).clamp(0.5, 2.5)
    inside = ((yy[None] - cy[:, None, None]).abs() <= half[:, None, None]) & (
        (xx[None] - cx[:, None, None]).abs() <= half[:, None, None])
    img = -1 + inside.float() * (1 + i[:, None, None] / 255.0 * 1.0)
    return img[:, None].clamp(-1, 1)
