"""``dcfg bench train``: does reading training data cost memory that grows with the number of images?

Images are read from disk as the model needs them (never held all in float32), so a training run's peak memory
should not depend on how many images the split has. The bench measures it: for each size N in ``sizes`` a fresh
Python process opens the first N rows of the data and streams ``steps`` training batches through the same code the
image model's training uses (:func:`diffusion.training.training_batches`: the seeded batch order, DataLoader workers,
collation), then reports its peak resident memory (``ru_maxrss`` of the process and its workers) and the images/s
it read. ``steps`` is raised to at least one full pass over the largest N, so every image is decoded once.

Without ``--data`` it writes a synthetic CSV + PNG set of ``max(sizes)`` RGB images of ``image_size`` pixels (random
blobs on noise, two attributes) into a temporary folder, and removes it afterwards.

Example:
    >>> res = bench_train_data(sizes=(40, 80), image_size=32, steps=3, batch_size=8)  # doctest: +SKIP
    >>> res["rss_ratio"] <= 1.1                                                        # doctest: +SKIP
    True
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from pipeline.machine import cpu_facts  # noqa: F401  (re-exported: its former home)

__all__ = ["bench_train_data", "cpu_facts"]


def _write_synthetic(folder: Path, n: int, size: int, seed: int = 0) -> tuple[str, Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    rows = ["path,radius,red"]
    for k in range(n):
        radius = rng.uniform(0.15, 0.45) * size
        red = int(rng.random() < 0.5)
        img = rng.normal(30, 8, (size, size, 3))
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius ** 2
        img[mask] = (220, 60, 40) if red else (40, 90, 220)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"{k:06d}.png")
        rows.append(f"images/{k:06d}.png,{radius:.3f},{red}")
    (folder / "attributes.csv").write_text("\n".join(rows) + "\n")
    graph = {"nodes": {"radius": {"kind": "positive"}, "red": {"kind": "binary"},
                       "image": {"kind": "image", "shape": [3, size, size]}},
             "edges": [["radius", "red"], ["radius", "image"], ["red", "image"]]}
    (folder / "graph.json").write_text(json.dumps(graph))
    return f"csv:{folder / 'attributes.csv'}", folder / "graph.json"


def _child(spec: str, graph_file: str, n: int, steps: int, batch_size: int, num_workers: int,
           image_size: int | None) -> dict[str, Any]:
    """Runs in a fresh process: stream ``steps`` training batches of the first ``n`` rows."""
    import torch

    from diffusion.training import training_batches
    from pipeline.generate import open_dataset
    from pipeline.train import image_model_config_for, image_model_preset, read_graph

    torch.set_num_threads(1)
    graph = read_graph(graph_file)
    data = open_dataset(spec, limit=n, graph=graph, image_size=image_size)
    attrs = {k: data.factual(k) for k in graph.attribute_nodes()}
    config = image_model_config_for(graph, attrs, **image_model_preset(graph.spec(graph.image_node).shape)[1])
    t0 = time.perf_counter()
    seen = 0
    for x, _ in training_batches(data, config, batch_size, steps, num_workers=num_workers):
        seen += len(x)
    wall = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"n": len(data), "steps": steps, "images": seen, "wall_s": wall, "images_per_s": seen / wall,
            "peak_rss_mib": self_kb / 1024, "peak_worker_rss_mib": workers_kb / 1024,
            "image_shape": list(graph.spec(graph.image_node).shape)}


def bench_train_data(data: str | None = None, graph: str | os.PathLike | None = None, *,
                     sizes: Sequence[int] = (1000, 10000), image_size: int = 64, steps: int | None = None,
                     batch_size: int = 64, num_workers: int = 0, out: str | os.PathLike | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Peak memory and read speed of training data loading at each of ``sizes`` (see the module docstring).

    Args:
        data, graph: a ``--data`` spec and its graph file (default: a synthetic set of ``image_size`` pixels).
        sizes: numbers of images (the first N rows of the data).
        image_size: side of the synthetic images; with ``data``, the ``--image-size`` they are read at (0: as
            they are).
        steps: batches streamed per size (default and minimum: one pass over ``max(sizes)``).
        batch_size, num_workers: as in training.
        out: JSON file for the results.

    Returns:
        ``{"runs": [...], "rss_ratio": peak RSS of the largest over the smallest, "machine": cpu_facts(), ...}``.
    """
    sizes = sorted(int(s) for s in sizes)
    if len(sizes) < 2 or sizes[0] < 1:
        raise ValueError(f"sizes={sizes} must be at least two positive numbers of images")
    steps = max(int(steps or 0), math.ceil(sizes[-1] / batch_size))
    with tempfile.TemporaryDirectory(prefix="dcfg-bench-train-") as tmp:
        size_arg: int | None = image_size or None
        if data is None:
            if progress:
                print(f"writing {sizes[-1]:,} synthetic {image_size}x{image_size} RGB images", file=sys.stderr)
            data, graph = _write_synthetic(Path(tmp), sizes[-1], image_size)
            size_arg = None
        elif graph is None:
            raise ValueError("--data needs --graph (the graph file of the data)")
        runs = []
        for n in sizes:
            code = ("import json, sys; from pipeline.bench_train import _child; "
                    "print(json.dumps(_child(*json.loads(sys.argv[1]))))")
            args = json.dumps([data, str(graph), n, steps, batch_size, num_workers, size_arg])
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"the bench process for {n} images failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(run)
            if progress:
                print(f"{run['n']:>7,} images: peak RSS {run['peak_rss_mib']:.0f} MiB (workers "
                      f"{run['peak_worker_rss_mib']:.0f} MiB), {run['images_per_s']:.0f} images/s", file=sys.stderr)
    res = {"bench": "train-data", "data": data if not str(data).startswith("csv:" + tempfile.gettempdir())
           else "synthetic", "sizes": sizes, "steps": steps, "batch_size": batch_size, "num_workers": num_workers,
           "runs": runs, "rss_ratio": runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"],
           "machine": cpu_facts(), "python": platform.python_version()}
    if out is not None:
        from dcfg_io.atomic import atomic_write_json

        atomic_write_json(Path(out), res)
    return res
