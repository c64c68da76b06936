"""Fixtures of the diffusion tests."""
from __future__ import annotations

import pytest
import torch
from diffusion_helpers import tiny_config

from diffusion import ImageModelConfig

torch.set_num_threads(1)


@pytest.fixture
def config() -> ImageModelConfig:
    return tiny_config()
