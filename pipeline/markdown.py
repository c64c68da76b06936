"""Markdown tables for the project's reports: one number format and one table writer.

Example:
    >>> print(markdown_table(["metric", "value"], [["thickness MAE", 0.1234], ["met", True], ["n", 50]]))
    | metric | value |
    |---|---|
    | thickness MAE | 0.123 |
    | met | yes |
    | n | 50 |
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = ["format_number", "markdown_table"]


def format_number(v: Any) -> str:
    """A report cell: ``–`` for ``None``, ``yes`` / ``**no**`` for booleans, integers as they are, other numbers
    with three significant decimals (``123.4``, ``12.34``, ``1.234``).

    Example:
        >>> [format_number(v) for v in (None, False, 7, 123.456, 12.345, 0.01234, float("nan"))]
        ['–', '**no**', '7', '123.5', '12.35', '0.012', 'nan']
    """
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    return f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 10 else f"{v:.3f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]],
                   fmt: Callable[[Any], str] = format_number) -> str:
    """A markdown table with one ``---`` column rule per header cell; cells that are not text are written with
    ``fmt``.

    Args:
        header: the column titles.
        rows: the table's rows, one cell per column.
        fmt: how a cell that is not a ``str`` is written (default :func:`format_number`).

    Returns:
        The table's lines joined by newlines (no trailing newline).
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(x if isinstance(x, str) else fmt(x) for x in r) + " |")
    return "\n".join(lines)
