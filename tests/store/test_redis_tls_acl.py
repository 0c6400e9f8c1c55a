"""rediss:// (TLS) and an ACL user with a password, for the store's clients and a whole sidecar.

The redis-server the project ships is built without TLS, so a TLS proxy on loopback, with a
certificate from a test CA, stands in front of it; the Redis protocol inside is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from okra_sidecar.store.multiplexed import MultiplexedRedis
from okra_sidecar.store.urls import parse_redis_url
from tests.helpers import make_settings, running_sidecar
from tests.pki import Authority

# A TLS proxy stands in front of one node (the Cluster with an ACL user is in
# test_cluster_commands.py).
pytestmark = pytest.mark.single_store

USER = "okra-app"
PASSWORD = "pa ss/wörd"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture
async def tls_redis(
    redis: Redis, redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[str, Path]]:
    """A TLS endpoint on 127.0.0.1 in front of the test Redis: its rediss:// URL and CA file."""
    ca = Authority.create(tmp_path / "pki")
    pair = ca.server()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    target = parse_redis_url(redis_url)
    tasks: set[asyncio.Task[None]] = set()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if target.path is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(target.path)
        else:
            up_reader, up_writer = await asyncio.open_connection(target.host, target.port)
        for task in (
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"rediss://127.0.0.1:{port}", ca.cert
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@pytest_asyncio.fixture
async def acl_user(redis: Redis) -> AsyncIterator[None]:
    """An ACL user with a password (the default user stays open for the fixtures)."""
    await redis.acl_setuser(
        USER,
        enabled=True,
        passwords=[f"+{PASSWORD}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    try:
        yield
    finally:
        await redis.acl_deluser(USER)


async def test_the_multiplexed_client_speaks_tls(tls_redis: tuple[str, Path]) -> None:
    url, ca = tls_redis
    client = MultiplexedRedis(f"{url}?ssl_ca_certs={quote(str(ca))}")
    try:
        assert await client.pipeline([("SET", "tls", "on"), ("GET", "tls")]) == [b"OK", b"on"]
    finally:
        await client.aclose()


async def test_a_server_certificate_nobody_vouches_for_is_refused(
    tls_redis: tuple[str, Path],
) -> None:
    url, _ = tls_redis
    client = MultiplexedRedis(url)  # The system's CAs do not know the test CA.
    try:
        with pytest.raises(redis_errors.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.execute("PING")
    finally:
        await client.aclose()
    unchecked = MultiplexedRedis(f"{url}?ssl_cert_reqs=none")
    try:
        assert await unchecked.execute("PING") == b"PONG"
    finally:
        await unchecked.aclose()


async def test_an_acl_user_and_password_from_the_url(acl_user: None, redis_url: str) -> None:
    target = parse_redis_url(redis_url)
    where = f"unix://{quote(USER)}:{quote(PASSWORD, safe='')}@{target.path}"
    if target.path is None:
        where = f"redis://{quote(USER)}:{quote(PASSWORD, safe='')}@{target.host}:{target.port}"
    client = MultiplexedRedis(where)
    try:
        assert await client.execute("ACL", "WHOAMI") == USER.encode()
    finally:
        await client.aclose()
    wrong = MultiplexedRedis(where.replace(quote(PASSWORD, safe=""), "nope"))
    try:
        with pytest.raises(redis_errors.AuthenticationError):
            await wrong.execute("PING")
    finally:
        await wrong.aclose()


async def test_a_sidecar_runs_over_tls_as_an_acl_user(
    tls_redis: tuple[str, Path], acl_user: None
) -> None:
    url, ca = tls_redis
    secured = (
        url.replace("rediss://", f"rediss://{quote(USER)}:{quote(PASSWORD, safe='')}@")
        + f"/0?ssl_ca_certs={quote(str(ca))}"
    )
    async with running_sidecar(make_settings(secured)) as (_, stub):
        run = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=run.instance_id))
        assert status.instance_id == run.instance_id
