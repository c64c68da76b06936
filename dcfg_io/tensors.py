"""safetensors files: written atomically with a canonical header and the sha256 of their data, read with checks.

Safetensors files carry the sha256 of their tensor data in their metadata (``"sha256"``), so that a corrupted
file is refused on load instead of giving garbage weights; their JSON header's keys are sorted, so that the
bytes of a file are a function of its content. Nothing here unpickles.

Weight shapes can be checked against a module built on the ``meta`` device from the safetensors header alone
(:func:`check_weight_shapes`), so a config that does not fit its weights is refused before any real allocation.

Example:
    >>> import pathlib, tempfile, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_tensors(path, {"w": torch.ones(2, 3)}, metadata={"format": "demo"})
    >>> read_safetensors_header(path)
    {'w': (2, 3)}
    >>> tensors, meta = load_tensors(path)
    >>> tensors["w"].shape, meta
    (torch.Size([2, 3]), {'format': 'demo'})
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from dcfg_io.atomic import atomic_write_bytes
from dcfg_io.reads import open_checked, read_checked

__all__ = ["MAX_HEADER_BYTES", "canonical_header", "check_weight_shapes", "data_digest", "load_tensors",
           "read_safetensors_header", "save_tensors", "state_mismatch"]

#: Largest safetensors JSON header a loader reads.
MAX_HEADER_BYTES = 16 * 2 ** 20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically (tensors are copied to contiguous CPU memory).

    The file's metadata holds ``metadata`` plus the ``"sha256"`` of its tensor data; its header is canonical
    (:func:`canonical_header`).
    """
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta.pop("sha256", None)
    # the tensor data does not depend on the metadata, so its digest can be stored in the header
    digest = data_digest(_st_save(flat, metadata=meta or None))
    atomic_write_bytes(path, canonical_header(_st_save(flat, metadata={**meta, "sha256": digest})))


def canonical_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys in sorted order.

    The safetensors writer orders the header's keys (notably ``__metadata__``'s) differently in every process, so
    that one model saved twice would have two sha256s; sorting them makes the bytes a function of the content.
    The header keeps its length (padded with spaces, as the format allows), so the data offsets are unchanged.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(dict(sorted(header.items())), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen for the writer's own compact JSON; keep its bytes then
        return blob
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:]


def data_digest(blob: bytes) -> str:
    """sha256 of the tensor data of a safetensors file (the bytes after its header)."""
    header = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(memoryview(blob)[8 + header:]).hexdigest()


def load_tensors(path: str | os.PathLike, root: str | os.PathLike | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file (never unpickles): ``(tensors, metadata)``.

    Raises:
        ValueError: the file is not a regular file (inside ``root``, when given: see
            :func:`dcfg_io.reads.check_entry`), is truncated, not a safetensors file, or its tensor data does
            not match the sha256 recorded in its metadata (files without one are not checked).
    """
    data = read_checked(path, root, what="safetensors file")
    try:
        tensors = _st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except Exception as e:  # safetensors raises its own (Rust) error types
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from None
    metadata = dict(header.get("__metadata__") or {})
    digest = metadata.pop("sha256", None)
    if digest is not None and digest != data_digest(data):
        raise ValueError(f"{path} is corrupted: the sha256 of its tensor data does not match the one recorded when "
                         f"it was saved; restore the file or save it again")
    return tensors, metadata


def read_safetensors_header(path: str | os.PathLike, root: str | os.PathLike | None = None
                            ) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file, from its header alone (the tensor data is not read).

    Raises:
        ValueError: the file is not a regular file in ``root``, or its header is truncated, oversized, not a
            safetensors header, or describes data that does not fit the file (naming the file).
    """
    bad = f"{path} is not a readable safetensors file (truncated or corrupted?)"
    with open_checked(path, root) as (fd, st):
        size = st.st_size
        head = os.pread(fd, 8, 0)
        if len(head) < 8:
            raise ValueError(f"{bad}: {size} bytes, shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"{bad}: its header length {n:,} does not fit the file ({size:,} bytes)")
        raw = os.pread(fd, n, 8)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{bad}: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: its header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(info["shape"])
            lo, hi = info["data_offsets"]
            width = _DTYPE_BYTES[info["dtype"]]
            ok = (all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
                  and isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{bad}: its header entry {name!r} is not a tensor description")
        numel = 1
        for s in shape:
            numel *= s
        if hi - lo != numel * width:
            raise ValueError(f"{bad}: tensor {name!r} of shape {shape} does not fill its {hi - lo} bytes")
        shapes[name] = shape
        end = max(end, hi)
    if 8 + n + end != size:
        raise ValueError(f"{bad}: its header describes {8 + n + end:,} bytes, the file has {size:,}")
    return shapes


def check_weight_shapes(build: Callable[[], Any], weights: str | os.PathLike, config_file: str | os.PathLike,
                        root: str | os.PathLike | None = None) -> None:
    """Build the module ``build()`` on the ``meta`` device (no memory) and compare its state's names and shapes
    with the safetensors header of ``weights``; ``ValueError`` "the weights in ... do not match the config"."""
    import torch

    shapes = read_safetensors_header(weights, root)
    with torch.device("meta"):
        module = build()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    del module
    mismatch = state_mismatch(expected, shapes)
    if mismatch:
        raise ValueError(f"the weights in {weights} do not match the config {config_file} ({mismatch}); "
                         f"the config and the weights must come from the same save")


def state_mismatch(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> str | None:
    """How the tensor names and shapes ``found`` (in a file) differ from those a module ``expected``: missing,
    unexpected and mis-shaped names (five of each at most); ``None`` when they agree.

    Example:
        >>> state_mismatch({"w": (2, 3), "b": (2,)}, {"w": (3, 3), "x": (1,)})
        "missing ['b']; unexpected ['x']; mis-shaped w: file (3, 3) vs config (2, 3)"
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    parts = []
    if missing:
        parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        parts.append("mis-shaped " + ", ".join(f"{k}: file {tuple(found[k])} vs config {tuple(expected[k])}"
                                                for k in wrong[:5]))
    return "; ".join(parts) or None
