"""Atomic file writes: write a temporary file in the target's folder, fsync it, then ``os.replace``.

A reader (or a crash) therefore sees either the old file or the new one, never a half-written one.
Safetensors files carry the sha256 of their tensor data in their metadata (``"sha256"``), so that a
corrupted file is refused on load instead of giving garbage weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically (tensors are copied to contiguous CPU memory)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta.pop("sha256", None)
    # the tensor data does not depend on the metadata, so its digest can be stored in the header
    digest = _data_digest(_st_save(flat, metadata=meta or None))
    atomic_write_bytes(path, _canonical_header(_st_save(flat, metadata={**meta, "sha256": digest})))


def _canonical_header(blob: bytes) -> bytes:
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


def _data_digest(blob: bytes) -> str:
    """sha256 of the tensor data of a safetensors file (the bytes after its header)."""
    header = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(memoryview(blob)[8 + header:]).hexdigest()


def load_tensors(path: str | os.PathLike, root: str | os.PathLike | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file (never unpickles): ``(tensors, metadata)``.

    Raises:
        ValueError: the file is not a regular file (inside ``root``, when given: see
            :func:`diffusion._fs.check_entry`), is truncated, not a safetensors file, or its tensor data does
            not match the sha256 recorded in its metadata (files without one are not checked).
    """
    from diffusion._fs import read_checked

    data = read_checked(path, root, what="safetensors file")
    try:
        tensors = _st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except Exception as e:  # safetensors raises its own (Rust) error types
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from None
    metadata = dict(header.get("__metadata__") or {})
    digest = metadata.pop("sha256", None)
    if digest is not None and digest != _data_digest(data):
        raise ValueError(f"{path} is corrupted: the sha256 of its tensor data does not match the one recorded when "
                         f"it was saved; restore the file or save it again")
    return tensors, metadata
