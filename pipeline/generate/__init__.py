"""Counterfactual datasets at scale: sharded, resumable, ``torchrun``-ready bulk generation.

:func:`generate` answers one counterfactual query for every image of a dataset and writes the answers
as fixed-size shards plus a ``manifest.json``::

    OUT/
      manifest.json              format version, pipeline sha256, query, data spec, shard list
      shard-00000.safetensors    rows [0, N)
      shard-00001.safetensors    rows [N, 2N)  ...

A shard holds, for its rows (dataset indices ``index``):

* ``image``: the counterfactual images, ``uint8`` ``(B, C, H, W)`` on 0..255 (``x = v / 127.5 - 1``),
  or ``float16`` / ``float32`` in [-1, 1] with ``image_dtype=``;
* ``factual/<node>`` and ``counterfactual/<node>``: every attribute node, ``(B,)``;
* ``noise/<node>``: the abducted exogenous noise of every attribute (``(B,)``, or ``(B, K)`` float64
  Gumbel noise for a categorical node) and ``noise/x_T``: the DDIM-inverted image noise, float32;
* ``index``: the dataset rows, int64.

**Determinism.** Shards have a fixed size, and everything random about row ``j`` depends only on
``(seed, j)``: per-image draws of ``do`` (``thickness~uniform(1,4)``) hash ``(seed, node, j)``, and the
SCM's abduction of discrete noise in shard ``k`` is seeded by ``(seed, k)``. DDIM inversion and decoding
are deterministic. So one process and ``N`` ranks under ``torchrun`` (rank ``r`` takes shards
``r, r + N, ...``) write byte-identical files on the same kind of device.

**Resume.** A shard is written under a temporary name and renamed into place (never visible
half-written); its sha256 then goes into a sidecar ``shard-XXXXX.json``. The manifest is written first
with every planned shard ``pending`` and rewritten at the end with their sha256 (the sidecars are then
removed). A restart with the same query skips every shard whose file matches its recorded sha256 and
regenerates the others, so a killed run finishes the same files, byte for byte; a restart with another
query, pipeline or dataset raises :class:`ValueError` instead of mixing outputs.

**Memory.** The dataset is read one shard at a time, only one shard of outputs is held, and a shard is
decoded in chunks of ``chunk_size`` rows (default: the pipeline's ``PipelineConfig.chunk_size``), each
step one batched forward of ``chunk_size * (M + 1)`` rows for DCFG with ``M`` groups. Peak memory is
therefore set by ``shard_size`` and ``chunk_size``, not by the length of the dataset.

Interventions (``do``) may be constants (``thickness=3``), shifts of the factual value
(``thickness=+1``, ``thickness-=0.5``) or per-image draws, parsed without ``eval``
(:mod:`pipeline.generate.interventions`, the grammar ``dcfg counterfactual`` takes too):

* ``name~uniform(low,high)``;
* ``name~normal(mean,std)``, truncated to the node's support;
* ``name~choice(v1,v2,...)``, where ``a,...,b`` lists the integers ``a`` to ``b`` (``choice(0,...,9)``).

The package's modules, one concern each:

==================  ==========================================================================================
``randomness``      per-image draws that depend only on ``(seed, row)``, and each shard's seed
``interventions``   the ``--do`` grammar, :class:`ShiftDo` and the per-image draws, their check and their draws
``sources``         dataset adapters: a ``--data`` SPEC or a dataset object, read one shard at a time
``manifest``        ``manifest.json``, the shard plan and the hashes that verify a run
``job``             :func:`generate`, the sharded, resumable, ``torchrun``-ready job
``bench``           :func:`bench_generate`, behind ``dcfg bench generate``
==================  ==========================================================================================

Example:
    >>> from pipeline.generate import generate                      # doctest: +SKIP
    >>> m = generate(None, "morpho-test", "thickness=+1", out="cf-thick", steps=20, limit=512)  # doctest: +SKIP
    >>> [s.file for s in m.shards]                                  # doctest: +SKIP
    ['shard-00000.safetensors', 'shard-00001.safetensors']
"""
from __future__ import annotations

import warnings
from typing import Any

from .bench import bench_generate
from .interventions import (
    ChoiceDraw,
    Draw,
    Intervention,
    NormalDraw,
    ShiftDo,
    UniformDraw,
    check_intervention,
    check_interventions,
    draw_interventions,
    parse_interventions,
)
from .job import generate, log  # noqa: F401  (log: the job's logger, importable here as before)
from .manifest import FORMAT_VERSION, Manifest, ShardRecord, pipeline_sha256
from .randomness import per_image_uniform
from .sources import DATA_SPEC_HELP, GRAPH_SIZE, open_dataset

__all__ = ["generate", "Manifest", "ShardRecord", "ShiftDo", "UniformDraw", "NormalDraw", "ChoiceDraw", "Draw",
           "Intervention", "parse_interventions", "check_intervention", "check_interventions", "draw_interventions",
           "open_dataset", "pipeline_sha256", "per_image_uniform", "bench_generate", "FORMAT_VERSION",
           "DATA_SPEC_HELP", "GRAPH_SIZE"]

#: the old, generic names of the intervention classes -> their names now
_RENAMED = {"Shift": ShiftDo, "Uniform": UniformDraw, "Normal": NormalDraw, "Choice": ChoiceDraw}


def __getattr__(name: str) -> Any:
    """The old names ``Shift``, ``Uniform``, ``Normal`` and ``Choice``, with a DeprecationWarning."""
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(f"pipeline.generate.{name} is deprecated; use pipeline.generate.{new.__name__}",
                      DeprecationWarning, stacklevel=2)
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
