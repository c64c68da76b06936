"""Write a small RGB image set with a known causal graph: a CSV of attributes and a folder of PNGs.

The world is a coloured shape on a dark, noisy background, with four attributes:

    age ~ N(50, 15)                                   real, not seen in the image
    size = 0.35 + 0.4 * sigmoid((age - 50) / 12) + N(0, 0.03)      positive (the shape's radius / half-side)
    warm ~ Bernoulli(sigmoid(6 * (size - 0.55)))      binary: red-orange (1) or blue (0)
    shape ~ Uniform{circle, square, triangle}         categorical, 3 classes
    image <- shape, size, warm

so ``age -> size -> warm`` is a chain, the image shows size, warm and shape, and ``shape`` is independent of the
rest. Every row has a ``split`` column (``train`` for 80% of the rows, ``test`` for the rest).

Usage:
    python examples/own_data/make_data.py OUT_DIR [--n 1200] [--size 32] [--seed 0]

writes ``OUT_DIR/attributes.csv`` and ``OUT_DIR/images/*.png``. ``graph.json`` beside this script is the
graph above.
"""
from __future__ import annotations

import argparse
import csv
import os

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle")


def render(shape: int, size: float, warm: int, px: int, rng: np.random.Generator) -> np.ndarray:
    """One ``px x px`` RGB image (uint8) of the shape, its colour drawn around red-orange or blue."""
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float64)
    cx, cy = px / 2 + rng.uniform(-1.5, 1.5), px / 2 + rng.uniform(-1.5, 1.5)
    r = size * px / 2
    u, v = (xx - cx) / r, (yy - cy) / r
    if SHAPES[shape] == "circle":
        mask = u ** 2 + v ** 2 <= 1.0
    elif SHAPES[shape] == "square":
        mask = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    else:
        mask = (v <= 0.8) & (v >= -1.0 + 1.8 * np.abs(u))
    colour = np.array([230, 90, 40]) if warm else np.array([50, 110, 230])
    colour = np.clip(colour + rng.normal(0, 12, 3), 0, 255)
    image = np.clip(rng.normal(30, 6, (px, px, 3)), 0, 255)
    image[mask] = colour
    return image.round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--n", type=int, default=1200, help="rows (default 1200)")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    with open(os.path.join(args.out, "attributes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "age", "size", "warm", "shape", "split"])
        for k in range(args.n):
            age = rng.normal(50, 15)
            size = float(np.clip(0.35 + 0.4 * sigmoid((age - 50) / 12) + rng.normal(0, 0.03), 0.2, 0.95))
            warm = int(rng.random() < sigmoid(6 * (size - 0.55)))
            shape = int(rng.integers(0, len(SHAPES)))
            name = f"images/{k:05d}.png"
            Image.fromarray(render(shape, size, warm, args.size, rng)).save(os.path.join(args.out, name))
            w.writerow([name, f"{age:.2f}", f"{size:.4f}", warm, SHAPES[shape],
                        "train" if k < int(0.8 * args.n) else "test"])
    print(f"wrote {args.n} rows to {os.path.join(args.out, 'attributes.csv')} and {args.size}x{args.size} RGB "
          f"images to {os.path.join(args.out, 'images')}/")


if __name__ == "__main__":
    main()
