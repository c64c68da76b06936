"""The tiny image model of the tests: one place for the sizes of the small UNet every test package builds.

:func:`tiny_unet` gives the sizes (for :func:`pipeline.train.image_model_config_for`, which takes the shape and
the attributes from a graph) and :func:`tiny_unet_config` a whole :class:`~diffusion.ImageModelConfig` of 1x8x8
images. A test that needs a variant passes what differs as keyword overrides, e.g.
``tiny_unet_config(*attributes, block_out_channels=(8, 8))``.
"""
from __future__ import annotations

from typing import Any

from diffusion import AttributeSpec, ImageModelConfig

#: two levels of 8 and 16 channels, no attention, 4 norm groups: about 20k parameters, milliseconds per forward
TINY_UNET: dict[str, Any] = dict(block_dim=4, block_out_channels=(8, 16), attention_levels=(False, False),
                                 mid_attention=False, norm_num_groups=4)


def tiny_unet(**overrides: Any) -> dict[str, Any]:
    """The tiny UNet's size keywords of :class:`ImageModelConfig`, with ``overrides`` applied."""
    return {**TINY_UNET, **overrides}


def tiny_unet_config(*attributes: AttributeSpec, image_shape: tuple[int, int, int] = (1, 8, 8),
                     **overrides: Any) -> ImageModelConfig:
    """The tiny UNet of ``image_shape`` images conditioned on ``attributes``, with ``overrides`` applied."""
    return ImageModelConfig(image_shape=image_shape, attributes=attributes, **tiny_unet(**overrides))
