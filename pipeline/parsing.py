"""Parsing of the CLI's ``--parents`` and ``--do`` texts, and safe output paths.

``--parents thickness=2.1,intensity=180,digit=3`` gives ``{"thickness": 2.1, ...}``.
``--do`` accepts the same form, plus shifts of the factual value (and, in the full grammar of
:func:`pipeline.generate.parse_interventions`, per-image draws):

* ``thickness=4``   set to 4 (a constant; ``-0.5`` is a negative constant);
* ``thickness=+1``  or ``thickness+=1``: add 1 to the factual value;
* ``thickness-=0.5``: subtract 0.5 from the factual value.

Example:
    >>> parse_assignments("thickness=2.1, digit=3")
    {'thickness': 2.1, 'digit': 3}
    >>> import torch
    >>> do = parse_do("thickness+=1,intensity=200")
    >>> float(do["thickness"](torch.tensor(2.0))), do["intensity"]
    (3.0, 200)
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.generate.interventions import ShiftDo

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_ASSIGN = re.compile(r"^\s*(?P<name>[^=+\-\s][^=]*?)\s*(?P<op>\+=|-=|=)\s*(?P<value>.*?)\s*$")


def parse_number(text: str, name: str, source: str) -> float | int:
    """The value ``text`` of ``name`` as an ``int`` (when it is one) or a finite ``float``; nothing is evaluated."""
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
        name, op, value = parse_assignment(part, source)
        if name in seen:
            raise ValueError(f"{source}: node {name!r} is given twice")
        seen.add(name)
        yield name, op, value


def parse_assignment(part: str, source: str) -> tuple[str, str, str]:
    """Split one item ``name=value``, ``name+=value`` or ``name-=value`` into ``(name, op, value)`` (unparsed value)."""
    m = _ASSIGN.match(part)
    if not m or not m.group("value"):
        raise ValueError(
            f"{source}: cannot parse {part.strip()!r}; write name=value pairs separated by commas, "
            f"e.g. thickness=2.5,digit=3")
    name = m.group("name")
    if not _NAME.match(name):
        raise ValueError(f"{source}: {name!r} is not a valid node name")
    return name, m.group("op"), m.group("value")


def parse_assignments(text: str, source: str = "--parents") -> dict[str, float | int]:
    """Parse ``name=value,name=value`` into a dict of numbers (integers stay ``int``)."""
    out: dict[str, float | int] = {}
    for name, op, value in _items(text, source):
        if op != "=":
            raise ValueError(f"{source}: {name}{op}{value} is a shift; only name=value is allowed here")
        out[name] = parse_number(value, name, source)
    return out


def parse_do(text: str, source: str = "--do") -> dict[str, float | int | ShiftDo]:
    """Parse an intervention: constants ``name=v``, shifts ``name=+d``, ``name+=d``, ``name-=d``.

    The ``--do`` grammar without per-image draws (:func:`pipeline.generate.parse_interventions`); a shift
    is a :class:`~pipeline.generate.ShiftDo`, a callable ``x -> x + d``."""
    from pipeline.generate.interventions import parse_interventions

    return parse_interventions(text, source, draws=False)  # type: ignore[return-value]


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
