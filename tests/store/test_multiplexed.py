"""MultiplexedRedis against the real redis-server: replies, pipelining, errors, losses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from okra_sidecar.store.multiplexed import MultiplexedRedis, encode_command
from okra_sidecar.store.urls import RedisAddress, parse_redis_url

# The client of one Redis node; test_cluster_commands.py runs its Cluster counterpart.
pytestmark = pytest.mark.single_store

Connect = Callable[..., MultiplexedRedis]
BLOCKED_WAIT_S = 5.0


@pytest_asyncio.fixture
async def connect(redis: Redis, redis_url: str) -> AsyncIterator[Connect]:
    """Builds clients on the flushed test Redis (or another URL) and closes them after."""
    clients: list[MultiplexedRedis] = []

    def build(
        url: str = redis_url,
        *,
        socket_timeout: float = 10.0,
        socket_connect_timeout: float = 2.0,
    ) -> MultiplexedRedis:
        clients.append(
            MultiplexedRedis(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
            )
        )
        return clients[-1]

    yield build
    for client in clients:
        await client.aclose()


async def wait_until_blocked(redis: Redis, count: int = 1) -> None:
    """Poll until `count` clients sit in a blocking command: Redis has no event to await."""
    deadline = asyncio.get_running_loop().time() + BLOCKED_WAIT_S
    while True:
        if (await redis.info("clients"))["blocked_clients"] >= count:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"fewer than {count} clients blocked after {BLOCKED_WAIT_S} s")
        await asyncio.sleep(0.005)


def with_credentials(url: str, userinfo: str, db: int) -> str:
    """The test URL with `user:password@` and `?db=N` put in."""
    parts = urlsplit(url)
    netloc = f"{userinfo}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc, query=f"db={db}"))


async def test_replies_of_each_type(connect: Connect) -> None:
    client = connect()
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("SET", "k", "é") == b"OK"
    assert await client.execute("GET", b"k") == "é".encode()
    assert await client.execute("GET", "missing") is None
    assert await client.execute("INCRBY", "n", 41) == 41
    assert await client.execute("INCRBYFLOAT", "f", 1.5) == b"1.5"
    assert await client.execute("HSET", "h", "a", "1", "b", "") == 2
    assert await client.execute("HMGET", "h", "a", "b", "c") == [b"1", b"", None]
    assert await client.execute("LRANGE", "missing", 0, -1) == []
    nested = await client.execute("EVAL", "return {1, {'x', {2}}, 'y'}", 0)
    assert nested == [1, [b"x", [2]], b"y"]
    # Larger than any one read, so the reply arrives in many chunks.
    big = bytes(range(256)) * 8192
    await client.execute("SET", "big", big)
    assert await client.execute("GET", "big") == big


async def test_concurrent_callers_get_their_own_replies(connect: Connect, redis: Redis) -> None:
    client = connect()

    async def call(i: int) -> tuple[Any, ...]:
        key = f"k:{i}"
        await client.execute("SET", key, f"v:{i}")
        error: Exception | None = None
        if i % 50 == 0:
            try:
                await client.execute("HMGET", key, "x")
            except redis_errors.ResponseError as exc:
                error = exc
        return (
            await client.execute("GET", key),
            error,
            await client.execute("INCR", f"n:{i % 7}"),
            await client.execute("CLIENT", "ID"),
        )

    results = await asyncio.gather(*(call(i) for i in range(500)))
    assert [r[0] for r in results] == [f"v:{i}".encode() for i in range(500)]
    assert [i for i, r in enumerate(results) if r[1] is not None] == list(range(0, 500, 50))
    # Each counter's INCR replies are exactly 1..n, whatever order the callers ran in.
    for rest in range(7):
        replies = sorted(r[2] for i, r in enumerate(results) if i % 7 == rest)
        assert replies == list(range(1, len(range(rest, 500, 7)) + 1))
    assert int(await redis.get("n:0") or 0) == len(range(0, 500, 7))
    # 500 callers, one lazy connect, one connection.
    assert len({r[3] for r in results}) == 1


async def test_concurrent_callers_with_wrongtype_are_told_apart(connect: Connect) -> None:
    client = connect()
    await client.execute("SET", "s", "1")
    calls = [
        client.execute("LPUSH", "s", "x") if i % 2 else client.execute("GET", "s")
        for i in range(100)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, redis_errors.ResponseError)
            assert str(result).startswith("WRONGTYPE")
        else:
            assert result == b"1"


async def test_error_reply_leaves_the_connection_usable(connect: Connect) -> None:
    client = connect()
    await client.execute("SET", "s", "1")
    with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE"):
        await client.execute("LPUSH", "s", "x")
    with pytest.raises(redis_errors.ResponseError, match="unknown command"):
        await client.execute("NOSUCHCOMMAND")
    with pytest.raises(redis_errors.NoScriptError):
        await client.execute("EVALSHA", "0" * 40, 0)
    assert await client.execute("GET", "s") == b"1"


async def test_evalsha_loads_an_unknown_script_and_retries(connect: Connect, redis: Redis) -> None:
    client = connect()
    await client.execute("SCRIPT", "FLUSH")
    script = client.script("return {KEYS[1], ARGV[1], #KEYS}")
    assert await client.evalsha(script, keys=["k"], args=[7]) == [b"k", b"7", 1]
    assert await client.execute("SCRIPT", "EXISTS", script.sha) == [1]
    assert await client.evalsha(script, keys=["k2"], args=[b"b"]) == [b"k2", b"b", 1]
    # redis-py's own script objects work too, with the same sha.
    await client.execute("SCRIPT", "FLUSH")
    registered = redis.register_script("return ARGV[1]")
    assert await client.evalsha(registered, args=["x"]) == b"x"


async def test_cancelled_caller_does_not_shift_replies(connect: Connect, redis: Redis) -> None:
    client = connect()
    await client.execute("SET", "x", "mine")
    blocked = asyncio.create_task(client.execute("BLPOP", "q", 5))
    await wait_until_blocked(redis)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    # Releases the BLPOP: its reply arrives and must be dropped, not handed to the GET.
    await redis.rpush("q", "item")
    assert await client.execute("GET", "x") == b"mine"
    assert await redis.llen("q") == 0


async def test_cancelling_some_of_many_pending_callers(connect: Connect, redis: Redis) -> None:
    client = connect()
    for i in range(60):
        await client.execute("SET", f"k:{i}", i)
    # The BLPOP holds back every later reply, so all the GETs are pending when some cancel.
    head = asyncio.create_task(client.execute("BLPOP", "q", 5))
    await wait_until_blocked(redis)
    gets = [asyncio.create_task(client.execute("GET", f"k:{i}")) for i in range(60)]
    await asyncio.sleep(0)  # Let each task queue its GET before some are cancelled.
    for task in gets[::3]:
        task.cancel()
    await redis.rpush("q", "go")
    assert await head == [b"q", b"go"]
    for i, task in enumerate(gets):
        if i % 3 == 0:
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            assert await task == str(i).encode()


async def test_connection_loss_fails_pending_calls_then_reconnects(
    connect: Connect, redis: Redis
) -> None:
    client = connect()
    first_id = await client.execute("CLIENT", "ID")
    pending = asyncio.create_task(client.execute("BLPOP", "q", 5))
    await wait_until_blocked(redis)
    assert await redis.client_kill_filter(_type="normal", skipme=True) >= 1
    with pytest.raises(redis_errors.ConnectionError, match="lost"):
        await pending
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("CLIENT", "ID") != first_id


async def test_late_reply_times_out_and_drops_the_connection(
    connect: Connect, redis: Redis
) -> None:
    client = connect(socket_timeout=0.2)
    first_id = await client.execute("CLIENT", "ID")
    slow = asyncio.create_task(client.execute("BLPOP", "q", 5))
    behind = asyncio.create_task(client.execute("PING"))
    with pytest.raises(redis_errors.TimeoutError, match="no reply"):
        await slow
    with pytest.raises(redis_errors.ConnectionError, match="timed out"):
        await behind
    assert await client.execute("CLIENT", "ID") != first_id


async def test_aclose_fails_pending_calls_and_later_ones(connect: Connect, redis: Redis) -> None:
    client = connect()
    pending = asyncio.create_task(client.execute("BLPOP", "q", 5))
    await wait_until_blocked(redis)
    await client.aclose()
    with pytest.raises(redis_errors.ConnectionError, match="closed"):
        await pending
    with pytest.raises(redis_errors.ConnectionError, match="closed"):
        await client.execute("PING")


async def test_url_credentials_and_db_are_sent_on_connect(
    connect: Connect, redis: Redis, redis_url: str
) -> None:
    admin = connect()
    await admin.execute("ACL", "SETUSER", "okra-mux", "on", ">s3cret", "~*", "+@all")
    try:
        client = connect(with_credentials(redis_url, "okra-mux:s3cret", db=2))
        info = await client.execute("CLIENT", "INFO")
        assert b" db=2 " in info and b" user=okra-mux " in info
        wrong = connect(with_credentials(redis_url, "okra-mux:wrong", db=2))
        with pytest.raises(redis_errors.AuthenticationError):
            await wrong.execute("PING")
    finally:
        await admin.execute("ACL", "DELUSER", "okra-mux")


async def test_unreachable_server_raises_connection_error(connect: Connect) -> None:
    # Construction does not connect; the first call does, and says where it tried.
    missing = connect("unix:///nonexistent/okra/redis.sock")
    with pytest.raises(redis_errors.ConnectionError, match="/nonexistent/okra/redis.sock"):
        await missing.execute("PING")
    refused = connect("redis://127.0.0.1:1/0")
    with pytest.raises(redis_errors.ConnectionError, match="127.0.0.1:1"):
        await refused.execute("PING")


@dataclass
class ConnectSpy:
    """The loop's connects, slowed down: each waits for `gate` (or one loop iteration)."""

    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    made: list[Any] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> ConnectSpy:
        loop = asyncio.get_running_loop()
        for name in ("create_unix_connection", "create_connection"):

            async def connect(*args: Any, _name: str = name, **kwargs: Any) -> Any:
                self.made.append(None)
                self.entered.set()
                await (self.gate.wait() if self.gate is not None else asyncio.sleep(0))
                self.made[-1] = await getattr(type(loop), _name)(loop, *args, **kwargs)
                return self.made[-1]

            monkeypatch.setattr(loop, name, connect)
        return self


async def test_callers_share_one_connect_attempt(
    connect: Connect, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = ConnectSpy().install(monkeypatch).made
    missing = connect("unix:///nonexistent/okra/redis.sock")
    results = await asyncio.gather(
        *(missing.execute("PING") for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, redis_errors.ConnectionError) for r in results)
    assert len(attempts) == 1
    with pytest.raises(redis_errors.ConnectionError):
        await missing.execute("PING")
    assert len(attempts) == 2, "a later call tries again"
    live = connect(redis_url)
    assert await asyncio.gather(*(live.execute("PING") for _ in range(20))) == [b"PONG"] * 20
    assert len(attempts) == 3


async def test_aclose_during_connect_leaves_no_connection(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ConnectSpy(gate=asyncio.Event()).install(monkeypatch)
    client = connect()
    call = asyncio.create_task(client.execute("PING"))
    await spy.entered.wait()
    await client.aclose()
    assert spy.gate is not None
    spy.gate.set()
    with pytest.raises(redis_errors.ConnectionError, match="closed"):
        await call
    transport, _ = spy.made[0]
    assert transport.is_closing()


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://localhost:6380/2", RedisAddress(host="localhost", port=6380, db=2)),
        ("redis://10.0.0.5", RedisAddress(host="10.0.0.5")),
        ("redis://h:7000/1?db=4", RedisAddress(host="h", port=7000, db=4)),
        (
            "redis://me:p%40ss@h:7000",
            RedisAddress(host="h", port=7000, username="me", password="p@ss"),
        ),
        ("unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
        ("unix:///tmp/a%3Fb.sock?db=3", RedisAddress(path="/tmp/a?b.sock", db=3)),
        ("unix://:pw@/run/redis.sock", RedisAddress(path="/run/redis.sock", password="pw")),
    ],
)
def test_parse_redis_url(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost", "scheme must be redis://, rediss:// or unix://"),
        ("localhost:6379", "scheme must be redis://, rediss:// or unix://"),
        ("rediss://localhost?ssl_cert_reqs=maybe", "ssl_cert_reqs must be none, optional"),
        ("rediss://localhost?ssl_ca_certs=/nonexistent/ca.pem", "cannot load its TLS files"),
        ("unix://", "needs a socket path"),
        ("redis://h:99999", "bad port"),
        ("redis://h:port", "bad port"),
        ("redis://h/zero", "db must be a number, not 'zero'"),
        ("unix:///run/redis.sock?db=-1", "db must be a number"),
    ],
)
def test_bad_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiplexedRedis(url)


def test_password_stays_out_of_the_repr() -> None:
    assert "s3cret" not in repr(parse_redis_url("redis://u:s3cret@h"))


def test_encode_command() -> None:
    encoded = encode_command(("SET", memoryview(b"k\r\n"), 12, 1.5, "é"))
    assert (
        encoded == b"*5\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$3\r\n1.5\r\n$2\r\n\xc3\xa9\r\n"
    )
    with pytest.raises(redis_errors.DataError, match="bool"):
        encode_command(("SET", "k", True))
