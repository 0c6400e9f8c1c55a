"""The Node.js client (clients/node, @grpc/grpc-js) end to end against a real sidecar."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from okra_client import OkraClient, ScheduleNotFoundError
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import TlsSettings
from okra_sidecar.errors import REASONS
from okra_sidecar.server import Sidecar
from tests.client.test_retries import INSTANCE_ID, FlakyServicer, flaky  # noqa: F401 - fixture
from tests.clients.node import (
    NODE_DIR,
    SCRIPT_TIMEOUT_S,
    NodeToolchain,
    build_client,
    ensure_node_modules,
    run_node,
    run_tsc,
)
from tests.helpers import WORKFLOWS_DIR, Stub, make_settings, running_sidecar
from tests.pki import Authority
from tests.policy.support import policy_settings, write_policies
from tests.test_examples import EXAMPLES_DIR

E2E_TIMEOUT_S = SCRIPT_TIMEOUT_S


@pytest.fixture(scope="session")
def node_client() -> NodeToolchain:
    """The client and its e2e script compiled by tsc (strict) into clients/node/dist."""
    return build_client(ensure_node_modules())


async def run_script(toolchain: NodeToolchain, script: str, *args: str) -> dict[str, Any]:
    """Run a compiled clients/node/test script; its last line is a JSON report with `ok`."""
    return await run_node(toolchain, NODE_DIR / "dist" / "test" / script, *args)


@pytest.mark.timeout(E2E_TIMEOUT_S + 30)
async def test_node_client_runs_signals_queries_and_cancels(
    node_client: NodeToolchain, sidecar: tuple[Sidecar, Stub]
) -> None:
    server, stub = sidecar
    report = await run_script(node_client, "e2e.js", f"127.0.0.1:{server.port}")
    # What the Node client did is visible to the Python stub too.
    completed = await stub.GetStatus(pb.GetStatusRequest(instance_id=report["completed"]))
    assert completed.status == pb.WORKFLOW_STATUS_COMPLETED
    assert completed.tags["client"] == "node"
    cancelled = await stub.GetStatus(pb.GetStatusRequest(instance_id=report["cancelled"]))
    assert cancelled.status == pb.WORKFLOW_STATUS_CANCELLED
    assert cancelled.cancel_reason == "changed my mind"


@pytest.mark.timeout(E2E_TIMEOUT_S + 30)
async def test_node_client_operator_verbs(
    node_client: NodeToolchain, sidecar: tuple[Sidecar, Stub]
) -> None:
    server, stub = sidecar
    report = await run_script(node_client, "operator.js", f"127.0.0.1:{server.port}")
    history = await stub.GetHistory(pb.GetHistoryRequest(instance_id=report["reset"], limit=1000))
    types = [event.type for event in history.events]
    assert types.count("workflow.reset") == 2 and types.count("workflow.suspended") == 1
    for instance_id in report["cancelled"]:
        cancelled = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        assert cancelled.cancel_reason == "batch done"


@pytest.mark.timeout(E2E_TIMEOUT_S + 30)
async def test_node_client_schedule_verbs(
    node_client: NodeToolchain, sidecar: tuple[Sidecar, Stub]
) -> None:
    server, _ = sidecar
    report = await run_script(node_client, "schedules.js", f"127.0.0.1:{server.port}")
    # What the Node client deleted is gone for the Python client too.
    async with OkraClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(ScheduleNotFoundError):
            await client.schedules.get(report["scheduleId"])


@pytest.mark.timeout(E2E_TIMEOUT_S + 30)
async def test_node_client_over_mutual_tls(
    node_client: NodeToolchain, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    ca = Authority.create(tmp_path / "pki")
    server, client = ca.server(), ca.spiffe_client()
    settings = replace(
        make_settings(redis_url),
        tls=TlsSettings(cert_file=server.cert, key_file=server.key, client_ca_file=ca.cert),
    )
    async with running_sidecar(settings) as (sidecar, _):
        report = await run_script(
            node_client,
            "tls.js",
            f"localhost:{sidecar.port}",
            *(str(ca.cert), str(client.cert), str(client.key)),
        )
    assert "tests.forever.1.0.0" in report["workflows"]


@pytest.mark.timeout(E2E_TIMEOUT_S + 30)
async def test_node_run_sends_a_request_id_and_retries_with_it(
    node_client: NodeToolchain,
    flaky: tuple[FlakyServicer, str],  # noqa: F811 - the fixture imported above
) -> None:
    servicer, target = flaky
    report = await run_script(node_client, "run-once.js", target)
    assert report["instanceId"] == INSTANCE_ID
    # Two UNAVAILABLE answers, then success: three attempts with one generated request id.
    first = servicer.request_ids[0]
    assert first and servicer.request_ids == [first] * 3


@pytest.mark.timeout(E2E_TIMEOUT_S + 30)
async def test_node_client_retries_only_what_is_retryable(
    node_client: NodeToolchain, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = write_policies(
        tmp_path,
        '{"policy.workflow.run.rateLimit": "1/second", "policy.workflow.query.rateLimit": '
        '"1/second", "policy.workflow.signal.rateLimit": "1/second"}',
    )
    # The policy suite's settings, with the workflows the e2e script runs.
    settings = replace(policy_settings(redis_url, policies), workflows_dir=WORKFLOWS_DIR)
    async with running_sidecar(settings) as (server, stub):
        report = await run_script(node_client, "e2e.js", f"127.0.0.1:{server.port}", "retries")
        started = await stub.Query(pb.QueryRequest(tags=report["tags"]))
        # Two Runs, the second retried after RATE_LIMITED: two instances, not three.
        assert {i.instance_id for i in started.instances} == {report["first"], report["second"]}


def test_node_retryable_reasons_are_the_sidecars() -> None:
    source = (NODE_DIR / "src" / "client.ts").read_text()
    listed = re.search(r"RETRYABLE_REASONS[^=]*= new Set\(\[(.*?)\]\)", source, re.S)
    assert listed is not None, "client.ts defines RETRYABLE_REASONS"
    named = set(re.findall(r'"([A-Z_]+)"', listed.group(1)))
    assert named == {reason.value for reason, spec in REASONS.items() if spec.retryable}


async def test_node_client_reads_timestamps_without_zero_fields(node_client: NodeToolchain) -> None:
    # A time on a whole second arrives without `nanos`: it once made an Invalid Date.
    report = await run_script(node_client, "timestamps.js")
    assert report == {"ok": True}


@pytest.mark.timeout(E2E_TIMEOUT_S + 60)
async def test_node_readme_examples_run_as_written(
    node_client: NodeToolchain, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # Each of the README's examples, compiled by tsc (strict) and run to its end against the
    # examples: the first once watched an instance that nothing signalled, so it never ended.
    readme = (NODE_DIR / "README.md").read_text()
    examples = re.findall(r"```ts\n(.*?)```", readme, re.S)
    assert len(examples) == 2, "clients/node/README.md has two ```ts examples"
    client = (NODE_DIR / "dist" / "src" / "client").as_posix()
    types = NODE_DIR / "node_modules" / "@types"
    settings = make_settings(redis_url, workflows=EXAMPLES_DIR)
    async with running_sidecar(settings) as (server, _):
        for n, example in enumerate(examples):
            code, found = re.subn(
                r'^import \{ OkraClient \} from "./src/client";\n',
                "",
                example.replace('"127.0.0.1:50051"', "process.argv[2]"),
                flags=re.M,
            )
            assert found == 1, f"example {n} imports OkraClient from ./src/client"
            script = tmp_path / f"readme{n}.ts"
            script.write_text(
                f'import {{ OkraClient }} from "{client}";\n\n'
                f"async function main(): Promise<void> {{\n{code}"
                "console.log(JSON.stringify({ ok: true }));\n}\n\nvoid main();\n"
            )
            built = run_tsc(
                node_client,
                *("--strict", "--target", "ES2022", "--module", "commonjs", "--skipLibCheck"),
                *("--typeRoots", str(types), "--types", "node", "--outDir", str(tmp_path)),
                str(script),
                cwd=tmp_path,
            )
            assert built.returncode == 0, f"tsc of example {n}:\n{built.stdout}{built.stderr}"
            await run_node(node_client, tmp_path / f"readme{n}.js", f"127.0.0.1:{server.port}")


async def test_node_client_sends_json_as_json_stringify_writes_it(
    node_client: NodeToolchain,
) -> None:
    # An undefined property is absent (it was sent as null and broke `type: string`), and
    # NaN and Infinity are refused (the sidecar stored them as null).
    report = await run_script(node_client, "values.js")
    assert report == {"ok": True}
