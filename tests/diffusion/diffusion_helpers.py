"""Helpers shared by the diffusion tests: tiny configs and attribute batches (CPU, one thread)."""
from __future__ import annotations

import torch
from tiny_unet import tiny_unet_config

from diffusion import AttributeSpec, ImageModelConfig

torch.set_num_threads(1)

# The toy attribute set mirrors Morpho-MNIST's image parents:
#   thickness (continuous) ─┐
#   intensity (continuous) ─┼─> image
#   digit (categorical)   ──┘
ATTRS = (
    AttributeSpec("thickness", "continuous", mean=2.5, std=1.0),
    AttributeSpec("intensity", "continuous", mean=150.0, std=50.0),
    AttributeSpec("digit", "categorical", cardinality=10),
)


def tiny_config(**overrides) -> ImageModelConfig:
    """The tiny UNet (tests/tiny_unet.py) on the three toy attributes, with attention at its second level."""
    attributes = overrides.pop("attributes", ATTRS)
    return tiny_unet_config(*attributes, **{"attention_levels": (False, True), "time_embedding_dim": 16, **overrides})


def random_attrs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"thickness": 1.0 + 3.0 * torch.rand(batch, generator=g),
            "intensity": 64.0 + 191.0 * torch.rand(batch, generator=g),
            "digit": torch.randint(0, 10, (batch,), generator=g)}


class ToyImages(torch.utils.data.Dataset):
    """Deterministic toy data: a bright square whose size follows ``thickness`` and brightness ``intensity``,
    placed in a quadrant chosen by ``digit``; items are ``(image (1, 8, 8) in [-1, 1], attrs)``."""

    def __init__(self, n: int = 20, seed: int = 0, size: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        self.attrs = random_attrs(n, seed)
        self.images = torch.full((n, 1, size, size), -1.0)
        for i in range(n):
            s = int(self.attrs["thickness"][i].round())
            q = int(self.attrs["digit"][i]) % 4
            r0, c0 = (q // 2) * size // 2, (q % 2) * size // 2
            level = float(self.attrs["intensity"][i]) / 127.5 - 1.0
            self.images[i, 0, r0:r0 + s, c0:c0 + s] = level
        self.images += 0.01 * torch.randn(self.images.shape, generator=g)
        self.images.clamp_(-1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], {k: v[i] for k, v in self.attrs.items()}
