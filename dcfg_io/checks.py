"""Number checks shared by every package: is a value an integer, a finite number, within bounds.

The predicates (:func:`is_integer`, :func:`is_number`) answer, so that a caller with a message of its own keeps it;
:func:`check_integer` and :func:`check_number` raise a ``ValueError`` that names the value. A bool is never a
number here (``True`` is not a count, a seed or a weight), and a number is finite unless ``finite=False``.

Example:
    >>> is_integer(3, 1), is_integer(True), is_integer(2.0), is_number(float("nan")), is_number(0.5, 0, 1)
    (True, False, False, False, True)
    >>> check_integer("steps", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: steps=0 must be an integer >= 1
    >>> check_number("scale", 2, 0)
    2.0
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["is_integer", "is_number", "check_integer", "check_number"]


def is_integer(value: Any, low: int | None = None, high: int | None = None, *, python_int: bool = False) -> bool:
    """Whether ``value`` is an integer (a Python or numpy one; only a Python ``int`` with ``python_int``), not a
    bool, with ``low <= value <= high`` (``None``: no bound)."""
    kind = int if python_int else numbers.Integral
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_number(value: Any, low: float | None = None, high: float | None = None, *, finite: bool = True,
              low_open: bool = False, high_open: bool = False) -> bool:
    """Whether ``value`` is a real number (int, float or numpy), not a bool, finite (unless ``finite=False``), with
    ``low <= value <= high`` (strict where ``low_open`` / ``high_open``; ``None``: no bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if finite and not math.isfinite(value):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def _bounds(low: Any, high: Any, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def check_integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int``, or ``ValueError("NAME=VALUE must be an integer >= LOW")`` (the bounds given)."""
    if not is_integer(value, low, high):
        raise ValueError(f"{name}={value!r:.80} must be an integer{_bounds(low, high)}")
    return int(value)


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a ``float``, or ``ValueError("NAME=VALUE must be a finite number >= LOW")`` (the bounds given)."""
    if not is_number(value, low, high, low_open=low_open, high_open=high_open):
        raise ValueError(f"{name}={value!r:.80} must be a finite number{_bounds(low, high, low_open, high_open)}")
    return float(value)
