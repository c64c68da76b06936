"""Training checkpoints as ONE safetensors file (tensors + JSON metadata), written atomically.

Layout of ``checkpoint.safetensors``:

* ``model/<name>``: the raw (non-EMA) weights;
* ``ema/<name>``: the EMA weights;
* ``optim/<index>/<key>``: AdamW's per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq``);
* ``rng/torch``, ``rng/cuda``, ``rng/numpy``, ``rng/python``: generator states as integer tensors;
* metadata ``"state"``: JSON with the step, the data position, both configs, AdamW's ``param_groups`` and the
  scalar parts of the numpy / python RNG states.

One file means one ``os.replace``: a crash leaves either the previous checkpoint or the new one, never a mix.
Nothing is pickled.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcfg_io.atomic import atomic_write_json
from dcfg_io.tensors import load_tensors, save_tensors

FORMAT = "dcfg.diffusion.checkpoint/1"
CHECKPOINT_NAME = "checkpoint.safetensors"


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch / CUDA / numpy / python global RNG states as (tensors, JSON scalars)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng/python"] = torch.tensor(internal, dtype=torch.int64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, gauss_next]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        states = list(tensors["rng/cuda"])
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng/python"].tolist()), gauss_next))


def save_checkpoint(path: Path, *, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write the whole training state into ``path`` atomically, plus a human-readable ``<path>.json`` summary."""
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"model/{k}": v for k, v in model_state.items()})
    tensors.update({f"ema/{k}": v for k, v in ema_state.items()})
    opt = optimizer.state_dict()
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim/{idx}/{key}"] = value
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    meta = dict(state, format=FORMAT, optimizer_param_groups=opt["param_groups"], rng=rng_meta)
    save_tensors(path, tensors, metadata={"state": json.dumps(meta)})
    summary = {k: meta[k] for k in ("format", "step", "epoch", "offset", "wall_time") if k in meta}
    atomic_write_json(path.with_suffix(".json"), summary)


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint: ``(state, tensors)``; ``ValueError`` if it is not one of ours."""
    tensors, metadata = load_tensors(path)
    try:
        state = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a dcfg training checkpoint (no 'state' metadata)") from e
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {state.get('format')!r}; expected {FORMAT!r}")
    return state, tensors


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix/``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def optimizer_state(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from the flattened tensors and the JSON ``param_groups``."""
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in split(tensors, "optim").items():
        idx, name = key.split("/", 1)
        per_param.setdefault(int(idx), {})[name] = value
    groups = [{k: _tuples(v) if k != "params" else list(v) for k, v in g.items()}
              for g in state["optimizer_param_groups"]]
    return {"state": per_param, "param_groups": groups}
