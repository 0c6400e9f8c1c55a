"""`okra-sidecar serve` refuses to start on a policy file or key file it cannot use."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent.parent


async def serve(redis_url: str, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "okra_sidecar",
        "serve",
        "--listen=127.0.0.1:0",
        f"--redis-url={redis_url}",
        *flags,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, output.decode()


async def test_a_policy_file_that_does_not_compile(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text("policy.workflow.run.condition: request.auth.claims.role ==\n")
    code, output = await serve(redis_url, f"--policies={policies}")
    assert code == 2
    assert "error: refusing to start: policy set from file:policies.yaml refused" in output
    assert "policy.workflow.run.condition: not valid CEL" in output
    assert await redis.exists("okra:policies") == 0


async def test_a_key_file_that_cannot_be_read(tmp_path: Path, redis: Redis, redis_url: str) -> None:
    code, output = await serve(
        redis_url, env={"OKRA_AUTH_PUBLIC_KEY_FILE": str(tmp_path / "missing.pem")}
    )
    assert code == 2
    assert "error: refusing to start: authPublicKeyFile" in output
