"""The anti-causal digit classifier: the benchmark's oracle for do(digit) and its realism features.

A small CNN trained on rendered training digits (never on the test split). It scores:

* effectiveness of do(digit): accuracy against the target class;
* spurious change under do(thickness)/do(intensity): digit flips;
* realism: Frechet distance in its penultimate (``features``) space.

Example:
    >>> import torch
    >>> clf = DigitClassifier()
    >>> clf(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dcfg_io.atomic import atomic_write_json
from dcfg_io.checks import is_integer
from dcfg_io.folders import SavedKind, find_saved_dir, save_dir
from dcfg_io.reads import read_json_object
from dcfg_io.rollback import restored_on_error
from dcfg_io.tensors import check_weight_shapes, load_tensors, save_tensors

#: Bounds of a :class:`ClassifierConfig` (checked on creation, so before a saved classifier is built).
CLASSIFIER_LIMITS = {"in_channels": 64, "num_classes": 100_000, "width": 1024, "feature_dim": 4096}


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`DigitClassifier`.

    Each field is a positive integer of at most :data:`CLASSIFIER_LIMITS`: 64 input channels, 100,000 classes,
    width 1024, feature_dim 4096.
    """

    in_channels: int = 1
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "feature_dim"):
            value = getattr(self, name)
            if not is_integer(value, 1, CLASSIFIER_LIMITS[name], python_int=True):
                raise ValueError(f"classifier config {name}={value!r} must be a positive integer (at most "
                                 f"{CLASSIFIER_LIMITS[name]})")


def _is_classifier_config(c: object) -> bool:
    return isinstance(c, dict) and "num_classes" in c and set(c) <= set(ClassifierConfig.__dataclass_fields__)


#: a saved classifier folder: its config.json (written last) holds ClassifierConfig's fields
SAVED_KIND = SavedKind("classifier", "config.json", _is_classifier_config)


class DigitClassifier(nn.Module):
    """Conv(32)-Conv(32)-pool-Conv(64)-Conv(64)-pool-FC(128)-FC(10), on images in [-1, 1]."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or ClassifierConfig()
        w = c.width
        self.body = nn.Sequential(
            nn.Conv2d(c.in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(2 * w * 7 * 7, c.feature_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(c.feature_dim, c.num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (B, feature_dim), used for the Frechet distance."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.body(x))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Predicted class indices (B,), evaluated in eval mode and in batches."""
        was = self.training
        self.eval()
        out = torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    @torch.no_grad()
    def embed(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Penultimate features of many images, in eval mode and in batches."""
        was = self.training
        self.eval()
        out = torch.cat([self.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into the folder ``path``, crash-safely.

        ``path`` must be new, empty or an earlier saved classifier (anything else is refused with a ``ValueError``
        before anything is touched); it is replaced as a whole (:func:`dcfg_io.folders.save_dir`).
        """
        def write(folder: Path) -> None:
            save_tensors(folder / "model.safetensors", self.state_dict())  # with a sha256 of the data
            atomic_write_json(folder / "config.json", asdict(self.config))  # the marker of a complete save: last

        return save_dir(path, write, SAVED_KIND)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "DigitClassifier":
        """Load from a directory written by :meth:`save_pretrained` (never unpickles).

        Every file must be a regular file inside ``path``, the config within :data:`CLASSIFIER_LIMITS` with no
        unknown key, and the weight shapes in the safetensors header must match it, all before the network is
        built. After an interrupted save the complete copy beside ``path`` is loaded.
        """
        path = find_saved_dir(path, SAVED_KIND)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        try:
            data = read_json_object(cfg_file, path, what="classifier config",
                                    known=ClassifierConfig.__dataclass_fields__)
            cfg = ClassifierConfig(**data)
        except FileNotFoundError:
            raise ValueError(f"{path}: config.json is missing (a classifier directory holds config.json and "
                             f"model.safetensors, written by save_pretrained)") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the classifier's config.json ({e})") from None
        if not os.path.lexists(weights):
            raise ValueError(f"{path}: model.safetensors is missing (a classifier directory holds config.json and "
                             f"model.safetensors, written by save_pretrained)")
        check_weight_shapes(lambda: cls(cfg), weights, cfg_file, path)
        state, _ = load_tensors(weights, path)  # ValueError when truncated or corrupted
        model = cls(cfg)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{path}: the weights do not match config.json ({e})") from None
        return model.eval()


def _augment(x: Tensor, gen: torch.Generator, max_shift: int = 2, max_rot_deg: float = 10.0,
             elastic: float = 0.0) -> Tensor:
    """Random small rotations, scalings, shifts and (optionally) elastic distortions; the
    background stays at -1.

    The elastic field is Gaussian noise of ``elastic`` pixels' amplitude smoothed over about 4 pixels
    (Simard et al. 2003), added to the affine sampling grid.
    """
    b, _, h, w = x.shape
    ang = (torch.rand(b, generator=gen) * 2 - 1) * max_rot_deg * torch.pi / 180
    sc = 1 + (torch.rand(b, generator=gen) * 2 - 1) * 0.08
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 * max_shift / w)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if elastic > 0:
        field = torch.randn(b, 2, h // 4, w // 4, generator=gen, dtype=x.dtype)
        field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1) * (2 * elastic / w)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def train_classifier(images: Tensor, labels: Tensor, *, epochs: int = 8, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, augment: bool = True, elastic: float = 1.0,
                     max_rot_deg: float = 10.0, config: ClassifierConfig | None = None,
                     val: tuple[Tensor, Tensor] | None = None,
                     progress: bool = True, model: DigitClassifier | None = None) -> tuple[DigitClassifier, list[dict]]:
    """Train a :class:`DigitClassifier` with AdamW and a one-cycle schedule.

    Args:
        images: (N, 1, 28, 28) in [-1, 1].
        labels: (N,) int64 class indices.
        epochs, batch_size, lr: optimisation settings.
        seed: seed of initialisation, shuffling and augmentation.
        augment: random small affine transforms.
        elastic: amplitude (pixels) of random elastic distortions when augmenting (0 = none).
        max_rot_deg: largest random rotation when augmenting, in degrees.
        config: the network's :class:`ClassifierConfig` (default: ``ClassifierConfig()``).
        val: optional held-out ``(images, labels)``; its accuracy is logged per epoch.
        progress: tqdm bar.
        model: a classifier to go on training in place (its config wins over ``config``); if training fails (any
            exception, Ctrl-C included) every parameter, buffer and mode is restored as it was.

    Returns:
        ``(model, history)`` with one dict per epoch (loss, train accuracy, val accuracy).
    """
    if model is not None and not isinstance(model, DigitClassifier):
        raise TypeError(f"model must be a DigitClassifier, got {type(model).__name__}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if model is None:
        model = DigitClassifier(config)
    with restored_on_error(model):
        return _train_classifier(model, images, labels, gen, epochs=epochs, batch_size=batch_size, lr=lr,
                                 augment=augment, elastic=elastic, max_rot_deg=max_rot_deg, val=val,
                                 progress=progress)


def _train_classifier(model: DigitClassifier, images: Tensor, labels: Tensor, gen: torch.Generator, *, epochs: int,
                      batch_size: int, lr: float, augment: bool, elastic: float, max_rot_deg: float,
                      val: tuple[Tensor, Tensor] | None, progress: bool) -> tuple[DigitClassifier, list[dict]]:
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(images)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    history = []
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc="classifier")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot, correct, seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            x, y = images[idx], labels[idx]
            if augment:
                x = _augment(x, gen, max_rot_deg=max_rot_deg, elastic=elastic)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{tot / seen:.3f}")
        rec = {"epoch": epoch + 1, "loss": tot / seen, "train_acc": correct / seen}
        if val is not None:
            rec["val_acc"] = float((model.predict(val[0]) == val[1]).float().mean())
        history.append(rec)
    bar.close()
    return model.eval(), history
