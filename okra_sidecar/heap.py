"""Garbage-collector settings for the long-running processes (`serve` and its engine children).

CPython's cyclic collector runs after every 700 net allocations and, every hundred or so of
those, walks every tracked object. A sidecar has ~100k long-lived objects after start-up
(compiled definitions, jq programs, protobuf descriptors, grpc and redis machinery), and each
rpc or engine turn allocates thousands of short-lived ones, so the full walks alone cost tens
of microseconds per call (measured with `gc.callbacks` over a drained engine backlog).
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "settle_heap"]

# Ten times CPython's default: young cycles are still found within a few thousand
# allocations, and the collector runs a tenth as often.
GEN0_THRESHOLD = 7000


def settle_heap() -> None:
    """Collect once, then exempt everything alive now from future collections.

    Call once start-up is done. `gc.freeze` moves the start-up objects to a generation the
    collector never walks; objects made later are collected as usual.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
