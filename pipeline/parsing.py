"""Parsing of the CLI's ``--parents`` and ``--do`` texts, and safe output paths.

``--parents thickness=2.1,intensity=180,digit=3`` gives ``{"thickness": 2.1, ...}``.
``--do`` accepts the same form, plus shifts of the factual value:

* ``thickness=4``   set to 4 (a constant; ``-0.5`` is a negative constant);
* ``thickness=+1``  or ``thickness+=1``: add 1 to the factual value;
* ``thickness-=0.5``: subtract 0.5 from the factual value.

Example:
    >>> parse_assignments("thickness=2.1, digit=3")
    {'thickness': 2.1, 'digit': 3}
    >>> do = parse_do("thickness+=1,intensity=200")
    >>> float(do["thickness"](torch.tensor(2.0))), do["intensity"]
    (3.0, 200)
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable

import torch

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_ASSIGN = re.compile(r"^\s*(?P<name>[^=+\-\s][^=]*?)\s*(?P<op>\+=|-=|=)\s*(?P<value>.*?)\s*$")


def _number(text: str, name: str, source: str) -> float | int:
    try:
        value: float | int = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"{source}: the value {text!r} of {name!r} is not a number; write e.g. {name}=2.5") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{source}: the value of {name!r} is {text!r}; it must be a finite number")
    return value


def _items(text: str, source: str):
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{source}: empty; write name=value pairs separated by commas, e.g. thickness=2.5,digit=3")
    seen = set()
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"{source}: {text!r} has an empty item (a doubled or trailing comma)")
        m = _ASSIGN.match(part)
        if not m or not m.group("value"):
            raise ValueError(
                f"{source}: cannot parse {part.strip()!r}; write name=value pairs separated by commas, "
                f"e.g. thickness=2.5,digit=3")
        name = m.group("name")
        if not _NAME.match(name):
            raise ValueError(f"{source}: {name!r} is not a valid node name")
        if name in seen:
            raise ValueError(f"{source}: node {name!r} is given twice")
        seen.add(name)
        yield name, m.group("op"), m.group("value")


def parse_assignments(text: str, source: str = "--parents") -> dict[str, float | int]:
    """Parse ``name=value,name=value`` into a dict of numbers (integers stay ``int``)."""
    out: dict[str, float | int] = {}
    for name, op, value in _items(text, source):
        if op != "=":
            raise ValueError(f"{source}: {name}{op}{value} is a shift; only name=value is allowed here")
        out[name] = _number(value, name, source)
    return out


def _shift(delta: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def shift(x: torch.Tensor) -> torch.Tensor:
        return x + delta
    shift.__doc__ = f"x -> x + {delta}"
    return shift


def parse_do(text: str, source: str = "--do") -> dict[str, float | int | Callable]:
    """Parse an intervention: constants ``name=v``, shifts ``name=+d``, ``name+=d``, ``name-=d``."""
    out: dict[str, float | int | Callable] = {}
    for name, op, value in _items(text, source):
        if op == "=" and value.startswith("+"):
            op, value = "+=", value[1:]
        number = _number(value, name, source)
        if op == "=":
            out[name] = number
        else:
            out[name] = _shift(float(number) if op == "+=" else -float(number))
    return out


def check_writable(path: str | os.PathLike, what: str = "--out", *, png: bool = False) -> Path:
    """Check, before any work, that ``path`` can be created: its nearest existing folder is a folder where a file
    can really be created (a read-only file system or a pseudo file system such as ``/proc`` is refused, for root
    too: a hidden probe file is created there and removed at once), and ``path`` is not an existing folder.
    With ``png=True`` the name must end in ``.png`` (:func:`pipeline.images.check_png_path`)."""
    import tempfile

    path = Path(path)
    if png:
        from pipeline.images import check_png_path

        try:
            check_png_path(path, "output")
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: cannot write {str(path)!r}: {str(probe)!r} is not a writable directory")
    if path.exists() and path.is_dir() and (path.suffix or png):
        raise ValueError(f"{what}: {str(path)!r} is a directory, expected a file path")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if not read_only:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".dcfg-write-check-", dir=probe)
        except OSError:
            read_only = True
        else:
            os.close(fd)
            os.unlink(tmp)
    if read_only:
        raise ValueError(f"{what}: cannot write {str(path)!r}: {str(probe)!r} is not a writable directory (no file "
                         f"can be created there)")
    return path
