"""The image mechanism of dcfg: a conditional diffusion model decoded with decoupled classifier-free guidance.

* :class:`AttributeSpec`, :class:`ImageModelConfig`, :class:`TrainConfig`: frozen JSON configs.
* :class:`AttributeSplitEmbedding`, :class:`ConditionalUNet`: the denoiser ``eps(x_t, t, attrs, keep_mask)``.
* :func:`alphas_cumprod`: the float64 noise schedule of a config.
* :func:`train`: DDPM training with per-group condition dropout, EMA, atomic resumable checkpoints, DDP.

This package never imports ``scm`` or ``pipeline``.
"""
from diffusion.config import AttributeSpec, ImageModelConfig, TrainConfig
from diffusion.embedding import AttributeSplitEmbedding
from diffusion.model import ConditionalUNet
from diffusion.schedule import alphas_cumprod
from diffusion.training import TrainResult, train

__all__ = [
    "AttributeSpec",
    "AttributeSplitEmbedding",
    "ConditionalUNet",
    "ImageModelConfig",
    "TrainConfig",
    "TrainResult",
    "alphas_cumprod",
    "train",
]
