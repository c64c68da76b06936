"""Per-image randomness: draws that depend only on ``(seed, stream, row)``, and the seed of each shard.

Everything random about a dataset row depends only on the query's seed and the row's index, never on the
shard, rank or batch the row is processed in, so that one process and ``N`` ranks write the same files.

Example:
    >>> shard_seed(0, 1) == shard_seed(0, 1) != shard_seed(0, 2)
    True
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["per_image_uniform", "shard_seed"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (Steele et al. 2014), elementwise on uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _stream_key(seed: int, stream: str) -> np.uint64:
    """The 64-bit key of one named stream of one seed."""
    name = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), name]).generate_state(1, dtype=np.uint64)[0]


def per_image_uniform(seed: int, stream: str, index: Any) -> np.ndarray:
    """Uniform draws in (0, 1), one per dataset row, that depend only on ``(seed, stream, row)``.

    Counter-based (SplitMix64 over the row index), so a row gets the same draw whichever shard,
    rank or batch it is processed in.

    Args:
        seed: the query's seed.
        stream: a name separating independent draws (e.g. ``"do/thickness"``).
        index: the dataset rows, integers >= 0.

    Returns:
        float64 array shaped like ``index``.

    Example:
        >>> a = per_image_uniform(0, "do/t", [5, 6, 7])
        >>> b = per_image_uniform(0, "do/t", [7])
        >>> bool(a[2] == b[0]) and bool(((a > 0) & (a < 1)).all())
        True
    """
    idx = np.asarray(index, dtype=np.int64)
    with np.errstate(over="ignore"):
        z = _mix64((idx.astype(np.uint64) + np.uint64(1)) * _GOLDEN + _stream_key(seed, stream))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def shard_seed(seed: int, shard: int) -> int:
    """The integer seed of shard ``shard``'s SCM abduction (discrete noise), from the query's ``seed``."""
    state = np.random.SeedSequence([int(seed), int(shard)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)
