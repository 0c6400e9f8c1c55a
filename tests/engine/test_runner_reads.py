"""EngineRunner's work loop: a short batch makes it linger before the next read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from okra_sidecar.config import EngineSettings
from okra_sidecar.engine.registry import WorkflowRegistry
from okra_sidecar.engine.runner import EngineRunner
from okra_sidecar.store.base import WorkItem


class ReadingStore:
    """Just enough of a store for the work loop: reads hand out `batches`; turns find nothing."""

    def __init__(self, batches: list[int]) -> None:
        self.batches = batches
        self.acked: list[str] = []

    async def read_work(self, consumer: str, *, count: int, block_ms: int) -> list[WorkItem]:
        size = self.batches.pop(0) if self.batches else 0
        return [WorkItem(0, f"{len(self.acked)}-{n}", f"i{n}") for n in range(size)]

    async def load_turn(self, instance_id: str) -> None:
        return None  # a finished or deleted instance: the turn only acknowledges its work

    async def ack_work(self, items: list[WorkItem]) -> None:
        self.acked += [item.entry_id for item in items]


def runner(store: ReadingStore, *, linger_ms: int, concurrency: int = 4) -> EngineRunner:
    fake: Any = store
    return EngineRunner(
        store=fake,
        registry=WorkflowRegistry(store=fake),
        settings=EngineSettings(concurrency=concurrency, read_linger_ms=linger_ms),
        consumer="c",
    )


@pytest.mark.parametrize(
    ("batch", "linger_ms", "waits"),
    [(1, 200, True), (4, 200, False), (0, 200, False), (1, 0, False)],
    ids=["short batch", "full batch", "empty read", "linger off"],
)
async def test_the_next_read_waits_only_after_a_short_batch(
    batch: int, linger_ms: int, waits: bool
) -> None:
    store = ReadingStore([batch])
    engine = runner(store, linger_ms=linger_ms)
    started = time.monotonic()
    await engine._read_once()
    took = time.monotonic() - started
    assert (took >= 0.2) is waits
    await asyncio.sleep(0.05)  # the dispatched turns acknowledge their work
    assert len(store.acked) == batch
