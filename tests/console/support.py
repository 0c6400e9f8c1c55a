"""A sidecar with its admin port on, for the console's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from okra_sidecar.server import Sidecar
from tests.helpers import WORKFLOWS_DIR, Stub, make_settings, running_sidecar

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workflows"


@asynccontextmanager
async def console_sidecar(
    redis_url: str, *, workflows: Path = WORKFLOWS_DIR, **settings: Any
) -> AsyncIterator[tuple[Sidecar, Stub, str]]:
    """A sidecar with the test workflows (or `workflows`), and its console's base URL."""
    base = make_settings(redis_url, workflows=workflows)
    base = replace(base, telemetry=replace(base.telemetry, admin_listen="127.0.0.1:0"), **settings)
    async with running_sidecar(base) as (sidecar, stub):
        assert sidecar.admin is not None
        yield sidecar, stub, f"http://127.0.0.1:{sidecar.admin.port}"
