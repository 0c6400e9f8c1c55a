"""Policy test fixtures: one CEL engine for the run, as the sidecar keeps one per process."""

from __future__ import annotations

import pytest

from okra_sidecar.policy.cel import CelEngine


@pytest.fixture(scope="session")
def cel() -> CelEngine:
    return CelEngine()
