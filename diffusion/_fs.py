"""Saved folders on disk: safe save targets, crash-safe swaps, recovery of an interrupted swap, checked reads.

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

Loading reads files through :func:`read_checked` / :func:`read_json`: each must be a regular file inside the
folder being loaded (a named pipe, a device, or a symbolic link out of the folder is refused without being
opened, so a FIFO never blocks a load), and configs are at most :data:`MAX_JSON_BYTES`. Weight shapes are checked
against a module built on the ``meta`` device from the safetensors header alone (:func:`check_weight_shapes`),
so a config that does not fit its weights is refused before any real allocation.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

#: Largest JSON file (config, index) a loader reads.
MAX_JSON_BYTES = 16 * 2 ** 20
#: Largest safetensors JSON header a loader reads.
MAX_HEADER_BYTES = 16 * 2 ** 20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


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


def _fsync(path: Path, directory: bool) -> None:
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


def _finish_tree(root: Path) -> None:
    """Usual permissions (mkdtemp / mkstemp make private ones) and fsync of every file and folder under ``root``."""
    umask = os.umask(0)
    os.umask(umask)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for f in files:
            if not (here / f).is_symlink():
                os.chmod(here / f, 0o666 & ~umask)
                _fsync(here / f, directory=False)
        os.chmod(here, 0o777 & ~umask)
        _fsync(here, directory=True)


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
        _fsync(parent, directory=True)
    except BaseException:
        if old is not None and not os.path.lexists(path):
            os.rename(old, path)  # the new save failed to go in: the old one goes back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------------ checked reads
def _kind_of(mode: int) -> str:
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
        raise ValueError(f"{path} is a {_kind_of(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'file'}, not a "
                         f"{'folder' if folder else 'regular file'}; a saved folder holds regular files and folders "
                         f"only")
    return real


def read_checked(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
                 limit: int | None = None, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` inside ``root`` (:func:`check_entry`), at most ``limit`` of them."""
    real = check_entry(path, root)
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the check
            raise ValueError(f"{path} is a {_kind_of(st.st_mode)}, not a regular file")
        if limit is not None and st.st_size > limit:
            raise ValueError(f"{path} is {st.st_size:,} bytes, more than a {what} may be ({limit:,}); it is not a "
                             f"{what} written by this project")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(st.st_size + 1 if limit is None else limit + 1)
    finally:
        os.close(fd)
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
        raise ValueError(f"{where}: unknown key {unknown[0]!r} in the {what}{' (and ' + str(len(unknown) - 1) + ' more)' if len(unknown) > 1 else ''}; "
                         f"the known keys are {sorted(known)}")


def read_safetensors_header(path: str | os.PathLike, root: str | os.PathLike | None = None
                            ) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file, from its header alone (the tensor data is not read).

    Raises:
        ValueError: the file is not a regular file in ``root``, or its header is truncated, oversized, not a
            safetensors header, or describes data that does not fit the file (naming the file).
    """
    real = check_entry(path, root)
    bad = f"{path} is not a readable safetensors file (truncated or corrupted?)"
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is a {_kind_of(st.st_mode)}, not a regular file")
        size = st.st_size
        head = os.pread(fd, 8, 0)
        if len(head) < 8:
            raise ValueError(f"{bad}: {size} bytes, shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"{bad}: its header length {n:,} does not fit the file ({size:,} bytes)")
        raw = os.pread(fd, n, 8)
    finally:
        os.close(fd)
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
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("mis-shaped " + ", ".join(f"{k}: file {shapes[k]} vs config {expected[k]}"
                                                    for k in wrong[:5]))
        raise ValueError(f"the weights in {weights} do not match the config {config_file} ({'; '.join(parts)}); "
                         f"the config and the weights must come from the same save")


# ------------------------------------------------------------------------------------------- fits that roll back
@contextlib.contextmanager
def restored_on_error(*modules: Any) -> Iterator[None]:
    """Run a block that trains ``modules`` in place; on any exception (Ctrl-C included) every parameter, buffer,
    gradient, device and train/eval mode is put back as it was, then the exception propagates.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> before = net.weight.detach().clone()
        >>> try:
        ...     with restored_on_error(net):
        ...         net.weight.data.add_(1.0)
        ...         raise RuntimeError("the fit failed")
        ... except RuntimeError:
        ...     pass
        >>> bool(torch.equal(net.weight, before))
        True
    """
    import torch

    saved = []
    for m in modules:
        if m is None:
            continue
        tensors = [(t, t.data.clone(), None if getattr(t, "grad", None) is None else t.grad.clone())
                   for t in list(m.parameters()) + list(m.buffers())]
        sub = {}
        for mod in m.modules():
            sub[id(mod)] = (mod, mod.training, dict(mod._buffers))
        saved.append((tensors, sub))
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for tensors, sub in saved:
                for mod, training, buffers in sub.values():
                    mod.training = training
                    for name, buf in buffers.items():  # a buffer replaced by a new tensor object
                        mod._buffers[name] = buf
                for t, data, grad in tensors:
                    t.data = data
                    if isinstance(t, torch.nn.Parameter) or t.requires_grad:
                        t.grad = grad
        raise
