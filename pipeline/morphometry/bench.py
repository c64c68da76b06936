"""``dcfg bench morphometry``: speed and accuracy of the morphometry oracle and the perturbations.

On the same test digits, in one run: ms per image of the fast and the reference thickness and their
agreement; the achieved error of ``set_thickness`` at targets 1.5, 2.5, 3.5 and 4.5; the error of
``set_intensity``. Timings depend on the machine's load, which is recorded beside them.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from dcfg_io.atomic import atomic_write_json

__all__ = ["bench_morphometry", "format_report"]

THICKNESS_TARGETS = (1.5, 2.5, 3.5, 4.5)
INTENSITY_TARGETS = (64.0, 128.0, 192.0, 255.0)


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _stats(err: np.ndarray) -> dict[str, float]:
    err = np.abs(err[np.isfinite(err)])
    return {"median": float(np.median(err)), "mean": float(err.mean()), "p90": float(np.percentile(err, 90)),
            "max": float(err.max())}


def bench_morphometry(n: int = 1000, n_jobs: int | None = None, out: str | os.PathLike | None = None,
                      reference: bool = True, progress: bool = True) -> dict[str, Any]:
    """Measure the morphometry's speed and the perturbations' accuracy on ``n`` test digits.

    Args:
        n: number of benchmark test digits (the first ``n`` of the fixed 1,000, all classes).
        n_jobs: processes of the fast thickness and the perturbations (``None`` = all CPUs).
        out: JSON file to write (atomically); ``None`` writes nothing.
        reference: also time the slow reference (tens of ms an image).
        progress: tqdm bars.

    Returns:
        The results dict (also written to ``out``).

    Example:
        >>> res = bench_morphometry(n=20, n_jobs=1, progress=False)  # doctest: +SKIP
        >>> res["thickness"]["agreement"]["median"] < 0.05           # doctest: +SKIP
        True
    """
    from pipeline.datasets import load_mnist5k, mnist5k_split
    from pipeline.morphometry import (
        measure_intensity,
        measure_thickness,
        reference_thickness,
        set_intensity,
        set_thickness,
    )
    from pipeline.morphometry.parallel import resolve_jobs

    if not 1 <= int(n) <= 1000:
        raise ValueError(f"n={n} is out of range: the benchmark has 1..1000 test digits")
    images, _ = load_mnist5k()
    _, test_idx = mnist5k_split()
    digits = images[np.sort(test_idx)[: int(n)]] if n == 1000 else images[_spread(test_idx, int(n))]
    x = digits.astype(np.float64) / 255.0
    jobs = resolve_jobs(n_jobs)
    result: dict[str, Any] = {
        "n_images": int(n),
        "machine": {"cpus": os.cpu_count(), "n_jobs": jobs, "platform": platform.platform(),
                    "loadavg_before": list(os.getloadavg())},
    }
    measure_thickness(x[:8], n_jobs=1)  # warm the cached tables and matrices
    fast, fast_s = _timed(measure_thickness, x, n_jobs=jobs, progress=progress)
    _, serial_s = _timed(measure_thickness, x, n_jobs=1)
    thickness: dict[str, Any] = {
        "fast_ms_per_image": 1000 * fast_s / n,
        "fast_serial_ms_per_image": 1000 * serial_s / n,
    }
    if reference:
        ref, ref_s = _timed(reference_thickness, x, progress=progress)
        thickness["reference_ms_per_image"] = 1000 * ref_s / n
        thickness["speedup"] = ref_s / fast_s
        thickness["speedup_serial"] = ref_s / serial_s
        thickness["agreement"] = _stats(fast - ref)
        thickness["mean_signed_diff"] = float(np.nanmean(fast - ref))
    result["thickness"] = thickness

    per_target = {}
    set_s = 0.0
    for target in THICKNESS_TARGETS:
        y, seconds = _timed(set_thickness, x, target, n_jobs=jobs, progress=progress)
        set_s += seconds
        per_target[str(target)] = _stats(measure_thickness(y, n_jobs=jobs) - target)
    one_shot = set_thickness(x, 4.5, iterations=0, n_jobs=jobs)
    result["set_thickness"] = {
        "targets": per_target,
        "median_abs_error_worst_target": max(v["median"] for v in per_target.values()),
        "one_shot_target_4.5": _stats(measure_thickness(one_shot, n_jobs=jobs) - 4.5),
        "ms_per_image": 1000 * set_s / (n * len(THICKNESS_TARGETS)),
    }
    per_intensity = {}
    for target in INTENSITY_TARGETS:
        per_intensity[str(target)] = _stats(measure_intensity(set_intensity(x, target)) - target)
    result["set_intensity"] = {"targets": per_intensity,
                               "max_abs_error": max(v["max"] for v in per_intensity.values())}
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    if out is not None:
        atomic_write_json(Path(out), result)
    return result


def _spread(test_idx: np.ndarray, n: int) -> np.ndarray:
    """``n`` test indices spread over the (label-sorted) test set, so that every class appears."""
    return np.sort(test_idx)[np.linspace(0, len(test_idx) - 1, n).round().astype(int)]


def format_report(res: dict[str, Any]) -> str:
    """A plain-text table of :func:`bench_morphometry`'s results."""
    t = res["thickness"]
    lines = [f"morphometry benchmark on {res['n_images']} test digits "
             f"(cpus={res['machine']['cpus']}, n_jobs={res['machine']['n_jobs']}, "
             f"load {res['machine']['loadavg_before'][0]:.2f} -> {res['machine']['loadavg_after'][0]:.2f})",
             f"  thickness, fast    : {t['fast_ms_per_image']:.3f} ms/image "
             f"(serial {t['fast_serial_ms_per_image']:.3f})"]
    if "reference_ms_per_image" in t:
        a = t["agreement"]
        lines += [f"  thickness, reference (skimage medial_axis): {t['reference_ms_per_image']:.2f} ms/image",
                  f"  speed-up           : {t['speedup']:.1f}x (serial {t['speedup_serial']:.1f}x)",
                  f"  |fast - reference| : median {a['median']:.4f}, p90 {a['p90']:.4f}, max {a['max']:.3f} px"]
    s = res["set_thickness"]
    lines.append(f"  set_thickness |measured - target| ({s['ms_per_image']:.1f} ms/image):")
    for target, v in s["targets"].items():
        lines.append(f"    target {target}: median {v['median']:.3f}, mean {v['mean']:.3f}, p90 {v['p90']:.3f} px")
    o = s["one_shot_target_4.5"]
    lines.append(f"    one-shot (no correction) at 4.5: median {o['median']:.3f} px")
    lines.append(f"  set_intensity |measured - target|: max {res['set_intensity']['max_abs_error']:.3f} grey levels")
    return "\n".join(lines)
