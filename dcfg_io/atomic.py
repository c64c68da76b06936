"""Atomic file writes: write a temporary file in the target's folder, fsync it, then ``os.replace`` it.

A reader (or a crash) therefore sees either the old file or the new one, never a half-written one, and a write
that fails removes its temporary file. The temporary file is the hidden sibling ``.NAME.XXXXXXXX.tmp`` (with the
target's extension appended for :func:`atomic_write`, so that writers that pick a format from the file name
work), and the written file gets the usual permissions of a new file (``0o666`` less the umask).

Example:
    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result.json"
    >>> atomic_write_json(out, {"n": 1})
    >>> out.read_text()
    '{\\n  "n": 1\\n}\\n'
    >>> _ = atomic_write(out.with_suffix(".txt"), lambda tmp: tmp.write_text("done"))
    >>> out.with_suffix(".txt").read_text(), sorted(p.name for p in out.parent.iterdir())
    ('done', ['result.json', 'result.txt'])
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "fsync_path", "usual_mode"]


def usual_mode(directory: bool = False) -> int:
    """The permissions ``open`` / ``mkdir`` would give a new file (folder): ``0o666`` (``0o777``) less the umask.

    ``mkstemp`` and ``mkdtemp`` create private (``0o600`` / ``0o700``) entries; saved results get these instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """fsync the file (or, with ``directory=True``, the folder) ``path``; errors are ignored (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_from_temporary(path: str | os.PathLike, fill: Callable[[int, Path], Any], suffix: str) -> Path:
    """Create the temporary sibling of ``path``, let ``fill(fd, tmp)`` write and close it, then move it into place;
    on any failure (Ctrl-C included) the temporary file is removed and the exception propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, usual_mode())
        fill(fd, Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, then ``os.replace``).

    Missing parent folders are created.
    """
    def fill(fd: int, tmp: Path) -> None:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    _replace_from_temporary(path, fill, ".tmp")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (two spaces, a final newline), atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Atomically replace ``path`` by what ``write(tmp)`` writes to the temporary file ``tmp`` it is given.

    For writers that take a file name (``Figure.savefig``, ``PIL.Image.save``, ``torchvision.utils.save_image``):
    ``tmp`` ends in ``path``'s extension. The file is fsynced before it is moved into place.

    Args:
        path: the file to write (missing parent folders are created).
        write: fills the file named by its argument (it exists, empty, when called).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    def fill(fd: int, tmp: Path) -> None:
        os.close(fd)
        write(tmp)
        fsync_path(tmp)

    return _replace_from_temporary(path, fill, ".tmp" + Path(path).suffix)
