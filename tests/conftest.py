"""Settings shared by every test package: the hypothesis profiles of the property-based tests, and the rule of
the CUDA tests.

Hypothesis profiles:

* ``ci`` (the default): 500 examples per property, no deadline (the machine may be shared), derandomised so
  that a run is reproducible, and no example database written into the checkout.
* ``dev``: 2,000 random examples per property, with hypothesis' example database, to hunt for new failures
  locally: ``HYPOTHESIS_PROFILE=dev pytest tests/test_properties.py``.

CUDA tests (``@pytest.mark.cuda``) run where ``torch.cuda.is_available()``; elsewhere they are reported as skipped,
with the reason, never as passed, and the run's summary counts them. On a machine that must have a GPU,
``DCFG_REQUIRE_CUDA=1`` turns a missing CUDA device into a failure of each CUDA test.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False here"

settings.register_profile(
    "ci", max_examples=500, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=2000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one torch thread per worker, N workers on N cores
    import torch

    torch.set_num_threads(1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("DCFG_REQUIRE_CUDA") == "1":
        pytest.fail(f"DCFG_REQUIRE_CUDA=1, but this test {NO_CUDA}", pytrace=False)
    pytest.skip(NO_CUDA)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_CUDA in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} CUDA test(s) skipped, not passed: {NO_CUDA} "
                                    f"(DCFG_REQUIRE_CUDA=1 makes this a failure)")
