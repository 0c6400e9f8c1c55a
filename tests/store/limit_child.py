"""One step of a sidecar's work on instance limits, then a wait to be killed.

tests/store/test_limit_repair.py runs this as a process of its own and SIGKILLs it at the worst
moment: after a Run's reservation and before its create (`reserve`), or after a relay read a
finished instance's release and before it applied it (`relay`). Each step prints one line when
it is done; `reserve` then creates the instance if it reads `create` on stdin.
"""

from __future__ import annotations

import asyncio
import sys

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.outbox_store import RedisOutboxStore
from okra_sidecar.store.redis_store import RedisStore
from tests.helpers import redis_for
from tests.store.test_redis_store import new

KEYS = RedisKeys(scope="shop")


async def main(url: str, step: str, instance_id: str) -> None:
    redis = redis_for(url)
    store = RedisStore(redis=redis, keys=KEYS)
    if step == "reserve":
        admission = await store.limits.reserve(instance_id, "t.w", max_active=0, max_per_workflow=0)
        print(admission.score, flush=True)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() == "create":
            try:
                await store.create_admitted(new(instance_id), admission)
                print("created", flush=True)
            except StoreUnavailableError:
                print("lapsed", flush=True)
    elif step == "relay":
        outbox = RedisOutboxStore(redis=redis, keys=KEYS)
        entries = await outbox.read("doomed", count=100, block_ms=1000)
        print(len(entries), flush=True)
    await asyncio.sleep(60)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
