"""The runnable examples in the docstrings of guidance, the image model and the evaluation modules."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["diffusion.guidance", "diffusion.model", "pipeline.groups", "pipeline.evaluation.engine",
           "pipeline.evaluation.metrics", "pipeline.evaluation.runner", "pipeline.evaluation.scores"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
