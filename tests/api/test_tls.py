"""TLS and mutual TLS on the gRPC port: clients, refusals, peer identity and live rotation."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from okra_client import ClientTls, OkraClient, UnauthenticatedError
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_pb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from okra_sidecar.api.tls import TlsConfigError
from okra_sidecar.config import ServerSettings, Settings, TlsSettings
from okra_sidecar.server import Sidecar, start_sidecar
from tests.helpers import expect_rpc_error, make_settings
from tests.pki import SPIFFE_ID, Authority, Pair
from tests.policy.support import audit_records, denied_by, policy_settings, write_policies

GRPCURL = shutil.which("grpcurl", path=os.path.dirname(sys.executable))
QUICK = "billing.quick.1.0.0"


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "pki")


def with_tls(settings: Settings, server: Pair, client_ca: Path | None = None) -> Settings:
    return replace(
        settings,
        tls=TlsSettings(cert_file=server.cert, key_file=server.key, client_ca_file=client_ca),
    )


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Sidecar]:
    sidecar = await start_sidecar(settings)
    try:
        yield sidecar
    finally:
        await sidecar.stop(None)


def secure(sidecar: Sidecar, ca: Path, client: Pair | None = None) -> grpc.aio.Channel:
    tls = ClientTls(
        ca_file=ca,
        cert_file=client.cert if client else None,
        key_file=client.key if client else None,
    )
    return grpc.aio.secure_channel(f"localhost:{sidecar.port}", tls.credentials())


async def list_workflows(channel: grpc.aio.Channel) -> pb.ListWorkflowsResponse:
    stub = pb_grpc.WorkflowHostAPIStub(channel)
    reply: pb.ListWorkflowsResponse = await stub.ListWorkflows(
        pb.ListWorkflowsRequest(), timeout=10
    )
    return reply


async def test_tls_port_serves_tls_clients_and_refuses_plaintext(
    redis: Redis, redis_url: str, ca: Authority
) -> None:
    async with started(with_tls(make_settings(redis_url), ca.server())) as sidecar:
        async with secure(sidecar, ca.cert) as channel:
            assert (await list_workflows(channel)).workflows
        async with OkraClient(
            f"localhost:{sidecar.port}", tls=ClientTls(ca_file=ca.cert)
        ) as client:
            assert await client.list_workflows()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as plain:
            await expect_rpc_error(list_workflows(plain), grpc.StatusCode.UNAVAILABLE)
        # A client that does not trust the issuing CA refuses the sidecar.
        other = Authority.create(ca.folder / "other", "other")
        async with secure(sidecar, other.cert) as channel:
            await expect_rpc_error(list_workflows(channel), grpc.StatusCode.UNAVAILABLE)


async def test_mutual_tls_requires_a_certificate_from_the_client_ca(
    redis: Redis, redis_url: str, ca: Authority
) -> None:
    settings = with_tls(make_settings(redis_url), ca.server(), client_ca=ca.cert)
    rogue = Authority.create(ca.folder / "rogue", "rogue")
    async with started(settings) as sidecar:
        async with secure(sidecar, ca.cert, ca.spiffe_client()) as channel:
            assert (await list_workflows(channel)).workflows
        async with secure(sidecar, ca.cert) as channel:
            await expect_rpc_error(list_workflows(channel), grpc.StatusCode.UNAVAILABLE)
        async with secure(sidecar, ca.cert, rogue.spiffe_client("impostor")) as channel:
            await expect_rpc_error(list_workflows(channel), grpc.StatusCode.UNAVAILABLE)


async def test_policies_and_audit_see_the_client_certificate(
    redis: Redis, redis_url: str, tmp_path: Path, ca: Authority
) -> None:
    policies = write_policies(
        tmp_path,
        '{"policy.workflow.audit": true,'
        f' "policy.workflow.run.condition": "request.auth.peer == \'{SPIFFE_ID}\'"}}',
    )
    # authMode required: a verified client certificate stands in for a token.
    settings = with_tls(
        policy_settings(redis_url, policies, mode="required"), ca.server(), client_ca=ca.cert
    )
    async with started(settings) as sidecar:
        async with secure(sidecar, ca.cert, ca.spiffe_client()) as channel:
            stub = pb_grpc.WorkflowHostAPIStub(channel)
            reply = await stub.Run(pb.RunRequest(workflow_id=QUICK), timeout=10)
            assert reply.instance_id
            records = await audit_records(admin_pb_grpc.PolicyAdminServiceStub(channel))
            runs = [r for r in records if r.method == "Run"]
            assert runs and runs[0].allowed and runs[0].peer == SPIFFE_ID
        async with secure(sidecar, ca.cert, ca.plain_client("reporting")) as channel:
            stub = pb_grpc.WorkflowHostAPIStub(channel)
            error = await expect_rpc_error(
                stub.Run(pb.RunRequest(workflow_id=QUICK), timeout=10),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            assert denied_by(error) == "policy.workflow.run.condition"
            records = await audit_records(admin_pb_grpc.PolicyAdminServiceStub(channel))
            # Without a SPIFFE ID the peer is the subject, in RFC 4514 form.
            assert [r.peer for r in records if r.method == "Run"][0] == "CN=reporting,O=acme"
            assert not [r for r in records if r.method == "Run"][0].allowed


async def test_auth_required_without_mtls_still_asks_for_a_token(
    redis: Redis, redis_url: str, ca: Authority
) -> None:
    settings = with_tls(policy_settings(redis_url, mode="required"), ca.server())
    async with started(settings) as sidecar:
        async with OkraClient(
            f"localhost:{sidecar.port}", tls=ClientTls(ca_file=ca.cert)
        ) as client:
            with pytest.raises(UnauthenticatedError, match="bearer token"):
                await client.run(QUICK, None)


async def test_a_rotated_certificate_is_served_without_a_restart(
    redis: Redis, redis_url: str, ca: Authority
) -> None:
    served = ca.folder / "served"
    served.mkdir()
    first = ca.server()
    cert, key = served / "tls.crt", served / "tls.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    settings = replace(make_settings(redis_url), tls=TlsSettings(cert_file=cert, key_file=key))
    renewed = Authority.create(ca.folder / "renewed", "renewed")
    async with started(settings) as sidecar:
        async with secure(sidecar, ca.cert) as kept:
            assert (await list_workflows(kept)).workflows
            # As cert-manager does: new files written beside, then swapped in.
            second = renewed.server()
            for source, target in ((second.key, key), (second.cert, cert)):
                shutil.copy(source, f"{target}.new")
                os.replace(f"{target}.new", target)
            async with secure(sidecar, renewed.cert) as fresh:
                assert (await list_workflows(fresh)).workflows
            assert sidecar.tls is not None and sidecar.tls.reloads == 1
            # The connection made before the rotation is still up and serving.
            assert (await list_workflows(kept)).workflows
        async with secure(sidecar, ca.cert) as stale:
            await expect_rpc_error(list_workflows(stale), grpc.StatusCode.UNAVAILABLE)


async def test_health_port_answers_probes_without_a_certificate(
    redis: Redis, redis_url: str, ca: Authority
) -> None:
    settings = with_tls(make_settings(redis_url), ca.server(), client_ca=ca.cert)
    settings = replace(
        settings, server=ServerSettings(listen="127.0.0.1:0", health_listen="127.0.0.1:0")
    )
    async with started(settings) as sidecar:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Only health is served there: the workflow api stays behind mutual TLS.
            await expect_rpc_error(list_workflows(channel), grpc.StatusCode.UNIMPLEMENTED)


async def _run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is installed with the dev extra")
async def test_grpcurl_with_a_client_certificate(
    redis: Redis, redis_url: str, ca: Authority
) -> None:
    assert GRPCURL is not None
    client = ca.spiffe_client()
    settings = with_tls(make_settings(redis_url), ca.server(), client_ca=ca.cert)
    async with started(settings) as sidecar:
        address = f"localhost:{sidecar.port}"
        tls = ("-cacert", str(ca.cert), "-cert", str(client.cert), "-key", str(client.key))
        code, out = await _run(GRPCURL, *tls, address, "list")
        assert code == 0 and "okra.workflow.v1.WorkflowHostAPI" in out, out
        code, out = await _run(
            GRPCURL, *tls, address, "okra.workflow.v1.WorkflowHostAPI/ListWorkflows"
        )
        assert code == 0 and "tests.forever.1.0.0" in out, out
        code, out = await _run(GRPCURL, "-cacert", str(ca.cert), address, "list")
        assert code != 0, out


async def test_health_command_dials_tls(redis: Redis, redis_url: str, ca: Authority) -> None:
    client = ca.spiffe_client()
    settings = with_tls(make_settings(redis_url), ca.server(), client_ca=ca.cert)
    async with started(settings) as sidecar:
        address = ("--address", f"localhost:{sidecar.port}")
        command = (sys.executable, "-m", "okra_sidecar", "health", *address)
        code, out = await _run(
            *command, "--cacert", str(ca.cert), "--cert", str(client.cert), "--key", str(client.key)
        )
        assert code == 0 and "SERVING" in out, out
        code, out = await _run(*command, "--cacert", str(ca.cert))
        assert code == 1 and "UNAVAILABLE" in out, out
        code, out = await _run(*command, "--cacert", str(ca.cert), "--cert", str(client.cert))
        assert code == 2 and "needs its key" in out, out


async def test_unusable_certificate_files_stop_the_start(redis_url: str, ca: Authority) -> None:
    server, other = ca.server(), ca.server("other")
    mismatched = replace(
        make_settings(redis_url), tls=TlsSettings(cert_file=server.cert, key_file=other.key)
    )
    with pytest.raises(TlsConfigError, match="is not the private key of tlsCertFile"):
        await start_sidecar(mismatched)
    missing = replace(
        make_settings(redis_url),
        tls=TlsSettings(cert_file=server.cert, key_file=server.key, client_ca_file=ca.folder / "x"),
    )
    with pytest.raises(TlsConfigError, match="tlsClientCaFile"):
        await start_sidecar(missing)
