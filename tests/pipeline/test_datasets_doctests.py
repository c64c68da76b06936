"""The runnable examples in the docstrings of the datasets and morphometry modules."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["pipeline.datasets.mnist", "pipeline.datasets.morpho_equations", "pipeline.datasets.morpho",
           "pipeline.morphometry", "pipeline.morphometry.measure", "pipeline.morphometry.perturb"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
