"""Any folder of images with a CSV table of attributes, one row per image (:class:`ImageAttributeFolder`).

Images are decoded, cropped and resized by :mod:`pipeline.datasets.decoder`; items follow
:class:`~pipeline.datasets.table.ImageTable`'s format. Nothing here downloads or unpickles.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from dcfg_io.checks import is_integer
from pipeline.datasets.decoder import DataNotFoundError, ImageReader
from pipeline.datasets.table import ImageTable, as_names, suggest_name

__all__ = ["ImageAttributeFolder", "IMAGE_COLUMN_CANDIDATES", "MAX_CLASSES"]

#: Column names tried, in this order, when ``image_column`` is not given.
IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("path", "filename", "file", "image", "image_path", "image_id", "img")
#: Default limit on the classes of one categorical column (an ID column is the usual culprit).
MAX_CLASSES = 1000


class ImageAttributeFolder(ImageTable):
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
        interpolation: resampling filter of the resize: one of :data:`~pipeline.datasets.decoder.INTERPOLATIONS`.
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

        reader = ImageReader.build(channels, size, crop, interpolation)
        if not is_integer(max_classes, 2):
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
        chosen = as_names(columns, "columns") if columns is not None else available
        for name in chosen:
            if name == self.image_column:
                raise ValueError(f"columns lists the image column {name!r}; it holds the image paths, not an "
                                 "attribute: leave it out")
            if name not in frame.columns:
                raise ValueError(f"column {name!r} is not in {self.source}{suggest_name(name, available)}; "
                                 f"available columns: {available}")
        if not chosen:
            raise ValueError(f"no attribute columns: {self.source} has only the image column "
                             f"{self.image_column!r}; add attribute columns to the table")
        forced_cat = as_names(categorical, "categorical")
        forced_cont = as_names(continuous, "continuous")
        for label, names in (("categorical", forced_cat), ("continuous", forced_cont)):
            for name in names:
                if name not in chosen:
                    raise ValueError(f"{label} lists {name!r}, which is not an attribute column"
                                     f"{suggest_name(name, chosen)}; attribute columns: {chosen}")
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
                                 f"{suggest_name(image_column, frame.columns)}; columns: {list(frame.columns)}")
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
