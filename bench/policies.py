"""`python -m bench.policies`: Run (W1) throughput with every policy key set, next to none.

"Full" means every key of the Host API specification's twelve policy groups is set, with a
bearer token on every call: each Run verifies an HS256 token, checks the allow and block globs
and the namespace rules, reads the input for its required fields, evaluates two CEL conditions,
takes a slot from the Redis-shared rate limit (one Lua call), writes a full audit record and is
admitted against the active and per-workflow counters. The specification's own numbers would
stop a benchmark (100 Runs a minute, 50 instances), so the limits here are raised to bind
nothing while still being checked on every call, and the bench namespace is added to the lists;
everything else is as the specification has it.

Rounds alternate none and full, each with a fresh sidecar and embedded Redis, so a machine that
other work keeps busy hurts both alike; the report shows every round, the medians, their ratio
and the sidecar's CPU time per Run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.cpu import CpuMeter, process_cpu_s
from bench.processes import sidecar_process
from bench.report import against
from bench.workloads import Client, measure_run, warm_up

FULL = 2000
QUICK = 500
TARGET = 0.70
SECRET = "bench-policies-hs256-secret-of-enough-length"
AUDIENCE = "okra-sidecar"
UNBOUNDED_RATE = "1000000/minute"
UNBOUNDED_COUNT = 1_000_000

# Every key of the Host API specification's twelve groups. Where the specification's value would
# refuse or throttle the bench itself, the comment says what changed; the two run.condition
# snippets are combined.
SEED_FULL_SET: dict[str, Any] = {
    # 1. execution permissions (+ "bench.*")
    "policy.workflow.run.allowed": ["user.onboarding", "order.processing", "report.*", "bench.*"],
    "policy.workflow.run.blocked": ["admin.dangerous", "legacy.*"],
    # 2. conditional execution and 11. cross-service restrictions, both run.condition
    "policy.workflow.run.condition": (
        "(workflow.id != 'payment.process' || request.auth.claims.role == 'payment_admin')"
        " && (workflow.namespace == service.namespace || workflow.namespace == 'common')"
    ),
    # 3. signal permissions
    "policy.workflow.signal.allowed": True,
    "policy.workflow.signal.allowedSignals": ["approved", "rejected", "timeout"],
    "policy.workflow.signal.condition": (
        "instance.status == 'waiting' && request.auth.claims.canSignal"
    ),
    # 4. query restrictions (+ the statuses the bench's own progress polling asks for)
    "policy.workflow.query.maxResults": 100,
    "policy.workflow.query.allowedStatuses": ["completed", "failed", "pending", "running"],
    "policy.workflow.query.condition": "request.auth.claims.role in ['admin', 'operator']",
    # 5. rate limiting (specification: 100, 1000 and 100 a minute)
    "policy.workflow.run.rateLimit": UNBOUNDED_RATE,
    "policy.workflow.signal.rateLimit": UNBOUNDED_RATE,
    "policy.workflow.query.rateLimit": UNBOUNDED_RATE,
    # 6. instance limits (specification: 50 concurrent; + bench.hold, counted per workflow)
    "policy.workflow.maxConcurrentInstances": UNBOUNDED_COUNT,
    "policy.workflow.maxInstancesPerWorkflow": {
        "user.onboarding": 100,
        "report.generation": 10,
        "bench.hold": UNBOUNDED_COUNT,
    },
    # 7. environment-specific policies (DEPLOYMENT_ENV=production on the sidecar)
    "policy.workflow.condition": (
        "env.DEPLOYMENT_ENV == 'production' ? workflow.id != 'test.*' : true"
    ),
    # 8. input validation (+ bench.hold, so every Run's input is read for its field)
    "policy.workflow.run.maxInputSizeKb": 100,
    "policy.workflow.run.requiredInputFields": {
        "payment.process": ["amount", "currency", "customerId"],
        "bench.hold": ["n"],
    },
    # 9. cancellation policies
    "policy.workflow.cancel.allowed": True,
    "policy.workflow.cancel.condition": (
        "instance.status in ['pending', 'running'] && request.auth.claims.role == 'admin'"
    ),
    "policy.workflow.cancel.requireReason": True,
    # 10. audit and monitoring
    "policy.workflow.audit": True,
    "policy.workflow.auditLevel": "full",
    "policy.workflow.alertOnFailure": ["payment.*", "compliance.*"],
    # 11. cross-service restrictions (+ "bench"; the service's namespace is bench)
    "policy.workflow.run.crossNamespace": False,
    "policy.workflow.run.allowedNamespaces": ["app", "common", "bench"],
    # 12. timeout policies
    "policy.workflow.maxDurationMinutes": 60,
    "policy.workflow.defaultTimeoutMs": 300000,
    "policy.workflow.timeoutAction": "fail",
    # Beyond the seed: the keys of the other rpcs (the bench calls none of them).
    "policy.workflow.emit.allowed": True,
    "policy.workflow.emit.allowedTypes": ["order.*"],
    "policy.workflow.emit.condition": "event.source == 'shop'",
    "policy.workflow.history.allowed": True,
    "policy.workflow.history.condition": "request.auth.claims.role in ['admin', 'operator']",
    "policy.workflow.schedule.allowed": True,
    "policy.workflow.schedule.ownerOnly": True,
    "policy.workflow.schedule.condition": "workflow.namespace == service.namespace",
    "policy.workflow.task.allowed": True,
    "policy.workflow.task.allowedQueues": ["bench"],
    "policy.workflow.task.condition": "task.queue == service.namespace",
    "policy.workflow.suspend.allowed": True,
    "policy.workflow.suspend.condition": "instance.status != 'pending'",
    "policy.workflow.resume.allowed": True,
    "policy.workflow.resume.condition": "instance.status == 'suspended'",
    "policy.workflow.retry.allowed": True,
    "policy.workflow.retry.condition": "instance.status == 'failed'",
    "policy.workflow.reset.allowed": True,
    "policy.workflow.reset.condition": "instance.status != 'suspended'",
    "policy.workflow.delete.allowed": True,
    "policy.workflow.delete.condition": "instance.status != 'failed'",
    "policy.workflow.bulk.allowed": True,
    "policy.workflow.bulk.condition": "bulk.action != 'delete'",
    "policy.workflow.bulk.maxInstances": 5000,
    "policy.workflow.operator.condition": "request.auth.claims.role == 'ops'",
}


@dataclass(frozen=True)
class Round:
    """One sidecar's W1: Runs per second and the sidecar's CPU milliseconds per Run."""

    policed: bool
    rate: float
    cpu_ms: float
    p50_ms: float
    p99_ms: float


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bearer_token() -> str:
    claims = {
        "sub": "bench",
        "aud": AUDIENCE,
        "exp": int(time.time()) + 3600,
        "role": "operator",
        "canSignal": True,
    }
    return jwt.encode(claims, SECRET)


class BearerInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call, as a service's client would."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = (*(client_call_details.metadata or ()), self._metadata)
        details = client_call_details._replace(metadata=metadata)
        return await continuation(details, request)


def policy_env(work_dir: Path) -> dict[str, str]:
    """The sidecar's environment for the policed rounds: the set, the secret, its identity."""
    path = work_dir / "policies.json"
    path.write_text(json.dumps(SEED_FULL_SET, indent=2))
    return {
        "OKRA_POLICIES": str(path),
        "OKRA_AUTH_HS256_SECRET": SECRET,
        "OKRA_AUTH_AUDIENCE": AUDIENCE,
        "OKRA_SERVICE_NAME": "bench",
        "OKRA_SERVICE_NAMESPACE": "bench",
        "DEPLOYMENT_ENV": "production",
        "OTEL_SDK_DISABLED": "true",
    }


async def measure_round(work_dir: Path, count: int, policed: bool) -> Round:
    env = policy_env(work_dir) if policed else {"OTEL_SDK_DISABLED": "true"}
    interceptors = [BearerInterceptor(bearer_token())] if policed else []
    async with sidecar_process(work_dir, env=env) as server:
        async with grpc.aio.insecure_channel(server.address, interceptors=interceptors) as channel:
            client = Client(
                stub=pb_grpc.WorkflowHostAPIStub(channel), meter=CpuMeter.for_process(server.pid)
            )
            await warm_up(client)
            before = process_cpu_s(server.pid)
            row = await measure_run(client, count)
            after = process_cpu_s(server.pid)
    cpu_ms = (after - before) * 1000 / count if before is not None and after is not None else 0
    return Round(policed, row.rate, cpu_ms, row.p50_ms, row.p99_ms)


async def run_rounds(rounds: int, count: int) -> list[Round]:
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="okra-bench-policies-") as scratch:
        for index in range(rounds):
            for policed in (False, True):
                mode = "full" if policed else "none"
                log(f"round {index + 1}/{rounds}, policies {mode}: {count} Runs")
                round_dir = Path(scratch) / f"round-{index}-{mode}"
                round_dir.mkdir()
                results.append(await measure_round(round_dir, count, policed))
    return results


def report(results: Sequence[Round]) -> str:
    lines = [
        "policies  W1 Run/s  p50 ms  p99 ms  sidecar cpu ms/Run",
        "--------  --------  ------  ------  ------------------",
    ]
    for r in results:
        lines.append(
            f"{'full' if r.policed else 'none':<8}  {r.rate:>8.0f}  {r.p50_ms:>6.1f}  "
            f"{r.p99_ms:>6.1f}  {r.cpu_ms:>18.2f}"
        )
    none = [r for r in results if not r.policed]
    full = [r for r in results if r.policed]
    rate_none = statistics.median(r.rate for r in none)
    rate_full = statistics.median(r.rate for r in full)
    ratio = rate_full / rate_none if rate_none else float("nan")
    cpu = statistics.median(r.cpu_ms for r in full) / statistics.median(r.cpu_ms for r in none)
    lines += [
        "",
        f"W1 Run with every policy key set: {rate_full:.0f}/s, none: {rate_none:.0f}/s "
        f"(medians) = {ratio:.0%} ({against(ratio, TARGET)}); sidecar cpu per Run "
        f"x{cpu:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policies", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} Runs a round, not {FULL}")
    parser.add_argument("--rounds", type=int, default=3, help="none/full pairs to run (3)")
    args = parser.parse_args(argv)
    results = asyncio.run(run_rounds(args.rounds, QUICK if args.quick else FULL))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
