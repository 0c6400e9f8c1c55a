"""Run a command for the packaging tests: bounded in time, its stdout returned, failures shown."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


async def run_command(*command: str | Path, cwd: Path, timeout_s: float) -> str:
    """Run `command` in `cwd` without the test run's PYTHONPATH or VIRTUAL_ENV; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    process = await asyncio.create_subprocess_exec(
        *map(str, command),
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"{command} failed:\n{err.decode()}{out.decode()}"
    return out.decode()
