"""The conditional denoiser: an attribute-split embedding in front of a diffusers ``UNet2DModel``.

Conditioning route: the masked attribute blocks are concatenated and projected (bias-free, linearly) to the
UNet's time-embedding width, then added to the time embedding through ``class_embed_type="identity"``; every
ResNet block of the UNet sees ``temb + c``. A fully nulled condition gives ``c = 0``: the unconditional model.
See :mod:`diffusion.embedding` for why the projection is linear and bias-free.

Example:
    >>> import torch
    >>> from diffusion.config import AttributeSpec, ImageModelConfig
    >>> config = ImageModelConfig(image_shape=(1, 8, 8), attributes=(AttributeSpec("y", "categorical", cardinality=3),),
    ...                           block_dim=4, block_out_channels=(8, 8), attention_levels=(False, False),
    ...                           mid_attention=False, norm_num_groups=4)
    >>> net = ConditionalUNet(config)
    >>> x = torch.randn(2, 1, 8, 8)
    >>> net.eps(x, torch.tensor([10, 500]), {"y": torch.tensor([0, 2])}).shape
    torch.Size([2, 1, 8, 8])
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import UNet2DModel
from torch import nn

from dcfg_io.atomic import atomic_write_json
from dcfg_io.folders import SavedKind, find_saved_dir, save_dir
from dcfg_io.reads import read_json
from dcfg_io.tensors import check_weight_shapes, load_tensors, save_tensors, state_mismatch
from diffusion.config import CONFIG_FORMAT, ImageModelConfig
from diffusion.embedding import AttributeSplitEmbedding
from diffusion.schedule import alphas_cumprod as _alphas_cumprod

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: a saved image model folder: its config.json (written last) holds the ImageModelConfig format tag
SAVED_KIND = SavedKind("image model", CONFIG_NAME, lambda c: isinstance(c, dict) and c.get("format") == CONFIG_FORMAT)

#: inference precisions :meth:`ConditionalUNet.set_inference` takes (``"auto"`` resolves by :func:`resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies in bfloat16 natively (a CUDA GPU that supports it; a CPU with AMX or AVX512-BF16).

    Without such units bf16 autocast is emulated and slower than float32.

    Example:
        >>> isinstance(native_bf16("cpu"), bool)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return any(bool(f()) for f in checks if f is not None)
    except Exception:  # noqa: BLE001 - a private probe that misbehaves means: do not rely on bf16
        return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`native_bf16` holds on ``device``, else ``"fp32"``; the others unchanged.

    Example:
        >>> resolve_precision("fp32"), resolve_precision("auto") in ("fp32", "bf16")
        ('fp32', True)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def _build_unet(config: ImageModelConfig) -> UNet2DModel:
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention_levels))
    c, h, w = config.image_shape
    return UNet2DModel(
        sample_size=(h, w), in_channels=c, out_channels=c,
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        down_block_types=down, up_block_types=up, add_attention=config.mid_attention,
        attention_head_dim=config.attention_head_dim, norm_num_groups=config.norm_num_groups,
        time_embedding_dim=config.cond_dim, dropout=config.dropout,
        class_embed_type="identity" if config.attributes else None,
    )


class ConditionalUNet(nn.Module):
    """epsilon-prediction denoiser conditioned on named attributes with per-attribute keep-masks.

    Args:
        config: the :class:`~diffusion.config.ImageModelConfig`.

    Attributes:
        config: the config the module was built from.
        embedding: the :class:`~diffusion.embedding.AttributeSplitEmbedding`.
        unet: the diffusers ``UNet2DModel`` backbone.
    """

    def __init__(self, config: ImageModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ImageModelConfig):
            raise TypeError(f"config must be an ImageModelConfig, got {type(config).__name__}")
        self.config = config
        self.embedding = AttributeSplitEmbedding(config.attributes, config.block_dim, config.cond_dim)
        self.unet = _build_unet(config)
        self._abar_cpu = _alphas_cumprod(config)
        #: rows per backbone call on the CPU without gradients (None: one call); see :meth:`eps`.
        self.cpu_chunk_size: int | None = 64
        self._precision = "fp32"
        # the compiled backbone is kept outside the module registry, so state_dict() keys stay as they are
        object.__setattr__(self, "_compiled", None)

    # ------------------------------------------------------------------ inference speed
    def set_inference(self, precision: str = "fp32", compile: bool = False) -> "ConditionalUNet":
        """Speed settings of inference (calls without gradients); training and the saved weights are unaffected.

        Args:
            precision: ``"fp32"`` (default), ``"bf16"``, or ``"auto"`` (bf16 where the model's device has
                native bf16 units, see :func:`native_bf16`; fp32 elsewhere). ``"bf16"`` runs the backbone under
                ``torch.autocast`` in bfloat16 (the noise prediction is returned in the input's dtype; the DDIM
                updates stay in float64): faster on devices with native bf16 units, with slightly different
                numbers (docs/benchmarks.md has the measured speed and its effect on the figures).
            compile: ``torch.compile`` the backbone (inductor; needs a C++ compiler on the CPU). On the CPU the
                micro-batches are then padded to ``cpu_chunk_size`` rows so that one shape is compiled (once per
                process); a remainder of fewer than half that many rows runs eagerly instead. The results are
                the same up to float rounding (docs/benchmarks.md has the measured speed-up). If compiling
                fails, a warning is issued and the model runs eagerly.

        Returns:
            The module itself.

        Example:
            >>> from diffusion.config import ImageModelConfig
            >>> net = ConditionalUNet(ImageModelConfig(image_shape=(1, 8, 8), block_out_channels=(8, 8),
            ...                       attention_levels=(False, False), mid_attention=False, norm_num_groups=4))
            >>> net.set_inference(precision="bf16").inference_settings
            {'precision': 'bf16', 'compile': False}
        """
        precision = resolve_precision(precision, self.device)
        if not isinstance(compile, bool):
            raise ValueError(f"compile={compile!r} must be True or False")
        self._precision = precision
        compiled = None
        if compile:
            compiled = self._compiled if self._compiled is not None else torch.compile(self.unet, dynamic=False)
        object.__setattr__(self, "_compiled", compiled)
        return self

    @property
    def inference_settings(self) -> dict[str, Any]:
        """``{"precision", "compile"}`` as :meth:`set_inference` left them."""
        return {"precision": self._precision, "compile": self._compiled is not None}

    # ------------------------------------------------------------------ schedule
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha-bar_t (float64, shape ``(T,)``) on the module's device."""
        return self._abar_cpu.to(self.device)

    @property
    def device(self) -> torch.device:
        """The device of the module's parameters."""
        return next(self.parameters()).device

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 4 or tuple(x_t.shape[1:]) != self.config.image_shape:
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"x_t has shape {shape}; expected (B, {', '.join(map(str, self.config.image_shape))})")
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"timesteps t must be integers (int64), got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"timesteps t have shape {tuple(t.shape)}; expected () or ({b},)")
        T = self.config.num_train_timesteps
        if b and (int(t.min()) < 0 or int(t.max()) >= T):
            raise ValueError(f"timesteps must lie in [0, {T - 1}], got values in [{int(t.min())}, {int(t.max())}]")
        return t.long()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, attrs: Mapping[str, torch.Tensor] | None = None,
            keep_mask: Mapping[str, torch.Tensor] | None = None, *, validate: bool = True) -> torch.Tensor:
        """Predict the noise in ``x_t`` at timestep ``t`` under the (partially) kept attributes.

        Args:
            x_t: noisy images ``(B, C, H, W)``.
            t: int64 timesteps ``(B,)`` or a scalar, in ``[0, T)``.
            attrs: name -> tensor ``(B,)``; an attribute absent from ``attrs`` is nulled, so passing only the
                attributes to keep is the same as masking the others.
            keep_mask: name -> bool ``(B,)``; False nulls that attribute's block in that row. ``None`` keeps all.
            validate: check the inputs first (on by default).

        On the CPU without gradients, batches larger than ``cpu_chunk_size`` (64) rows are evaluated in
        micro-batches of that size, which keeps the cost per row constant as the batch grows.

        Returns:
            The predicted noise, same shape and dtype as ``x_t``.

        Example:
            >>> import torch
            >>> from diffusion.config import ImageModelConfig
            >>> net = ConditionalUNet(ImageModelConfig(image_shape=(1, 8, 8), block_out_channels=(8, 8),
            ...                       attention_levels=(False, False), mid_attention=False, norm_num_groups=4))
            >>> net.eps(torch.zeros(1, 1, 8, 8), 999).shape
            torch.Size([1, 1, 8, 8])
        """
        attrs = {} if attrs is None else attrs
        B = x_t.shape[0]
        if validate:
            t = self._check_inputs(x_t, t)
            if self.config.attributes or attrs:
                self.embedding._check(attrs, keep_mask, B)  # unknown keys, shapes, dtypes, class ranges
        else:
            t = torch.as_tensor(t, device=x_t.device).long().expand(B)
        chunk = self.cpu_chunk_size
        if chunk and self._compiled is not None and x_t.device.type == "cpu" and not torch.is_grad_enabled():
            # one compiled shape: every micro-batch is padded to `chunk` rows (the padding is dropped)
            parts = []
            for i in range(0, B, chunk):
                rows = slice(i, i + chunk)
                x_r, t_r = x_t[rows], t[rows]
                a_r = {k: v[rows] for k, v in attrs.items()}
                m_r = None if keep_mask is None else {k: m[rows] for k, m in keep_mask.items()}
                n = x_r.shape[0]
                if 2 * n < chunk:  # padding would more than double the work: run these rows eagerly
                    parts.append(self._eps_rows(x_r, t_r, a_r, m_r, eager=True))
                    continue
                if n < chunk:
                    pad = chunk - n
                    x_r = torch.cat([x_r, x_r[:1].expand(pad, *x_r.shape[1:])])
                    t_r = torch.cat([t_r, t_r[:1].expand(pad)])
                    a_r = {k: torch.cat([v, v[:1].expand(pad)]) for k, v in a_r.items()}
                    m_r = None if m_r is None else {k: torch.cat([m, m[:1].expand(pad)]) for k, m in m_r.items()}
                parts.append(self._eps_rows(x_r, t_r, a_r, m_r)[:n])
            return torch.cat(parts) if parts else self._eps_rows(x_t, t, attrs, keep_mask)
        if chunk and B > chunk and x_t.device.type == "cpu" and not torch.is_grad_enabled():
            # Micro-batches: on the CPU the UNet's cost per row grows with the batch once its activations
            # outgrow the caches (and large buffers are re-faulted on every call); rows are independent, so
            # chunking changes nothing but the speed. A batched guidance call stays one call of this method.
            parts = []
            for i in range(0, B, chunk):
                rows = slice(i, i + chunk)
                parts.append(self._eps_rows(x_t[rows], t[rows], {k: v[rows] for k, v in attrs.items()},
                                            None if keep_mask is None else {k: m[rows] for k, m in keep_mask.items()}))
            return torch.cat(parts)
        return self._eps_rows(x_t, t, attrs, keep_mask)

    def _eps_rows(self, x_t: torch.Tensor, t: torch.Tensor, attrs: Mapping[str, torch.Tensor],
                  keep_mask: Mapping[str, torch.Tensor] | None, eager: bool = False) -> torch.Tensor:
        """The backbone call on validated inputs (``eager``: never the compiled backbone)."""
        x_in = x_t.to(self.embedding.proj.weight.dtype)
        cond = None
        if self.config.attributes:
            cond = self.embedding(attrs, keep_mask, batch_size=x_t.shape[0], validate=False)
        inference = not torch.is_grad_enabled()
        backbone = self._compiled if inference and self._compiled is not None and not eager else self.unet
        autocast = (torch.autocast(x_t.device.type, dtype=torch.bfloat16) if inference and self._precision == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            if backbone is self.unet:
                out = backbone(x_in, t, class_labels=cond).sample
            else:
                try:
                    out = backbone(x_in, t, class_labels=cond).sample
                except Exception as e:  # noqa: BLE001 - any compiler failure: fall back to the eager module
                    warnings.warn(f"torch.compile of the image model failed ({type(e).__name__}: {e}); running "
                                  f"eagerly", RuntimeWarning, stacklevel=2)
                    object.__setattr__(self, "_compiled", None)
                    out = self.unet(x_in, t, class_labels=cond).sample
        return out.to(x_t.dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, attrs: Mapping[str, torch.Tensor] | None = None,
                keep_mask: Mapping[str, torch.Tensor] | None = None, *, validate: bool = True) -> torch.Tensor:
        """Same as :meth:`eps` (so that ``DistributedDataParallel`` can wrap the module)."""
        return self.eps(x_t, t, attrs, keep_mask, validate=validate)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``directory``, crash-safely.

        ``directory`` must be new, empty or an earlier saved image model (anything else is refused with a
        ``ValueError`` before anything is touched); the folder is replaced as a whole, so that a crash at any
        point leaves the old or the new model loadable (:func:`dcfg_io.folders.save_dir`).

        Example:
            >>> import tempfile
            >>> from diffusion.config import ImageModelConfig
            >>> net = ConditionalUNet(ImageModelConfig(image_shape=(1, 8, 8), block_out_channels=(8, 8),
            ...                       attention_levels=(False, False), mid_attention=False, norm_num_groups=4))
            >>> d = net.save_pretrained(tempfile.mkdtemp())
            >>> ConditionalUNet.from_pretrained(d).config == net.config
            True
        """
        def write(folder: Path) -> None:
            save_tensors(folder / WEIGHTS_NAME, self.state_dict(), metadata={"format": "pt"})
            atomic_write_json(folder / CONFIG_NAME, self.config.to_dict())  # the marker of a complete save: last

        return save_dir(directory, write, SAVED_KIND)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None
                        ) -> "ConditionalUNet":
        """Load a directory written by :meth:`save_pretrained` (safetensors only; nothing is unpickled).

        Before any module is built, every file must be a regular file inside ``directory`` (no named pipe,
        device or symbolic link out of it), the config within :data:`diffusion.config.LIMITS`, and the weight
        shapes in the safetensors header must match the config. After an interrupted save the complete copy
        beside ``directory`` is loaded (:func:`dcfg_io.folders.find_saved_dir`).

        Raises:
            FileNotFoundError: if ``config.json`` or ``model.safetensors`` is missing.
            ValueError: if a file is not a regular file, the config is invalid or out of bounds, the weights are
                truncated or corrupted (sha256 mismatch), or they do not match the config (missing, unexpected or
                mis-shaped tensors).
        """
        directory = find_saved_dir(directory, SAVED_KIND)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not os.path.lexists(directory / name):
                raise FileNotFoundError(f"{directory / name} not found; a saved ConditionalUNet directory holds "
                                        f"{CONFIG_NAME} and {WEIGHTS_NAME} (written by save_pretrained)")
        cfg_file = directory / CONFIG_NAME
        data = read_json(cfg_file, directory, what="image model config")
        if not isinstance(data, dict) or "format" not in data:
            raise ValueError(f"{cfg_file} is not an ImageModelConfig (a JSON object with a 'format' entry, as "
                             f"written by save_pretrained)")
        try:
            config = ImageModelConfig.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cfg_file}: {e}") from None
        check_weight_shapes(lambda: cls(config), directory / WEIGHTS_NAME, cfg_file, directory)
        tensors, _ = load_tensors(directory / WEIGHTS_NAME, directory)
        model = cls(config)
        load_state_checked(model, tensors, source=str(directory / WEIGHTS_NAME))
        model.eval()
        if device is not None:
            model.to(device)
        return model


def load_state_checked(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(tensors)`` with a clear ``ValueError`` when config and weights disagree."""
    mismatch = state_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()},
                              {k: tuple(v.shape) for k, v in tensors.items()})
    if mismatch:
        raise ValueError(f"the weights in {source} do not match the config ({mismatch}); the config.json "
                         f"and the weights must come from the same save_pretrained call")
    module.load_state_dict(dict(tensors), strict=True)
