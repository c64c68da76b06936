"""dcfg_io.checks: what counts as an integer and a finite number, the bounds, and the messages."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dcfg_io.checks import check_integer, check_number, is_integer, is_number


@pytest.mark.parametrize("value, kw, expected", [
    (3, {}, True), (np.int64(3), {}, True), (np.int64(3), {"python_int": True}, False), (True, {}, False),
    (3.0, {}, False), ("3", {}, False), (None, {}, False), (0, {"low": 1}, False), (5, {"high": 4}, False),
    (4, {"low": 1, "high": 4}, True),
])
def test_is_integer(value, kw, expected):
    assert is_integer(value, **kw) is expected


@pytest.mark.parametrize("value, kw, expected", [
    (0.5, {}, True), (2, {}, True), (np.float32(1.5), {}, True), (False, {}, False), (math.nan, {}, False),
    (math.inf, {}, False), (math.inf, {"finite": False}, True), ("1", {}, False), (0.0, {"low": 0}, True),
    (0.0, {"low": 0, "low_open": True}, False), (1.0, {"high": 1, "high_open": True}, False),
    (-1.0, {"low": -1, "high": 1}, True),
])
def test_is_number(value, kw, expected):
    assert is_number(value, **kw) is expected


def test_the_raising_checks_name_the_value_and_the_bounds():
    assert check_integer("n", np.int64(7), 1) == 7 and type(check_integer("n", np.int64(7))) is int
    assert check_number("w", 2) == 2.0
    with pytest.raises(ValueError, match=r"^n=0 must be an integer >= 1$"):
        check_integer("n", 0, 1)
    with pytest.raises(ValueError, match=r"^k=11 must be an integer in \[0, 10\]$"):
        check_integer("k", 11, 0, 10)
    with pytest.raises(ValueError, match=r"^p=1.0 must be a finite number in \(0, 1\)$"):
        check_number("p", 1.0, 0, 1, low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"^w=nan must be a finite number$"):
        check_number("w", math.nan)
