"""The image mechanism of dcfg: a conditional diffusion model decoded with decoupled classifier-free guidance.

* :class:`AttributeSpec`, :class:`ImageModelConfig`, :class:`TrainConfig`: frozen JSON configs.
* :class:`AttributeSplitEmbedding`, :class:`ConditionalUNet`: the denoiser ``eps(x_t, t, attrs, keep_mask)``.
* :func:`alphas_cumprod`: the float64 noise schedule of a config.
* :func:`ddim_sample`, :func:`ddim_invert`: deterministic DDIM over any ``eps_fn(x, t)``, float64 updates.
* :func:`cfg`, :func:`dcfg`, :func:`guided_eps_fn`: (decoupled) classifier-free guidance in one batched forward;
  the variants APG (:func:`apg_update`), CFG++ (:class:`GuidedEps`) and a guidance interval compose with both.
* :func:`native_bf16`, :func:`resolve_precision`: whether bf16 inference is native here (``precision="auto"``).
* :func:`train`: DDPM training with per-group condition dropout, EMA, atomic resumable checkpoints, DDP.
* :mod:`diffusion.grid` (``sample_images``, ``save_grid``). The benchmark ``dcfg bench diffusion`` lives in
  :mod:`pipeline.bench_diffusion`.

This package never imports ``scm`` or ``pipeline``.
"""
from diffusion.config import AttributeSpec, ImageModelConfig, TrainConfig
from diffusion.ddim import PREDICTORS, ddim_eval_timesteps, ddim_invert, ddim_invert_nfe, ddim_sample, ddim_timesteps
from diffusion.embedding import AttributeSplitEmbedding
from diffusion.guidance import (
                                APG_ETA,
                                APG_MOMENTUM,
                                APG_THRESHOLD,
                                DCFG_ANCHORS,
                                VARIANTS,
                                GuidanceParts,
                                GuidedEps,
                                apg_guidance,
                                apg_update,
                                cfg,
                                cfg_parts,
                                cfgpp_eps,
                                check_anchor,
                                check_apg,
                                check_groups,
                                check_interval,
                                check_variant,
                                dcfg,
                                dcfg_parts,
                                dcfg_rows,
                                guided_eps_fn,
                                guided_rows,
)
from diffusion.model import PRECISIONS, ConditionalUNet, native_bf16, resolve_precision
from diffusion.schedule import alphas_cumprod
from diffusion.training import TrainResult, train

__all__ = [
    "APG_ETA",
    "APG_MOMENTUM",
    "APG_THRESHOLD",
    "AttributeSpec",
    "DCFG_ANCHORS",
    "VARIANTS",
    "GuidanceParts",
    "GuidedEps",
    "PRECISIONS",
    "PREDICTORS",
    "AttributeSplitEmbedding",
    "ConditionalUNet",
    "ImageModelConfig",
    "TrainConfig",
    "TrainResult",
    "alphas_cumprod",
    "apg_guidance",
    "apg_update",
    "cfg",
    "cfg_parts",
    "cfgpp_eps",
    "check_anchor",
    "check_apg",
    "check_groups",
    "check_interval",
    "check_variant",
    "dcfg",
    "dcfg_parts",
    "dcfg_rows",
    "ddim_eval_timesteps",
    "ddim_invert",
    "ddim_invert_nfe",
    "ddim_sample",
    "ddim_timesteps",
    "guided_eps_fn",
    "guided_rows",
    "native_bf16",
    "resolve_precision",
    "train",
]
