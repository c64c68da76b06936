"""Real-data loaders: any folder of images with a CSV of attributes, and a local copy of CelebA.

Both yield the project's item format, ``(image, attributes)``: ``image`` a float32 ``(C, H, W)`` tensor in
[-1, 1] and ``attributes`` a dict name -> 0-d tensor (``float32`` for continuous columns, ``int64`` class
indices for binary and categorical ones). Both expose ``.attributes`` (name -> ``(N,)`` tensor),
``.image_shape``, ``.node_specs()`` (a suggested :class:`scm.CausalGraph` node spec per column) and
``__getitems__(indices)`` (the batched fetch that ``torch.utils.data.DataLoader`` and
:func:`diffusion.train` call).

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
4. **Scale** 0..255 to [-1, 1] (``x / 127.5 - 1``); then ``transform`` (if any) is applied to the tensor.

Nothing here downloads or unpickles.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageAttributeFolder", "CelebAAttributes", "DataNotFoundError", "IMAGE_COLUMN_CANDIDATES",
           "INTERPOLATIONS", "MAX_CLASSES", "CELEBA_FILES"]

#: Column names tried, in this order, when ``image_column`` is not given.
IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("path", "filename", "file", "image", "image_path", "image_id", "img")
#: Default limit on the classes of one categorical column (an ID column is the usual culprit).
MAX_CLASSES = 1000
#: ``interpolation`` names and their Pillow resampling filters.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
#: The annotation files that ``torchvision.datasets.CelebA`` reads, next to the ``img_align_celeba/`` folder.
CELEBA_FILES: tuple[str, ...] = ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt",
                                 "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt")
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class DataNotFoundError(FileNotFoundError, ValueError):
    """A data file or folder is missing. Both a ``FileNotFoundError`` and a ``ValueError`` (a user error)."""


# ---------------------------------------------------------------------------------------------------- images
def _pair(value: Any, name: str, allow: tuple[str, ...] = ()) -> tuple[int, int] | str | None:
    """``None``, one of ``allow``, a positive int ``s`` (-> ``(s, s)``) or a pair of positive ints ``(h, w)``."""
    if value is None or (isinstance(value, str) and value in allow):
        return value
    extra = "".join(f", {a!r}" for a in allow)
    hint = f"use None{extra}, a positive int, or a pair (height, width) of positive ints"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        h, w = int(value[0]), int(value[1])
        if h >= 1 and w >= 1:
            return (h, w)
    raise ValueError(f"{name}={value!r} is not allowed: {hint}")


@dataclass(frozen=True)
class _ImageReader:
    """Decode -> crop -> resize one image file (see the module docstring)."""

    channels: int
    size: tuple[int, int] | None
    crop: str | tuple[int, int] | None
    interpolation: str

    @classmethod
    def build(cls, channels: Any, size: Any, crop: Any, interpolation: Any) -> "_ImageReader":
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"channels={channels!r} is not allowed: use 1 (grey) or 3 (RGB)")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r} is not allowed: use one of {list(INTERPOLATIONS)}")
        return cls(int(channels), _pair(size, "size"), _pair(crop, "crop", ("center",)), str(interpolation))

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


def _to_unit_range(array: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(array, copy=True))
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float() * 2.0 - 1.0


class _ImageTable(torch.utils.data.Dataset):
    """Shared behaviour: rows of (image file, attributes); subclasses fill the fields in ``__init__``."""

    paths: list[str]
    attributes: dict[str, torch.Tensor]
    kinds: dict[str, str]
    classes: dict[str, list[str]]
    image_shape: tuple[int, int, int]

    def _setup_images(self, reader: _ImageReader, transform: Callable[[torch.Tensor], torch.Tensor] | None,
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
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
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
        x = _to_unit_range(array)
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


# ---------------------------------------------------------------------------------------------------- CSV folder
def _as_names(value: Any, name: str) -> list[str]:
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


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ImageAttributeFolder(_ImageTable):
    """A folder of images plus a CSV table of attributes, one row per image (CelebA-, MIMIC-CXR- or EMBED-style).

    Items are ``(image, attributes)``: ``image`` float32 ``(channels, H, W)`` in [-1, 1] (decoded,
    cropped and resized as the module docstring says) and ``attributes`` a dict column -> 0-d tensor.

    How a column's type is decided (after ``columns`` picks the attribute columns):

    * listed in ``categorical``: ``int64`` class indices. A string column maps to its sorted distinct
      values (``.classes[name]``, index = position); an integer (or integral float, or boolean) column
      keeps its values, which must be >= 0 (the cardinality is then ``max + 1``).
    * listed in ``continuous``: ``float32`` (booleans become 0.0 / 1.0; strings are an error).
    * otherwise: booleans -> ``binary`` (0/1 ``int64``); strings -> ``categorical`` as above; numbers that
      are all 0 or 1 -> ``binary``; other numbers -> ``continuous`` ``float32``.

    ``.kinds[name]`` records the decision (``"continuous"``, ``"binary"`` or ``"categorical"``).

    Args:
        csv: the CSV file (or a ``pandas.DataFrame``), one row per image, with a header.
        image_dir: the folder the image column's paths are relative to (absolute paths are used as they are).
        columns: the attribute columns; ``None`` = every column but the image column. Other columns are ignored.
        image_column: the column holding the image paths; ``None`` picks the first of
            :data:`IMAGE_COLUMN_CANDIDATES` present (an error if none, or several, are).
        size: output size, one int or ``(height, width)``; ``None`` keeps the (cropped) size, which must
            then be the same for every image.
        crop: ``None``, ``"center"`` (largest centred square) or ``(height, width)`` / one int (centred
            window), taken before resizing.
        channels: 1 (grey) or 3 (RGB).
        categorical: columns to read as categorical class indices.
        continuous: columns to read as continuous ``float32``.
        interpolation: resampling filter of the resize: one of :data:`INTERPOLATIONS`.
        transform: a callable applied to each image tensor ``(C, H, W)`` after scaling to [-1, 1]
            (e.g. a ``torchvision.transforms.v2`` augmentation); not cached.
        cache_in_memory: decode every image once at construction and keep it (``uint8``, or ``float32``
            for 16-bit sources); each DataLoader worker process holds its own copy.
        max_classes: the most classes a categorical column may have.
        split: keep only the rows whose ``split_column`` equals this text (e.g. ``"train"``); error messages still
            name the rows and lines of the whole table.
        split_column: the column that ``split`` reads (never an attribute).
        progress: show tqdm bars while scanning or caching images.

    Attributes:
        attributes: column -> ``(N,)`` tensor (``float32`` continuous, ``int64`` binary / categorical).
        kinds: column -> ``"continuous"`` | ``"binary"`` | ``"categorical"``.
        classes: column -> sorted class names, for categorical string columns.
        paths: the image file of every row.
        image_shape: ``(channels, H, W)`` of every item.

    Raises:
        DataNotFoundError: the CSV, the image folder or a row's image file is missing (the message names the row).
        ValueError: an unknown or missing column, a NaN, a bad categorical column (negative, non-integer,
            more than ``max_classes`` classes), a string column forced continuous, an unreadable image, images
            of different sizes without ``size``, or a bad argument.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for k in range(3):
        ...     Image.fromarray(np.full((6, 8, 3), 40 * k, np.uint8)).save(os.path.join(root, f"{k}.png"))
        >>> _ = open(os.path.join(root, "attrs.csv"), "w").write(
        ...     "path,age,sex\\n0.png,61.5,F\\n1.png,47.0,M\\n2.png,70.2,F\\n")
        >>> ds = ImageAttributeFolder(os.path.join(root, "attrs.csv"), root, size=4, channels=3, progress=False)
        >>> image, attrs = ds[1]
        >>> image.shape, ds.classes["sex"], attrs["sex"].item()
        (torch.Size([3, 4, 4]), ['F', 'M'], 1)
        >>> ds.node_specs(image="image")["age"], ds.node_specs()["sex"]
        ({'kind': 'positive'}, {'kind': 'categorical', 'cardinality': 2})
    """

    def __init__(self, csv: str | os.PathLike | Any, image_dir: str | os.PathLike,
                 columns: Sequence[str] | None = None, image_column: str | None = None,
                 size: int | tuple[int, int] | None = None, crop: str | int | tuple[int, int] | None = None,
                 channels: int = 1, categorical: Iterable[str] | None = None,
                 continuous: Iterable[str] | None = None, interpolation: str = "bilinear",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, cache_in_memory: bool = False,
                 max_classes: int = MAX_CLASSES, split: str | None = None, split_column: str = "split",
                 progress: bool = True) -> None:
        import pandas as pd

        reader = _ImageReader.build(channels, size, crop, interpolation)
        if isinstance(max_classes, bool) or not isinstance(max_classes, (int, np.integer)) or max_classes < 2:
            raise ValueError(f"max_classes={max_classes!r} must be an integer >= 2")
        # 1. the table
        if isinstance(csv, pd.DataFrame):
            frame, self.source = csv.reset_index(drop=True), "<DataFrame>"
        else:
            csv_path = Path(os.path.expanduser(str(csv)))
            self.source = str(csv_path)
            if not csv_path.is_file():
                raise DataNotFoundError(f"CSV file '{csv_path}' does not exist; pass the path of the attribute "
                                        "table (one row per image, with a header)")
            try:
                frame = pd.read_csv(csv_path)
            except Exception as exc:  # pandas raises several parser error types
                raise ValueError(f"{csv_path}: cannot be parsed as CSV ({exc})") from exc
        if len(frame) == 0:
            raise ValueError(f"{self.source}: the table has no rows; it needs one row per image")
        frame.columns = [str(c) for c in frame.columns]
        self._lines = None  # the table row of each kept row, when split= keeps a subset
        if split is not None:
            if split_column not in frame.columns:
                raise ValueError(f"{self.source} has no column {split_column!r}, so split={split!r} cannot pick its "
                                 f"rows; add a {split_column!r} column (e.g. train / test) or give one CSV per split")
            keep = (frame[split_column].astype(str).str.strip() == str(split)).to_numpy()
            if not keep.any():
                values = sorted(set(frame[split_column].astype(str).str.strip()))[:8]
                raise ValueError(f"{self.source}: no row has {split_column}={split!r}; its values are {values}")
            self._lines = np.flatnonzero(keep)
            frame = frame[keep].reset_index(drop=True)
        self.split = split
        image_dir = Path(os.path.expanduser(str(image_dir)))
        if not image_dir.is_dir():
            raise DataNotFoundError(f"image folder '{image_dir}' does not exist; pass the folder that the paths "
                                    f"in {self.source} are relative to")
        self.image_dir = str(image_dir)
        # 2. the columns
        self.image_column = self._image_column(frame, image_column)
        available = [c for c in frame.columns if c != self.image_column and not (split is not None
                                                                                  and c == split_column)]
        chosen = _as_names(columns, "columns") if columns is not None else available
        for name in chosen:
            if name == self.image_column:
                raise ValueError(f"columns lists the image column {name!r}; it holds the image paths, not an "
                                 "attribute: leave it out")
            if name not in frame.columns:
                raise ValueError(f"column {name!r} is not in {self.source}{_suggest(name, available)}; "
                                 f"available columns: {available}")
        if not chosen:
            raise ValueError(f"no attribute columns: {self.source} has only the image column "
                             f"{self.image_column!r}; add attribute columns to the table")
        forced_cat = _as_names(categorical, "categorical")
        forced_cont = _as_names(continuous, "continuous")
        for label, names in (("categorical", forced_cat), ("continuous", forced_cont)):
            for name in names:
                if name not in chosen:
                    raise ValueError(f"{label} lists {name!r}, which is not an attribute column"
                                     f"{_suggest(name, chosen)}; attribute columns: {chosen}")
        both = sorted(set(forced_cat) & set(forced_cont))
        if both:
            raise ValueError(f"column(s) {both} are listed both as categorical and as continuous; pick one")
        # 3. the attributes, column by column
        self.columns = list(chosen)
        self.attributes, self.kinds, self.classes = {}, {}, {}
        for name in self.columns:
            force = "categorical" if name in forced_cat else "continuous" if name in forced_cont else None
            values, kind, classes = self._convert(frame[name], name, force, int(max_classes))
            self.attributes[name], self.kinds[name] = values, kind
            if classes is not None:
                self.classes[name] = classes
        # 4. the image files
        self.paths = self._image_paths(frame[self.image_column])
        self._setup_images(reader, transform, bool(cache_in_memory), bool(progress))

    # ------------------------------------------------------------------ helpers
    def _where(self, row: int) -> str:
        table_row = int(self._lines[row]) if getattr(self, "_lines", None) is not None else row
        line = f", line {table_row + 2}" if self.source != "<DataFrame>" else ""
        return f"row {table_row} of {self.source}{line}"

    def _image_column(self, frame: Any, image_column: str | None) -> str:
        if image_column is not None:
            if not isinstance(image_column, str):
                raise TypeError(f"image_column={image_column!r} must be a column name (str)")
            if image_column not in frame.columns:
                raise ValueError(f"image_column={image_column!r} is not in {self.source}"
                                 f"{_suggest(image_column, frame.columns)}; columns: {list(frame.columns)}")
            return image_column
        found = [c for c in IMAGE_COLUMN_CANDIDATES if c in frame.columns]
        if len(found) != 1:
            what = "none of" if not found else f"several of them ({found}) among"
            raise ValueError(f"{self.source}: cannot tell which column holds the image paths: {what} the usual "
                             f"names {list(IMAGE_COLUMN_CANDIDATES)}; pass image_column=..., one of "
                             f"{list(frame.columns)}")
        return found[0]

    def _image_paths(self, column: Any) -> list[str]:
        paths: list[str] = []
        missing: list[int] = []
        for row, value in enumerate(column.tolist()):
            if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
                raise ValueError(f"{self._where(row)}: the image column {self.image_column!r} is empty; every row "
                                 "needs an image path")
            path = os.path.join(self.image_dir, str(value).strip())
            paths.append(path)
            if not os.path.isfile(path):
                missing.append(row)
        if missing:
            first = missing[0]
            raise DataNotFoundError(
                f"{self._where(first)}: image file '{paths[first]}' does not exist"
                + (f" (and {len(missing) - 1} more row(s), e.g. rows {missing[1:4]})" if len(missing) > 1 else "")
                + f"; paths in column {self.image_column!r} are relative to image_dir='{self.image_dir}'")
        return paths

    def _convert(self, series: Any, name: str, force: str | None,
                 max_classes: int) -> tuple[torch.Tensor, str, list[str] | None]:
        import pandas as pd
        from pandas.api import types

        null = series.isna().to_numpy()
        if null.any():
            rows = np.flatnonzero(null)
            raise ValueError(f"column {name!r} has {len(rows)} missing value(s) (NaN or empty), first at "
                             f"{self._where(int(rows[0]))}; fill or drop those rows, or leave the column out of "
                             "columns=")
        if types.is_bool_dtype(series):
            values = series.to_numpy().astype(np.int64)
            if force == "continuous":
                return torch.from_numpy(values.astype(np.float32)), "continuous", None
            return torch.from_numpy(values), "categorical" if force == "categorical" else "binary", None
        if types.is_numeric_dtype(series) and not types.is_complex_dtype(series):
            raw = series.to_numpy().astype(np.float64)
            bad = ~np.isfinite(raw)
            if bad.any():
                raise ValueError(f"column {name!r} has a non-finite value ({raw[bad][0]}) at "
                                 f"{self._where(int(np.flatnonzero(bad)[0]))}; fix or drop the row")
            if force == "categorical":
                return self._integer_classes(raw, name, max_classes), "categorical", None
            if force is None and np.isin(raw, (0.0, 1.0)).all():
                return torch.from_numpy(raw.astype(np.int64)), "binary", None
            return torch.from_numpy(raw.astype(np.float32)), "continuous", None
        if types.is_string_dtype(series) or types.is_object_dtype(series):
            text = [str(v) for v in series.tolist()]
            if force == "continuous":
                numbers = pd.to_numeric(pd.Series(text), errors="coerce").to_numpy()
                bad = int(np.flatnonzero(np.isnan(numbers))[0]) if np.isnan(numbers).any() else None
                raise ValueError(f"column {name!r} holds text (e.g. {text[bad if bad is not None else 0]!r} at "
                                 f"{self._where(bad if bad is not None else 0)}) and cannot be continuous; "
                                 "fix the values or read it as categorical")
            classes = sorted(set(text))
            if len(classes) > max_classes:
                raise ValueError(f"categorical column {name!r} has {len(classes)} classes, more than "
                                 f"max_classes={max_classes} (an ID or free-text column?); leave it out of "
                                 "columns=, or raise max_classes")
            lookup = {c: k for k, c in enumerate(classes)}
            return torch.tensor([lookup[t] for t in text], dtype=torch.int64), "categorical", classes
        raise ValueError(f"column {name!r} has dtype {series.dtype}, which is neither numeric, boolean nor text; "
                         "convert it in the CSV or leave it out of columns=")

    def _integer_classes(self, raw: np.ndarray, name: str, max_classes: int) -> torch.Tensor:
        fractional = raw != np.round(raw)
        if fractional.any():
            row = int(np.flatnonzero(fractional)[0])
            raise ValueError(f"categorical column {name!r} has the non-integer value {raw[row]} at "
                             f"{self._where(row)}; class indices must be integers >= 0 (or strings)")
        negative = raw < 0
        if negative.any():
            row = int(np.flatnonzero(negative)[0])
            raise ValueError(f"categorical column {name!r} has the negative value {int(raw[row])} at "
                             f"{self._where(row)}; integer classes must be >= 0 (0..cardinality-1)")
        if raw.max() + 1 > max_classes:
            raise ValueError(f"categorical column {name!r} has values up to {int(raw.max())}, i.e. "
                             f"{int(raw.max()) + 1} classes, more than max_classes={max_classes}; leave it out of "
                             "columns=, read it as continuous, or raise max_classes")
        return torch.from_numpy(raw.astype(np.int64))

    def __repr__(self) -> str:
        cols = ", ".join(f"{n}:{k}" for n, k in self.kinds.items())
        return (f"{type(self).__name__}({len(self)} rows from {self.source}, image {self.image_shape}, "
                f"attributes [{cols}])")


# ---------------------------------------------------------------------------------------------------- CelebA
def _local_celeba_class() -> type:
    from torchvision.datasets import CelebA

    class _LocalCelebA(CelebA):
        """torchvision's CelebA, reading from ``root/base_folder`` without its MD5 check (done before, or waived)."""

        def __init__(self, root: str, base_folder: str, **kwargs: Any) -> None:
            self.base_folder = base_folder
            super().__init__(root, **kwargs)

        def _check_integrity(self) -> bool:
            return True

    return _LocalCelebA


class CelebAAttributes(_ImageTable):
    """CelebA (aligned and cropped faces) from a local copy, with chosen attributes as binary 0/1 labels.

    An adapter over ``torchvision.datasets.CelebA(root, split=split, target_type="attr", download=False)``:
    torchvision parses the annotation files and the split; this class keeps the chosen attribute columns
    (torchvision maps CelebA's -1/1 to 0/1) and reads the images with the same decode, crop and resize as
    :class:`ImageAttributeFolder`. Nothing is ever downloaded.

    Why torchvision's integrity check is run separately: ``CelebA`` refuses any folder whose five annotation
    files do not match its MD5 sums, which also rejects re-packed copies and small test folders. With
    ``check_integrity=True`` (the default) the same MD5 check runs first and a mismatch names the file; with
    ``False`` only the presence of the files is checked. torchvision is then built with its check bypassed.

    Expected layout (``root`` may be the folder that holds ``celeba/``, or ``celeba/`` itself)::

        root/celeba/list_attr_celeba.txt  list_eval_partition.txt  identity_CelebA.txt
                    list_bbox_celeba.txt  list_landmarks_align_celeba.txt
                    img_align_celeba/000001.jpg ...

    Args:
        root: the folder (see the layout).
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"all"`` (``list_eval_partition.txt``'s 0 / 1 / 2).
        attributes: CelebA attribute names (from the header of ``list_attr_celeba.txt``, e.g. ``"Smiling"``).
        size: output size, one int or ``(height, width)``; ``None`` keeps the cropped size.
        crop: ``"center"`` (the default: the centred 178x178 square of the 178x218 aligned faces), ``None``,
            or ``(height, width)``.
        channels: 3 (RGB) or 1 (grey).
        interpolation: resampling filter of the resize: one of :data:`INTERPOLATIONS`.
        transform: a callable applied to each image tensor ``(C, H, W)`` in [-1, 1].
        check_integrity: verify the annotation files against torchvision's MD5 sums.
        cache_in_memory: decode every image of the split once at construction and keep it (``uint8``).
        progress: show tqdm bars.

    Attributes:
        attributes: name -> ``int64`` ``(N,)`` of 0/1.
        celeba: the underlying ``torchvision.datasets.CelebA`` (identity, bbox, landmarks, all 40 attributes).
        attr_names: the 40 attribute names of the file.
        filenames: the image file name of every row; paths: their full paths.
        image_shape: ``(channels, H, W)``.

    Raises:
        DataNotFoundError: ``root``, an annotation file, ``img_align_celeba/`` or a listed image is missing.
        ValueError: a bad split or argument, an unknown attribute, MD5 mismatch, unparsable annotation files.

    Example:
        >>> ds = CelebAAttributes("~/data", split="valid", attributes=("Smiling", "Male"))  # doctest: +SKIP
        >>> image, attrs = ds[0]                  # doctest: +SKIP
        >>> image.shape, attrs["Male"].dtype      # doctest: +SKIP
        (torch.Size([3, 64, 64]), torch.int64)
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 attributes: Sequence[str] = ("Smiling", "Male", "Eyeglasses"),
                 size: int | tuple[int, int] | None = 64, crop: str | int | tuple[int, int] | None = "center",
                 channels: int = 3, interpolation: str = "bilinear",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, check_integrity: bool = True,
                 cache_in_memory: bool = False, progress: bool = True) -> None:
        if split not in ("train", "valid", "test", "all"):
            raise ValueError(f"split={split!r} is not allowed: use 'train', 'valid', 'test' or 'all'")
        names = _as_names(attributes, "attributes")
        if not names:
            raise ValueError("attributes is empty; name at least one CelebA attribute, e.g. ('Smiling',)")
        reader = _ImageReader.build(channels, size, crop, interpolation)
        root_path = Path(os.path.expanduser(str(root)))
        self.root, self.split = str(root_path), split
        base = self._find_base(root_path)
        folder = root_path / base
        if check_integrity:
            self._verify_md5(folder)
        # torchvision parses the five annotation files and selects the split
        try:
            self.celeba = self._torchvision_celeba(str(root_path), base, split)
        except (ValueError, IndexError, RuntimeError) as exc:
            raise ValueError(f"cannot parse the CelebA annotation files in '{folder}' ({exc}); they must be the "
                             "original space-separated text files (see CelebAAttributes' layout)") from exc
        self.attr_names = [a for a in self.celeba.attr_names if a]
        for name in names:
            if name not in self.attr_names:
                raise ValueError(f"attribute {name!r} is not a CelebA attribute{_suggest(name, self.attr_names)}; "
                                 f"the attributes of '{folder / 'list_attr_celeba.txt'}' are {self.attr_names}")
        if self.celeba.attr.shape[1] != len(self.attr_names):
            raise ValueError(f"'{folder / 'list_attr_celeba.txt'}' names {len(self.attr_names)} attributes but its "
                             f"rows hold {self.celeba.attr.shape[1]} values; the file is corrupted")
        self.filenames = [str(f) for f in self.celeba.filename]
        if not self.filenames:
            raise ValueError(f"split={split!r} of '{folder}' has no images (list_eval_partition.txt marks none "
                             "with its code); pick another split")
        columns = {name: self.attr_names.index(name) for name in names}
        attr = self.celeba.attr
        self.attributes = {name: attr[:, j].to(torch.int64).clone() for name, j in columns.items()}
        self.kinds = {name: "binary" for name in names}
        self.classes = {}
        image_dir = folder / "img_align_celeba"
        self.paths = [str(image_dir / f) for f in self.filenames]
        missing = [k for k, p in enumerate(self.paths) if not os.path.isfile(p)]
        if missing:
            raise DataNotFoundError(f"{len(missing)} image(s) of split={split!r} listed in "
                                    f"list_eval_partition.txt are missing from '{image_dir}', e.g. "
                                    f"{[self.filenames[k] for k in missing[:3]]}; unzip img_align_celeba.zip there")
        self._setup_images(reader, transform, bool(cache_in_memory), bool(progress))

    def _where(self, row: int) -> str:
        return f"CelebA {self.split} row {row} ({self.filenames[row]})"

    @staticmethod
    def _torchvision_celeba(root: str, base: str, split: str) -> Any:
        local_celeba = _local_celeba_class()
        try:
            return local_celeba(root, base, split=split, target_type="attr", download=False)
        except TypeError as exc:
            if "0-d tensor" not in str(exc):
                raise
        # torchvision cannot select a split of exactly one image (it iterates over a squeezed 0-d index
        # tensor): load every row and select the split with torchvision's own parser of the partition file
        celeba = local_celeba(root, base, split="all", target_type="attr", download=False)
        code = {"train": 0, "valid": 1, "test": 2}[split]
        keep = torch.nonzero(celeba._load_csv("list_eval_partition.txt").data[:, 0] == code).reshape(-1)
        celeba.split = split
        celeba.filename = [celeba.filename[int(k)] for k in keep]
        for field in ("identity", "bbox", "landmarks_align", "attr"):
            setattr(celeba, field, getattr(celeba, field)[keep])
        return celeba

    @staticmethod
    def _layout_hint(root: Path) -> str:
        return (f"put the CelebA files (from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) as "
                f"'{root / 'celeba'}/' holding {list(CELEBA_FILES)} and the folder 'img_align_celeba/' "
                "(unzipped img_align_celeba.zip); dcfg never downloads")

    def _find_base(self, root: Path) -> str:
        if not root.is_dir():
            raise DataNotFoundError(f"CelebA folder '{root}' does not exist; {self._layout_hint(root)}")
        for base in ("celeba", ""):
            if (root / base / CELEBA_FILES[0]).is_file():
                break
        else:
            raise DataNotFoundError(f"'{root}' holds no 'celeba/{CELEBA_FILES[0]}' (nor '{CELEBA_FILES[0]}'); "
                                    f"{self._layout_hint(root)}")
        folder = root / base
        missing = [f for f in CELEBA_FILES if not (folder / f).is_file()]
        if not (folder / "img_align_celeba").is_dir():
            missing.append("img_align_celeba/")
        if missing:
            raise DataNotFoundError(f"the CelebA folder '{folder}' lacks {missing}; "
                                    f"{self._layout_hint(root if base else root.parent)}")
        return base

    @staticmethod
    def _verify_md5(folder: Path) -> None:
        from torchvision.datasets import CelebA
        from torchvision.datasets.utils import check_integrity

        for _, md5, filename in CelebA.file_list:
            if os.path.splitext(filename)[1] in (".zip", ".7z"):
                continue
            if not check_integrity(str(folder / filename), md5):
                raise ValueError(f"'{folder / filename}' does not match torchvision's MD5 sum {md5} for the "
                                 "original CelebA file (corrupted, edited or re-packed); restore the original, or "
                                 "pass check_integrity=False to read it anyway")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} rows, split={self.split!r}, image {self.image_shape}, "
                f"attributes {list(self.attributes)})")
