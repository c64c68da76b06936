"""The Dataset base of the real-data loaders: rows of (image file, attributes), read through the decoder.

:class:`ImageTable` gives :class:`~pipeline.datasets.csv_folder.ImageAttributeFolder` and
:class:`~pipeline.datasets.celeba.CelebAAttributes` the project's item format, ``(image, attributes)``: ``image`` a
float32 ``(C, H, W)`` tensor in [-1, 1] (:mod:`pipeline.datasets.decoder`) and ``attributes`` a dict name -> 0-d
tensor; ``.attributes`` (name -> ``(N,)`` tensor), ``.image_shape``, ``.node_specs()`` (a suggested
:class:`scm.CausalGraph` node spec per column) and ``__getitems__(indices)`` (the batched fetch that
``torch.utils.data.DataLoader`` and :func:`diffusion.train` call).
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from dcfg_io.checks import is_integer
from pipeline.datasets.decoder import ImageReader, to_unit_range

__all__ = ["ImageTable", "as_names", "suggest_name"]


class ImageTable(torch.utils.data.Dataset):
    """Shared behaviour: rows of (image file, attributes); subclasses fill the fields in ``__init__``."""

    paths: list[str]
    attributes: dict[str, torch.Tensor]
    kinds: dict[str, str]
    classes: dict[str, list[str]]
    image_shape: tuple[int, int, int]

    def _setup_images(self, reader: ImageReader, transform: Callable[[torch.Tensor], torch.Tensor] | None,
                      cache_in_memory: bool, progress: bool) -> None:
        from tqdm.auto import tqdm

        if transform is not None and not callable(transform):
            raise TypeError(f"transform={transform!r} must be None or a callable taking and returning the image "
                            "tensor (C, H, W), e.g. torchvision.transforms.v2.RandomHorizontalFlip()")
        self._reader = reader
        self.transform = transform
        hw = reader.fixed_hw()
        if hw is None:  # the output size depends on the files: every one must give the same
            first = None
            for row, path in enumerate(tqdm(self.paths, desc="image sizes", disable=not progress, leave=False)):
                this = reader.image_hw(path, self._where(row))
                if first is None:
                    first = (this, row)
                elif this != first[0]:
                    raise ValueError(
                        f"images differ in size: '{self.paths[first[1]]}' gives {first[0][0]}x{first[0][1]} and "
                        f"'{path}' ({self._where(row)}) gives {this[0]}x{this[1]} pixels (height x width, after "
                        f"crop={reader.crop!r}); pass size=(height, width) (or one int) to resize every image")
            hw = first[0] if first is not None else (0, 0)
        self.image_shape = (reader.channels, int(hw[0]), int(hw[1]))
        self._cache: list[np.ndarray] | None = None
        if cache_in_memory:
            self._cache = [reader.decode(path, self._where(row)) for row, path in
                           enumerate(tqdm(self.paths, desc="decode images", disable=not progress))]

    def _where(self, row: int) -> str:
        return f"row {row}"

    def verify_images(self, progress: bool = False) -> None:
        """Open every image file's header once: a missing file or one that is not an image raises an error
        naming its row (without decoding any pixels, so a training run fails before it writes anything)."""
        from tqdm.auto import tqdm

        for row, path in enumerate(tqdm(self.paths, desc="check images", disable=not progress, leave=False)):
            self._reader.image_hw(path, self._where(row))

    # ------------------------------------------------------------------ Dataset protocol
    def __len__(self) -> int:
        return len(self.paths)

    def _row(self, index: Any) -> int:
        if isinstance(index, torch.Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index)
        if not is_integer(index):
            raise TypeError(f"index {index!r} must be an integer (use __getitems__ for a list of rows)")
        n = len(self)
        row = int(index) + n if index < 0 else int(index)
        if not 0 <= row < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} rows")
        return row

    def image(self, index: int) -> torch.Tensor:
        """The image of one row: float32 ``(C, H, W)`` in [-1, 1], after ``transform``."""
        row = self._row(index)
        array = self._cache[row] if self._cache is not None else self._reader.decode(self.paths[row],
                                                                                      self._where(row))
        x = to_unit_range(array)
        return self.transform(x) if self.transform is not None else x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        row = self._row(index)
        return self.image(row), {name: values[row] for name, values in self.attributes.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Fetch several rows at once: a list of items, as ``torch.utils.data.DataLoader`` expects.

        The attributes are gathered with one index per column; the images are decoded in order.
        """
        rows = [self._row(i) for i in indices]
        index = torch.as_tensor(rows, dtype=torch.long)
        columns = {name: values[index] for name, values in self.attributes.items()}
        return [(self.image(row), {name: values[k] for name, values in columns.items()})
                for k, row in enumerate(rows)]

    # ------------------------------------------------------------------ graph helpers
    def node_specs(self, bounds: Mapping[str, tuple[float, float]] | None = None,
                   image: str | None = None) -> dict[str, dict[str, Any]]:
        """Suggest a :class:`scm.CausalGraph` node spec for every attribute column.

        Continuous columns become ``positive`` when every value is > 0, else ``real``; ``interval``
        only for the columns given in ``bounds``. Binary columns become ``binary``; categorical ones
        ``categorical`` with their cardinality (at least 2, as the graph requires).

        Args:
            bounds: ``{column: (low, high)}`` for continuous columns with a known support; every value
                must lie in ``[low, high]``.
            image: if given, also add the image node under this name, with ``shape`` = ``image_shape``.

        Returns:
            ``{name: spec}``, ready for ``CausalGraph.from_dict({"nodes": ..., "edges": ...})``.

        Raises:
            ValueError: a ``bounds`` key that is not a continuous column, ``low >= high``, values outside
                the bounds, or an ``image`` name that clashes with a column.
        """
        bounds = dict(bounds or {})
        for name, pair in bounds.items():
            if name not in self.kinds:
                raise ValueError(f"bounds has column {name!r}, which is not an attribute; attributes: "
                                 f"{list(self.kinds)}")
            if self.kinds[name] != "continuous":
                raise ValueError(f"bounds[{name!r}]: column {name!r} is {self.kinds[name]}, not continuous; "
                                 "only continuous columns take an interval")
            try:
                low, high = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise ValueError(f"bounds[{name!r}]={pair!r} must be a pair (low, high) of numbers") from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"bounds[{name!r}]=({low}, {high}) needs finite low < high")
            values = self.attributes[name]
            if len(values) and (float(values.min()) < low or float(values.max()) > high):
                raise ValueError(f"bounds[{name!r}]=({low}, {high}) does not hold: column {name!r} ranges over "
                                 f"[{float(values.min())}, {float(values.max())}]; widen the bounds")
        specs: dict[str, dict[str, Any]] = {}
        for name, kind in self.kinds.items():
            values = self.attributes[name]
            if kind == "continuous":
                if name in bounds:
                    low, high = (float(v) for v in bounds[name])
                    specs[name] = {"kind": "interval", "low": low, "high": high}
                else:
                    positive = len(values) > 0 and bool((values > 0).all())
                    specs[name] = {"kind": "positive" if positive else "real"}
            elif kind == "binary":
                specs[name] = {"kind": "binary"}
            else:
                card = len(self.classes[name]) if name in self.classes else int(values.max()) + 1 if len(values) else 0
                specs[name] = {"kind": "categorical", "cardinality": max(card, 2)}
        if image is not None:
            if image in specs:
                raise ValueError(f"image={image!r} clashes with the attribute column {image!r}; pick another name")
            specs[str(image)] = {"kind": "image", "shape": list(self.image_shape)}
        return specs


def as_names(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    try:
        names = list(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} must be None or a list of column names") from None
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"{name} holds {n!r} ({type(n).__name__}); column names must be strings")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{name} lists {duplicates} more than once; give each column once")
    return names


def suggest_name(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
