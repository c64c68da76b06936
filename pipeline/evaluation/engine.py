"""Chunked DDIM inversion and decoding with a count of network evaluations, for the evaluation.

A counterfactual query with S DDIM steps costs ``(1 + r) S`` image-NFEs for the inversion (no guidance;
``r`` = the pipeline's ``config.refine_steps`` fixed-point iterations per step, 0 by default) and ``k * S`` for
the decoding, with ``k = 1`` (no guidance), 2 (CFG) or ``M + 1`` (DCFG with M groups; anchored at the
full condition, ``1 +`` the number of groups whose weight is not 1).
:class:`QueryEngine` runs both in chunks of ``chunk_size`` rows (peak memory does not grow with the
number of images), adds up the image-NFEs it spent, and advances an optional tqdm bar by them.

Example:
    >>> engine = QueryEngine(pipe, chunk_size=256)                  # doctest: +SKIP
    >>> x_T = engine.invert(images, parents, steps=20)              # doctest: +SKIP
    >>> x_cf = engine.decode(x_T, cf_parents, "dcfg", [["thickness", "intensity"], ["digit"]],
    ...                      [3.0, 1.0], steps=20)                   # doctest: +SKIP
    >>> engine.nfe                                                  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["QueryEngine", "nfe_per_step"]


def nfe_per_step(guidance: str, groups: Sequence[Sequence[str]] | None = None,
                 weights: Sequence[float] | None = None, anchor: str = "null") -> int:
    """Network evaluations per row and DDIM step when decoding: 1 (none), 2 (CFG), DCFG's row blocks.

    DCFG with M groups costs ``M + 1`` (``anchor="null"``, the paper's) or ``1 +`` the number of groups
    whose weight is not 1 (``anchor="full"``, which needs ``weights``).

    Example:
        >>> nfe_per_step("none"), nfe_per_step("cfg"), nfe_per_step("dcfg", [["t", "i"], ["y"]])
        (1, 2, 3)
        >>> nfe_per_step("dcfg", [["t"], ["i"], ["y"]], [3.0, 1.0, 1.0], anchor="full")
        2
    """
    from diffusion import dcfg_rows

    if guidance == "none":
        return 1
    if guidance == "cfg":
        return 2
    if guidance == "dcfg":
        if not groups:
            raise ValueError("guidance='dcfg' needs its groups to count its network evaluations")
        if anchor == "full" and weights is None:
            raise ValueError("guidance='dcfg' with anchor='full' needs its weights to count its network evaluations")
        return dcfg_rows(groups, weights if weights is not None else [1.0] * len(groups), anchor)
    raise ValueError(f"guidance={guidance!r} is not one of 'none', 'cfg', 'dcfg'")


class QueryEngine:
    """Chunked :meth:`CounterfactualPipeline.invert` / ``decode`` that counts image-NFEs.

    Args:
        pipe: the pipeline (its ``invert`` and ``decode`` are used).
        chunk_size: rows per batched call (default: the pipeline's ``config.chunk_size``).
        bar: an optional tqdm bar advanced by the image-NFEs of every chunk.
    """

    def __init__(self, pipe: Any, chunk_size: int | None = None, bar: Any = None) -> None:
        self.pipe = pipe
        self.chunk_size = int(chunk_size or pipe.config.chunk_size)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
        self.bar = bar
        self.nfe = 0
        self.refine_steps = int(getattr(pipe.config, "refine_steps", 0) or 0)
        try:
            self.device = next(pipe.image_model.parameters()).device
        except (AttributeError, StopIteration):
            self.device = None

    def _to(self, x: Tensor) -> Tensor:
        return x if self.device is None else x.to(self.device)

    def _spent(self, nfe: int) -> None:
        self.nfe += int(nfe)
        if self.bar is not None:
            self.bar.update(int(nfe))

    @torch.no_grad()
    def invert(self, images: Tensor, parents: Mapping[str, Tensor], steps: int) -> Tensor:
        """DDIM-invert ``images`` under ``parents`` (image parents only are used), chunk by chunk."""
        names = list(self.pipe.graph.image_parents())
        out = []
        for start in range(0, len(images), self.chunk_size):
            sl = slice(start, start + self.chunk_size)
            x = self._to(images[sl])
            z = self.pipe.invert(x, {k: parents[k][sl].to(x.device) for k in names}, steps=steps)
            out.append(z.to(images.device))  # computed on the model's device, returned on the input's
            self._spent((1 + self.refine_steps) * steps * len(x))
        return torch.cat(out) if out else images[:0].clone()

    @torch.no_grad()
    def decode(self, x_T: Tensor, parents: Mapping[str, Tensor], guidance: str,
               groups: Sequence[Sequence[str]] | None, weights: Sequence[float] | None, steps: int,
               anchor: str | None = None) -> Tensor:
        """DDIM-decode ``x_T`` under ``parents`` with the given guidance, chunk by chunk.

        ``anchor``: DCFG's formulation (default: the pipeline's ``config.dcfg_anchor``).
        """
        names = list(self.pipe.graph.image_parents())
        if anchor is None:
            anchor = getattr(self.pipe.config, "dcfg_anchor", "null")
        k = nfe_per_step(guidance, groups, weights, anchor)
        out = []
        for start in range(0, len(x_T), self.chunk_size):
            sl = slice(start, start + self.chunk_size)
            z = self._to(x_T[sl])
            cond = {n: parents[n][sl].to(z.device) for n in names}
            if guidance == "none":
                x = self.pipe.decode(z, cond, guidance="none", steps=steps)
            else:
                kw = {"anchor": anchor} if guidance == "dcfg" else {}
                x = self.pipe.decode(z, cond, guidance=guidance, groups=groups, weights=weights, steps=steps, **kw)
            out.append(x.to(x_T.device))
            self._spent(k * steps * len(z))
        return torch.cat(out) if out else x_T[:0].clone()
