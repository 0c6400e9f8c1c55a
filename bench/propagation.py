"""`python -m bench.propagation`: how soon a policy change reaches every sidecar on one Redis.

Two sidecar processes share one embedded redis-server; the first watches the policy file. An
admin change is made with SetPolicies on the first, and its propagation time is how long until
the second's GetPolicies shows the new version. A file change is written to the watched file,
and its time is how long until both sidecars apply it (the file's watch interval included).
docs/policies.md says a change reaches every sidecar well within a second; the report says
whether the slowest change did. The tests check only that changes arrive, never how soon.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import jwt
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_pb_grpc

from bench.load import percentile
from bench.processes import sidecar_process
from okra_sidecar.store.embedded import EmbeddedRedis

if TYPE_CHECKING:
    from okra_client.gen.admin.v1.admin_pb2_grpc import PolicyAdminServiceAsyncStub as AdminStub

ADMIN_CHANGES = 30
FILE_CHANGES = 10
QUICK_ADMIN_CHANGES = 5
QUICK_FILE_CHANGES = 3
TARGET_S = 1.0
GIVE_UP_S = 30.0  # a change not applied by then is reported as a failure, not waited for
POLL_S = 0.001
SECRET = "bench-propagation-hs256-secret-of-enough-length"
AUDIENCE = "okra-sidecar"


def log(message: str) -> None:
    print(f"[bench.propagation] {message}", file=sys.stderr, flush=True)


def admin_metadata() -> tuple[tuple[str, str], ...]:
    claims = {"sub": "bench", "aud": AUDIENCE, "okra_policy_admin": True}
    claims["exp"] = int(time.time()) + 3600
    return (("authorization", f"Bearer {jwt.encode(claims, SECRET)}"),)


def sidecar_env(policies: Path | None) -> dict[str, str]:
    env = {
        "OKRA_AUTH_HS256_SECRET": SECRET,
        "OKRA_AUTH_AUDIENCE": AUDIENCE,
        "OTEL_SDK_DISABLED": "true",
    }
    if policies is not None:
        env["OKRA_POLICIES"] = str(policies)
    return env


def document(n: int) -> str:
    """A policy set that differs from the one before it."""
    return json.dumps({"policy.workflow.run.blocked": [f"bench{n}.*"]})


@dataclass(frozen=True)
class Propagation:
    """Seconds from each change until the last sidecar applied it, by kind of change."""

    admin_s: list[float]
    file_s: list[float]


async def applied_version(admin: AdminStub) -> int:
    reply = await admin.GetPolicies(admin_pb.GetPoliciesRequest(), metadata=admin_metadata())
    return reply.version


async def until_applied(admins: Sequence[AdminStub], version: int, started: float) -> float:
    """Seconds from `started` until every sidecar applies `version` (or at least it)."""
    for admin in admins:
        while await applied_version(admin) < version:
            if time.perf_counter() - started > GIVE_UP_S:
                raise TimeoutError(f"policy version {version} not applied after {GIVE_UP_S}s")
            await asyncio.sleep(POLL_S)
    return time.perf_counter() - started


async def measure(admin_changes: int, file_changes: int) -> Propagation:
    with tempfile.TemporaryDirectory(prefix="okra-bench-propagation-") as scratch:
        root = Path(scratch)
        path = root / "policies.json"
        path.write_text(document(0))
        redis = EmbeddedRedis(data_dir=root / "redis")
        url = await redis.start()
        try:
            (root / "first").mkdir()
            (root / "second").mkdir()
            async with (
                sidecar_process(root / "first", redis_url=url, env=sidecar_env(path)) as first,
                sidecar_process(root / "second", redis_url=url, env=sidecar_env(None)) as second,
                grpc.aio.insecure_channel(first.address) as first_channel,
                grpc.aio.insecure_channel(second.address) as second_channel,
            ):
                changed: AdminStub = admin_pb_grpc.PolicyAdminServiceStub(first_channel)
                other: AdminStub = admin_pb_grpc.PolicyAdminServiceStub(second_channel)
                await until_applied([other], await applied_version(changed), time.perf_counter())
                admin_s = []
                for n in range(1, admin_changes + 1):
                    started = time.perf_counter()
                    reply = await changed.SetPolicies(
                        admin_pb.SetPoliciesRequest(text=document(n)), metadata=admin_metadata()
                    )
                    admin_s.append(await until_applied([other], reply.version, started))
                file_s = []
                for n in range(admin_changes + 1, admin_changes + file_changes + 1):
                    version = await applied_version(changed)
                    started = time.perf_counter()
                    path.write_text(document(n))
                    file_s.append(await until_applied([changed, other], version + 1, started))
        finally:
            await redis.stop()
    return Propagation(admin_s, file_s)


def report(result: Propagation) -> str:
    lines = [
        "change  count  median ms  p95 ms  max ms",
        "------  -----  ---------  ------  ------",
    ]
    worst = 0.0
    for name, times in (("admin", result.admin_s), ("file", result.file_s)):
        ordered = sorted(times)
        worst = max([worst, *ordered])
        lines.append(
            f"{name:<6}  {len(ordered):>5}  {statistics.median(ordered) * 1000:>9.1f}  "
            f"{percentile(ordered, 95) * 1000:>6.1f}  {ordered[-1] * 1000:>6.1f}"
        )
    verdict = "met" if worst <= TARGET_S else "NOT met"
    lines += [
        "",
        f"slowest change reached every sidecar in {worst:.3f}s "
        f"(target <= {TARGET_S:.1f}s: {verdict})",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ADMIN_CHANGES} admin and {QUICK_FILE_CHANGES} file changes, "
        f"not {ADMIN_CHANGES} and {FILE_CHANGES}",
    )
    args = parser.parse_args(argv)
    counts = (
        (QUICK_ADMIN_CHANGES, QUICK_FILE_CHANGES) if args.quick else (ADMIN_CHANGES, FILE_CHANGES)
    )
    log(f"{counts[0]} admin changes, then {counts[1]} file changes, across two sidecars")
    print(report(asyncio.run(measure(*counts))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
