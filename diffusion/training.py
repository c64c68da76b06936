"""DDPM epsilon-prediction training with per-group condition dropout, EMA, atomic resumable checkpoints and DDP.

The loss (DDPM, Ho et al. 2020, eq. 14), for a batch of images x_0 with attributes a:

    t ~ U{0..T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
    m ~ keep-masks (condition dropout),  L = || eps - eps_theta(x_t, t, a, m) ||^2.

Determinism: every random draw of step ``s`` (its batch indices, t, eps and m) is a pure function of
``(seed, s)``, drawn for the *global* batch and then sliced per process. Hence

* a run resumed from a checkpoint continues with exactly the same loss sequence (on the CPU), and
* ``torchrun --nproc_per_node=N`` computes the same gradients as one process with the same global batch
  (up to the float rounding of the all-reduce).

The data order is a seeded permutation per epoch; the stream of epochs is cut into consecutive global batches
(an epoch boundary may fall inside a batch). The data position is therefore ``step * batch_size`` and is saved
with every checkpoint (as ``epoch`` and ``offset``).

Files in ``out_dir``:

* ``checkpoint.safetensors`` (+ ``checkpoint.json`` summary): everything needed to resume, see
  :mod:`diffusion.checkpoint`; written every ``ckpt_every`` steps and at exit, also on Ctrl-C / SIGTERM;
* ``model/``: the EMA weights as a :meth:`ConditionalUNet.save_pretrained` directory, refreshed with every
  checkpoint (``ConditionalUNet.from_pretrained(out_dir / "model")``);
* ``loss.csv``: ``step,loss,lr,wall_time`` (one row per step, global-batch mean loss, seconds since the run began).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dcfg_io.atomic import atomic_write_bytes, atomic_write_json
from dcfg_io.checks import is_integer
from dcfg_io.rollback import restored_on_error
from dcfg_io.tensors import save_tensors
from diffusion import checkpoint as ckpt
from diffusion.config import RESUMABLE_CHANGES, ImageModelConfig, TrainConfig
from diffusion.distributed import DistContext, setup
from diffusion.model import CONFIG_NAME, WEIGHTS_NAME, ConditionalUNet, load_state_checked

LOSS_CSV = "loss.csv"
MODEL_DIR = "model"

# tags that separate the independent random streams derived from (seed, step)
_TAG_ORDER, _TAG_STEP = 1, 2


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        out_dir: the run directory.
        model_dir: the EMA model directory (``out_dir / "model"``).
        model: the EMA model (eval mode), loaded from ``model_dir``'s weights.
        start_step: the number of steps already done when this call started (0 for a fresh run).
        step: the number of steps done when this call returned.
        losses: the global-batch mean loss of every step run by this call, in order.
        wall_time: seconds spent in this call's training loop.
        images_per_second: training throughput of this call (global batch images / second).
        world_size: number of processes that trained.
    """

    out_dir: Path
    model_dir: Path
    model: ConditionalUNet
    start_step: int
    step: int
    losses: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    images_per_second: float = 0.0
    world_size: int = 1


# ---------------------------------------------------------------------------------------------------- randomness
def _mix(seed: int, tag: int, value: int) -> int:
    """A well-mixed 63-bit seed from ``(seed, tag, value)``."""
    return int(np.random.SeedSequence([seed, tag, value]).generate_state(1, dtype=np.uint64)[0] & (2 ** 63 - 1))


class DataOrder:
    """The infinite index stream: a seeded permutation of ``range(n)`` per epoch, cut into batches."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, _TAG_ORDER, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def batch_with_epochs(self, step: int, batch_size: int) -> list[tuple[int, int]]:
        """``(epoch, dataset index)`` of every row of global batch number ``step``."""
        out: list[tuple[int, int]] = []
        pos = step * batch_size
        while len(out) < batch_size:
            epoch, offset = divmod(pos, self.n)
            take = min(batch_size - len(out), self.n - offset)
            out.extend((epoch, i) for i in self._permutation(epoch)[offset:offset + take].tolist())
            pos += take
        return out

    def batch(self, step: int, batch_size: int) -> list[int]:
        """The dataset indices of global batch number ``step``."""
        return [i for _, i in self.batch_with_epochs(step, batch_size)]


def step_draws(train_config: TrainConfig, step: int, shape: Sequence[int], num_attrs: int, T: int
                ) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, eps, keep)`` of global batch ``step``: timesteps (B,), noise (B, C, H, W), keep-mask (B, K) bool."""
    g = torch.Generator().manual_seed(_mix(train_config.seed, _TAG_STEP, step))
    B = train_config.batch_size
    t = torch.randint(0, T, (B,), generator=g)
    eps = torch.randn((B, *shape), generator=g)
    u_attr = torch.rand((B, num_attrs), generator=g)
    u_all = torch.rand((B,), generator=g)
    drop = (u_all < train_config.p_all)[:, None].expand(B, num_attrs)
    if train_config.dropout_mode == "per_group":
        drop = drop | (u_attr < train_config.p_attr)
    return t, eps, ~drop


def _lr_at(train_config: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then constant."""
    if train_config.warmup and step < train_config.warmup:
        return train_config.lr * (step + 1) / train_config.warmup
    return train_config.lr


# ---------------------------------------------------------------------------------------------------- data
def _fetch(dataset: Any, indices: list[int]) -> list[Any]:
    getitems = getattr(dataset, "__getitems__", None)
    if callable(getitems):
        return list(getitems(indices))
    return [dataset[i] for i in indices]


class _Loader:
    """Fetches rows in stream order, calling ``dataset.set_epoch(epoch)`` (if it has one) when the epoch changes,
    as with ``DistributedSampler.set_epoch``; a dataset that redraws per epoch must do so deterministically."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.set_epoch = getattr(dataset, "set_epoch", None)
        self.epoch: int | None = None

    def __call__(self, rows: list[tuple[int, int]]) -> list[Any]:
        if not callable(self.set_epoch):
            return _fetch(self.dataset, [i for _, i in rows])
        samples: list[Any] = []
        start = 0
        while start < len(rows):
            epoch = rows[start][0]
            end = start
            while end < len(rows) and rows[end][0] == epoch:
                end += 1
            if epoch != self.epoch:
                self.set_epoch(epoch)
                self.epoch = epoch
            samples.extend(_fetch(self.dataset, [i for _, i in rows[start:end]]))
            start = end
        return samples


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is this rank's collated slice of the global batch of that step (the DataLoader's unit, so
    that worker processes read and decode ahead of the training loop in the same deterministic order)."""

    def __init__(self, order: "DataOrder", load: _Loader, batch_size: int, lo: int, hi: int,
                 config: ImageModelConfig) -> None:
        self.order, self.load, self.batch_size, self.lo, self.hi, self.config = order, load, batch_size, lo, hi, config

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        rows = self.order.batch_with_epochs(int(step), self.batch_size)[self.lo:self.hi]
        return _collate(self.load(rows), self.config)


def _batch_stream(batches: _StepBatches, start: int, stop: int, num_workers: int) -> Iterator[Any]:
    if num_workers <= 0:
        return (batches[s] for s in range(start, stop))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop),
                                         num_workers=num_workers, prefetch_factor=2)
    return iter(loader)


def training_batches(dataset: Any, config: ImageModelConfig, batch_size: int, steps: int, *, seed: int = 0,
                     num_workers: int = 0) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """The first ``steps`` collated ``(images, attributes)`` batches :func:`train` reads from ``dataset`` in one
    process with data seed ``seed``: the same seeded order, ``set_epoch`` calls, DataLoader workers and collation,
    without the model (``dcfg bench train`` measures this data path alone).

    Example:
        >>> from diffusion import AttributeSpec, ImageModelConfig
        >>> config = ImageModelConfig(image_shape=(1, 4, 4), attributes=(AttributeSpec("a", "continuous"),))
        >>> data = [(torch.zeros(1, 4, 4), {"a": float(i)}) for i in range(5)]
        >>> [tuple(x.shape) for x, _ in training_batches(data, config, batch_size=2, steps=3)]
        [(2, 1, 4, 4), (2, 1, 4, 4), (2, 1, 4, 4)]
    """
    batches = _StepBatches(DataOrder(len(dataset), seed), _Loader(dataset), batch_size, 0, batch_size, config)
    return _batch_stream(batches, 0, steps, num_workers)


def _collate(samples: list[Any], config: ImageModelConfig) -> tuple[Tensor, dict[str, Tensor]]:
    images = torch.stack([torch.as_tensor(s[0]) for s in samples]).float()
    attrs: dict[str, Tensor] = {}
    for spec in config.attributes:
        v = torch.stack([torch.as_tensor(s[1][spec.name]).reshape(()) for s in samples])
        attrs[spec.name] = v.long() if spec.kind == "categorical" else v.float()
    return images, attrs


def _check_dataset(dataset: Any, config: ImageModelConfig) -> int:
    """Validate the dataset's length and first item; returns its length."""
    try:
        n = len(dataset)
    except TypeError as e:
        raise TypeError(f"dataset must be a map-style Dataset with __len__ and __getitem__, "
                        f"got {type(dataset).__name__}") from e
    if n < 1:
        raise ValueError("dataset is empty; training needs at least one (image, attrs) item")
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping)):
        raise TypeError(f"dataset[0] must be a pair (image (C,H,W) tensor, attrs dict), got {type(item).__name__}")
    image, attrs = torch.as_tensor(item[0]), item[1]
    if tuple(image.shape) != config.image_shape:
        raise ValueError(f"dataset[0] image has shape {tuple(image.shape)}; the model config expects "
                         f"image_shape={config.image_shape}")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"dataset[0] image has values in [{lo:.3g}, {hi:.3g}]; images must lie in [-1, 1] "
                         f"(map [0, 1] images with 2 * x - 1, or [0, 255] with x / 127.5 - 1)")
    missing = [a for a in config.attribute_names if a not in attrs]
    if missing:
        raise ValueError(f"dataset[0] attrs lack {missing}; the model is conditioned on "
                         f"{list(config.attribute_names)} (got keys {sorted(attrs)})")
    for spec in config.attributes:
        v = torch.as_tensor(attrs[spec.name])
        if v.numel() != 1:
            raise ValueError(f"dataset[0] attribute {spec.name!r} has shape {tuple(v.shape)}; expected a scalar")
        if spec.kind == "categorical" and (v.dtype.is_floating_point or not 0 <= int(v) < spec.cardinality):
            raise ValueError(f"dataset[0] categorical attribute {spec.name!r} is {v.item()!r}; expected an "
                             f"integer class index in [0, {spec.cardinality - 1}]")
    return n


# ---------------------------------------------------------------------------------------------------- signals
class _StopFlag:
    """Defers SIGINT / SIGTERM to the next step boundary, so a checkpoint never holds a half-applied update.

    A second Ctrl-C interrupts at once (without a new checkpoint).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator["_StopFlag"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handler)
        try:
            yield self
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)

    def raise_now(self) -> None:
        if self.signum == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM)
        raise KeyboardInterrupt


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files of writes that a killed run left half done (they are never read)."""
    for name in (ckpt.CHECKPOINT_NAME, Path(ckpt.CHECKPOINT_NAME).with_suffix(".json").name, LOSS_CSV):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        for tmp in (out / MODEL_DIR).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- loss log
class _LossLog:
    """``loss.csv`` appended progressively (rank 0 only); rows past the resumed step are dropped first."""

    def __init__(self, path: Path, keep_through: int, enabled: bool) -> None:
        self.path, self.enabled, self.rows = path, enabled, []
        if not enabled:
            return
        kept: list[list[str]] = []
        if keep_through > 0 and path.is_file():
            with path.open(newline="") as fh:
                reader = csv.reader(fh)
                next(reader, None)
                kept = [r for r in reader if r and int(r[0]) <= keep_through]
        tmp_rows = [["step", "loss", "lr", "wall_time"], *kept]
        text = "".join(",".join(r) + "\n" for r in tmp_rows)
        atomic_write_bytes(path, text.encode())

    def add(self, step: int, loss: float, lr: float, wall: float) -> None:
        if self.enabled:
            self.rows.append(f"{step},{loss:.6g},{lr:.6g},{wall:.3f}\n")

    def flush(self) -> None:
        if self.enabled and self.rows:
            with self.path.open("a") as fh:
                fh.write("".join(self.rows))
            self.rows = []


# ---------------------------------------------------------------------------------------------------- train
def _config_diff(a: Any, b: Any) -> list[str]:
    return [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]


def train(
    model_config: ImageModelConfig,
    train_config: TrainConfig,
    dataset: torch.utils.data.Dataset,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    model: ConditionalUNet | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> TrainResult:
    """Train a :class:`ConditionalUNet` with DDPM epsilon-prediction; resumable, and DDP under ``torchrun``.

    Args:
        model_config: the denoiser's config.
        train_config: the training hyper-parameters (see :class:`TrainConfig`).
        dataset: a map-style dataset whose items are ``(image (C, H, W) in [-1, 1], attrs)``, ``attrs`` a dict
            name -> scalar (tensor or number) holding at least every attribute of ``model_config``; extra keys
            are ignored. A ``__getitems__(indices)`` method, if present, fetches a batch at once; a
            ``set_epoch(epoch)`` method, if present, is called whenever the data stream enters a new epoch.
        out_dir: the run directory (created): checkpoint, ``loss.csv`` and the EMA ``model/`` directory.
        resume: continue from ``out_dir``'s checkpoint if there is one (else start fresh). ``False`` starts
            fresh and overwrites an existing run. Only ``steps``, ``ckpt_every`` and ``log_every`` may differ
            from the checkpointed run.
        progress: show a tqdm bar (loss, steps/s) on rank 0.
        model: initial weights for a fresh run (its config must equal ``model_config``); trained in place. If
            the run fails (any exception, Ctrl-C and SIGTERM included) the model is restored as it was: every
            parameter, buffer, device and train/eval mode (the checkpoint keeps the progress).
        device: training device; ``None`` picks CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        num_workers: DataLoader worker processes that read and collate the next batches while the model trains
            (0: in the training process). The batches and their order are the same for every value.

    Returns:
        A :class:`TrainResult` (the EMA model, this call's losses, throughput).

    Raises:
        ValueError / TypeError: bad dataset items, a config that does not match the checkpoint, a global batch
            not divisible by the number of processes. Raised before anything is written.
        KeyboardInterrupt / SystemExit(143): after Ctrl-C / SIGTERM, once the checkpoint of the last finished
            step is written.

    Example:
        >>> import tempfile, torch
        >>> from diffusion import AttributeSpec, ImageModelConfig, TrainConfig
        >>> config = ImageModelConfig(image_shape=(1, 8, 8), attributes=(AttributeSpec("y", "categorical",
        ...     cardinality=2),), block_dim=4, block_out_channels=(8, 8), attention_levels=(False, False),
        ...     mid_attention=False, norm_num_groups=4)
        >>> data = [(torch.rand(1, 8, 8) * 2 - 1, {"y": torch.tensor(i % 2)}) for i in range(16)]
        >>> res = train(config, TrainConfig(steps=3, batch_size=4, warmup=0), data, tempfile.mkdtemp(),
        ...             progress=False)
        >>> res.step, len(res.losses)
        (3, 3)
    """
    # ---- validate everything before touching the disk or the process group
    if not isinstance(model_config, ImageModelConfig):
        raise TypeError(f"model_config must be an ImageModelConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    if model is not None and getattr(model, "config", None) != model_config:
        raise ValueError("model.config differs from model_config in "
                         f"{_config_diff(model.config, model_config) if isinstance(model, ConditionalUNet) else '?'}"
                         "; pass the model's own config")
    n_data = _check_dataset(dataset, model_config)
    out = Path(out_dir)
    ckpt_path = out / ckpt.CHECKPOINT_NAME
    saved_state: dict[str, Any] | None = None
    saved_tensors: dict[str, Tensor] | None = None
    if resume and ckpt_path.is_file():
        saved_state, saved_tensors = ckpt.load_checkpoint(ckpt_path)
        saved_model_cfg = ImageModelConfig.from_dict(saved_state["model_config"])
        if saved_model_cfg != model_config:
            raise ValueError(f"cannot resume {ckpt_path}: model_config differs from the checkpoint's in "
                             f"{_config_diff(saved_model_cfg, model_config)}; use the same config or another out_dir")
        saved_train_cfg = TrainConfig.from_dict(saved_state["train_config"])
        changed = [k for k in _config_diff(saved_train_cfg, train_config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ValueError(f"cannot resume {ckpt_path}: train_config fields {changed} differ from the checkpoint's "
                             f"({ {k: getattr(saved_train_cfg, k) for k in changed} }); only "
                             f"{list(RESUMABLE_CHANGES)} may change on resume")
        if saved_state["dataset_len"] != n_data:
            raise ValueError(f"cannot resume {ckpt_path}: the dataset has {n_data} items but the run was trained on "
                             f"{saved_state['dataset_len']}; resume with the same dataset")
    elif not resume and ckpt_path.is_file():
        warnings.warn(f"{ckpt_path} exists and resume=False: starting a fresh run that overwrites it", stacklevel=2)

    ctx = setup(device)
    try:
        if train_config.precision == "fp16" and ctx.device.type != "cuda":
            raise ValueError(f"precision='fp16' needs a CUDA device (training runs on {ctx.device}); use 'bf16' "
                             f"or 'fp32' on a CPU")
        if train_config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size={train_config.batch_size} is not divisible by the {ctx.world_size} "
                             f"processes; use a multiple of {ctx.world_size}")
        if not is_integer(num_workers, 0, python_int=True):
            raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0")
        with restored_on_error(model):  # a given model is trained in place: a failed run leaves it as it was
            return _train(model_config, train_config, dataset, n_data, out, ctx, saved_state, saved_tensors,
                          progress, model, num_workers)
    finally:
        ctx.close()


def _train(model_config: ImageModelConfig, train_config: TrainConfig, dataset: Any, n_data: int, out: Path,
           ctx: DistContext, saved_state: dict[str, Any] | None, saved_tensors: dict[str, Tensor] | None,
           progress: bool, model: ConditionalUNet | None, num_workers: int = 0) -> TrainResult:
    dev = ctx.device
    # ---- model, EMA, optimiser (weights initialised from the seed, identically on every rank)
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_config.seed)
            model = ConditionalUNet(model_config)
    model.to(dev).train()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    optimizer = torch.optim.AdamW(params, lr=train_config.lr, betas=train_config.adam_betas,
                                  weight_decay=train_config.weight_decay)
    start_step, wall_before = 0, 0.0
    if saved_state is not None and saved_tensors is not None:
        load_state_checked(model, ckpt.split(saved_tensors, "model"), source="checkpoint model/")
        ema = [saved_tensors[f"ema/{n}"].to(dev).clone() for n in names]
        optimizer.load_state_dict(ckpt.optimizer_state(saved_state, saved_tensors))
        ckpt.set_rng_state(saved_tensors, saved_state["rng"])
        start_step, wall_before = int(saved_state["step"]), float(saved_state.get("wall_time", 0.0))
    else:
        ema = [p.detach().clone() for p in params]
    net: torch.nn.Module = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # an unconditional model never uses its (empty) attribute projection
        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                  find_unused_parameters=not model_config.attributes)

    abar = model.alphas_cumprod.to(dev)
    T = model_config.num_train_timesteps
    names_k = model_config.attribute_names
    order = DataOrder(n_data, train_config.seed)
    load = _Loader(dataset)
    b_local = train_config.batch_size // ctx.world_size
    lo, hi = ctx.rank * b_local, (ctx.rank + 1) * b_local
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
    log = _LossLog(out / LOSS_CSV, keep_through=start_step, enabled=ctx.is_main)

    saved_at = [-1]

    def write_checkpoint(step: int, wall: float) -> None:
        """Checkpoint + EMA model directory (rank 0 only; once per step)."""
        log.flush()
        if not ctx.is_main or saved_at[0] == step:
            return
        saved_at[0] = step
        epoch, offset = divmod(step * train_config.batch_size, n_data)
        ema_state = dict(model.state_dict())
        ema_state.update(zip(names, ema))
        ckpt.save_checkpoint(out / ckpt.CHECKPOINT_NAME, model_state=model.state_dict(),
                             ema_state=dict(zip(names, ema)), optimizer=optimizer, state={
                                 "step": step, "epoch": epoch, "offset": offset, "dataset_len": n_data,
                                 "batch_size": train_config.batch_size, "world_size": ctx.world_size, "wall_time": wall,
                                 "model_config": model_config.to_dict(), "train_config": train_config.to_dict()})
        model_dir = out / MODEL_DIR
        save_tensors(model_dir / WEIGHTS_NAME, ema_state, metadata={"format": "pt", "step": str(step)})
        atomic_write_json(model_dir / CONFIG_NAME, model_config.to_dict())

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train_config.precision)
    scaler = torch.amp.GradScaler("cuda") if train_config.precision == "fp16" else None

    losses: list[float] = []
    step = start_step
    consistent = True  # False while an update is half-applied: no checkpoint may be written then
    t0 = time.perf_counter()
    stream = _batch_stream(_StepBatches(order, load, train_config.batch_size, lo, hi, model_config), start_step,
                           train_config.steps, num_workers)
    bar = tqdm(total=train_config.steps, initial=start_step, disable=not (progress and ctx.is_main), unit="step",
               dynamic_ncols=True, desc="train")
    stop = _StopFlag()
    try:
        with stop.installed():
            while step < train_config.steps:
                if ctx.any(stop.signum is not None):
                    write_checkpoint(step, wall_before + time.perf_counter() - t0)
                    stop.raise_now()
                # 1. the global batch of this step, and this rank's slice of it
                x0, attrs = next(stream)
                t, eps, keep = step_draws(train_config, step, model_config.image_shape, len(names_k), T)
                x0, eps, t = x0.to(dev), eps[lo:hi].to(dev), t[lo:hi].to(dev)
                attrs = {k: v.to(dev) for k, v in attrs.items()}
                keep_mask = {k: keep[lo:hi, i].to(dev) for i, k in enumerate(names_k)}
                # 2. forward diffusion and the epsilon loss
                a = abar[t].to(x0.dtype)[:, None, None, None]
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
                with (torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()):
                    pred = net(x_t, t, attrs, keep_mask, validate=False)
                loss = torch.nn.functional.mse_loss(pred.float(), eps)
                # 3. the update: AdamW with warm-up and gradient clipping, then the EMA
                lr = _lr_at(train_config, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                value = float(ctx.mean(loss.detach()).item())  # the global-batch mean loss
                if not math.isfinite(value):
                    raise FloatingPointError(f"the loss became {value} at step {step + 1}; lower "
                                             f"lr={train_config.lr} or check the data (resume restarts from the last "
                                             f"checkpoint)")
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if train_config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, train_config.grad_clip)
                consistent = False
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                decay = min(train_config.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
                step += 1
                wall = wall_before + time.perf_counter() - t0
                log.add(step, value, lr, wall)
                losses.append(value)
                consistent = True
                # 4. logging and checkpoints
                if step % train_config.log_every == 0:
                    log.flush()
                bar.update(1)
                rate = train_config.batch_size * len(losses) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}", refresh=False)
                if step % train_config.ckpt_every == 0:
                    write_checkpoint(step, wall)
            if stop.signum is not None:  # a signal during the last step: save, then honour it
                write_checkpoint(step, wall_before + time.perf_counter() - t0)
                stop.raise_now()
    except (KeyboardInterrupt, SystemExit):
        if consistent and step > start_step:
            write_checkpoint(step, wall_before + time.perf_counter() - t0)
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    write_checkpoint(step, wall_before + elapsed)
    ctx.barrier()
    ema_model = copy.deepcopy(model)
    with torch.no_grad():
        for p, e in zip(ema_model.parameters(), ema):
            p.copy_(e)
    ema_model.eval()
    run = step - start_step
    return TrainResult(out_dir=out, model_dir=out / MODEL_DIR, model=ema_model, start_step=start_step, step=step,
                       losses=losses, wall_time=elapsed,
                       images_per_second=run * train_config.batch_size / elapsed if elapsed > 0 else 0.0,
                       world_size=ctx.world_size)
