"""Tiny synthetic Morpho-like data shared by the pipeline tests (see conftest.py): the graph, attribute draws, the
square images they render to, and exact toy oracles of those images."""
from __future__ import annotations

import copy

import numpy as np
import torch

from diffusion import AttributeSpec
from pipeline.datasets import morpho_equations as eq
from pipeline.evaluation.oracles import Oracles
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


def square(t: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`render` of thickness ``t``, intensity ``i`` and digit ``y`` (of any dtype), as float32 images."""
    return render({"thickness": t.float(), "intensity": i.float(), "digit": y})


class SquareOracles(Oracles):
    """Exact toy oracles of the square images: they read thickness, intensity and ``digit % 4`` back."""

    def __init__(self, noise_e: torch.Tensor, digits: torch.Tensor, thickness: torch.Tensor):
        gen = torch.Generator().manual_seed(7)
        pool = eq.sample_noise(4000, gen)
        t = eq.thickness_from_noise(pool["u_t"])
        super().__init__(marginals={"thickness": t.clamp(1.0, 5.0), "intensity": eq.intensity_from(t, pool["e_i"])},
                         cardinality={"digit": 4})
        self.e, self.digits, self.thickness = noise_e, digits, thickness
        self.truth_calls = []

    def measure(self, images):
        x = images[:, 0]
        bright = x > -0.9
        count = bright.flatten(1).sum(1).clamp(min=1).double()
        level = torch.where(bright, x, torch.zeros_like(x)).flatten(1).sum(1).double() / count
        yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        cy = (bright * yy).flatten(1).sum(1) / count
        cx = (bright * xx).flatten(1).sum(1) / count
        quadrant = 2 * (cy > 4).long() + (cx > 4).long()
        return {"thickness": count.sqrt().numpy(), "intensity": (255 * level).numpy(), "digit": quadrant.numpy()}

    def embed(self, images):
        m = self.measure(images)
        return np.stack([m["thickness"], m["intensity"] / 50, m["digit"].astype(float),
                         images.flatten(1).std(1).double().numpy()], 1)

    def true_counterfactual(self, rows, do):
        self.truth_calls.append(sorted(do))
        rows = torch.as_tensor(rows).long()
        t = self.thickness[rows].double()
        if "thickness" in do:
            t = torch.as_tensor(do["thickness"]).double()
            i = eq.intensity_from(t, self.e[rows])
        elif "intensity" in do:
            i = torch.as_tensor(do["intensity"]).double()
        else:
            return None
        return square(t, i, self.digits[rows])


def square_toy_data(n: int = 40, seed: int = 11):
    """``(images, parents, oracles)``: ``n`` square images of Morpho-MNIST attributes with digits in 0..3 (so that
    the quadrant *is* the digit), and their exact :class:`SquareOracles`."""
    gen = torch.Generator().manual_seed(seed)
    noise = eq.sample_noise(n, gen)
    t = eq.thickness_from_noise(noise["u_t"]).float()
    i = eq.intensity_from(t, noise["e_i"]).float()
    y = torch.randint(0, 4, (n,), generator=gen)
    return square(t, i, y), {"thickness": t, "intensity": i, "digit": y}, SquareOracles(noise["e_i"], y, t)
