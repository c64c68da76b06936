"""The data of an experiment: synthetic Morpho digits from the spec's equations, or a CSV + image folder.

Synthetic data (``source = "morpho"`` or ``"mnist_folder"``), in four steps:

1. **Sources.** Real MNIST digits (the 5,000 bundled offline, or a local MNIST folder), split into train
   and test sources; ``train_digits`` / ``test_digits`` keep a class-balanced subset.
2. **Equations.** The spec's structural equations become an SCM of known mechanisms
   (:func:`true_scm`): ``linear`` and ``normal`` -> :class:`scm.LinearGaussianMechanism`,
   ``affine_sigmoid`` -> :class:`scm.AffineSigmoidMechanism`, ``gamma`` -> :class:`scm.GammaMechanism`,
   ``categorical`` -> a root :class:`scm.CategoricalMechanism` with fixed class probabilities. The node
   rendered as ``digit`` takes the source digit's label. Each row's exogenous noise is drawn and kept.
3. **Rendering** (:func:`render`): the source digit is sheared to the row's slant, then its thickness and
   intensity are set (:mod:`pipeline.morphometry`); values outside a perturbation's range are clipped to
   it (the count is recorded).
4. **Rows.** ``scm_rows`` observational rows (the SCM's fit and dowhy), the image model's training set
   (``samples_per_digit`` renders per train source; with ``image_parents = "independent"`` each continuous
   image parent is shuffled on its own, so the model sees the product of the marginals), and one test
   row per test source, whose noise gives the **ground-truth counterfactual** of any ``do``
   (:meth:`ExperimentData.true_counterfactual`): the same noise pushed through the equations under
   ``do``, rendered from the same source digit.

CSV data (``source = "csv"``) are read with :class:`~pipeline.datasets.ImageAttributeFolder`: the
attributes are observed, so there are no equations and no ground truth. ``prepare = "morpho_csv"``
first writes a small such folder of rendered digits (:func:`write_morpho_csv`).

Example:
    >>> from pipeline.experiment.spec import parse_spec
    >>> spec = parse_spec({"graph": {"nodes": {"t": {"kind": "positive"}, "image": {"kind": "image",
    ...                                                                           "shape": [1, 28, 28]}},
    ...                              "edges": [["t", "image"]]},
    ...                    "equations": {"t": {"form": "gamma", "concentration": 10, "rate": 5, "shift": 0.5}},
    ...                    "render": {"t": "thickness"},
    ...                    "data": {"source": "morpho", "train_digits": 10, "test_digits": 4,
    ...                             "samples_per_digit": 1, "scm_rows": 100}})
    >>> data = build_data(spec, n_jobs=1, progress=False)
    >>> data.test_images.shape, sorted(data.scm_rows)
    (torch.Size([4, 1, 28, 28]), ['t'])
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from dcfg_io.checks import is_integer
from pipeline.datasets.morpho import RENDER_ORDER, render_digits
from pipeline.evaluation.oracles import Oracles

__all__ = ["ExperimentData", "ExperimentOracles", "as_float_images", "build_data", "true_scm", "make_mechanism",
           "render", "write_morpho_csv", "bundled_classifier", "RENDER_ORDER", "DATA_VERSION"]

#: Bumped whenever the generated data change for the same spec (part of the data stage's hash).
DATA_VERSION = 3


def as_float_images(x: Tensor) -> Tensor:
    """Images in [-1, 1] as float32: ``uint8`` storage (CSV data) is scaled by ``x / 127.5 - 1``."""
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


# ================================================================================ equations -> SCM
def make_mechanism(equation: Any, graph: Any) -> Any:
    """The known :class:`scm.Mechanism` of one :class:`~pipeline.experiment.spec.EquationSpec`.

    Example:
        >>> from pipeline.experiment.spec import EquationSpec
        >>> m = make_mechanism(EquationSpec("t", "gamma", {"concentration": 10.0, "rate": 5.0, "shift": 0.5}), None)
        >>> type(m).__name__
        'GammaMechanism'
    """
    from scm import AffineSigmoidMechanism, CategoricalMechanism, GammaMechanism, LinearGaussianMechanism

    p = equation.params
    if equation.form == "linear":
        return LinearGaussianMechanism(p["weights"], bias=p["bias"], scale=p["scale"])
    if equation.form == "normal":
        return LinearGaussianMechanism({}, bias=p["loc"], scale=p["scale"])
    if equation.form == "affine_sigmoid":
        return AffineSigmoidMechanism(p["weights"], bias=p["bias"], noise_scale=p["noise_scale"], low=p["low"],
                                      high=p["high"])
    if equation.form == "gamma":
        return GammaMechanism(p["concentration"], p["rate"], shift=p["shift"])
    if equation.form == "categorical":
        probs = torch.as_tensor(p["probs"], dtype=torch.float32)
        mech = CategoricalMechanism(len(p["probs"]))
        with torch.no_grad():
            assert mech.root_logits is not None
            mech.root_logits.copy_(torch.log(probs.clamp_min(1e-12)))
            mech.initialized.fill_(True)
        return mech
    raise ValueError(f"unknown equation form {equation.form!r}")  # the spec was validated


def true_scm(spec: Any) -> Any:
    """The SCM of the spec's equations (the data-generating process); the ``digit`` node gets a uniform root.

    Example:
        >>> from pipeline.experiment.spec import parse_spec
        >>> spec = parse_spec({"graph": {"nodes": {"x": {"kind": "real"}, "y": {"kind": "real"},
        ...                                        "image": {"kind": "image", "shape": [1, 28, 28]}},
        ...                              "edges": [["x", "y"], ["y", "image"]]},
        ...                    "equations": {"x": {"form": "normal"}, "y": {"form": "linear", "weights": {"x": 2.0}}},
        ...                    "render": {"y": "slant"}, "data": {"source": "morpho"}})
        >>> round(float(true_scm(spec).average_causal_effect("y", {"x": 1.0}, {"x": 0.0}, n=100, seed=0)), 4)
        2.0
    """
    from scm import SCM

    mechanisms = {node: make_mechanism(eq, spec.graph) for node, eq in spec.equations.items()}
    return SCM(spec.graph, mechanisms=mechanisms, seed=spec.seed)


# ================================================================================ rendering
def _ranges() -> dict[str, tuple[float, float]]:
    from pipeline.morphometry import INTENSITY_RANGE, SLANT_RANGE, THICKNESS_RANGE

    return {"thickness": THICKNESS_RANGE, "intensity": INTENSITY_RANGE, "slant": SLANT_RANGE}


def render(sources: np.ndarray, values: Mapping[str, Any], n_jobs: int | None = None,
           progress: bool = False) -> tuple[Tensor, int]:
    """Render source digits with the given ops' values, clipped to the perturbations' ranges: shear to ``slant``,
    then ``thickness``, ``intensity`` (:func:`~pipeline.datasets.morpho.render_digits`, in :data:`RENDER_ORDER`).

    Args:
        sources: ``uint8 (B, 28, 28)`` source digits.
        values: op -> ``(B,)`` target values (``thickness`` px, ``intensity`` 0..255, ``slant`` rad); ops not
            given are not applied. Values outside the perturbations' ranges (or not finite) are clipped and counted.
        n_jobs: processes (``None``: all CPUs).
        progress: tqdm bar.

    Returns:
        ``(images, clipped)``: float32 ``(B, 1, 28, 28)`` in [-1, 1], and the number of rows with a clipped value.

    Example:
        >>> from pipeline.datasets import load_mnist5k
        >>> src, _ = load_mnist5k()
        >>> x, clipped = render(src[:2], {"thickness": [2.0, 9.0]}, n_jobs=1)
        >>> x.shape, clipped
        (torch.Size([2, 1, 28, 28]), 1)
    """
    sources = np.asarray(sources)
    n = len(sources)
    x = sources.astype(np.float64) / 255.0
    arrays, clipped = {}, np.zeros(n, dtype=bool)
    for op, (lo, hi) in _ranges().items():
        if op in values:
            v = np.asarray(torch.as_tensor(values[op]).detach().double().cpu().numpy(), dtype=np.float64).reshape(-1)
            if v.shape != (n,):
                raise ValueError(f"render: {op} has {v.size} values for {n} digits")
            clipped |= (v < lo) | (v > hi) | ~np.isfinite(v)
            arrays[op] = np.clip(np.nan_to_num(v, nan=(lo + hi) / 2), lo, hi)
    return render_digits(x, arrays, n_jobs=n_jobs, progress=progress), int(clipped.sum())


# ================================================================================ the data
@dataclass
class ExperimentData:
    """Everything an experiment trains and evaluates on.

    Attributes:
        scm_rows: observational attributes for the SCM's fit and dowhy, node -> ``(N,)``.
        train_images: the image model's training images ``(M, C, H, W)``: float32 in [-1, 1] (rendered data) or
            ``uint8`` 0..255 (8-bit CSV images, a quarter of the memory; :func:`as_float_images` converts).
        train_attributes: their attributes, node -> ``(M,)`` (image parents at least).
        test_images: test images ``(T, C, H, W)``, stored like ``train_images``.
        test_attributes: their attributes (every attribute node), node -> ``(T,)``.
        test_noise: synthetic data: each test row's exogenous noise, node -> ``(T, ...)``.
        test_sources: synthetic data: each test row's source digit, ``uint8 (T, 28, 28)``.
        info: counts and notes (JSON-ready).
    """

    scm_rows: dict[str, Tensor]
    train_images: Tensor
    train_attributes: dict[str, Tensor]
    test_images: Tensor
    test_attributes: dict[str, Tensor]
    test_noise: dict[str, Tensor] = field(default_factory=dict)
    test_sources: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _truth: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> None:
        """Write ``data.safetensors`` and ``info.json`` into ``folder`` (each file atomically)."""
        from safetensors.torch import save_file

        from pipeline.images import atomic_save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"train/images": self.train_images, "test/images": self.test_images}
        tensors.update({f"scm/{k}": v for k, v in self.scm_rows.items()})
        tensors.update({f"train/{k}": v for k, v in self.train_attributes.items()})
        tensors.update({f"test/{k}": v for k, v in self.test_attributes.items()})
        tensors.update({f"noise/{k}": v for k, v in self.test_noise.items()})
        if self.test_sources is not None:
            tensors["test/sources"] = self.test_sources
        # safetensors refuses tensors that share storage: copy only those (never the whole image set)
        seen: set[int] = set()
        out = {}
        for k, v in tensors.items():
            v = v.detach().cpu().contiguous()
            ptr = v.untyped_storage().data_ptr()
            if ptr in seen or v.untyped_storage().nbytes() != v.numel() * v.element_size():
                v = v.clone()
            seen.add(v.untyped_storage().data_ptr())
            out[k] = v
        tensors = out
        atomic_save(lambda p: save_file(tensors, p), folder / "data.safetensors")
        atomic_save(lambda p: Path(p).write_text(json.dumps(self.info, indent=2)), folder / "info.json")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ExperimentData":
        """Read a folder written by :meth:`save` (never unpickles)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        t = load_file(str(folder / "data.safetensors"))
        info = json.loads((folder / "info.json").read_text())

        def group(prefix: str) -> dict[str, Tensor]:
            return {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith(prefix + "/")
                    and k not in (f"{prefix}/images", f"{prefix}/sources")}

        return cls(group("scm"), t["train/images"], group("train"), t["test/images"], group("test"),
                   group("noise"), t.get("test/sources"), info)

    # ------------------------------------------------------------------ ground truth
    def attach_truth(self, spec: Any, n_jobs: int | None = None) -> None:
        """Enable :meth:`true_counterfactual` (synthetic data): the spec's SCM and renderer."""
        if spec.synthetic:
            self._truth = (true_scm(spec), spec, n_jobs)

    @property
    def has_truth(self) -> bool:
        """Whether ground-truth counterfactuals exist (synthetic data)."""
        return self._truth is not None

    def true_counterfactual(self, rows: Any, do: Mapping[str, Any]) -> tuple[dict[str, Tensor], Tensor] | None:
        """The ground truth of test ``rows`` under ``do``: their noise through the equations, re-rendered.

        Returns ``None`` without ground truth (CSV data) or when ``do`` changes the source digit's class
        (no source digit exists in another class).
        """
        if self._truth is None:
            return None
        scm, spec, n_jobs = self._truth
        digit = spec.digit_node()
        if digit is not None and digit in do:
            return None
        index = torch.as_tensor(rows).long().reshape(-1)
        noise = {k: v[index] for k, v in self.test_noise.items()}
        full = dict(do)
        if digit is not None:
            full[digit] = self.test_attributes[digit][index]
        # Abduction is given (the recorded noise); action and prediction through the equations:
        values = scm.predict(noise, do=full)
        assert self.test_sources is not None
        images, _ = render(self.test_sources[index].numpy(),
                           {op: values[node] for node, op in spec.render.items() if op != "digit"}, n_jobs=n_jobs)
        return values, images


def _balanced(labels: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of ``k`` items taken round robin over the classes, in file order within a class (all if None)."""
    if k is None or k >= len(labels):
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    return np.sort(np.lexsort((labels, rank))[:k])


def _sources(spec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from pipeline.datasets import load_mnist5k, load_mnist_folder, mnist5k_split

    d = spec.data
    if d.source == "morpho":
        images, labels = load_mnist5k()
        tr, te = mnist5k_split()
        parts = (images[tr], labels[tr], images[te], labels[te])
    else:
        root = spec.resolve_path(d.root)
        tr_x, tr_y, _ = load_mnist_folder(root, "train")
        te_x, te_y, _ = load_mnist_folder(root, "test")
        parts = (tr_x, tr_y, te_x, te_y)
    tr_x, tr_y, te_x, te_y = parts
    keep_tr, keep_te = _balanced(tr_y, d.train_digits), _balanced(te_y, d.test_digits)
    return tr_x[keep_tr], tr_y[keep_tr].astype(np.int64), te_x[keep_te], te_y[keep_te].astype(np.int64)


def _draw(scm: Any, n: int, gen: torch.Generator, digit: str | None, labels: Tensor | None
          ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``n`` rows of noise and values of the SCM (the digit node fixed to ``labels``)."""
    noise = {node: scm.mechanisms[node].sample_noise(n, gen) for node in scm.nodes}
    do = {} if digit is None else {digit: labels}
    return noise, scm.predict(noise, do=do)


def _build_synthetic(spec: Any, n_jobs: int | None, progress: bool, log: Any) -> ExperimentData:
    d, graph = spec.data, spec.graph
    tr_x, tr_y, te_x, te_y = _sources(spec)
    scm = true_scm(spec)
    digit = spec.digit_node()
    # one random stream per part, so that e.g. the test rows do not depend on how training rows are drawn
    gen_scm, gen_train, gen_test = (torch.Generator().manual_seed(int(s)) for s in
                                    np.random.SeedSequence(spec.seed).generate_state(3))
    ops = {node: op for node, op in spec.render.items() if op != "digit"}
    # Observational rows: source labels drawn with replacement.
    pick = torch.randint(0, len(tr_y), (d.scm_rows,), generator=gen_scm)
    _, scm_rows = _draw(scm, d.scm_rows, gen_scm, digit, torch.from_numpy(tr_y)[pick])
    # The image model's training rows: samples_per_digit renders per source.
    src = np.repeat(np.arange(len(tr_y)), d.samples_per_digit)
    gen = gen_train
    _, values = _draw(scm, len(src), gen, digit, torch.from_numpy(tr_y[src]))
    if d.image_parents == "independent":
        for p in graph.image_parents():
            if graph.spec(p).is_continuous:
                values[p] = values[p][torch.randperm(len(src), generator=gen)]
    log(f"rendering {len(src)} training digits and {len(te_y)} test digits")
    train_images, clipped_train = render(tr_x[src], {op: values[n] for n, op in ops.items()}, n_jobs, progress)
    # Test rows: one SCM draw per test source, noise kept for the ground truth.
    test_noise, test_values = _draw(scm, len(te_y), gen_test, digit, torch.from_numpy(te_y))
    test_images, clipped_test = render(te_x, {op: test_values[n] for n, op in ops.items()}, n_jobs, progress)
    info = {"source": d.source, "train_sources": int(len(tr_y)), "test_sources": int(len(te_y)),
            "scm_rows": int(d.scm_rows), "train_images": int(len(src)), "test_images": int(len(te_y)),
            "image_parents": d.image_parents, "clipped_train": clipped_train, "clipped_test": clipped_test,
            "ground_truth": True}
    data = ExperimentData({k: v.detach() for k, v in scm_rows.items()}, train_images,
                          {k: v.detach() for k, v in values.items()}, test_images,
                          {k: v.detach() for k, v in test_values.items()},
                          {k: v.detach() for k, v in test_noise.items()}, torch.from_numpy(te_x), info)
    return data


def _read_folder(spec: Any, csv: Path, image_dir: Path, progress: bool) -> tuple[Tensor, dict[str, Tensor]]:
    from pipeline.datasets import ImageAttributeFolder
    from scm.support import as_values

    graph = spec.graph
    attrs = graph.attribute_nodes()
    shape = tuple(graph.spec(graph.image_node).shape)
    cat = [n for n in attrs if graph.spec(n).is_discrete]
    cont = [n for n in attrs if graph.spec(n).is_continuous]
    try:
        ds = ImageAttributeFolder(csv, image_dir, columns=attrs, size=(shape[1], shape[2]), channels=shape[0],
                                  categorical=cat, continuous=cont, progress=progress)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"[data] csv: {e}") from None
    # 8-bit images stay uint8 (a quarter of float32's memory); 16-bit sources become float32 in [-1, 1]
    arrays = [ds._reader.decode(ds.paths[k], ds._where(k)) for k in range(len(ds))]
    if arrays and all(a.dtype == np.uint8 for a in arrays):
        images = torch.from_numpy(np.stack(arrays))
    else:
        images = torch.stack([ds.image(k) for k in range(len(ds))])
    del arrays
    values = {}
    for n in attrs:
        try:
            values[n] = as_values(n, graph.spec(n), ds.attributes[n], what=f"column of {csv.name}")
        except ValueError as e:
            raise ValueError(f"[data] csv: {e}; fix the table or the node's kind in [graph.nodes]") from None
    return images, values


def _build_csv(spec: Any, prepared: Path | None, progress: bool) -> ExperimentData:
    d = spec.data
    if prepared is not None:
        csv, image_dir, test_csv = prepared / "train.csv", prepared, prepared / "test.csv"
    else:
        csv, image_dir = spec.resolve_path(d.csv), spec.resolve_path(d.image_dir)
        test_csv = None if d.test_csv is None else spec.resolve_path(d.test_csv)
    images, values = _read_folder(spec, csv, image_dir, progress)
    if test_csv is not None:
        test_images, test_values = _read_folder(spec, test_csv, image_dir, progress)
        train_images, train_values = images, values
    else:
        gen = torch.Generator().manual_seed(spec.seed)
        perm = torch.randperm(len(images), generator=gen)
        k = max(2, int(round(d.test_fraction * len(images))))
        if len(images) - k < 2:
            raise ValueError(f"[data] csv: {len(images)} rows are too few to split off a test set; add rows")
        te, tr = perm[:k], perm[k:]
        test_images, test_values = images[te], {n: v[te] for n, v in values.items()}
        train_images, train_values = images[tr], {n: v[tr] for n, v in values.items()}
    info = {"source": "csv", "csv": str(csv), "image_dir": str(image_dir), "scm_rows": int(len(train_images)),
            "train_images": int(len(train_images)), "test_images": int(len(test_images)), "ground_truth": False,
            "prepared": prepared is not None}
    return ExperimentData(dict(train_values), train_images, dict(train_values), test_images, dict(test_values),
                          {}, None, info)


def build_data(spec: Any, *, prepared: str | os.PathLike | None = None, n_jobs: int | None = None,
               progress: bool = True, log: Any = None) -> ExperimentData:
    """Generate (synthetic) or read (CSV) the experiment's data, and attach its ground truth.

    Args:
        spec: the :class:`~pipeline.experiment.spec.ExperimentSpec`.
        prepared: the folder written by :func:`write_morpho_csv` (``prepare = "morpho_csv"``).
        n_jobs: rendering processes (``None``: all CPUs).
        progress: tqdm bars.
        log: called with one-line progress messages.

    Raises:
        ValueError: unreadable or inconsistent data (the message names the ``[data]`` key).
    """
    log = log or (lambda s: None)
    if spec.synthetic:
        data = _build_synthetic(spec, n_jobs, progress, log)
    else:
        data = _build_csv(spec, None if prepared is None else Path(prepared), progress)
    data.attach_truth(spec, n_jobs)
    return data


def write_morpho_csv(folder: str | os.PathLike, n_rows: int = 600, *, seed: int = 0, test_fraction: float = 0.2,
                     n_jobs: int | None = None, progress: bool = False) -> Path:
    """Write a small CSV + PNG folder of Morpho-MNIST digits (the benchmark's SCM), like a real dataset.

    ``folder/images/<k>.png`` (28x28 grey), ``folder/train.csv`` and ``folder/test.csv`` with the columns
    ``path,thickness,intensity,digit``. Training rows come from the bundled training digits, test rows from
    the test digits; attributes follow the benchmark's equations (``pipeline.datasets.morpho_equations``).

    Args:
        folder: output folder (created; files are replaced).
        n_rows: total rows; ``test_fraction`` of them (at least 2) go to ``test.csv``.
        seed: seed of the attributes.
        test_fraction: share of test rows.
        n_jobs: rendering processes.
        progress: tqdm bar.

    Returns:
        The folder.

    Example:
        >>> import tempfile
        >>> out = write_morpho_csv(tempfile.mkdtemp(), n_rows=10, n_jobs=1)
        >>> sorted(p.name for p in out.iterdir())
        ['images', 'test.csv', 'train.csv']
    """
    from PIL import Image

    from pipeline.datasets import MorphoMNIST
    from pipeline.images import atomic_save, to_uint8

    if not is_integer(n_rows, 4, python_int=True):
        raise ValueError(f"n_rows={n_rows!r} must be an integer >= 4")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    n_test = max(2, int(round(test_fraction * n_rows)))
    lines = {"train": ["path,thickness,intensity,digit"], "test": ["path,thickness,intensity,digit"]}
    k = 0
    for split, n in (("train", n_rows - n_test), ("test", n_test)):
        ds = MorphoMNIST(split, max_sources=min(n, 4000 if split == "train" else 1000), samples_per_digit=1,
                         seed=seed + (split == "test"), n_jobs=n_jobs, progress=progress, cache=False)
        pixels = to_uint8(ds.images)
        for j in range(len(ds)):
            name = f"images/{k:05d}.png"
            atomic_save(lambda p, a=pixels[j]: Image.fromarray(a.squeeze()).save(p, format="PNG"), folder / name)
            a = ds.attributes
            lines[split].append(f"{name},{float(a['thickness'][j]):.5f},{float(a['intensity'][j]):.4f},"
                                f"{int(a['digit'][j])}")
            k += 1
    for split, rows in lines.items():
        atomic_save(lambda p, r=rows: Path(p).write_text("\n".join(r) + "\n"), folder / f"{split}.csv")
    return folder


# ================================================================================ oracles
def bundled_classifier() -> Any:
    """The digit classifier saved beside the bundled Morpho-MNIST pipeline (the digit oracle)."""
    from importlib import resources

    from pipeline.classifier import DigitClassifier

    root = resources.files("pipeline") / "pretrained" / "morphomnist" / "classifier"
    with resources.as_file(root) as p:
        return DigitClassifier.from_pretrained(p).eval()


class ExperimentOracles(Oracles):
    """The evaluation's oracles for an experiment: the render ops say how each image parent is measured.

    * ``measure``: ``thickness`` / ``intensity`` / ``slant`` nodes by morphometry, the ``digit`` node by the
      digit classifier;
    * image parents without a render op (CSV data): the anti-causal ``predictors`` trained on the training
      split (:mod:`pipeline.predictors`);
    * ``embed``: the classifier's penultimate features (without one: the predictors' features, else
      4x4-average-pooled pixels);
    * ``draw_targets``: the ``[[interventions]]`` entries: a fixed value, a shift of the factual value
      (clipped to the node's support), or a draw from the training marginal (another class for a
      categorical node);
    * ``true_counterfactual``: :meth:`ExperimentData.true_counterfactual` (synthetic data).
    """

    def __init__(self, spec: Any, data: ExperimentData, classifier: Any = None, n_jobs: int | None = None,
                 predictors: Any = None) -> None:
        graph = spec.graph
        self.predictors = predictors
        cards = {n: int(graph.spec(n).cardinality or 2) for n in graph.attribute_nodes() if graph.spec(n).is_discrete}
        marg = {n: v.double() for n, v in data.scm_rows.items() if graph.spec(n).is_continuous}
        super().__init__(marginals=marg, cardinality=cards)
        self.spec, self.data, self.classifier, self.n_jobs = spec, data, classifier, n_jobs
        self.interventions = {iv.node: iv for iv in spec.interventions}
        if spec.digit_node() is not None and classifier is None:
            raise ValueError("a node is rendered as 'digit' but no digit classifier was given to measure it")

    @property
    def complete(self) -> bool:
        """Whether every image parent has an oracle (else the evaluation cannot score counterfactuals)."""
        covered = set(self.spec.render) | set(self.predictors.nodes if self.predictors is not None else ())
        return all(p in covered for p in self.spec.graph.image_parents())

    def measure(self, images: Tensor) -> dict[str, np.ndarray]:
        from pipeline.morphometry import measure

        out: dict[str, np.ndarray] = {}
        if self.predictors is not None:
            learned = self.predictors.measure(images.detach().float())
            out.update({n: v for n, v in learned.items() if n not in self.spec.render})
        render = self.spec.render
        if any(op != "digit" for op in render.values()):
            m = measure(images.detach().float().cpu(), n_jobs=self.n_jobs)
            out.update({node: m[op] for node, op in render.items() if op != "digit"})
        digit = self.spec.digit_node()
        if digit is not None:
            out[digit] = self.classifier.predict(images.detach().float()).cpu().numpy()
        return out

    def embed(self, images: Tensor) -> np.ndarray:
        if self.classifier is not None:
            return self.classifier.embed(images.detach().float()).detach().cpu().double().numpy()
        if self.predictors is not None:
            return self.predictors.embed(images.detach().float())
        pooled = torch.nn.functional.avg_pool2d(images.detach().float(), 4, ceil_mode=True)
        return pooled.flatten(1).double().numpy()

    def draw_targets(self, node: str, factual: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        iv = self.interventions.get(node)
        n = len(next(iter(factual.values())))
        spec = self.spec.graph.spec(node)
        if iv is None or (iv.shift is None and iv.value == "marginal"):
            return super().draw_targets(node, factual, generator)
        if iv.shift is not None:
            v = factual[node].double().cpu() + iv.shift
            lo = spec.low if spec.kind == "interval" else (1e-6 if spec.kind == "positive" else -math.inf)
            hi = spec.high if spec.kind == "interval" else math.inf
            return v.clamp(lo, hi)
        dtype = torch.int64 if spec.is_discrete else torch.float64
        return torch.full((n,), iv.value, dtype=dtype)

    def true_counterfactual(self, rows: Tensor, do: Mapping[str, Tensor]) -> Tensor | None:
        res = self.data.true_counterfactual(rows, do)
        return None if res is None else res[1]
