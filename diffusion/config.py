"""Frozen, JSON-serialisable configs of the image mechanism.

Three small dataclasses:

* :class:`AttributeSpec`: one conditioning attribute (a parent of the image node).
* :class:`ImageModelConfig`: the denoiser: image shape, attributes, UNet backbone, noise schedule.
* :class:`TrainConfig`: DDPM training hyper-parameters (optimiser, EMA, condition dropout, checkpoints).

Each round-trips through ``to_dict`` / ``from_dict`` (and JSON) and validates itself on creation, so a
bad value is reported where it is written, not deep inside a forward pass.

Example:
    >>> spec = AttributeSpec("digit", "categorical", cardinality=10)
    >>> config = ImageModelConfig(attributes=(AttributeSpec("thickness", "continuous", mean=2.5, std=1.0), spec))
    >>> ImageModelConfig.from_json(config.to_json()) == config
    True
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from dcfg_io.checks import is_integer, is_number

ATTRIBUTE_KINDS = ("continuous", "categorical")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DROPOUT_MODES = ("per_group", "whole")
#: training precisions: float32, or autocast mixed precision in bfloat16 / float16 (float16: CUDA only, loss-scaled)
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")
#: TrainConfig fields that may differ between a run and its resumption (they leave the loss sequence unchanged).
RESUMABLE_CHANGES = ("steps", "ckpt_every", "log_every")
#: The ``format`` tag of a saved :class:`ImageModelConfig` (its ``config.json``).
CONFIG_FORMAT = "dcfg.diffusion.ImageModelConfig/1"
#: Bounds of an :class:`ImageModelConfig`, checked on creation (so also before a saved model is built): generous
#: for any model this project trains, small enough that a damaged or hostile ``config.json`` cannot make a loader
#: allocate gigabytes before its weights are compared with the config.
LIMITS = {"channels": 64, "image_side": 4096, "attributes": 256, "cardinality": 100_000, "block_dim": 4096,
          "levels": 8, "level_channels": 4096, "layers_per_block": 16, "attention_head_dim": 4096,
          "norm_num_groups": 4096, "time_embedding_dim": 16384, "num_train_timesteps": 100_000}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AttributeSpec:
    """One conditioning attribute of the image.

    Args:
        name: the attribute's name (the DAG node's name); used as the key of ``attrs`` dicts.
        kind: ``"continuous"`` (a real number, standardised with ``mean``/``std`` before its MLP) or
            ``"categorical"`` (int64 class indices in ``[0, cardinality)``, through ``nn.Embedding``).
        cardinality: number of classes; required for categorical attributes, ``None`` otherwise.
        mean: the value subtracted before a continuous attribute's MLP (e.g. its training mean).
        std: the value divided by after subtracting ``mean`` (e.g. its training std); must be > 0.

    Example:
        >>> AttributeSpec("thickness", "continuous", mean=2.5, std=0.8).kind
        'continuous'
    """

    name: str
    kind: Literal["continuous", "categorical"]
    cardinality: int | None = None
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"attribute name {self.name!r} must be a non-empty string, e.g. 'thickness'")
        if self.kind not in ATTRIBUTE_KINDS:
            raise ValueError(
                f"attribute {self.name!r}: kind={self.kind!r} is not one of {ATTRIBUTE_KINDS}")
        if self.kind == "categorical":
            if not is_integer(self.cardinality, 2, LIMITS["cardinality"], python_int=True):
                raise ValueError(
                    f"categorical attribute {self.name!r}: cardinality={self.cardinality!r} must be an "
                    f"integer >= 2 (the number of classes, at most {LIMITS['cardinality']})")
        elif self.cardinality is not None:
            raise ValueError(
                f"continuous attribute {self.name!r}: cardinality={self.cardinality!r} must be None; "
                f"use kind='categorical' for a discrete attribute")
        if not (_is_number(self.mean) and is_number(self.mean)):
            raise ValueError(f"attribute {self.name!r}: mean={self.mean!r} must be a finite number")
        if not (_is_number(self.std) and is_number(self.std, 0, low_open=True)):
            raise ValueError(f"attribute {self.name!r}: std={self.std!r} must be a finite number > 0")


def _tuple(value: Any) -> Any:
    """Lists (from JSON) back to tuples, recursively."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuple(v) for v in value)
    return value


@dataclass(frozen=True)
class ImageModelConfig:
    """The conditional denoiser: image shape, attributes, UNet backbone and noise schedule.

    The defaults are a 28x28 grey-scale UNet of about 1.1M parameters (resolutions 28 -> 14 -> 7, self-attention
    at 7x7 and in the middle block).

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2 ** (len(block_out_channels) - 1)``.
        attributes: the conditioning attributes, in the order of their blocks in the embedding.
        block_dim: width ``d`` of each attribute's embedding block.
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet layers per UNet level.
        attention_levels: per level, whether its down/up blocks use self-attention.
        mid_attention: whether the UNet's middle block has self-attention.
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        time_embedding_dim: width of the UNet's time embedding (also the conditioning width);
            ``None`` means ``4 * block_out_channels[0]``.
        dropout: dropout inside the UNet's ResNet blocks.
        num_train_timesteps: ``T``, the number of DDPM steps.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (as in diffusers).
        beta_start: first beta of the (scaled) linear schedules.
        beta_end: last beta of the (scaled) linear schedules.

    Bounds (:data:`LIMITS`, checked on creation and so before a saved model is built): at most 64 image channels
    and 4096 pixels a side, 256 attributes of at most 100,000 classes, ``block_dim`` <= 4096, 1 to 8 levels of at
    most 4096 channels, ``layers_per_block`` <= 16, ``attention_head_dim`` and ``norm_num_groups`` <= 4096,
    ``time_embedding_dim`` <= 16384, ``num_train_timesteps`` <= 100,000.

    Example:
        >>> config = ImageModelConfig(attributes=(AttributeSpec("digit", "categorical", cardinality=10),))
        >>> config.cond_dim
        128
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    attributes: tuple[AttributeSpec, ...] = ()
    block_dim: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, True)
    mid_attention: bool = True
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    time_embedding_dim: int | None = None
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        # Normalise JSON lists / dicts into tuples / specs, so that equality and hashing work.
        object.__setattr__(self, "image_shape", _tuple(self.image_shape))
        object.__setattr__(self, "block_out_channels", _tuple(self.block_out_channels))
        object.__setattr__(self, "attention_levels", _tuple(self.attention_levels))
        if not isinstance(self.attributes, (list, tuple)) or len(self.attributes) > LIMITS["attributes"]:
            raise ValueError(f"attributes must be a list of at most {LIMITS['attributes']} attribute specs, got "
                             f"{self.attributes!r:.80}")
        for a in self.attributes:
            if not isinstance(a, (AttributeSpec, dict)):
                raise ValueError(f"attribute {a!r:.80} must be an AttributeSpec or a dict of its fields")
        attrs = tuple(a if isinstance(a, AttributeSpec) else AttributeSpec(**a) for a in self.attributes)
        object.__setattr__(self, "attributes", attrs)
        self._validate()

    def _validate(self) -> None:
        shape = self.image_shape
        if not isinstance(shape, tuple) or len(shape) != 3 \
                or not all(is_integer(s, 1, python_int=True) for s in shape) \
                or shape[0] > LIMITS["channels"] or max(shape[1:]) > LIMITS["image_side"]:
            raise ValueError(f"image_shape={shape!r} must be three positive integers (C, H, W), e.g. (1, 28, 28), "
                             f"with C <= {LIMITS['channels']} and H, W <= {LIMITS['image_side']}")
        names = [a.name for a in self.attributes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"attribute names {dup} appear more than once in {names}; names must be unique")
        for key in ("block_dim", "layers_per_block", "attention_head_dim", "norm_num_groups", "num_train_timesteps"):
            value = getattr(self, key)
            if not is_integer(value, 1, LIMITS[key], python_int=True):
                raise ValueError(f"{key}={value!r} must be a positive integer (at most {LIMITS[key]})")
        chans = self.block_out_channels
        if not isinstance(chans, tuple) or not 1 <= len(chans) <= LIMITS["levels"] \
                or not all(is_integer(c, 1, LIMITS["level_channels"], python_int=True) for c in chans):
            raise ValueError(f"block_out_channels={chans!r} must be a non-empty tuple of positive integers (at most "
                             f"{LIMITS['levels']} levels of at most {LIMITS['level_channels']})")
        if not isinstance(self.attention_levels, tuple) or not all(isinstance(a, bool) for a in self.attention_levels):
            raise ValueError(f"attention_levels={self.attention_levels!r} must be one true/false per level")
        if not isinstance(self.mid_attention, bool):
            raise ValueError(f"mid_attention={self.mid_attention!r} must be true or false")
        bad = [c for c in chans if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}; "
                f"pick channels that are multiples of it")
        if len(self.attention_levels) != len(chans):
            raise ValueError(
                f"attention_levels={self.attention_levels!r} needs one bool per level of "
                f"block_out_channels={chans!r} ({len(chans)} levels)")
        factor = 2 ** (len(chans) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"image size {shape[1]}x{shape[2]} is not divisible by {factor}, the UNet's downsampling factor "
                f"for {len(chans)} levels; use fewer levels or pad the image")
        if self.time_embedding_dim is not None and not is_integer(self.time_embedding_dim, 1,
                                                                  LIMITS["time_embedding_dim"], python_int=True):
            raise ValueError(f"time_embedding_dim={self.time_embedding_dim!r} must be None or a positive integer "
                             f"(at most {LIMITS['time_embedding_dim']})")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        if not isinstance(self.beta_schedule, str) or self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r} is not one of {BETA_SCHEDULES}")
        if not (_is_number(self.beta_start) and _is_number(self.beta_end)) \
                or not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(
                f"beta_start={self.beta_start!r}, beta_end={self.beta_end!r} must satisfy 0 < beta_start < "
                f"beta_end < 1")

    # ------------------------------------------------------------------ derived
    @property
    def attribute_names(self) -> tuple[str, ...]:
        """Names of the conditioning attributes, in block order."""
        return tuple(a.name for a in self.attributes)

    @property
    def cond_dim(self) -> int:
        """Width of the conditioning vector (= the UNet's time-embedding width)."""
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    def attribute(self, name: str) -> AttributeSpec:
        """The spec of attribute ``name``; ``KeyError`` naming the known attributes otherwise."""
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"unknown attribute {name!r}; the model knows {list(self.attribute_names)}")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        out["format"] = CONFIG_FORMAT
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        data = dict(data)
        fmt = data.pop("format", CONFIG_FORMAT)
        if fmt != CONFIG_FORMAT:
            raise ValueError(f"config format {fmt!r} is not {CONFIG_FORMAT!r}; this is not an ImageModelConfig")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ImageModelConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ImageModelConfig":
        """Parse :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class TrainConfig:
    """DDPM epsilon-prediction training hyper-parameters.

    Condition dropout (what makes classifier-free guidance possible):

    * ``dropout_mode="per_group"``: every attribute's block is dropped independently with probability
      ``p_attr``, and the whole condition with probability ``p_all``. The model then sees every partial
      condition that DCFG queries; ``p_attr=0.5`` draws the kept subset uniformly over all subsets.
    * ``dropout_mode="whole"``: only the whole condition is dropped, with probability ``p_all`` (the paper's
      recipe, kept for comparison).

    Args:
        steps: total number of optimiser steps (a resumed run continues up to this number).
        batch_size: global batch size (split evenly across processes under ``torchrun``).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        adam_betas: AdamW ``(beta1, beta2)``.
        ema_decay: decay of the exponential moving average of the weights (warmed up as
            ``min(ema_decay, (1 + n) / (10 + n))``).
        grad_clip: maximum global gradient norm (``0`` disables clipping).
        warmup: linear learning-rate warm-up steps.
        seed: seeds the initial weights, the data order, the noise, the timesteps and the dropout masks.
        dropout_mode: ``"per_group"`` or ``"whole"`` (see above).
        p_attr: per-attribute drop probability (``per_group`` mode only).
        p_all: whole-condition drop probability.
        ckpt_every: write a checkpoint every this many steps (and always at exit).
        log_every: flush ``loss.csv`` every this many steps.
        precision: ``"fp32"``, or mixed precision: the forward pass under ``torch.autocast`` in ``"bf16"`` (CUDA
            with bf16 support, or a CPU, where it is fast only with AMX / AVX512-BF16) or ``"fp16"`` (CUDA only,
            with a gradient scaler). Weights, optimiser state, EMA and the loss stay in float32.

    Example:
        >>> TrainConfig(steps=100, batch_size=16).dropout_mode
        'per_group'
    """

    steps: int = 20000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    warmup: int = 200
    seed: int = 0
    dropout_mode: Literal["per_group", "whole"] = "per_group"
    p_attr: float = 0.25
    p_all: float = 0.1
    ckpt_every: int = 500
    log_every: int = 10
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "adam_betas", _tuple(self.adam_betas))
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r} is not one of {TRAIN_PRECISIONS}")
        for key in ("steps", "batch_size", "ckpt_every", "log_every"):
            value = getattr(self, key)
            if not is_integer(value, 1, python_int=True):
                raise ValueError(f"TrainConfig.{key}={value!r} must be a positive integer")
        if not is_integer(self.warmup, 0, python_int=True):
            raise ValueError(f"TrainConfig.warmup={self.warmup!r} must be a non-negative integer")
        if not is_integer(self.seed, 0, python_int=True):
            raise ValueError(f"TrainConfig.seed={self.seed!r} must be a non-negative integer")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr={self.lr!r} must be a finite number > 0, e.g. 3e-4")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay!r} must be >= 0")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"TrainConfig.adam_betas={self.adam_betas!r} must be two numbers in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay={self.ema_decay!r} must be in [0, 1), e.g. 0.999")
        if not self.grad_clip >= 0:
            raise ValueError(f"TrainConfig.grad_clip={self.grad_clip!r} must be >= 0 (0 disables clipping)")
        if self.dropout_mode not in DROPOUT_MODES:
            raise ValueError(f"TrainConfig.dropout_mode={self.dropout_mode!r} is not one of {DROPOUT_MODES}")
        for key in ("p_attr", "p_all"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TrainConfig.{key}={value!r} must be a probability in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)
