"""Send the generated cases to a sidecar process and judge every answer.

The sidecar runs as its own process (`okra-sidecar serve`), so that a crash is seen as one
and a blocked event loop shows as slow answers rather than stalling the fuzzer too. A case
fails when it is answered INTERNAL or UNKNOWN, takes longer than `CALL_LIMIT_S`, or finds
the sidecar gone; at the end the health service must still answer SERVING and a plain Run
must still complete.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from okra_client.gen.admin.v1 import admin_pb2
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from fuzz.generate import FuzzCase, RequestGenerator

__all__ = ["CALL_LIMIT_S", "FuzzReport", "run_fuzz"]

WORKFLOWS = Path(__file__).parent / "workflows"
CALL_LIMIT_S = 5.0
# A streaming rpc that is fine keeps streaming: it is read this long, then cancelled.
STREAM_READ_S = 0.3
CONCURRENCY = 4
START_TIMEOUT_S = 60.0
SECRET = "fuzz-secret-long-enough-for-hs256-tokens"
ISSUER = "https://fuzz.okra.test"
AUDIENCE = "okra-sidecar"
FAILING_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


@dataclass
class FuzzReport:
    """What the run sent, what came back, and every case that failed."""

    seed: int
    count: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0

    def table(self) -> str:
        lines = [
            f"fuzz: {self.count} requests, seed {self.seed}, {self.elapsed_s:.1f} s, "
            f"{len(self.failures)} failures",
            f"latency p50 {self.percentile(0.5) * 1000:.1f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.1f} ms, "
            f"max {max(self.latencies_s, default=0.0) * 1000:.1f} ms",
            "cases: " + ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items())),
            "answers: " + ", ".join(f"{k} {n}" for k, n in self.by_code.most_common()),
            "per rpc: " + ", ".join(f"{k} {n}" for k, n in sorted(self.by_method.items())),
        ]
        lines += [f"FAILED {failure}" for failure in self.failures[:50]]
        return "\n".join(lines)


def admin_token() -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "fuzz", "okra_policy_admin": True}
    return jwt.encode({**claims, "exp": int(time.time()) + 24 * 3600}, SECRET)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


TRACEBACK = "Traceback (most recent call last)"


@dataclass
class SidecarProcess:
    """The fuzzed sidecar: where it listens, its process and its log file."""

    address: str
    process: asyncio.subprocess.Process
    log: Path

    def tracebacks(self) -> int:
        """Tracebacks the sidecar logged: each is an error it did not expect."""
        return self.log.read_text(errors="replace").count(TRACEBACK)

    def first_traceback(self) -> str:
        """The first traceback logged, to its exception line (the log goes with the run)."""
        text = self.log.read_text(errors="replace")
        start = text.find(TRACEBACK)
        lines = text[start:].splitlines() if start >= 0 else []
        end = next((i for i, line in enumerate(lines) if i and not line[:1].isspace()), 0)
        return "\n".join(lines[: end + 1])


@asynccontextmanager
async def sidecar_process(redis_url: str | None) -> AsyncIterator[SidecarProcess]:
    """`okra-sidecar serve` on a free port with the fuzz workflows, logging to a file."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="okra-fuzz-") as data_dir:
        args = [f"--listen=127.0.0.1:{port}", f"--workflows={WORKFLOWS}"]
        args.append(f"--redis-url={redis_url}" if redis_url else f"--data-dir={data_dir}")
        env = {
            **os.environ,
            "OKRA_AUTH_MODE": "optional",
            "OKRA_AUTH_ISSUER": ISSUER,
            "OKRA_AUTH_AUDIENCE": AUDIENCE,
            "OKRA_AUTH_HS256_SECRET": SECRET,
            "OKRA_LOG_FORMAT": "text",
            "OKRA_LOG_LEVEL": "WARNING",
        }
        log = Path(data_dir) / "sidecar.log"
        # A file, not a pipe: a pipe nobody reads fills up and blocks the sidecar's logging.
        with log.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "okra_sidecar",
                "serve",
                *args,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
            if b"listening on" not in line:
                raise RuntimeError(f"the sidecar did not start: {line!r}\n{log.read_text()}")
            drain = asyncio.create_task(process.stdout.read())  # the hints it prints next
            yield SidecarProcess(f"127.0.0.1:{port}", process, log)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            if "drain" in locals():
                await drain


async def _start_instances(channel: grpc.aio.Channel, count: int) -> list[str]:
    stub = pb_grpc.WorkflowHostAPIStub(channel)
    ids = []
    for _ in range(count):
        started = await stub.Run(pb.RunRequest(workflow_id="fuzz.wait.1.0.0"), timeout=10)
        ids.append(started.instance_id)
    return ids


async def _send(channel: grpc.aio.Channel, case: FuzzCase) -> grpc.StatusCode:
    """The status the case was answered with (OK included)."""
    identity = lambda data: data  # noqa: E731 - bytes in, bytes out
    if case.method.streaming:
        stream: Any = channel.unary_stream(
            case.method.path, request_serializer=identity, response_deserializer=identity
        )
        call = stream(case.payload, metadata=case.metadata, timeout=CALL_LIMIT_S)
        try:
            async with asyncio.timeout(STREAM_READ_S):
                async for _ in call:
                    pass
        except TimeoutError:
            call.cancel()  # still streaming: an answer of its own kind
            return grpc.StatusCode.OK
        return grpc.StatusCode.OK
    unary: Any = channel.unary_unary(
        case.method.path, request_serializer=identity, response_deserializer=identity
    )
    await unary(case.payload, metadata=case.metadata, timeout=CALL_LIMIT_S)
    return grpc.StatusCode.OK


async def _judge(
    channel: grpc.aio.Channel, case: FuzzCase, number: int, process: Any, report: FuzzReport
) -> None:
    started = time.monotonic()
    try:
        code = await _send(channel, case)
        detail = ""
    except grpc.aio.AioRpcError as exc:
        code, detail = exc.code(), exc.details() or ""
    elapsed = time.monotonic() - started
    report.count += 1
    report.by_method[case.method.name] += 1
    report.by_code[code.name] += 1
    report.by_kind[case.kind] += 1
    report.latencies_s.append(elapsed)
    label = f"#{number} {case.method.name} ({case.kind}, {len(case.payload)} bytes)"
    if process.returncode is not None:
        report.failures.append(f"{label}: the sidecar exited with {process.returncode}")
    elif code in FAILING_CODES:
        report.failures.append(f"{label}: {code.name} {detail[:200]}")
    elif elapsed > CALL_LIMIT_S or code == grpc.StatusCode.DEADLINE_EXCEEDED:
        report.failures.append(f"{label}: took {elapsed:.1f} s ({code.name})")
    elif code == grpc.StatusCode.UNAVAILABLE:
        report.failures.append(f"{label}: UNAVAILABLE with Redis up: {detail[:200]}")


async def _still_serving(channel: grpc.aio.Channel, report: FuzzReport) -> None:
    try:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_LIMIT_S)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            report.failures.append(f"health answers {reply.status} after the run")
        # A fuzzed SetPolicies may have left a valid set that refuses an anonymous Run: the
        # check is that the sidecar still serves, under the set it started with.
        await admin_grpc.PolicyAdminServiceStub(channel).SetPolicies(
            admin_pb2.SetPoliciesRequest(policies=struct_pb2.Struct()),
            metadata=(("authorization", f"Bearer {admin_token()}"),),
            timeout=CALL_LIMIT_S,
        )
        stub = pb_grpc.WorkflowHostAPIStub(channel)
        started = await stub.Run(pb.RunRequest(workflow_id="fuzz.quick.1.0.0"), timeout=10)
        for _ in range(200):
            status = await stub.GetStatus(
                pb.GetStatusRequest(instance_id=started.instance_id), timeout=CALL_LIMIT_S
            )
            if status.status == pb.WORKFLOW_STATUS_COMPLETED:
                return
            await asyncio.sleep(0.05)
        report.failures.append("a plain Run did not complete within 10 s after the run")
    except grpc.aio.AioRpcError as exc:
        report.failures.append(f"after the run: {exc.code().name} {exc.details()}")


async def run_fuzz(count: int, *, seed: int = 1, redis_url: str | None = None) -> FuzzReport:
    """Send `count` cases from `seed` to a fresh sidecar process; the report says how it went.

    Args:
        count: how many requests (spread evenly over every rpc).
        seed: the generator's seed: the same seed sends the same requests.
        redis_url: a Redis for the sidecar; None starts its embedded one in a temp dir.
    """
    report = FuzzReport(seed=seed)
    began = time.monotonic()
    async with sidecar_process(redis_url) as sidecar:
        process = sidecar.process
        async with grpc.aio.insecure_channel(sidecar.address) as channel:
            instance_ids = await _start_instances(channel, 5)
            generator = RequestGenerator(seed, instance_ids=instance_ids, admin_token=admin_token())
            queue = list(enumerate(generator.cases(count)))
            queue.reverse()

            async def worker() -> None:
                while queue and process.returncode is None:
                    number, case = queue.pop()
                    await _judge(channel, case, number, process, report)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            await _still_serving(channel, report)
        if process.returncode is not None:
            report.failures.append(f"the sidecar exited with {process.returncode}")
        tracebacks = sidecar.tracebacks()
        if tracebacks:
            report.failures.append(
                f"the sidecar logged {tracebacks} tracebacks, the first:\n"
                f"{sidecar.first_traceback()}"
            )
    report.elapsed_s = time.monotonic() - began
    return report
