"""Shared fixtures of the scm tests (one torch thread)."""
from __future__ import annotations

import pytest
import torch
from scm_helpers import MORPHO_GRAPH

from scm import CausalGraph

torch.set_num_threads(1)


@pytest.fixture
def morpho_graph() -> CausalGraph:
    return CausalGraph.from_dict(MORPHO_GRAPH)
