"""Sample grids: draw images for chosen attribute values and save them as one PNG.

Example:
    >>> import tempfile, torch
    >>> from diffusion import AttributeSpec, ConditionalUNet, ImageModelConfig
    >>> net = ConditionalUNet(ImageModelConfig(image_shape=(1, 8, 8), block_out_channels=(8, 8),
    ...     attention_levels=(False, False), mid_attention=False, norm_num_groups=4, block_dim=4,
    ...     attributes=(AttributeSpec("y", "categorical", cardinality=3),)))
    >>> imgs = sample_images(net, {"y": torch.tensor([0, 1, 2])}, steps=2, seed=0)
    >>> save_grid(imgs, tempfile.mkdtemp() + "/grid.png", nrow=3).suffix
    '.png'
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from dcfg_io.atomic import atomic_write_bytes
from diffusion.ddim import ddim_sample
from diffusion.guidance import guided_eps_fn


def sample_images(model: Any, attrs: Mapping[str, Tensor], *, steps: int = 50, guidance: str = "none",
                  scale: float = 1.0, groups: Sequence[Sequence[str]] | None = None,
                  weights: Sequence[float] | None = None, seed: int | torch.Generator = 0,
                  clip_denoised: bool = False, progress: bool = False) -> Tensor:
    """Sample one image per row of ``attrs`` with DDIM from seeded noise.

    Args:
        model: a :class:`~diffusion.model.ConditionalUNet`.
        attrs: name -> ``(B,)``; attributes left out are unconditioned.
        steps: DDIM steps.
        guidance, scale, groups, weights: as in :func:`~diffusion.guidance.guided_eps_fn`.
        seed: an int seed or a ``torch.Generator`` (CPU) for the initial noise.
        clip_denoised: clamp the predicted clean image at every step (see :func:`~diffusion.ddim.ddim_sample`).
        progress: tqdm bar.

    Returns:
        Images ``(B, C, H, W)`` in [-1, 1] (clamped), on the model's device.
    """
    if not attrs:
        raise ValueError("attrs is empty: give at least one attribute (name -> (B,) tensor) to size the batch")
    batch = len(next(iter(attrs.values())))
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    device = model.device
    x_T = torch.randn((batch, *model.config.image_shape), generator=g).to(device)
    fn = guided_eps_fn(model, {k: v.to(device) for k, v in attrs.items()}, guidance, scale, groups, weights)
    with torch.no_grad():
        return ddim_sample(fn, x_T, model.alphas_cumprod, steps, clip_denoised=clip_denoised,
                           progress=progress).clamp(-1, 1)


def save_grid(images: Tensor, path: str | os.PathLike, *, nrow: int = 8, padding: int = 2, scale: int = 2) -> Path:
    """Tile ``images`` (B, C, H, W) in [-1, 1] into a PNG (atomically), ``nrow`` images per row.

    Args:
        images: 1- or 3-channel images in [-1, 1].
        path: the PNG file to write.
        nrow: images per row.
        padding: pixels between images (white).
        scale: nearest-neighbour upscaling factor, so that 28x28 digits stay legible.

    Returns:
        The path written.
    """
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    b, c, h, w = x.shape
    ncol = min(nrow, b)
    nrows = (b + ncol - 1) // ncol
    canvas = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, ncol)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        canvas[y0:y0 + h, x0:x0 + w] = x[i].permute(1, 2, 0).numpy()
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
