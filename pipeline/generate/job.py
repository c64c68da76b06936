"""The sharded job: :func:`generate` writes the counterfactuals of every row of a dataset as shards plus a manifest.

One process, or ``N`` ranks under ``torchrun`` (rank ``r`` writes shards ``r, r + N, ...``). Everything is
checked before anything is written; rank 0 then clears what a killed run left and writes the planned manifest
(:func:`~pipeline.generate.manifest.start_run`), every rank writes its pending shards, and rank 0 verifies them
and writes the final manifest (:func:`~pipeline.generate.manifest.finalize_run`). See :mod:`pipeline.generate`
for the layout, the determinism and the memory rule.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from dcfg_io.checks import check_integer, is_integer, is_number

from ..options import FROM_CONFIG
from .interventions import (
    check_interventions,
    check_shifts,
    draw_interventions,
    interventions_json,
    parse_interventions,
)
from .manifest import (
    FORMAT_VERSION,
    Manifest,
    ShardRecord,
    atomic_write,
    check_out,
    finalize_run,
    pipeline_sha256,
    plan_shards,
    shard_contents,
    start_run,
)
from .randomness import shard_seed
from .sources import Rows, open_rows

__all__ = ["generate"]

_IMAGE_DTYPES = ("uint8", "float16", "float32")

log = logging.getLogger(__name__)


def _image_out(x: Tensor, image_dtype: str) -> Tensor:
    """Images in [-1, 1] as stored: uint8 on 0..255, or float16 / float32 as they are."""
    x = x.detach().float().cpu().clamp(-1.0, 1.0)
    if image_dtype == "uint8":
        return x.add(1.0).mul(127.5).round().to(torch.uint8)
    return x.to(getattr(torch, image_dtype))


def _shard_bytes(res: Any, rows: np.ndarray, graph: Any, image_dtype: str, meta: dict[str, Any]) -> bytes:
    """One shard's safetensors bytes: images, factual and counterfactual parents, noise and row indices."""
    from safetensors.torch import save

    def cpu(t: Tensor) -> Tensor:
        return t.detach().cpu().contiguous().clone()

    tensors: dict[str, Tensor] = {"index": torch.from_numpy(rows.astype(np.int64)),
                                  "image": _image_out(res.image, image_dtype).contiguous()}
    for n in graph.attribute_nodes():
        tensors[f"factual/{n}"] = cpu(res.factual_parents[n])
        tensors[f"counterfactual/{n}"] = cpu(res.parents[n])
        tensors[f"noise/{n}"] = cpu(res.noise[n])
    tensors["noise/x_T"] = cpu(res.noise["x_T"]).float()
    # one metadata key only: safetensors orders several keys differently from process to process
    return save(tensors, metadata={"dcfg": json.dumps(meta, sort_keys=True)})


class _Rank(logging.LoggerAdapter):
    """Log lines prefixed with this process's rank."""

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        return f"[rank {self.extra['rank']}/{self.extra['world']}] {msg}", kwargs


def generate(
    pipeline: Any,
    dataset: Any,
    do: str | Mapping[str, Any],
    *,
    out: str | os.PathLike,
    guidance: str | None = None,
    scale: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    shard_size: int = 256,
    variant: str | None = FROM_CONFIG,
    interval: Any = FROM_CONFIG,
    solver: str | None = None,
    chunk_size: int | None = None,
    limit: int | None = None,
    image_dtype: str = "uint8",
    device: str | torch.device | None = None,
    progress: bool = True,
    on_shard: Callable[[ShardRecord, float], None] | None = None,
) -> Manifest:
    """Write the counterfactuals of every row of a dataset under ``do`` as shards plus a manifest.

    Runs unchanged as one process or under ``torchrun --nproc_per_node=N`` (rank ``r`` writes shards
    ``r, r + N, ...``; one GPU per rank when CUDA is available, else the CPU with a gloo group; ``out``
    must be on a file system every rank sees). A restart with the same arguments skips verified shards
    and finishes the rest (see :mod:`pipeline.generate` for the layout, determinism and the memory rule).

    Args:
        pipeline: a ``CounterfactualPipeline``, a saved pipeline directory, or ``None`` for the
            bundled Morpho-MNIST pipeline.
        dataset: a ``--data`` SPEC string (:data:`~pipeline.generate.sources.DATA_SPEC_HELP`), or a map-style dataset of
            ``(image, attributes)`` items (e.g. ``MorphoMNIST``, ``ImageAttributeFolder``).
        do: a ``--do`` text (``"thickness=+1,digit~choice(0,...,9)"``) or a dict node -> number,
            :class:`ShiftDo`, :class:`UniformDraw`, :class:`NormalDraw`, :class:`ChoiceDraw` or an ``(N,)`` tensor
            (one value per dataset row).
        out: the output folder (created; must be new, empty, or a run of the same query).
        guidance: ``"dcfg"``, ``"cfg"`` or ``"none"`` (default: the pipeline's).
        scale: guidance scale (default: the pipeline's default for the intervened nodes).
        steps: DDIM steps (default: the pipeline's).
        seed: seed of the per-image draws and of the discrete-noise abduction.
        shard_size: rows per shard (the last may be shorter); part of the query.
        variant: guidance variant, ``None``, ``"apg"`` or ``"cfgpp"`` (left out: the pipeline's); part of the
            query (with APG's settings) when there is one. See docs/guidance.md.
        interval: guidance interval ``(lo, hi)`` or ``None`` (left out: the pipeline's); part of the query
            when there is one.
        chunk_size: rows per batched network call within a shard (default: the pipeline's
            ``chunk_size``); part of the query.
        limit: keep only the first ``limit`` rows of the dataset.
        image_dtype: ``"uint8"`` (default), ``"float16"`` or ``"float32"``.
        device: where to run (default: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU).
        progress: tqdm bar with images/s on rank 0.
        on_shard: called as ``on_shard(record, seconds)`` after this process writes a shard.

    Returns:
        The final :class:`Manifest` (every shard complete, with its sha256).

    Raises:
        ValueError: a bad argument, data spec or intervention, or ``out`` holding another run; all
            checked before anything is written.
        TypeError: an argument of the wrong type.

    Example:
        >>> from pipeline.generate import generate                          # doctest: +SKIP
        >>> m = generate(None, "morpho-test", "digit~choice(0,...,9)", out="cf-digit", steps=20)  # doctest: +SKIP
        >>> m.complete, len(m.shards), m.data["length"]                     # doctest: +SKIP
        (True, 4, 1000)
    """
    from diffusion.distributed import setup

    # 1. Validate everything before touching the disk.
    for name, value, low in (("shard_size", shard_size, 1), ("seed", seed, 0)):
        check_integer(name, value, low)
    if image_dtype not in _IMAGE_DTYPES:
        raise ValueError(f"image_dtype={image_dtype!r} must be one of {', '.join(_IMAGE_DTYPES)}")
    if chunk_size is not None and not is_integer(chunk_size, 1, python_int=True):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer (or None for the pipeline's)")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out={out!r} must be the path of the output folder")
    out = Path(out)
    owns_group = _init_group(device)
    ctx = setup(device)
    try:
        pipe, pipe_hash = _pipeline(pipeline, ctx.device)
        rows = open_rows(dataset, pipe.graph, limit)
        manifest, interventions = _plan_run(pipe, pipe_hash, rows, do, guidance, scale, steps, int(seed),
                                            int(shard_size), chunk_size, image_dtype, variant, interval, solver)
        old = check_out(out, manifest)  # every rank checks: a mismatch stops all of them
        identity_sha = hashlib.sha256(json.dumps(manifest.identity(), sort_keys=True).encode()).hexdigest()
        rlog = _Rank(log, {"rank": ctx.rank, "world": ctx.world_size})

        # 2. Rank 0 clears what a killed run left, verifies the existing shards and writes the manifest.
        if ctx.is_main:
            start_run(out, manifest, old, identity_sha)
        ctx.barrier()
        current = Manifest.load(out)

        # 3. This rank's pending shards.
        mine = [s for s in current.shards if s.index % ctx.world_size == ctx.rank]
        todo = [s for s in mine if s.status != "complete"]
        rlog.info("%d rows in %d shards; this rank: %d shards, %d complete, %d to write on %s",
                  len(rows), len(current.shards), len(mine), len(mine) - len(todo), len(todo), ctx.device)
        from tqdm.auto import tqdm

        done = sum(s.stop - s.start for s in mine if s.status == "complete")
        bar = tqdm(total=sum(s.stop - s.start for s in mine), initial=done, unit="img", desc="generate",
                   disable=not progress or not ctx.is_main, dynamic_ncols=True)
        try:
            for rec in todo:
                t0 = time.perf_counter()
                _write_shard(pipe, rows, rec, interventions, manifest.query, out, identity_sha, ctx.device)
                dt = time.perf_counter() - t0
                bar.update(rec.stop - rec.start)
                rlog.info("shard %d (rows %d-%d) written in %.1f s, %.1f img/s", rec.index, rec.start,
                          rec.stop, dt, (rec.stop - rec.start) / max(dt, 1e-9))
                if on_shard is not None:
                    on_shard(rec, dt)
        finally:
            bar.close()
        ctx.barrier()

        # 4. Rank 0 verifies every shard and writes the final manifest; the sidecars go.
        if ctx.is_main:
            finalize_run(out, current, identity_sha)
        ctx.barrier()
        rlog.info("done: %s", out)
        return Manifest.load(out)
    finally:
        ctx.close()
        if owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


#: How long a rank may wait at a barrier for the others (a resumed run can be very unbalanced).
_BARRIER_TIMEOUT_S = 7 * 24 * 3600


def _init_group(device: str | torch.device | None) -> bool:
    """Under torchrun, start the process group with a long timeout (the default 30 min is too short
    for a rank that waits at the final barrier while the others finish their shards)."""
    import datetime

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=_BARRIER_TIMEOUT_S))
    return True


def _pipeline(pipeline: Any, device: torch.device) -> tuple[Any, dict[str, str]]:
    """The pipeline on ``device`` and its manifest record (sha256 of its files, or of its weights in memory)."""
    from pipeline.core import CounterfactualPipeline

    if pipeline is None or isinstance(pipeline, (str, os.PathLike)):
        if pipeline is None:
            return (CounterfactualPipeline.pretrained(device=device),
                    {"sha256": pipeline_sha256(_bundled_dir()), "hashed": "files"})
        pipe = CounterfactualPipeline.load(pipeline, device=device)
        return pipe, {"sha256": pipeline_sha256(pipeline), "hashed": "files"}
    if isinstance(pipeline, CounterfactualPipeline):
        pipeline.image_model.to(device)
        return pipeline, {"sha256": pipeline_sha256(pipeline), "hashed": "weights"}
    raise TypeError(f"pipeline must be a CounterfactualPipeline, a saved pipeline directory or None (the bundled "
                    f"one), got {type(pipeline).__name__}")


def _bundled_dir() -> Path:
    """The folder of the bundled Morpho-MNIST pipeline."""
    from importlib import resources

    return Path(str(resources.files("pipeline") / "pretrained" / "morphomnist"))


def _plan_run(pipe: Any, pipe_hash: dict[str, str], rows: Rows, do: Any, guidance: str | None,
              scale: float | None, steps: int | None, seed: int, shard_size: int, chunk_size: int | None,
              image_dtype: str, variant: Any = FROM_CONFIG, interval: Any = FROM_CONFIG, solver: str | None = None
              ) -> tuple[Manifest, dict[str, Any]]:
    """The planned manifest (every shard pending) and the checked interventions."""
    from pipeline.groups import resolve_guidance

    graph, config = pipe.graph, pipe.config
    if isinstance(do, str):
        do = parse_interventions(do)
    elif not isinstance(do, Mapping):
        raise TypeError(f"do must be a --do text (e.g. 'thickness=+1') or a dict node -> value, got "
                        f"{type(do).__name__}")
    if not do:
        raise ValueError("do is empty; give at least one intervention, e.g. thickness=+1")
    interventions = check_interventions(do, pipe.scm, len(rows), draws=True, callables=False)
    check_shifts(interventions, rows, graph)
    guidance = config.guidance if guidance is None else guidance
    if scale is not None and not is_number(scale):
        raise ValueError(f"scale={scale!r} must be a finite number (e.g. 3.0), or None for the pipeline's default")
    scale = float(config.default_scale(list(interventions)) if scale is None else scale)
    steps = config.steps if steps is None else steps
    if not is_integer(steps, 1, python_int=True):
        raise ValueError(f"steps={steps!r} must be a positive integer (e.g. 50)")
    groups, weights = resolve_guidance(graph, list(interventions), guidance, scale,
                                       invariant_weight=config.invariant_weight,
                                       descendant_weight=config.descendant_weight,
                                       anchor_scales=config.anchor_scales if guidance == "dcfg" else None)
    query = {"do": interventions_json(interventions), "guidance": guidance, "scale": scale, "steps": int(steps),
             "seed": seed, "groups": groups, "weights": [float(w) for w in weights], "shard_size": shard_size,
             "chunk_size": int(config.chunk_size if chunk_size is None else chunk_size), "image_dtype": image_dtype}
    if guidance == "dcfg":
        query["dcfg_form"] = config.dcfg_form
    variant, interval, apg = pipe._variant_args(guidance, variant, interval, None, None, None)
    if variant is not None:  # recorded only when there is one: a query without stays as it was
        query["variant"] = variant
        if variant == "apg":
            query["apg"] = apg
    if interval is not None:
        query["interval"] = list(interval)
    from diffusion.solvers import check_solver, uses_refinement
    from pipeline.options import grid_power, inversion_predictor

    solver = check_solver(config.solver if solver is None else solver)
    if solver != "ddim":  # recorded only when not DDIM: a DDIM run's manifest stays as it was
        if variant == "cfgpp":
            raise ValueError(f"variant='cfgpp' needs solver='ddim'; got solver={solver!r}")
        query["solver"] = solver
    predictor = inversion_predictor(config, config.refine_steps)
    if uses_refinement(solver) and predictor != "explicit":  # recorded only when extrapolated: an explicit
        query["inversion"] = {"refine_steps": int(config.refine_steps), "predictor": predictor}  # run's stays as it was
    if grid_power(config, solver) != 1.0:  # likewise only a non-uniform grid
        query["timestep_power"] = grid_power(config, solver)
    manifest = Manifest(FORMAT_VERSION, pipe_hash, query, {**rows.spec, "length": len(rows)},
                        plan_shards(len(rows), shard_size), contents=shard_contents(graph, image_dtype))
    return manifest, interventions


@torch.no_grad()
def _write_shard(pipe: Any, rows: Rows, rec: ShardRecord, do: Mapping[str, Any], query: Mapping[str, Any],
                 out: Path, identity_sha: str, device: torch.device) -> None:
    """Answer the query for one shard's rows and write the shard, then its sidecar with the shard's sha256."""
    index = np.arange(rec.start, rec.stop, dtype=np.int64)
    images, parents = rows.fetch(rec.start, rec.stop)
    graph = pipe.graph
    parents = {n: parents[n] for n in graph.attribute_nodes()}
    res = pipe.counterfactual(images.to(device), parents, do=draw_interventions(do, graph, query["seed"], index),
                              guidance=query["guidance"], scale=query["scale"], steps=query["steps"],
                              seed=shard_seed(query["seed"], rec.index), chunk_size=query["chunk_size"],
                              variant=query.get("variant"), interval=query.get("interval"),
                              solver=query.get("solver", "ddim"), **query.get("apg", {}))
    meta = {"format_version": FORMAT_VERSION, "shard": rec.index, "start": rec.start, "stop": rec.stop,
            "identity": identity_sha}
    blob = _shard_bytes(res, index, graph, query["image_dtype"], meta)
    path = out / rec.file
    atomic_write(path, blob)
    sidecar = {"shard": rec.index, "start": rec.start, "stop": rec.stop, "identity": identity_sha,
               "sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write(path.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
