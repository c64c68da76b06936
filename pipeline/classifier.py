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

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffusion._io import load_tensors, save_tensors


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`DigitClassifier`."""

    in_channels: int = 1
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "feature_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"classifier config {name}={value!r} must be a positive integer")


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

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``path`` (atomically per file)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path / "config.json", json.dumps(asdict(self.config), indent=2))
        save_tensors(path / "model.safetensors", self.state_dict())  # atomic, with a sha256 of the data

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "DigitClassifier":
        """Load from a directory written by :meth:`save_pretrained`."""
        path = Path(path)
        try:
            cfg = ClassifierConfig(**json.loads((path / "config.json").read_text()))
        except (OSError, TypeError, ValueError) as e:  # incl. JSONDecodeError and bad fields
            raise ValueError(f"{path}: cannot read the classifier's config.json ({e})") from None
        model = cls(cfg)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"{path}: model.safetensors is missing (a classifier directory holds config.json and "
                             f"model.safetensors, written by save_pretrained)")
        state, _ = load_tensors(weights)  # ValueError when truncated or corrupted
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{path}: the weights do not match config.json ({e})") from None
        return model.eval()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
                     progress: bool = True) -> tuple[DigitClassifier, list[dict]]:
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

    Returns:
        ``(model, history)`` with one dict per epoch (loss, train accuracy, val accuracy).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier(config)
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
