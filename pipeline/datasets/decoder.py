"""The image decoder of the real-data loaders: one image file -> a ``(C, H, W)`` array (decode, crop, resize).

Images are read with Pillow, in this order:

1. **Decode** (PNG, JPEG or anything else Pillow opens). 8-bit images are converted to ``"L"`` (grey,
   ITU-R 601-2 luma) or ``"RGB"``; an alpha channel is dropped. 16-bit grey images (Pillow modes
   ``I;16*`` and ``I``, as in many MIMIC-CXR / EMBED PNG exports) keep their depth: they are scaled by
   1/65535 (clipped to [0, 1]) and, for ``channels=3``, repeated over the three channels.
2. **Crop**, on the decoded image at its own resolution: ``None`` (none), ``"center"`` (the largest
   centred square) or ``(h, w)`` (a centred ``h x w`` window, top-left corner at
   ``((H - h) // 2, (W - w) // 2)``).
3. **Resize** to ``size`` with Pillow's convolution resampling (``interpolation``, default
   ``"bilinear"``), which antialiases when shrinking, like torchvision's ``Resize(antialias=True)``.
   A non-square crop resized to a square ``size`` is stretched.
4. **Scale** 0..255 to [-1, 1] (``x / 127.5 - 1``, :func:`to_unit_range`); then ``transform`` (if any) is
   applied to the tensor.

Nothing here downloads or unpickles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from dcfg_io.checks import is_integer

__all__ = ["ImageReader", "DataNotFoundError", "INTERPOLATIONS", "parse_pair", "to_unit_range"]

#: ``interpolation`` names and their Pillow resampling filters.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class DataNotFoundError(FileNotFoundError, ValueError):
    """A data file or folder is missing. Both a ``FileNotFoundError`` and a ``ValueError`` (a user error)."""


def parse_pair(value: Any, name: str, allow: tuple[str, ...] = ()) -> tuple[int, int] | str | None:
    """``None``, one of ``allow``, a positive int ``s`` (-> ``(s, s)``) or a pair of positive ints ``(h, w)``."""
    if value is None or (isinstance(value, str) and value in allow):
        return value
    extra = "".join(f", {a!r}" for a in allow)
    hint = f"use None{extra}, a positive int, or a pair (height, width) of positive ints"
    if is_integer(value):
        value = (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            is_integer(v) for v in value):
        h, w = int(value[0]), int(value[1])
        if h >= 1 and w >= 1:
            return (h, w)
    raise ValueError(f"{name}={value!r} is not allowed: {hint}")


@dataclass(frozen=True)
class ImageReader:
    """Decode -> crop -> resize one image file (see the module docstring)."""

    channels: int
    size: tuple[int, int] | None
    crop: str | tuple[int, int] | None
    interpolation: str

    @classmethod
    def build(cls, channels: Any, size: Any, crop: Any, interpolation: Any) -> "ImageReader":
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"channels={channels!r} is not allowed: use 1 (grey) or 3 (RGB)")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r} is not allowed: use one of {list(INTERPOLATIONS)}")
        return cls(int(channels), parse_pair(size, "size"), parse_pair(crop, "crop", ("center",)), str(interpolation))

    def fixed_hw(self) -> tuple[int, int] | None:
        """The output (H, W) when the arguments alone fix it, else ``None`` (the files must be read)."""
        if self.size is not None:
            return self.size
        if isinstance(self.crop, tuple):
            return self.crop
        return None

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """The output (H, W) of an image of ``height x width`` pixels."""
        fixed = self.fixed_hw()
        if fixed is not None:
            return fixed
        if self.crop == "center":
            side = min(height, width)
            return side, side
        return height, width

    def decode(self, path: str, where: str) -> np.ndarray:
        """Read ``path``; returns ``(C, H, W)``: ``uint8`` on 0..255 or ``float32`` on [0, 1] (16-bit sources)."""
        try:
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                if mode in _HIGH_DEPTH_MODES:
                    depth16 = np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
                    image = Image.fromarray(depth16)
                elif mode == "F":
                    raise ValueError("32-bit float images (Pillow mode 'F') are not supported")
                else:
                    image = img.convert("L" if self.channels == 1 else "RGB")
        except FileNotFoundError as exc:
            raise DataNotFoundError(f"{where}: image file '{path}' does not exist; check image_dir and the "
                                    "row's path") from exc
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{where}: cannot read image '{path}' ({exc}); the file is not a readable PNG/JPEG "
                             "(corrupted, truncated or another format): replace it or drop the row") from exc
        width, height = image.size
        if self.crop is not None:
            ch, cw = (min(height, width),) * 2 if self.crop == "center" else self.crop
            if ch > height or cw > width:
                raise ValueError(f"{where}: crop={self.crop} (height, width) is larger than image '{path}' "
                                 f"({height}x{width} pixels); use a crop of at most ({height}, {width}) or "
                                 "crop='center'")
            top, left = (height - ch) // 2, (width - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))
        if self.size is not None and (image.size[1], image.size[0]) != self.size:
            image = image.resize((self.size[1], self.size[0]), resample=INTERPOLATIONS[self.interpolation])
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[None], self.channels, axis=0)
        else:
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array)

    def image_hw(self, path: str, where: str) -> tuple[int, int]:
        """The output (H, W) of one file, from its header only."""
        try:
            with Image.open(path) as img:
                width, height = img.size
        except FileNotFoundError as exc:
            raise DataNotFoundError(f"{where}: image file '{path}' does not exist") from exc
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{where}: cannot read image '{path}' ({exc}); the file is not a readable PNG/JPEG "
                             "(corrupted, truncated or another format): replace it or drop the row") from exc
        return self.output_hw(height, width)


def to_unit_range(array: np.ndarray) -> torch.Tensor:
    """A decoded array as float32 on [-1, 1]: ``uint8`` by ``x / 127.5 - 1``, [0, 1] floats by ``2 x - 1``."""
    x = torch.from_numpy(np.array(array, copy=True))
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float() * 2.0 - 1.0
