"""Saving and loading an :class:`~scm.SCM`: the folder ``SCM.save`` writes and the checks ``SCM.load`` makes.

A saved SCM is a folder of two files, written crash-safely (:func:`dcfg_io.folders.save_dir`):

* ``scm.safetensors``: the state dict (the mechanisms' weights), with the sha256 of its data in its metadata;
* ``config.json`` (written last: the marker of a complete save): ``format`` (``"dcfg.scm"``),
  ``format_version``, the ``graph``, the ``scm`` settings (an :class:`~scm.SCMConfig`) and, per node, its
  mechanism's registered ``type`` and ``config`` (``"custom": true`` for a built-in mechanism built with
  settings of its own).

Loading never unpickles, and refuses before any mechanism is built: special files or links out of the folder,
unknown keys, settings outside :data:`~scm.model.SCM_LIMITS` or that disagree with the built-in mechanisms, and
weights that hold fewer numbers than a mechanism's config implies.

Example:
    >>> import tempfile
    >>> from scm import CausalGraph, SCM
    >>> scm = SCM(CausalGraph.from_dict({"nodes": {"x": {"kind": "real"}}, "edges": []}))
    >>> folder = save_scm(scm, tempfile.mkdtemp() + "/scm")
    >>> sorted(p.name for p in folder.iterdir()), load_scm(SCM, folder).graph == scm.graph
    (['config.json', 'scm.safetensors'], True)
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from dcfg_io.atomic import atomic_write_json
from dcfg_io.checks import is_integer
from dcfg_io.folders import SavedKind, find_saved_dir, save_dir
from dcfg_io.reads import check_keys, read_json
from dcfg_io.tensors import load_tensors, read_safetensors_header, save_tensors
from scm.graph import CausalGraph, NodeSpec
from scm.mechanisms import CategoricalMechanism, FlowMechanism, Mechanism, mechanism_key, registered_mechanism
from scm.model import SCMConfig

if TYPE_CHECKING:
    from scm.model import SCM

__all__ = ["CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "SAVED_KIND", "WEIGHTS_NAME", "load_scm", "save_scm"]

#: The ``format`` tag of a saved SCM's ``config.json``, and the newest ``format_version`` this dcfg writes.
FORMAT, FORMAT_VERSION = "dcfg.scm", 1
#: The files of a saved SCM.
CONFIG_NAME, WEIGHTS_NAME = "config.json", "scm.safetensors"
#: A saved SCM folder: its config.json (written last) holds the SCM format tag.
SAVED_KIND = SavedKind("SCM", CONFIG_NAME, lambda c: isinstance(c, dict) and c.get("format") == FORMAT)


def save_scm(scm: "SCM", path: str | os.PathLike[str]) -> Path:
    """Save ``scm`` to the folder ``path`` (see :meth:`scm.SCM.save`); returns ``path``.

    Raises:
        ValueError: ``path`` is not a valid save target (:func:`dcfg_io.folders.check_save_target`); nothing was
            touched.
    """
    settings = {**asdict(scm.config), "hidden": list(scm.config.hidden)}
    mechanisms = {}
    for n in scm.nodes:
        entry = {"type": mechanism_key(type(scm.mechanisms[n])), "config": scm.mechanisms[n].get_config()}
        if _builtin_mismatch(entry, settings):
            entry["custom"] = True
        mechanisms[n] = entry
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "graph": scm.graph.to_dict(),
              "scm": settings, "mechanisms": mechanisms}
    state = scm.state_dict()

    def write(folder: Path) -> None:
        save_tensors(folder / WEIGHTS_NAME, state, metadata={"format": FORMAT})
        atomic_write_json(folder / CONFIG_NAME, config)  # the marker of a complete save: last

    return save_dir(path, write, SAVED_KIND)


def load_scm(cls: type["SCM"], path: str | os.PathLike[str], mechanisms: Mapping[str, Mechanism] | None = None,
             map_location: str | torch.device = "cpu") -> "SCM":
    """Load the SCM saved in the folder ``path`` as an instance of ``cls`` (see :meth:`scm.SCM.load`).

    Raises:
        ValueError: missing or special files, a foreign or newer format, an unknown key, an out-of-bounds or
            ignored setting, an unregistered mechanism, or weights whose names or shapes do not match the
            config (each naming the file, and the key or node).
    """
    path = find_saved_dir(path, SAVED_KIND)
    cfg_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, weights_file):
        if not os.path.lexists(f):
            raise ValueError(f"{path} is not a saved SCM: {f.name} is missing (expected config.json and "
                             f"{WEIGHTS_NAME}, as written by SCM.save)")
    cfg = read_json(cfg_file, path, what="SCM config")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(f"{cfg_file} is not an SCM config (format {found!r}, "
                         f"expected {FORMAT!r})")
    check_keys(cfg, ("format", "format_version", "graph", "scm", "mechanisms"), str(cfg_file), "SCM config")
    version = cfg.get("format_version", 0)
    if not is_integer(version, 0, python_int=True):
        raise ValueError(f"{cfg_file}: format_version={version!r:.80} must be an integer (this dcfg writes "
                         f"{FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{cfg_file} has format_version {version}, newer than this dcfg "
                         f"({FORMAT_VERSION}); upgrade dcfg")
    graph = CausalGraph.from_dict(cfg.get("graph"))
    overrides = dict(mechanisms or {})
    settings = cfg.get("scm", {})
    entries = cfg.get("mechanisms", {})
    if not isinstance(settings, Mapping) or not isinstance(entries, Mapping):
        raise ValueError(f"{cfg_file}: 'scm' and 'mechanisms' must be JSON objects (got {type(settings).__name__} "
                         f"and {type(entries).__name__}); the file is not one written by SCM.save")
    check_keys(settings, SCMConfig.__dataclass_fields__, f"{cfg_file}: 'scm'", "SCM settings")
    try:
        config = SCMConfig(**{"hidden": (32, 32), "count_bins": 8, "bound": 4.0, "seed": 0, **settings})
    except ValueError as e:
        raise ValueError(f"{cfg_file}: scm.{e}") from None
    for node, entry in entries.items():
        if (not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str)
                or not isinstance(entry.get("config", {}), Mapping)):
            raise ValueError(f"{cfg_file}: the mechanism entry of node {node!r} must be "
                             f"{{'type': 'module:Class', 'config': {{...}}}}, got {entry!r:.120}")
        check_keys(entry, ("type", "config", "custom"), f"{cfg_file}: mechanism of node {node!r}",
                   "mechanism entry")
        _check_builtin_entry(cfg_file, node, entry, settings, config)
    header = read_safetensors_header(weights_file, path)
    # built-in mechanisms always save weights; a custom one may have none (a parameter-free mechanism)
    absent = sorted(f"mechanisms.{n}.*" for n, e in entries.items() if n not in overrides and n in graph
                    and e["type"] in _BUILTIN and not any(k.startswith(f"mechanisms.{n}.") for k in header))
    if absent:
        raise ValueError(f"{weights_file} does not match {cfg_file}: missing weights {absent[:8]}; the directory "
                         f"mixes files of different SCMs")
    mechs: dict[str, Mechanism] = {}
    with torch.random.fork_rng(devices=[]):  # constructors may draw initial weights; they are replaced
        for node, entry in entries.items():
            if node in overrides:
                mechs[node] = overrides.pop(node)
                continue
            klass = registered_mechanism(entry["type"])
            _check_weights_suffice(weights_file, cfg_file, node, entry, header)
            try:
                mechs[node] = klass(**entry.get("config", {}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{cfg_file}: config of node {node!r} does not fit {entry['type']}: {e}") from e
    if overrides:
        raise ValueError(f"mechanisms has node(s) {sorted(overrides)} that the saved SCM does not have")
    missing_nodes = [n for n in graph.attribute_nodes() if n not in mechs]
    if missing_nodes:
        raise ValueError(f"{cfg_file} has no mechanism for node(s) {missing_nodes}")
    try:
        scm = cls(graph, mechanisms=mechs, hidden=config.hidden, count_bins=config.count_bins,
                  bound=config.bound, seed=config.seed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: {e}") from None
    state = {k: v.to(map_location) for k, v in load_tensors(weights_file, path)[0].items()}
    expected = scm.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_file} does not match {cfg_file}: missing weights {missing[:8]}, unexpected "
                         f"weights {unexpected[:8]}; the directory mixes files of different SCMs")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{weights_file} does not match {cfg_file}: weight {k!r} has shape "
                             f"{tuple(state[k].shape)}, the config implies {tuple(v.shape)}")
    scm.load_state_dict(state, strict=True)
    return scm.to(map_location)


_BUILTIN = {mechanism_key(FlowMechanism): ("hidden", "count_bins", "bound"),
            mechanism_key(CategoricalMechanism): ("hidden",)}


def _builtin_mismatch(entry: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """The SCM settings a built-in mechanism's config differs in (it was built with its own: a custom one)."""
    keys = _BUILTIN.get(entry.get("type"), ())
    conf = entry.get("config") or {}
    return [k for k in keys if k in conf and k in settings and _same(conf[k]) != _same(settings[k])]


def _same(v: Any) -> Any:
    return [_same(x) for x in v] if isinstance(v, (list, tuple)) else v


def _check_builtin_entry(cfg_file: Path, node: str, entry: Mapping[str, Any], settings: Mapping[str, Any],
                         config: SCMConfig) -> None:
    """A built-in mechanism's sizes are within :data:`~scm.model.SCM_LIMITS`, and equal the SCM's settings unless
    the entry is marked ``custom`` (otherwise an edited ``scm.hidden`` would be silently ignored)."""
    keys = _BUILTIN.get(entry["type"])
    if keys is None:
        return
    conf = dict(entry.get("config") or {})
    try:
        SCMConfig(**{k: conf[k] for k in keys if k in conf})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: mechanisms.{node}.config.{e}") from None
    if entry.get("custom") is True:
        return
    if entry.get("custom") not in (None, False):
        raise ValueError(f"{cfg_file}: mechanisms.{node}.custom={entry['custom']!r:.40} must be true or false")
    given = {**asdict(config), "hidden": list(config.hidden)}
    for k in _builtin_mismatch(entry, given):
        raise ValueError(f"{cfg_file}: scm.{k}={settings.get(k, given[k])!r} does not match the {k}="
                         f"{conf[k]!r} of node {node!r}'s built-in mechanism; the SCM's settings describe its "
                         f"built-in mechanisms (a value there that no mechanism uses would be ignored): make them "
                         f"agree, or mark the entry \"custom\": true")


def _dense_weights(n_in: int, hidden: Any, n_out: int) -> int:
    dims = [int(n_in), *[int(h) for h in hidden], int(n_out)]
    return sum(a * b for a, b in zip(dims, dims[1:]))


def _check_weights_suffice(weights_file: Path, cfg_file: Path, node: str, entry: Mapping[str, Any],
                           header: Mapping[str, tuple[int, ...]]) -> None:
    """Before a built-in mechanism is built: the weights saved for ``node`` hold at least as many numbers as its
    config implies (a lower bound: its networks' weight matrices), so that an edited config cannot make the
    loader allocate more than the file backs."""
    if entry["type"] not in _BUILTIN:
        return
    conf = entry.get("config") or {}
    try:
        parents = {p: NodeSpec.from_dict(p, s) for p, s in dict(conf.get("parents") or {}).items()}
        dim = sum(1 if s.is_continuous or s.kind == "binary" else int(s.cardinality or 0) for s in parents.values())
        hidden = conf.get("hidden", (32, 32))
        if entry["type"] == mechanism_key(FlowMechanism):
            k = int(conf.get("count_bins", 8))
            need = _dense_weights(dim, hidden, 3 * k - 1) if parents else 3 * k - 1
        else:
            card = int(conf["cardinality"])
            if isinstance(conf["cardinality"], bool) or not 2 <= card <= 100_000:
                raise ValueError(f"cardinality={conf['cardinality']!r} must be an integer in 2..100000")
            need = _dense_weights(dim, hidden, card) if parents else card
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: config of node {node!r} does not fit {entry['type']}: {e}") from None
    prefix = f"mechanisms.{node}."
    have = 0
    for name, shape in header.items():
        if name.startswith(prefix):
            n = 1
            for d in shape:
                n *= d
            have += n
    if have < need:
        raise ValueError(f"{weights_file} does not match {cfg_file}: the config of node {node!r} implies at least "
                         f"{need:,} weights, the file holds {have:,} for it; the directory mixes files of different "
                         f"SCMs (or config.json was edited)")
