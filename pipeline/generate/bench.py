"""The benchmark of the sharded job (``dcfg bench generate``): images/s and peak resident memory."""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dcfg_io.checks import is_integer

from .job import generate
from .manifest import atomic_write

__all__ = ["bench_generate"]


def _rss_mib() -> float:
    """Current resident set size (MiB), from /proc (0.0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


def bench_generate(n: int = 1000, *, pipeline: Any = None, data: str | None = None, do: str = "thickness=+1",
                   steps: int = 2, shard_size: int = 256, chunk_size: int | None = None, seed: int = 0,
                   work_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Generate ``n`` counterfactuals into a temporary folder; report images/s and peak memory.

    Peak memory is the process's ``ru_maxrss`` (the high-water mark of resident memory, which
    includes the pipeline and the Python runtime), so run one ``n`` per process and compare the
    two peaks (a resident-memory sample taken after a shard counts when larger). The resident memory after
    each shard is recorded (``rss_after_shard_mib``).

    Args:
        n: images to generate.
        pipeline: as in :func:`generate` (default: the bundled one).
        data: a data SPEC (default: ``morpho-train:samples=K`` with K just large enough for ``n`` rows).
        do: the intervention.
        steps: DDIM steps (small: this measures the job, not the model).
        shard_size, chunk_size, seed: as in :func:`generate`.
        work_dir: where the temporary output goes (removed afterwards).
        out: optional JSON file for the figures.
        progress: tqdm bar.

    Returns:
        ``{"n", "steps", "images_per_s", "wall_s", "peak_rss_mib", "rss_before_mib", "rss_after_shard_mib", ...}``.

    Example:
        >>> res = bench_generate(100, steps=1, progress=False)   # doctest: +SKIP
        >>> res["n"], res["peak_rss_mib"] > 0                     # doctest: +SKIP
        (100, True)
    """
    import resource
    import shutil

    if not is_integer(n, 1, python_int=True):
        raise ValueError(f"n={n!r} must be a positive integer")
    if data is None:
        data = f"morpho-train:samples={max(1, math.ceil(n / 4000))}"
    rss_before = _rss_mib()
    per_shard: list[float] = []
    tmp = Path(tempfile.mkdtemp(prefix="dcfg-bench-generate-", dir=work_dir))
    try:
        t0 = time.perf_counter()
        m = generate(pipeline, data, do, out=tmp / "out", steps=steps, seed=seed, shard_size=shard_size,
                     chunk_size=chunk_size, limit=n, progress=progress,
                     on_shard=lambda rec, dt: per_shard.append(_rss_mib()))
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # ru_maxrss (KiB on Linux) is the kernel's high-water mark, updated lazily: a VmRSS sample taken
    # after a shard can read a few hundred KiB above it, so the peak is the larger of the two.
    peak = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, *per_shard])
    rows = int(m.data["length"])
    res = {"n": rows, "steps": steps, "shard_size": shard_size, "chunk_size": m.query["chunk_size"],
           "guidance": m.query["guidance"], "do": do, "data": data, "threads": torch.get_num_threads(),
           "wall_s": wall, "images_per_s": rows / wall, "peak_rss_mib": peak, "rss_before_mib": rss_before,
           "rss_after_first_shard_mib": per_shard[0] if per_shard else None,
           "rss_after_last_shard_mib": per_shard[-1] if per_shard else None,
           "rss_after_shard_mib": per_shard}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, (json.dumps(res, indent=2) + "\n").encode())
    return res
