"""Settings shared by every test package: the hypothesis profiles of the property-based tests.

* ``ci`` (the default): 500 examples per property, no deadline (the machine may be shared), derandomised so
  that a run is reproducible, and no example database written into the checkout.
* ``dev``: 2,000 random examples per property, with hypothesis' example database, to hunt for new failures
  locally: ``HYPOTHESIS_PROFILE=dev pytest tests/test_properties.py``.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=500, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=2000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
