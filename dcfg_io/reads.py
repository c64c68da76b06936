"""Checked reads of a saved folder that may come from anyone: regular files inside the folder, bounded sizes.

Loading reads files through :func:`read_checked` / :func:`read_json`: each must be a regular file inside the
folder being loaded (a named pipe, a device, or a symbolic link out of the folder is refused without being
opened, so a FIFO never blocks a load), and configs are at most :data:`MAX_JSON_BYTES`. Every refusal is one
``ValueError`` naming the file.

Example:
    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps({"steps": 50}))
    >>> read_json_object(folder / "config.json", folder, known=("steps", "seed"))
    {'steps': 50}
    >>> read_json_object(folder / "config.json", folder, known=("seed",))
    Traceback (most recent call last):
    ...
    ValueError: ...config.json: unknown key 'steps' in the config; the known keys are ['seed']
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["MAX_JSON_BYTES", "check_entry", "check_keys", "describe_mode", "open_checked", "read_checked",
           "read_json", "read_json_object"]

#: Largest JSON file (config, index) a loader reads.
MAX_JSON_BYTES = 16 * 2 ** 20


def describe_mode(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words (``"folder"``, ``"named pipe"``, ...)."""
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _within(child: str, root: str) -> bool:
    return child == root or child.startswith(root.rstrip(os.sep) + os.sep)


def check_entry(path: str | os.PathLike, root: str | os.PathLike | None = None, *, folder: bool = False) -> Path:
    """The real path of ``path`` after checking that it is a regular file (or, with ``folder=True``, a folder)
    inside ``root`` (symbolic links may point within ``root`` only); ``ValueError`` naming it otherwise.

    Nothing is opened, so a named pipe is refused at once. A missing entry raises ``FileNotFoundError``.
    """
    path = Path(path)
    st = os.lstat(path)
    real = path
    if stat.S_ISLNK(st.st_mode):
        real = Path(os.path.realpath(path))
        if root is not None and not _within(str(real), os.path.realpath(root)):
            raise ValueError(f"{path} is a symbolic link to {str(real)!r}, outside {str(root)!r}; a saved folder "
                             f"must hold its own files")
        try:
            st = os.stat(real)
        except OSError as e:
            raise ValueError(f"{path} is a broken symbolic link ({e.strerror or e})") from None
    want = stat.S_ISDIR if folder else stat.S_ISREG
    if not want(st.st_mode):
        raise ValueError(f"{path} is a {describe_mode(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'file'}, not a "
                         f"{'folder' if folder else 'regular file'}; a saved folder holds regular files and folders "
                         f"only")
    return real


@contextlib.contextmanager
def open_checked(path: str | os.PathLike, root: str | os.PathLike | None = None
                 ) -> Iterator[tuple[int, os.stat_result]]:
    """Open the regular file ``path`` inside ``root`` (:func:`check_entry`) read-only, without blocking:
    ``(file descriptor, its fstat)``, closed on exit; ``ValueError`` if it was swapped for a non-regular file
    since the check."""
    real = check_entry(path, root)
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the check
            raise ValueError(f"{path} is a {describe_mode(st.st_mode)}, not a regular file")
        yield fd, st
    finally:
        os.close(fd)


def read_checked(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
                 limit: int | None = None, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` inside ``root`` (:func:`check_entry`), at most ``limit`` of them."""
    with open_checked(path, root) as (fd, st):
        if limit is not None and st.st_size > limit:
            raise ValueError(f"{path} is {st.st_size:,} bytes, more than a {what} may be ({limit:,}); it is not a "
                             f"{what} written by this project")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(st.st_size + 1 if limit is None else limit + 1)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{path} is more than {limit:,} bytes; it is not a {what} written by this project")
    return data


def read_json(path: str | os.PathLike, root: str | os.PathLike | None = None, *, what: str = "config") -> Any:
    """Parse the JSON file ``path`` (a regular file inside ``root``, at most :data:`MAX_JSON_BYTES`); every error
    is a ``ValueError`` naming the file."""
    data = read_checked(path, root, limit=MAX_JSON_BYTES, what=f"{what} file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a JSON text file (byte {e.start} is 0x{data[e.start]:02x}, not UTF-8); "
                         f"it is damaged or not {'an' if what[:1] in 'aeiou' else 'a'} {what}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{path} is not a {what}: its JSON is nested too deeply") from None


def read_json_object(path: str | os.PathLike, root: str | os.PathLike | None = None, *, what: str = "config",
                     known: Any = None) -> dict[str, Any]:
    """:func:`read_json` of a JSON object; with ``known``, a key outside it is an error naming the key and file."""
    obj = read_json(path, root, what=what)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a {what}: it holds a JSON {type(obj).__name__}, not an object")
    check_keys(obj, known, f"{path}", what)
    return obj


def check_keys(obj: Mapping[str, Any], known: Any, where: str, what: str = "config") -> None:
    """``ValueError`` naming the first key of ``obj`` not in ``known`` (``None``: no check)."""
    if known is None:
        return
    unknown = sorted(str(k) for k in obj if k not in known)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(f"{where}: unknown key {unknown[0]!r} in the {what}{more}; the known keys are {sorted(known)}")
