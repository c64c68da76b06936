"""Chunked DDIM inversion and decoding with a count of network evaluations, for the evaluation.

A counterfactual query with S DDIM steps costs ``(1 + r) S`` image-NFEs for the inversion (no guidance;
``r`` = the pipeline's ``config.refine_steps`` fixed-point iterations per step, 0 by default) and ``k * S`` for
the decoding, with ``k = 1`` (no guidance), 2 (CFG) or ``M + 1`` (DCFG with M groups; with
``dcfg_form="conditional"``, ``1 +`` the number of groups whose weight is not 1). The guidance variants APG and
CFG++ cost their base's rows; a guidance interval makes the steps outside it cost 1 (:func:`decode_nfe`), and
CFG++ anchored at null (CFG, and DCFG's paper form) inverts with its pair (2 rows per step inside the interval,
:func:`invert_nfe`).
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

from pipeline.options import anchor_renamed, check_dcfg_form, diffusion_anchor, grid_power, inversion_predictor

__all__ = ["QueryEngine", "nfe_per_step", "decode_nfe", "invert_nfe", "num_timesteps"]


@anchor_renamed
def nfe_per_step(guidance: str, groups: Sequence[Sequence[str]] | None = None,
                 weights: Sequence[float] | None = None, dcfg_form: str = "paper") -> int:
    """Network evaluations per row and DDIM step when decoding: 1 (none), 2 (CFG), DCFG's row blocks.

    DCFG with M groups costs ``M + 1`` (``dcfg_form="paper"``) or ``1 +`` the number of groups whose weight is
    not 1 (``dcfg_form="conditional"``, which needs ``weights``).

    Example:
        >>> nfe_per_step("none"), nfe_per_step("cfg"), nfe_per_step("dcfg", [["t", "i"], ["y"]])
        (1, 2, 3)
        >>> nfe_per_step("dcfg", [["t"], ["i"], ["y"]], [3.0, 1.0, 1.0], dcfg_form="conditional")
        2
    """
    from diffusion import guided_rows

    anchor = diffusion_anchor(dcfg_form)
    if guidance == "dcfg" and groups and anchor == "full" and weights is None:
        raise ValueError("guidance='dcfg' with dcfg_form='conditional' needs its weights to count its network "
                         "evaluations")
    return guided_rows(guidance, groups, weights, anchor)


@anchor_renamed
def decode_nfe(guidance: str, groups: Sequence[Sequence[str]] | None = None, weights: Sequence[float] | None = None,
               dcfg_form: str = "paper", steps: int = 1, interval: Sequence[float] | None = None,
               num_timesteps: int = 1000, power: float = 1.0) -> int:
    """Network evaluations per row of one DDIM decoding of ``steps`` steps (:func:`nfe_per_step` at every step
    inside ``interval``, 1 outside it; ``power`` is the grid's exponent). APG and CFG++ cost what their base
    costs.

    Example:
        >>> decode_nfe("cfg", steps=10), decode_nfe("cfg", steps=10, interval=(300, 700))
        (20, 14)
    """
    from diffusion import ddim_eval_timesteps

    k = nfe_per_step(guidance, groups, weights, dcfg_form)
    if interval is None or k == 1:
        return k * int(steps)
    lo, hi = float(interval[0]), float(interval[1])
    return sum(k if lo <= t <= hi else 1 for t in ddim_eval_timesteps(num_timesteps, int(steps), power=power))


@anchor_renamed
def invert_nfe(steps: int, refine_steps: int = 0, variant: str | None = None, dcfg_form: str = "paper",
               interval: Sequence[float] | None = None, num_timesteps: int = 1000,
               predictor: str = "explicit", power: float = 1.0) -> int:
    """Network evaluations per row of one DDIM inversion: ``(1 + refine_steps) steps`` (``1 + refine_steps
    steps`` with the extrapolated ``predictor``), and with CFG++ anchored at null (CFG, or DCFG's
    ``dcfg_form="paper"``: its pair ``eps(c)``, ``eps(null)``) 2 rows at every evaluation inside ``interval``.

    Example:
        >>> invert_nfe(10, 1), invert_nfe(10, 1, "cfgpp"), invert_nfe(10, 1, "cfgpp", dcfg_form="conditional")
        (20, 40, 20)
        >>> invert_nfe(10, 1, predictor="extrapolated"), invert_nfe(10, 1, "cfgpp", predictor="extrapolated")
        (11, 22)
    """
    from diffusion import ddim_eval_timesteps, ddim_invert_nfe

    if variant != "cfgpp" or check_dcfg_form(dcfg_form) != "paper":
        return ddim_invert_nfe(int(steps), int(refine_steps), predictor)
    ts = ddim_eval_timesteps(num_timesteps, int(steps), invert=True, refine_steps=int(refine_steps),
                             predictor=predictor, power=power)
    if interval is None:
        return 2 * len(ts)
    return sum(2 if interval[0] <= t <= interval[1] else 1 for t in ts)


def inversion_settings(config: Any) -> tuple[int, str, float]:
    """``(refine_steps, predictor, grid power)`` of the inversion a pipeline ``config`` runs: refinement and the
    predictor are a DDIM inversion's (DPM-Solver++'s inverse scheduler takes one evaluation per step), the grid
    power DDIM's own (:func:`pipeline.options.grid_power`)."""
    from diffusion.solvers import uses_refinement

    solver = getattr(config, "solver", "ddim")
    refine = int(getattr(config, "refine_steps", 0) or 0) if uses_refinement(solver) else 0
    return refine, inversion_predictor(config, refine), grid_power(config, solver)


def num_timesteps(pipe: Any) -> int:
    """T of a pipeline's image model (1000 for test doubles without a config)."""
    model_config = getattr(getattr(pipe, "image_model", None), "config", None)
    return int(getattr(model_config, "num_train_timesteps", 1000))


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
        self.solver = getattr(pipe.config, "solver", "ddim")
        self.refine_steps, self.predictor, self.power = inversion_settings(pipe.config)
        self.num_timesteps = num_timesteps(pipe)
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

    @anchor_renamed
    @torch.no_grad()
    def invert(self, images: Tensor, parents: Mapping[str, Tensor], steps: int, variant: str | None = None,
               dcfg_form: str = "paper", interval: Sequence[float] | None = None) -> Tensor:
        """DDIM-invert ``images`` under ``parents`` (image parents only are used), chunk by chunk.

        ``variant="cfgpp"`` with ``dcfg_form="paper"``: CFG++'s inversion (:meth:`CounterfactualPipeline.invert`).
        """
        names = list(self.pipe.graph.image_parents())
        pair = variant == "cfgpp" and check_dcfg_form(dcfg_form) == "paper"
        kw = {"variant": "cfgpp", "dcfg_form": "paper", "interval": interval} if pair else {}
        per_row = invert_nfe(steps, self.refine_steps, variant, dcfg_form, interval, self.num_timesteps,
                             self.predictor, self.power)
        out = []
        for start in range(0, len(images), self.chunk_size):
            sl = slice(start, start + self.chunk_size)
            x = self._to(images[sl])
            z = self.pipe.invert(x, {k: parents[k][sl].to(x.device) for k in names}, steps=steps, **kw)
            out.append(z.to(images.device))  # computed on the model's device, returned on the input's
            self._spent(per_row * len(x))
        return torch.cat(out) if out else images[:0].clone()

    @anchor_renamed
    @torch.no_grad()
    def decode(self, x_T: Tensor, parents: Mapping[str, Tensor], guidance: str,
               groups: Sequence[Sequence[str]] | None, weights: Sequence[float] | None, steps: int,
               dcfg_form: str | None = None, variant: str | None = None, interval: Sequence[float] | None = None,
               apg: Mapping[str, Any] | None = None) -> Tensor:
        """DDIM-decode ``x_T`` under ``parents`` with the given guidance, chunk by chunk.

        ``dcfg_form``: DCFG's formulation (default: the pipeline's ``config.dcfg_form``). ``variant``,
        ``interval`` and ``apg`` (``apg_eta``, ``apg_threshold``, ``apg_momentum``): the guidance variant
        (:meth:`CounterfactualPipeline.decode`).
        """
        names = list(self.pipe.graph.image_parents())
        if dcfg_form is None:
            dcfg_form = getattr(self.pipe.config, "dcfg_form", "paper")
        per_row = decode_nfe(guidance, groups, weights, dcfg_form, steps, interval, self.num_timesteps, self.power)
        extra: dict[str, Any] = {}
        if guidance != "none" and (variant is not None or interval is not None):
            extra = {"variant": variant, "interval": interval, **(apg or {})}
        out = []
        for start in range(0, len(x_T), self.chunk_size):
            sl = slice(start, start + self.chunk_size)
            z = self._to(x_T[sl])
            cond = {n: parents[n][sl].to(z.device) for n in names}
            if guidance == "none":
                x = self.pipe.decode(z, cond, guidance="none", steps=steps)
            else:
                kw = {"dcfg_form": dcfg_form} if guidance == "dcfg" else {}
                x = self.pipe.decode(z, cond, guidance=guidance, groups=groups, weights=weights, steps=steps, **kw,
                                     **extra)
            out.append(x.to(x_T.device))
            self._spent(per_row * len(z))
        return torch.cat(out) if out else x_T[:0].clone()
