"""A fork process pool over consecutive chunks of a batch: workers inherit the arrays, nothing is re-read, and
each chunk's result depends only on its own items.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Any, Callable, Sequence

import numpy as np

from dcfg_io.checks import is_integer

__all__ = ["resolve_jobs", "map_chunks"]

_SHARED: dict[str, Any] = {}


def resolve_jobs(n_jobs: int | None) -> int:
    """``None`` -> the CPUs this process may use; otherwise a positive int."""
    if n_jobs is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    if not is_integer(n_jobs, 1):
        raise ValueError(f"n_jobs={n_jobs!r} is invalid: use None (all CPUs) or a positive integer (1 = serial)")
    return int(n_jobs)


def _run_slice(bounds: tuple[int, int]) -> Any:
    fn, arrays, kwargs = _SHARED["job"]
    start, stop = bounds
    return fn(*(a[start:stop] for a in arrays), **kwargs)


def map_chunks(fn: Callable[..., Any], arrays: Sequence[np.ndarray], *, n_jobs: int | None, chunk_size: int,
               min_parallel: int, progress: bool = False, desc: str = "", **kwargs: Any) -> list[Any]:
    """Apply ``fn(*[a[start:stop] for a in arrays], **kwargs)`` over consecutive chunks, in order.

    Uses a fork pool of ``n_jobs`` processes when the batch has at least ``min_parallel`` items and
    fork is available; otherwise (or inside a daemon process, e.g. a DataLoader worker) runs serially.
    ``fn`` must be a module-level function. Each chunk's result depends only on its own items.
    """
    n = len(arrays[0])
    bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    jobs = min(resolve_jobs(n_jobs), len(bounds))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="img")
    results: list[Any] = []
    try:
        use_pool = jobs > 1 and n >= min_parallel and "fork" in multiprocessing.get_all_start_methods()
        if use_pool and multiprocessing.current_process().daemon:
            use_pool = False
        if use_pool:
            _SHARED["job"] = (fn, arrays, kwargs)
            try:
                with multiprocessing.get_context("fork").Pool(jobs) as pool:
                    for (start, stop), res in zip(bounds, pool.imap(_run_slice, bounds)):
                        results.append(res)
                        if bar is not None:
                            bar.update(stop - start)
            finally:
                _SHARED.pop("job", None)
        else:
            for start, stop in bounds:
                results.append(fn(*(a[start:stop] for a in arrays), **kwargs))
                if bar is not None:
                    bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    return results
