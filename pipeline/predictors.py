"""Anti-causal predictors: one small CNN per image parent, the oracle that scores counterfactuals of any dataset.

A counterfactual is scored by reading its attributes back off the image. Where an attribute cannot be measured
(a face's smile, an X-ray's finding), a predictor ``image -> attribute`` trained on the real training images
does it, as in the DCFG paper and in counterfactual-benchmark:

* a **classifier** for binary and categorical nodes (cross-entropy; it predicts the class index);
* a **regressor** for real, positive and interval nodes (Huber loss on the standardised value; it predicts in
  the node's own units, clipped to the node's support).

Each predictor is a small CNN sized by the image's resolution (:func:`predictor_widths`): stages of two 3x3
convolutions with batch norm, halving the resolution until it is at most 8 pixels, then global average pooling
and a ``feature_dim`` feature layer (the features in which realism is measured) and the head.

:func:`train_predictors` trains every image parent's predictor in one pass over the data per epoch and scores each
on a held-out part of the training split (never the test split): accuracy for classifiers, MAE in the node's
units for regressors, each beside the score of a constant prediction (the majority class, the mean), so that a
reader sees how much the predictor knows. A :class:`PredictorSet` is saved as ``predictors/<node>/`` folders
(``config.json`` + ``model.safetensors``) and ``predictors/metrics.json``.

Example:
    >>> import torch
    >>> cfg = PredictorConfig("smiling", "classifier", (3, 32, 32), num_classes=2)
    >>> net = AttributePredictor(cfg)
    >>> net.predict(torch.zeros(4, 3, 32, 32)).shape, net.embed(torch.zeros(4, 3, 32, 32)).shape
    (torch.Size([4]), torch.Size([4, 128]))
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dcfg_io.atomic import atomic_write_json
from dcfg_io.checks import is_integer, is_number
from dcfg_io.folders import SavedKind, find_saved_dir, save_dir
from dcfg_io.reads import check_entry, check_keys, read_json
from dcfg_io.rollback import restored_on_error
from dcfg_io.tensors import check_weight_shapes, load_tensors, save_tensors

__all__ = ["PredictorConfig", "AttributePredictor", "PredictorSet", "train_predictors", "predictor_widths",
           "PREDICTOR_KINDS", "MAX_PREDICTOR_WIDTH"]

PREDICTOR_KINDS = ("classifier", "regressor")
#: Largest channel width a predictor config may ask for (a bound checked before any module is built).
MAX_PREDICTOR_WIDTH = 1024
_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_METRICS = "metrics.json"
_FORMAT = "dcfg.pipeline.PredictorConfig/1"
#: a saved predictor folder (config.json with the predictor format, written last) and a saved set (metrics.json)
PREDICTOR_KIND = SavedKind("predictor", _CONFIG, lambda c: isinstance(c, dict) and c.get("format") == _FORMAT)
SET_KIND = SavedKind("predictor set", _METRICS, lambda c: isinstance(c, dict) and isinstance(c.get("nodes"), dict))


def predictor_widths(size: int) -> tuple[int, ...]:
    """Channel widths of the stages for images of ``size`` pixels: one stage per halving down to <= 8 pixels
    (at least two), widths 32, 64, 128, 128, ...

    Example:
        >>> predictor_widths(28), predictor_widths(64), predictor_widths(128)
        ((32, 64), (32, 64, 128), (32, 64, 128, 128))
    """
    stages, s = 0, int(size)
    while s > 8 or stages < 2:
        s = (s + 1) // 2
        stages += 1
    return tuple(min(32 * 2 ** k, 128) for k in range(stages))


@dataclass(frozen=True)
class PredictorConfig:
    """One predictor: the node it predicts, its kind, the images it reads and its size.

    Args:
        node: the graph node it predicts.
        kind: ``"classifier"`` (binary / categorical nodes) or ``"regressor"`` (continuous nodes).
        image_shape: ``(C, H, W)`` of its input images, in [-1, 1].
        num_classes: classes of a classifier (2 for a binary node); ``None`` for a regressor.
        mean, std: a regressor's target standardisation (the training values' mean and std, node units).
        low, high: a regressor's output bounds (the node's support; ``None``: unbounded).
        widths: channel widths of the stages (default: :func:`predictor_widths` of the image size).
        feature_dim: width of the feature layer.
    """

    node: str
    kind: str
    image_shape: tuple[int, int, int]
    num_classes: int | None = None
    mean: float = 0.0
    std: float = 1.0
    low: float | None = None
    high: float | None = None
    widths: tuple[int, ...] = ()
    feature_dim: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if not self.widths:
            object.__setattr__(self, "widths", predictor_widths(min(self.image_shape[1:])))
        object.__setattr__(self, "widths", tuple(self.widths))
        if not isinstance(self.node, str) or not self.node:
            raise ValueError(f"predictor node={self.node!r} must be a non-empty string")
        if self.kind not in PREDICTOR_KINDS:
            raise ValueError(f"predictor {self.node!r}: kind={self.kind!r} must be one of {PREDICTOR_KINDS}")
        shape = self.image_shape
        if len(shape) != 3 or not all(is_integer(s, python_int=True) for s in shape) \
                or shape[0] not in (1, 3) or not all(4 <= s <= 1024 for s in shape[1:]):
            raise ValueError(f"predictor {self.node!r}: image_shape={shape!r} must be (C, H, W) with C 1 or 3 and "
                             f"H, W in 4..1024")
        if self.kind == "classifier":
            if not is_integer(self.num_classes, 2, 100_000, python_int=True):
                raise ValueError(f"predictor {self.node!r}: num_classes={self.num_classes!r} must be an integer in "
                                 f"2..100000")
        elif self.num_classes is not None:
            raise ValueError(f"predictor {self.node!r}: a regressor has num_classes=None, got {self.num_classes!r}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not is_number(v):
                raise ValueError(f"predictor {self.node!r}: {key}={v!r} must be a finite number")
        if not self.std > 0:
            raise ValueError(f"predictor {self.node!r}: std={self.std!r} must be > 0")
        for key in ("low", "high"):
            v = getattr(self, key)
            if v is not None and not is_number(v):
                raise ValueError(f"predictor {self.node!r}: {key}={v!r} must be None or a finite number")
        if not self.widths or not all(is_integer(w, 1, MAX_PREDICTOR_WIDTH, python_int=True) for w in self.widths) \
                or len(self.widths) > 8:
            raise ValueError(f"predictor {self.node!r}: widths={self.widths!r} must be 1 to 8 integers in "
                             f"1..{MAX_PREDICTOR_WIDTH}")
        if not is_integer(self.feature_dim, 1, 4096, python_int=True):
            raise ValueError(f"predictor {self.node!r}: feature_dim={self.feature_dim!r} must be an integer in "
                             f"1..4096")

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, **json.loads(json.dumps(asdict(self)))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PredictorConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a predictor config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"format {fmt!r} is not {_FORMAT!r}: not a predictor config")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown predictor config key(s) {unknown}; known keys are {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"bad predictor config: {e}") from None


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class AttributePredictor(nn.Module):
    """A small CNN predicting one attribute from an image in [-1, 1] (see the module docstring)."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = []
        c_in = c.image_shape[0]
        for w in c.widths:
            layers.append(_stage(c_in, w))
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(c_in, c.feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(c.feature_dim, c.num_classes or 1))

    def features(self, x: Tensor) -> Tensor:
        """The feature layer ``(B, feature_dim)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)`` of a classifier; the standardised prediction ``(B,)`` of a regressor."""
        out = self.head(self.body(x))
        return out if self.config.kind == "classifier" else out[:, 0]

    def _batched(self, fn: Any, x: Tensor, batch_size: int) -> Tensor:
        was = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            with torch.no_grad():
                parts = [fn(x[i:i + batch_size].to(device=device, dtype=torch.float32)).cpu()
                         for i in range(0, len(x), batch_size)]
        finally:
            self.train(was)
        return torch.cat(parts) if parts else torch.zeros(0)

    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Class indices (int64) of a classifier; values in the node's units (float64, clipped to its support)
        of a regressor; ``(B,)`` on the CPU."""
        c = self.config
        if c.kind == "classifier":
            return self._batched(lambda b: self(b).argmax(1), x, batch_size).long()
        z = self._batched(self, x, batch_size).double()
        value = c.mean + c.std * z
        if c.low is not None or c.high is not None:
            value = value.clamp(min=c.low, max=c.high)
        return value

    def embed(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Features ``(B, feature_dim)`` on the CPU, in eval mode and in batches."""
        return self._batched(self.features, x, batch_size)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """``model.safetensors`` + ``config.json`` in the folder ``path``, crash-safely: a new, empty or earlier
        predictor folder, replaced as a whole (anything else is refused; :func:`dcfg_io.folders.save_dir`)."""
        return save_dir(path, self._write, PREDICTOR_KIND)

    def _write(self, folder: Path) -> None:
        save_tensors(folder / _WEIGHTS, self.state_dict(), metadata={"node": self.config.node})
        atomic_write_json(folder / _CONFIG, self.config.to_dict())  # the marker of a complete save: last

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, root: str | os.PathLike | None = None) -> "AttributePredictor":
        """Load a folder written by :meth:`save_pretrained` (never unpickles); its files must be regular files
        inside ``root`` (default: ``path``), and the weight shapes must match the config before it is built."""
        path = find_saved_dir(path, PREDICTOR_KIND)
        root = path if root is None else root
        try:
            config = PredictorConfig.from_dict(_read_json(path / _CONFIG, root))
        except ValueError as e:
            raise ValueError(f"{path / _CONFIG}: {e}" if str(path / _CONFIG) not in str(e) else str(e)) from None
        weights = path / _WEIGHTS
        if not os.path.lexists(weights):
            raise ValueError(f"{weights} is missing: a predictor folder holds {_CONFIG} and {_WEIGHTS}")
        check_weight_shapes(lambda: cls(config), weights, path / _CONFIG, root)
        state, _ = load_tensors(weights, root)
        model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if expected != got:
            diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
            raise ValueError(f"{weights} does not match {path / _CONFIG}: tensors {diff[:4]} differ")
        model.load_state_dict(state)
        return model.eval()


def _read_json(path: Path, root: str | os.PathLike | None = None) -> Any:
    if not os.path.lexists(path):
        raise ValueError(f"{path} is missing")
    return read_json(path, root, what="predictor config")


@dataclass
class PredictorSet:
    """The predictors of a pipeline, one per image parent, with their held-out scores.

    Attributes:
        predictors: node -> :class:`AttributePredictor`.
        metrics: node -> held-out scores (``accuracy`` / ``mae`` beside ``baseline_*``, ``n_val``), and
            ``_training``: the training settings.
    """

    predictors: dict[str, AttributePredictor]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        return list(self.predictors)

    def to(self, device: str | torch.device) -> "PredictorSet":
        for p in self.predictors.values():
            p.to(device)
        return self

    def measure(self, images: Tensor) -> dict[str, np.ndarray]:
        """Each node predicted on ``images``: name -> ``(B,)`` numpy array."""
        return {k: p.predict(images).numpy() for k, p in self.predictors.items()}

    def embed(self, images: Tensor) -> np.ndarray:
        """The predictors' features, concatenated: ``(B, sum feature_dim)`` float64."""
        return torch.cat([p.embed(images) for p in self.predictors.values()], dim=1).double().numpy()

    def save(self, path: str | os.PathLike) -> Path:
        """``path/<node>/`` per predictor and ``path/metrics.json`` (written last), crash-safely: ``path`` is new,
        empty or an earlier predictor set, replaced as a whole (anything else is refused before anything is
        touched; :func:`dcfg_io.folders.save_dir`)."""
        def write(folder: Path) -> None:
            for node, p in self.predictors.items():
                (folder / _safe_dirname(node)).mkdir()
                p._write(folder / _safe_dirname(node))
            atomic_write_json(folder / _METRICS, {"nodes": {n: _safe_dirname(n) for n in self.predictors},
                                                  "metrics": self.metrics})

        return save_dir(path, write, SET_KIND)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PredictorSet":
        """Load a folder written by :meth:`save` (never unpickles; every file a regular file inside it)."""
        path = find_saved_dir(path, SET_KIND)
        index = _read_json(path / _METRICS, path)
        if not isinstance(index, dict) or not isinstance(index.get("nodes"), dict):
            raise ValueError(f"{path / _METRICS} is not a predictor index (a JSON object with 'nodes' and 'metrics')")
        check_keys(index, ("nodes", "metrics"), str(path / _METRICS), "predictor index")
        predictors = {}
        for node, folder in index["nodes"].items():
            if not isinstance(folder, str) or folder != _safe_dirname(node):
                raise ValueError(f"{path / _METRICS}: predictor folder {folder!r} of node {node!r} is not "
                                 f"{_safe_dirname(node)!r}")
            if not os.path.lexists(path / folder):
                raise ValueError(f"{path / folder} is missing: the predictor of node {node!r} listed in {_METRICS}")
            check_entry(path / folder, path, folder=True)
            pred = AttributePredictor.from_pretrained(path / folder, root=path)
            if pred.config.node != node:
                raise ValueError(f"{path / folder}: the predictor is for node {pred.config.node!r}, not {node!r}")
            predictors[node] = pred
        return cls(predictors, dict(index.get("metrics") or {}))

    def summary(self) -> list[str]:
        """One line per predictor: its held-out score beside the constant baseline."""
        out = []
        for node in self.predictors:
            m = self.metrics.get(node, {})
            if "accuracy" in m:
                out.append(f"{node}: held-out accuracy {m['accuracy']:.3f} "
                           f"(majority class {m['baseline_accuracy']:.3f}, n={m['n_val']})")
            elif "mae" in m:
                out.append(f"{node}: held-out MAE {m['mae']:.4g} (predicting the mean {m['baseline_mae']:.4g},"
                           f" n={m['n_val']})")
        return out


def _safe_dirname(node: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in node).strip(".")
    return keep or "node"


def _node_bounds(spec: Any) -> tuple[float | None, float | None]:
    kind = spec.kind
    if kind == "positive":
        return 0.0, None
    if kind == "interval":
        return float(spec.low), float(spec.high)
    return None, None


def train_predictors(graph: Any, dataset: Any, *, nodes: Sequence[str] | None = None, epochs: int = 10,
                     batch_size: int = 128, lr: float = 2e-3, val_fraction: float = 0.1, seed: int = 0,
                     num_workers: int = 0, device: str | torch.device = "cpu", max_rows: int | None = None,
                     progress: bool = True, init: PredictorSet | None = None) -> PredictorSet:
    """Train one predictor per image parent (or per ``nodes``) on ``dataset``'s images and attributes.

    Args:
        graph: the :class:`scm.CausalGraph` (the node kinds and supports).
        dataset: a map-style dataset of ``(image (C, H, W) in [-1, 1], attributes)`` items, read through a
            ``DataLoader`` (with ``num_workers`` workers), so images are read from disk as needed.
        nodes: the nodes to predict (default: every parent of the image node).
        epochs, batch_size, lr: AdamW with a one-cycle schedule.
        val_fraction: the held-out part of the rows (seeded), on which the scores are computed.
        seed: seed of the split, the initial weights and the data order.
        num_workers: DataLoader workers.
        device: training device.
        max_rows: use at most this many rows (a seeded subset).
        progress: a tqdm bar.
        init: predictors to go on training in place (one for each trained node); if training fails (any
            exception, Ctrl-C included) each of them is restored as it was: parameters, buffers, device, mode.

    Returns:
        A :class:`PredictorSet` in eval mode.
    """
    if not is_integer(epochs, 1, python_int=True):
        raise ValueError(f"epochs={epochs!r} must be a positive integer")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 1)")
    nodes = list(graph.image_parents() if nodes is None else nodes)
    image_shape = tuple(int(s) for s in graph.spec(graph.image_node).shape)
    n_all = len(dataset)
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n_all, generator=g)
    if max_rows is not None:
        order = order[:int(max_rows)]
    n_val = max(1, int(round(len(order) * float(val_fraction))))
    if len(order) - n_val < 2:
        raise ValueError(f"{len(order)} rows are too few to train and score the predictors (need at least 3)")
    val_idx, train_idx = order[:n_val], order[n_val:]
    attrs = _attribute_table(dataset, nodes)
    device = torch.device(device)
    # the initial weights and the dropout masks come from a seeded stream of their own, so that the
    # predictors are the same whatever ran before (e.g. a process group's set-up under torchrun)
    if init is not None:
        missing = [n for n in nodes if n not in getattr(init, "predictors", {})]
        if missing:
            raise ValueError(f"init has no predictor of node(s) {missing}; it has {list(init.predictors)}")
    with restored_on_error(*(init.predictors[n] for n in nodes) if init is not None else ()):
        return _train_predictors(graph, dataset, nodes, attrs, train_idx, val_idx, n_val, image_shape, g,
                                 epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed,
                                 num_workers=num_workers, device=device, progress=progress, init=init)


def _train_predictors(graph: Any, dataset: Any, nodes: list[str], attrs: dict[str, Tensor], train_idx: Tensor,
                      val_idx: Tensor, n_val: int, image_shape: tuple[int, ...], g: torch.Generator, *, epochs: int,
                      batch_size: int, lr: float, val_fraction: float, seed: int, num_workers: int,
                      device: torch.device, progress: bool, init: PredictorSet | None) -> PredictorSet:
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if init is not None:
            models = {n: init.predictors[n].to(device) for n in nodes}
        else:
            models = {n: AttributePredictor(_config_for_node(graph, n, attrs[n][train_idx], image_shape)).to(device)
                      for n in nodes}
        params = [p for m in models.values() for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        steps_per_epoch = math.ceil(len(train_idx) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc="predictors", dynamic_ncols=True)
        history = []
        for epoch in range(epochs):
            for m in models.values():
                m.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=g)]
            total, seen = 0.0, 0
            for x, a in _loader(dataset, perm.tolist(), batch_size, num_workers):
                x = x.to(device)
                loss = x.new_zeros(())
                for n, m in models.items():
                    loss = loss + _loss(m, x, a[n].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(x)
                seen += len(x)
                bar.update(1)
                bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
            history.append({"epoch": epoch + 1, "loss": total / max(seen, 1)})
        bar.close()
    metrics = _score(models, dataset, val_idx.tolist(), train_idx, attrs, batch_size, num_workers)
    metrics["_training"] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "val_fraction": val_fraction,
                            "seed": seed, "n_train": len(train_idx), "n_val": n_val, "history": history}
    for m in models.values():
        m.eval().cpu()
    return PredictorSet(models, metrics)


def _config_for_node(graph: Any, node: str, values: Tensor, image_shape: tuple[int, int, int]) -> PredictorConfig:
    spec = graph.spec(node)
    if spec.is_discrete:
        return PredictorConfig(node, "classifier", image_shape, num_classes=int(spec.cardinality or 2))
    v = values.double()
    std = float(v.std()) if v.numel() > 1 else 1.0
    low, high = _node_bounds(spec)
    return PredictorConfig(node, "regressor", image_shape, mean=float(v.mean()),
                           std=std if std > 1e-12 else 1.0, low=low, high=high)


def _loss(model: AttributePredictor, x: Tensor, target: Tensor) -> Tensor:
    c = model.config
    out = model(x)
    if c.kind == "classifier":
        return F.cross_entropy(out, target.long())
    return F.smooth_l1_loss(out, (target.double() - c.mean).div(c.std).float())


def _attribute_table(dataset: Any, nodes: Sequence[str]) -> dict[str, Tensor]:
    """Every row's attributes without reading images: ``dataset.attributes`` when present."""
    table = getattr(dataset, "attributes", None)
    if isinstance(table, Mapping) and all(n in table for n in nodes):
        return {n: torch.as_tensor(table[n]) for n in nodes}
    rows = [dataset[i][1] for i in range(len(dataset))]
    return {n: torch.stack([torch.as_tensor(r[n]) for r in rows]) for n in nodes}


def _collate(items: list[Any]) -> tuple[Tensor, dict[str, Tensor]]:
    images = torch.stack([torch.as_tensor(it[0]) for it in items]).float()
    keys = items[0][1].keys()
    return images, {k: torch.stack([torch.as_tensor(it[1][k]) for it in items]) for k in keys}


def _loader(dataset: Any, indices: list[int], batch_size: int, num_workers: int) -> Any:
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=_collate,
                                       num_workers=num_workers)


def _score(models: Mapping[str, AttributePredictor], dataset: Any, val: list[int], train_idx: Tensor,
           attrs: Mapping[str, Tensor], batch_size: int, num_workers: int) -> dict[str, Any]:
    preds: dict[str, list[Tensor]] = {n: [] for n in models}
    for x, _ in _loader(dataset, val, batch_size, num_workers):
        for n, m in models.items():
            preds[n].append(m.predict(x))
    out: dict[str, Any] = {}
    for n, m in models.items():
        p = torch.cat(preds[n])
        truth = attrs[n][torch.as_tensor(val)]
        if m.config.kind == "classifier":
            majority = int(torch.mode(attrs[n][train_idx].long()).values)
            out[n] = {"kind": "classifier", "accuracy": float((p == truth.long()).double().mean()),
                      "baseline_accuracy": float((truth.long() == majority).double().mean()), "n_val": len(val)}
        else:
            mean = float(attrs[n][train_idx].double().mean())
            err = (p.double() - truth.double()).abs()
            out[n] = {"kind": "regressor", "mae": float(err.mean()),
                      "baseline_mae": float((truth.double() - mean).abs().mean()), "n_val": len(val)}
    return out
