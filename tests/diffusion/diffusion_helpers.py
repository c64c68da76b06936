"""Helpers shared by the diffusion tests: tiny configs and attribute batches (CPU, one thread)."""
from __future__ import annotations

import torch

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
    """A ~20k-parameter 8x8 UNet with the three toy attributes."""
    kw = dict(image_shape=(1, 8, 8), attributes=ATTRS, block_dim=4, block_out_channels=(8, 16),
              attention_levels=(False, True), mid_attention=False, attention_head_dim=8, norm_num_groups=4,
              time_embedding_dim=16)
    kw.update(overrides)
    return ImageModelConfig(**kw)


def random_attrs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"thickness": 1.0 + 3.0 * torch.rand(batch, generator=g),
            "intensity": 64.0 + 191.0 * torch.rand(batch, generator=g),
            "digit": torch.randint(0, 10, (batch,), generator=g)}
