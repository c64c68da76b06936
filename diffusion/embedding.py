"""The attribute-split embedding: one block per attribute, a keep-mask per block, one linear projection.

For attributes a_1..a_K with keep-mask bits m_1..m_K the conditioning vector is

    c = P [m_1 e_1(a_1); ...; m_K e_K(a_K)] = sum_k m_k P_k e_k(a_k),

where e_k is attribute k's encoder (continuous: standardise, then a 2-layer MLP; categorical: ``nn.Embedding``),
each giving a block of width d, and P = [P_1 ... P_K] is a *bias-free* linear map to the backbone's conditioning
width. Because P is linear and has no bias, zeroing block k (the null condition for attribute k) removes exactly
attribute k's additive term P_k e_k(a_k) and leaves every other attribute's term untouched; nulling every block
gives c = 0, the unconditional model. A non-linear projection (or one with a bias) would mix the blocks, and
"keep only group m" would no longer be a clean partial condition. The vector c is added to the UNet's time
embedding (diffusers ``class_embed_type="identity"``).

Example:
    >>> import torch
    >>> from diffusion.config import AttributeSpec
    >>> emb = AttributeSplitEmbedding((AttributeSpec("t", "continuous"),
    ...                                AttributeSpec("y", "categorical", cardinality=10)), block_dim=4, out_dim=8)
    >>> attrs = {"t": torch.tensor([1.0, 2.0]), "y": torch.tensor([3, 7])}
    >>> emb(attrs, keep_mask={"y": torch.tensor([True, False])}).shape
    torch.Size([2, 8])
    >>> emb.blocks(attrs, keep_mask={"y": torch.tensor([True, False])})[1, 1].abs().sum().item()
    0.0
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import torch
from torch import nn

from diffusion.config import AttributeSpec


class _ContinuousEncoder(nn.Module):
    """Standardise a scalar attribute, then a 2-layer MLP to a block of width ``block_dim``."""

    def __init__(self, spec: AttributeSpec, block_dim: int) -> None:
        super().__init__()
        self.mean = float(spec.mean)
        self.std = float(spec.std)
        self.mlp = nn.Sequential(nn.Linear(1, block_dim), nn.SiLU(), nn.Linear(block_dim, block_dim))

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        z = (value.to(dtype) - self.mean) / self.std
        return self.mlp(z[:, None])


class AttributeSplitEmbedding(nn.Module):
    """One encoder per attribute, a keep-mask per block, and a bias-free linear projection.

    Args:
        attributes: the attribute specs, in block order.
        block_dim: width ``d`` of each attribute's block.
        out_dim: width of the projected conditioning vector (the UNet's time-embedding width).

    Attributes:
        encoders: ``nn.ModuleList``, one encoder per attribute, in the order of ``attributes``.
        proj: ``nn.Linear(K * d, out_dim, bias=False)``.
    """

    def __init__(self, attributes: Sequence[AttributeSpec], block_dim: int, out_dim: int) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        self.names = tuple(a.name for a in self.attributes)
        self.block_dim = int(block_dim)
        self.out_dim = int(out_dim)
        self.encoders = nn.ModuleList(
            nn.Embedding(a.cardinality, block_dim) if a.kind == "categorical" else _ContinuousEncoder(a, block_dim)
            for a in self.attributes)
        if self.attributes:
            self.proj = nn.Linear(len(self.attributes) * block_dim, out_dim, bias=False)
        else:  # an unconditional model: a (out_dim, 0) projection, nothing to initialise
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Initializing zero-element tensors is a no-op"
                self.proj = nn.Linear(0, out_dim, bias=False)

    # ------------------------------------------------------------------ validation
    def _check(self, attrs: Mapping[str, torch.Tensor], keep_mask: Mapping[str, torch.Tensor] | None,
               batch_size: int) -> None:
        """Validate keys, shapes, dtypes and values; messages name the key, the value and the fix."""
        if not isinstance(attrs, Mapping):
            raise TypeError(f"attrs must be a dict of attribute name -> tensor (B,), got {type(attrs).__name__}")
        unknown = [k for k in attrs if k not in self.names]
        if unknown:
            raise ValueError(f"unknown attributes {unknown} in attrs; the model is conditioned on "
                             f"{list(self.names)} (drop the others, or omit a known one to null it)")
        for spec in self.attributes:
            if spec.name not in attrs:
                continue
            v = attrs[spec.name]
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"attribute {spec.name!r} must be a tensor of shape ({batch_size},), "
                                f"got {type(v).__name__}")
            if v.shape != (batch_size,):
                raise ValueError(f"attribute {spec.name!r} has shape {tuple(v.shape)}; expected ({batch_size},), "
                                 f"one value per image")
            if spec.kind == "categorical":
                if v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
                    raise TypeError(f"categorical attribute {spec.name!r} must hold integer class indices "
                                    f"(int64), got dtype {v.dtype}; convert with .long()")
                if batch_size and (int(v.min()) < 0 or int(v.max()) >= spec.cardinality):
                    bad = v[(v < 0) | (v >= spec.cardinality)][0].item()
                    raise ValueError(f"categorical attribute {spec.name!r} has class index {bad}, outside "
                                     f"[0, {spec.cardinality - 1}]")
            elif batch_size and v.dtype.is_floating_point and not bool(torch.isfinite(v).all()):
                raise ValueError(f"continuous attribute {spec.name!r} has a non-finite value "
                                 f"({v[~torch.isfinite(v)][0].item()}); every value must be finite")
        if keep_mask is None:
            return
        if not isinstance(keep_mask, Mapping):
            raise TypeError(f"keep_mask must be None or a dict of attribute name -> bool tensor (B,), "
                            f"got {type(keep_mask).__name__}")
        unknown = [k for k in keep_mask if k not in self.names]
        if unknown:
            raise ValueError(f"unknown attributes {unknown} in keep_mask; the model knows {list(self.names)}")
        for name, m in keep_mask.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != (batch_size,):
                desc = (f"dtype {m.dtype}, shape {tuple(m.shape)}" if isinstance(m, torch.Tensor)
                        else type(m).__name__)
                raise TypeError(f"keep_mask[{name!r}] must be a bool tensor of shape ({batch_size},), got {desc}")

    # ------------------------------------------------------------------ forward
    def blocks(self, attrs: Mapping[str, torch.Tensor], keep_mask: Mapping[str, torch.Tensor] | None = None,
               *, batch_size: int | None = None, validate: bool = True) -> torch.Tensor:
        """The masked attribute blocks, shape ``(B, K, d)``.

        Block k is ``e_k(attrs[name_k])`` where kept and exactly zero where ``keep_mask[name_k]`` is False or the
        attribute is absent from ``attrs``. A name absent from ``keep_mask`` is kept (if present in ``attrs``).

        Args:
            attrs: name -> tensor ``(B,)`` (float for continuous, int64 for categorical); any subset of the names.
            keep_mask: name -> bool tensor ``(B,)``; ``None`` keeps every attribute present in ``attrs``.
            batch_size: B, needed when ``attrs`` is empty.
            validate: check keys, shapes, dtypes and values first (turn off only on a hot path with trusted
                inputs, such as the training loop).
        """
        if batch_size is None:
            if not attrs:
                raise ValueError("batch_size is required when attrs is empty (the fully null condition)")
            batch_size = len(next(iter(attrs.values())))
        if validate:
            self._check(attrs, keep_mask, batch_size)
        weight = self.proj.weight
        if not self.attributes:
            return weight.new_zeros(batch_size, 0, self.block_dim)
        blocks = []
        for spec, enc in zip(self.attributes, self.encoders):
            if spec.name not in attrs:  # absent = nulled: the block is zero
                blocks.append(weight.new_zeros(batch_size, self.block_dim))
                continue
            value = attrs[spec.name].to(weight.device)
            block = enc(value.long() if spec.kind == "categorical" else value)
            if keep_mask is not None and spec.name in keep_mask:
                keep = keep_mask[spec.name].to(weight.device)[:, None]
                block = torch.where(keep, block, torch.zeros((), dtype=block.dtype, device=block.device))
            blocks.append(block)
        return torch.stack(blocks, dim=1)

    def forward(self, attrs: Mapping[str, torch.Tensor], keep_mask: Mapping[str, torch.Tensor] | None = None,
                *, batch_size: int | None = None, validate: bool = True) -> torch.Tensor:
        """The conditioning vector ``P [masked blocks]``, shape ``(B, out_dim)``; see :meth:`blocks`."""
        b = self.blocks(attrs, keep_mask, batch_size=batch_size, validate=validate)
        return self.proj(b.flatten(1))
