"""Saved folders on disk: safe save targets, crash-safe swaps, recovery of an interrupted swap.

Every saved artefact of the project (a pipeline, an image model, an SCM, a classifier, predictors, an evaluation
or a calibration report) is a folder written by :func:`save_dir`:

1. **The target is checked before anything is touched** (:func:`check_save_target`). A save goes to a folder
   that is new, empty, or an earlier save of the same kind, recognised by its marker file (e.g. a pipeline's
   ``config.json``). Anything else is refused with one ``ValueError`` line that says how to proceed: a folder
   of other files, a regular file, ``.``, ``..``, ``/``, a symbolic link, or a path below a file.
2. **The swap is crash-safe.** The new folder is written as the hidden sibling ``.NAME.tmp-XXXX``, its marker
   file last, and fsynced; then the old folder is renamed aside to ``.NAME.old-XXXX``, the new one renamed into
   place, and the old one removed. At every instant ``NAME`` or one of the complete siblings holds the old or
   the new save, so a process killed at any point (``kill -9``) loses at most the save in progress.
3. **Loading recovers an interrupted swap** (:func:`find_saved_dir`): when ``NAME`` is missing but a complete
   ``.NAME.tmp-*`` (marker present) or ``.NAME.old-*`` exists, that one is loaded. The next save puts it back in
   place and removes every stale temporary. One writer at a time per folder.

The files of a saved folder are read back through :mod:`dcfg_io.reads` and :mod:`dcfg_io.tensors`.

Example:
    >>> import json, pathlib, tempfile
    >>> kind = SavedKind("report", "summary.json")
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "report"
    >>> _ = save_dir(out, lambda tmp: (tmp / "summary.json").write_text(json.dumps({"n": 1})), kind)
    >>> _ = save_dir(out, lambda tmp: (tmp / "summary.json").write_text(json.dumps({"n": 2})), kind)  # replaced
    >>> json.loads((find_saved_dir(out, kind) / "summary.json").read_text())
    {'n': 2}
    >>> other = out.parent / "photos"; other.mkdir(); _ = (other / "cat.jpg").write_bytes(b"")
    >>> check_save_target(other, kind)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: cannot save the report to '...photos': the folder holds other content ('cat.jpg') and is not ...
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dcfg_io.atomic import fsync_path, usual_mode
from dcfg_io.reads import MAX_JSON_BYTES

__all__ = ["SavedKind", "check_save_target", "find_saved_dir", "save_dir"]


@dataclass(frozen=True)
class SavedKind:
    """What a saved folder of one kind looks like.

    Attributes:
        name: what it is, in messages (``"pipeline"``, ``"image model"``...).
        marker: the file that marks a complete save of this kind, written last (e.g. ``"config.json"``).
        recognise: whether the marker's parsed JSON is this kind's (``None``: any JSON object).
        recognise_folder: instead of the marker's JSON, whether a folder is this kind's (e.g. it has a
            ``stages/`` folder).
    """

    name: str
    marker: str
    recognise: Callable[[Any], bool] | None = None
    recognise_folder: Callable[[Path], bool] | None = None

    def is_saved(self, folder: Path) -> bool:
        """Whether ``folder`` holds a complete save of this kind (its marker is a regular file of its JSON)."""
        if self.recognise_folder is not None:
            return bool(self.recognise_folder(folder))
        marker = folder / self.marker
        try:
            st = os.lstat(marker)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JSON_BYTES:
            return False
        try:
            obj = json.loads(marker.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
        if self.recognise is None:
            return isinstance(obj, dict)
        try:
            return bool(self.recognise(obj))
        except Exception:  # a recogniser that trips over a foreign file: not ours
            return False


# ------------------------------------------------------------------------------------------------- save targets
def check_save_target(path: str | os.PathLike, kind: SavedKind) -> Path:
    """``path`` as a :class:`~pathlib.Path` if a save of ``kind`` may write there; ``ValueError`` otherwise.

    Accepted: a path that does not exist yet (its missing folders are created), an empty folder, or a complete
    earlier save of the same kind (it is replaced). Refused, before anything is touched: ``.``, ``..``, ``/`` (a
    name is needed), a regular file or other non-folder, a symbolic link, a path below a file, and a folder
    holding anything else.
    """
    raw = os.fspath(path)
    p = Path(raw)
    what = f"cannot save the {kind.name} to {raw!r}"
    if p.name in ("", ".", "..") or raw.rstrip("/").endswith(("/.", "/..")) or raw.rstrip("/") in (".", ".."):
        example = os.path.join(raw, kind.name.replace(" ", "_"))
        raise ValueError(f"{what}: a save needs a folder name of its own (it replaces that folder as a whole); "
                         f"give a new folder such as {example!r}")
    probe = p.parent
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if os.path.lexists(probe) and not probe.is_dir():
        raise ValueError(f"{what}: {str(probe)!r} is a file, not a folder, so nothing can be created below it")
    if os.path.islink(p):
        raise ValueError(f"{what}: it is a symbolic link; save to the folder it points to, or remove the link first")
    if os.path.lexists(p):
        if not p.is_dir():
            raise ValueError(f"{what}: it is a file, not a folder; refusing to replace it (remove it first, or give "
                             f"a new folder)")
        try:
            entries = sorted(os.listdir(p))
        except OSError as e:
            raise ValueError(f"{what}: cannot list the folder ({e.strerror or e})") from None
        if entries and not kind.is_saved(p):
            shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ValueError(f"{what}: the folder holds other content ({shown}) and is not a saved {kind.name} "
                             f"(no {kind.marker} of one); refusing to overwrite it: remove the folder first, or give "
                             f"a new folder")
    return p


# ---------------------------------------------------------------------------------------------- crash-safe swap
def _siblings(path: Path, tag: str) -> list[Path]:
    """``.NAME.<tag>-*`` folders beside ``path``, newest first."""
    prefix = f".{path.name}.{tag}-"
    try:
        names = [n for n in os.listdir(path.parent or ".") if n.startswith(prefix)]
    except OSError:
        return []
    found = [path.parent / n for n in names]
    found = [f for f in found if f.is_dir() and not f.is_symlink()]
    return sorted(found, key=lambda f: f.stat().st_mtime_ns, reverse=True)


def find_saved_dir(path: str | os.PathLike, kind: SavedKind) -> Path:
    """Where a save of ``kind`` at ``path`` is: ``path`` itself, or after an interrupted swap (``path`` missing)
    its complete new (``.NAME.tmp-*``) or old (``.NAME.old-*``) sibling; ``path`` when there is none."""
    path = Path(path)
    if os.path.lexists(path) or not path.name or path.name in (".", ".."):
        return path
    for tag in ("tmp", "old"):
        for candidate in _siblings(path, tag):
            if kind.is_saved(candidate):
                return candidate
    return path


def _finish_tree(root: Path) -> None:
    """Usual permissions (mkdtemp / mkstemp make private ones) and fsync of every file and folder under ``root``."""
    file_mode, folder_mode = usual_mode(), usual_mode(directory=True)
    for folder, _dirs, files in os.walk(root):
        here = Path(folder)
        for f in files:
            if not (here / f).is_symlink():
                os.chmod(here / f, file_mode)
                fsync_path(here / f)
        os.chmod(here, folder_mode)
        fsync_path(here, directory=True)


def save_dir(path: str | os.PathLike, write: Callable[[Path], Any], kind: SavedKind) -> Path:
    """Save a folder crash-safely: ``write(tmp)`` fills a new hidden sibling folder (``kind.marker`` last), which
    then replaces ``path`` (see the module docstring). Returns ``path``.

    Raises:
        ValueError: ``path`` is not a valid target (:func:`check_save_target`); nothing was touched.
    """
    path = check_save_target(path, kind)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):  # an interrupted swap: put its complete save back first, then tidy up
        found = find_saved_dir(path, kind)
        if found != path:
            os.rename(found, path)
    for stale in _siblings(path, "tmp") + _siblings(path, "old"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    old: Path | None = None
    try:
        write(tmp)
        if not kind.is_saved(tmp):
            raise RuntimeError(f"the {kind.name} writer left no {kind.marker} in {tmp}")
        _finish_tree(tmp)
        if os.path.lexists(path):
            old = parent / f".{path.name}.old-{secrets.token_hex(4)}"
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_path(parent, directory=True)
    except BaseException:
        if old is not None and not os.path.lexists(path):
            os.rename(old, path)  # the new save failed to go in: the old one goes back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


