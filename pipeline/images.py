"""Reading and writing images for the CLI (PNG/JPEG <-> tensors in [-1, 1]), atomically.

Example:
    >>> import tempfile, os, torch
    >>> d = tempfile.mkdtemp()
    >>> x = torch.linspace(-1, 1, 28 * 28).reshape(1, 1, 28, 28)
    >>> save_image(x, os.path.join(d, "x.png"))
    >>> y = read_image(os.path.join(d, "x.png"), channels=1)
    >>> y.shape, bool((x - y).abs().max() < 1 / 127)
    (torch.Size([1, 1, 28, 28]), True)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from dcfg_io.atomic import atomic_write


def read_image(path: str | os.PathLike, channels: int = 1, size: tuple[int, int] | None = None) -> Tensor:
    """Read a PNG/JPEG as a (1, C, H, W) float tensor in [-1, 1].

    Args:
        path: the image file.
        channels: 1 (grey) or 3 (RGB). A grey file (``L``, ``LA``, ``I``, or a palette of greys) is read as grey
            and given three equal channels for an RGB pipeline; a colour file for a grey pipeline is an error
            naming both channel counts (converting would throw the colour away: do it yourself, on purpose).
        size: expected ``(H, W)``; a different size is an error (resize it yourself, on purpose).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image file {str(path)!r} is a directory, not an image file")
    if not path.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            colour = _is_colour(im)
            if channels == 1 and colour:
                raise ValueError(f"{str(path)!r} is a colour ({im.mode}, 3-channel) image, but the pipeline takes "
                                 f"grey (1-channel) images; convert it to grey first (e.g. PIL's "
                                 f"Image.convert('L')) if that is what you mean")
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a readable PNG/JPEG image ({e})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if size is not None and tuple(arr.shape[1:]) != tuple(size):
        raise ValueError(f"{str(path)!r} is {arr.shape[2]}x{arr.shape[1]} pixels, but the pipeline "
                         f"expects {size[1]}x{size[0]}; resize it first")
    return torch.from_numpy(arr.copy()).float().div(127.5).sub(1.0)[None]


def _is_colour(im: Any) -> bool:
    """Whether a PIL image holds colour: an RGB-like mode whose channels differ somewhere (a grey picture saved as
    RGB is not colour), or a palette with colours."""
    if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def to_uint8(x: Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) tensor in [-1, 1] -> uint8 array (H, W) or (H, W, C)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if x.dim() == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.numpy()


def check_png_path(path: str | os.PathLike, what: str = "image") -> Path:
    """``path`` if it names a PNG file (suffix ``.png``, any case); ``ValueError`` otherwise.

    The project writes PNG only (lossless: a counterfactual's pixels are the answer), so a path such as
    ``x.jpg`` is refused instead of getting PNG bytes under a JPEG name; convert the PNG yourself if needed.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"cannot write the {what} to {str(path)!r}: images are written as PNG only, so the name must "
                         f"end in .png (e.g. {str(path.with_suffix('.png'))!r}); convert it afterwards for another "
                         f"format")
    return path


def save_image(x: Tensor, path: str | os.PathLike, upscale: int = 1) -> None:
    """Write one image ((1, C, H, W) or (C, H, W), in [-1, 1]) as PNG, atomically; ``path`` must end in ``.png``
    (:func:`check_png_path`)."""
    from PIL import Image

    check_png_path(path)
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"save_image writes one image; got a batch of {x.shape[0]} (use save_grid)")
        x = x[0]
    im = Image.fromarray(to_uint8(x))
    if upscale > 1:
        im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    atomic_save(lambda f: im.save(f, format="PNG"), path)


def save_grid(x: Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 2) -> Path:
    """Write a batch (B, C, H, W) in [-1, 1] as one PNG grid at its own resolution, atomically: ``nrow`` images
    per row, ``padding`` white pixels between them (:func:`diffusion.grid.save_grid` with ``scale=1``); ``path``
    must end in ``.png`` (:func:`check_png_path`). Returns the path written."""
    from diffusion.grid import save_grid as tile_png

    return tile_png(x, check_png_path(path), nrow=nrow, padding=padding, scale=1)


def atomic_save(write: Callable[[Path], Any], path: str | os.PathLike) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path`` (ending in ``path``'s extension), then move
    it into place: :func:`dcfg_io.atomic.atomic_write` with its arguments the other way round."""
    atomic_write(path, write)


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing an existing one.

    The old directory is renamed aside (to ``.NAME.old-XXXX``) first and removed only after the new one is in
    place. The project's saves go through :func:`dcfg_io.folders.save_dir` instead, which also checks the target,
    fsyncs and lets loaders recover an interrupted swap.
    """
    import secrets
    import shutil

    tmp, path = Path(tmp), Path(path)
    if os.path.lexists(path):
        old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)
