"""The partitions' outboxes: what the relay reads it acknowledges and deletes, per partition."""

from __future__ import annotations

from redis.asyncio import Redis

from okra_sidecar.store.keys import RELAY_GROUP, RedisKeys
from okra_sidecar.store.outbox_store import RELEASE, RedisOutboxStore

KEYS = RedisKeys()


async def test_ack_removes_what_was_read_from_every_partition(redis: Redis) -> None:
    outbox = RedisOutboxStore(redis=redis, keys=KEYS)
    await outbox.ensure_groups()
    # Three entries in partition 0, two in 5, one in 7 (each partition its own slot).
    placed = {0: 3, 5: 2, 7: 1}
    for partition, count in placed.items():
        for n in range(count):
            fields = {"k": RELEASE, "i": f"id-{partition}-{n}", "s": "", "w": "t.w"}
            await redis.xadd(KEYS.outbox(partition), fields)  # type: ignore[arg-type]
    await redis.xadd(KEYS.outbox(1), {"k": RELEASE, "i": "unread", "s": "", "w": "t.w"})
    read = await outbox.read("relay-1", count=100, block_ms=100)
    read = [entry for entry in read if entry.partition != 1]
    # On a Cluster one read answers as soon as a partition has entries: read until all came.
    for _ in range(10):
        if len(read) == sum(placed.values()):
            break
        more = await outbox.read("relay-1", count=100, block_ms=100)
        read += [entry for entry in more if entry.partition != 1]
    assert sorted(e.instance_id for e in read) == sorted(
        f"id-{p}-{n}" for p, count in placed.items() for n in range(count)
    )

    await outbox.ack(read)

    for partition in placed:
        stream = KEYS.outbox(partition)
        assert await redis.xlen(stream) == 0
        assert (await redis.xpending(stream, RELAY_GROUP))["pending"] == 0
    # What was not acknowledged stays: the entry of partition 1 (read or not).
    assert await redis.xlen(KEYS.outbox(1)) == 1
