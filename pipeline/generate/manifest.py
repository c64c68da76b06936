"""The identity of a generation run: its ``manifest.json``, the shard plan and the hashes that verify them.

A run's identity is its format version, the sha256 of its pipeline (:func:`pipeline_sha256`), its resolved
query and its data; a restart must match it (:func:`check_out`). Shards are written atomically
(:func:`atomic_write`) and recorded with their sha256, first in a sidecar ``shard-XXXXX.json``, then in the
final manifest (:func:`finalize_run`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcfg_io.atomic import atomic_write_bytes

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "ShardRecord", "atomic_write", "check_out", "finalize_run",
           "hash_tensor", "pipeline_sha256", "plan_shards", "sha256_file", "shard_contents", "start_run",
           "verified_sha256"]

#: Version of ``manifest.json`` and of the shard layout.
FORMAT_VERSION = 1
#: the manifest's file name in a run's folder
MANIFEST_NAME = "manifest.json"


def hash_tensor(h: Any, key: str, t: Tensor) -> None:
    """Feed one named tensor to the hash ``h``: its key, dtype and shape, then its bytes."""
    t = t.detach().cpu().contiguous()
    h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pipeline_sha256(pipeline: Any) -> str:
    """Content hash of a pipeline.

    For a directory: sha256 over its files (relative path, size and sha256 of each, in sorted order;
    hidden files skipped). For an in-memory ``CounterfactualPipeline``: sha256 over its graph, config
    and the bytes of every weight (so the two kinds of hash differ for the same pipeline).

    Example:
        >>> from pipeline.core import CounterfactualPipeline  # doctest: +SKIP
        >>> len(pipeline_sha256(CounterfactualPipeline.pretrained()))  # doctest: +SKIP
        64
    """
    h = hashlib.sha256()
    if isinstance(pipeline, (str, os.PathLike)):
        root = Path(pipeline)
        files = sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise ValueError(f"pipeline directory {str(root)!r} has no files")
        for p in files:
            h.update(f"{p.relative_to(root).as_posix()}\0{p.stat().st_size}\0{sha256_file(p)}\n".encode())
        return h.hexdigest()
    h.update(json.dumps({"graph": pipeline.graph.to_dict(), "config": pipeline.config.__dict__},
                        sort_keys=True).encode())
    modules = {"scm": pipeline.scm, "image_model": pipeline.image_model, "classifier": pipeline.classifier}
    for part, module in modules.items():
        if module is None:
            continue
        for name, t in sorted(module.state_dict().items()):
            hash_tensor(h, f"{part}/{name}", t)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardRecord:
    """One planned shard: rows ``[start, stop)`` in ``file``; ``sha256`` once complete."""

    index: int
    file: str
    start: int
    stop: int
    status: str = "pending"
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The ``manifest.json`` of a generation run.

    Attributes:
        format_version: :data:`FORMAT_VERSION`.
        pipeline: ``{"sha256": ..., "hashed": "files" | "weights"}``.
        query: the resolved query: do, guidance, scale, steps, seed, groups, weights, shard_size,
            chunk_size, image_dtype.
        data: the dataset spec and its ``length``.
        shards: the planned shards.
        complete: whether every shard is written and verified.
        contents: what each tensor of a shard holds.
    """

    format_version: int
    pipeline: dict[str, Any]
    query: dict[str, Any]
    data: dict[str, Any]
    shards: tuple[ShardRecord, ...]
    complete: bool = False
    contents: dict[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a restart must match: format, pipeline hash, query and data."""
        return {"format_version": self.format_version, "pipeline_sha256": self.pipeline["sha256"],
                "query": self.query, "data": self.data}

    def to_json(self) -> str:
        """The manifest as indented JSON text."""
        d = {"format_version": self.format_version, "complete": self.complete, "pipeline": self.pipeline,
             "query": self.query, "data": self.data, "contents": self.contents,
             "shards": [s.__dict__ for s in self.shards]}
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def load(cls, out: str | os.PathLike) -> "Manifest":
        """Read ``OUT/manifest.json`` (a folder or the file itself)."""
        path = Path(out)
        path = path / MANIFEST_NAME if path.is_dir() else path
        try:
            d = json.loads(path.read_text())
            return cls(format_version=d["format_version"], pipeline=d["pipeline"], query=_current_query(d["query"]),
                       data=d["data"], complete=bool(d.get("complete")), contents=d.get("contents", {}),
                       shards=tuple(ShardRecord(**s) for s in d["shards"]))
        except FileNotFoundError:
            raise ValueError(f"{str(path)!r} does not exist: not a dcfg generate output") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{str(path)!r} is not a valid dcfg generate manifest ({e}); delete the folder "
                             f"to start over") from None


def _current_query(query: dict[str, Any]) -> dict[str, Any]:
    """A manifest's query in this version's words: the former ``anchor`` (``"null"`` / ``"full"``) is read as
    ``dcfg_form`` (``"paper"`` / ``"conditional"``), so that a run started before resumes."""
    if not isinstance(query, dict) or "anchor" not in query:
        return query
    from pipeline.options import form_from_former

    return {("dcfg_form" if k == "anchor" else k): (form_from_former(v) if k == "anchor" else v)
            for k, v in query.items()}


def shard_contents(graph: Any, image_dtype: str) -> dict[str, str]:
    """What each tensor of a shard holds, in words (the manifest's ``contents``)."""
    image = ("uint8 (B, C, H, W) on 0..255; x = v / 127.5 - 1" if image_dtype == "uint8"
             else f"{image_dtype} (B, C, H, W) in [-1, 1]")
    out = {"index": "int64 (B,): dataset rows", "image": f"counterfactual images, {image}"}
    for n in graph.attribute_nodes():
        kind = "int64 class index" if graph.spec(n).is_discrete else "float32"
        out[f"factual/{n}"] = f"{kind} (B,)"
        out[f"counterfactual/{n}"] = f"{kind} (B,)"
        noise = "float64 (B, K) Gumbel noise" if graph.spec(n).is_discrete else "float32 (B,)"
        out[f"noise/{n}"] = f"abducted exogenous noise, {noise}"
    out["noise/x_T"] = "float32 (B, C, H, W): DDIM-inverted image noise"
    return out


#: ``atomic_write(path, data)``: :func:`dcfg_io.atomic.atomic_write_bytes` (a hidden temporary ``.NAME.XXXX.tmp``
#: in the folder, fsynced, renamed into place, removed on failure; :func:`start_run` removes a killed run's).
atomic_write = atomic_write_bytes


def plan_shards(length: int, shard_size: int) -> tuple[ShardRecord, ...]:
    """The shards of ``length`` rows, ``shard_size`` rows each (the last may be shorter), all pending."""
    return tuple(ShardRecord(index=k, file=f"shard-{k:05d}.safetensors", start=s, stop=min(s + shard_size, length))
                 for k, s in enumerate(range(0, length, shard_size)))


def check_out(out: Path, manifest: Manifest) -> Manifest | None:
    """The existing manifest if ``out`` holds the same run; raise if it holds another; None if empty."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; pass a folder")
    path = out / MANIFEST_NAME
    if not path.is_file():
        visible = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if visible:
            raise ValueError(f"--out {str(out)!r} is not empty and has no {MANIFEST_NAME} (found {visible[:3]}); "
                             f"pass a new or empty folder")
        return None
    old = Manifest.load(path)
    new_id, old_id = manifest.identity(), old.identity()
    if old_id != new_id:
        diffs = []
        for k, now in new_id.items():
            was = old_id.get(k)
            if isinstance(now, dict) and isinstance(was, dict):
                diffs += [(f"{k}.{sub}", was.get(sub), now.get(sub)) for sub in sorted(set(was) | set(now))
                          if was.get(sub) != now.get(sub)]
            elif was != now:
                diffs.append((k, was, now))
        details = "; ".join(f"{k} was {json.dumps(a, sort_keys=True)[:120]}, now {json.dumps(b, sort_keys=True)[:120]}"
                            for k, a, b in diffs)
        raise ValueError(f"--out {str(out)!r} holds a run of another query or pipeline ({details}); resuming would "
                         f"mix outputs: pass a new --out folder, or delete this one to start over")
    return old


def verified_sha256(out: Path, rec: ShardRecord, old: Manifest | None, identity_sha: str) -> str | None:
    """The shard's sha256 if its file is complete and matches its sidecar or the manifest, else None."""
    path = out / rec.file
    if not path.is_file():
        return None
    expected = None
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            d = json.loads(sidecar.read_text())
            if d.get("identity") == identity_sha and d.get("start") == rec.start and d.get("stop") == rec.stop:
                expected = d.get("sha256")
        except (json.JSONDecodeError, OSError, AttributeError):
            expected = None
    if expected is None and old is not None and rec.index < len(old.shards):
        prev = old.shards[rec.index]
        if prev.status == "complete" and (prev.start, prev.stop) == (rec.start, rec.stop):
            expected = prev.sha256
    if expected is None:
        return None
    return expected if sha256_file(path) == expected else None


def start_run(out: Path, manifest: Manifest, old: Manifest | None, identity_sha: str) -> None:
    """Rank 0, before any rank writes: remove temporary files and unverified shards, write the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        if p.name.startswith(".shard-") or p.name.startswith(f".{Path(MANIFEST_NAME).stem}."):
            p.unlink(missing_ok=True)  # a half-written file of a killed run
    records = []
    for rec in manifest.shards:
        sha = verified_sha256(out, rec, old, identity_sha)
        if sha is None:
            for p in (out / rec.file, (out / rec.file).with_suffix(".json")):
                p.unlink(missing_ok=True)
            records.append(rec)
        else:
            records.append(replace(rec, status="complete", sha256=sha))
    planned = replace(manifest, shards=tuple(records), complete=all(r.status == "complete" for r in records))
    atomic_write(out / MANIFEST_NAME, planned.to_json().encode())


def finalize_run(out: Path, current: Manifest, identity_sha: str) -> None:
    """Rank 0, after every rank wrote: verify every shard, write the complete manifest, remove the sidecars."""
    records = []
    for rec in current.shards:
        sha = verified_sha256(out, rec, current, identity_sha)
        if sha is None:
            raise RuntimeError(f"shard {rec.file} is missing or does not match its checksum after the run; "
                               f"run the same command again to regenerate it")
        records.append(replace(rec, status="complete", sha256=sha))
    final = replace(current, shards=tuple(records), complete=True)
    atomic_write(out / MANIFEST_NAME, final.to_json().encode())
    for rec in current.shards:
        (out / rec.file).with_suffix(".json").unlink(missing_ok=True)
