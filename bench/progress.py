"""Sparse progress polling: is any instance of a workflow still in one of some statuses?"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from okra_client.gen.workflow.v1 import workflow_pb2 as pb

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub

POLL_INTERVAL_S = 0.2
MIN_TIMEOUT_S = 60.0
# Generous: even a slow shared machine finishes 20 instances a second.
TIMEOUT_PER_INSTANCE_S = 0.05


class ProgressTimeoutError(TimeoutError):
    """Instances stayed in a status longer than the workload allows."""


async def any_in(
    stub: WorkflowHostAPIAsyncStub,
    workflow_id: str,
    statuses: Iterable[pb.WorkflowStatus.ValueType],
) -> bool:
    """True while an instance of `workflow_id` is in one of `statuses`.

    One Query with limit 1: the sidecar re-checks each record, so the answer is exact. The
    sidecar may stop a sparse scan early with a cursor and no instances; follow it.
    """
    request = pb.QueryRequest(workflow_id=workflow_id, status=list(statuses), limit=1)
    while True:
        page = await stub.Query(request)
        if page.instances:
            return True
        if not page.cursor:
            return False
        request.cursor = page.cursor


async def wait_until_none(
    stub: WorkflowHostAPIAsyncStub,
    workflow_id: str,
    statuses: Iterable[pb.WorkflowStatus.ValueType],
    *,
    count: int = 0,
) -> None:
    """Poll every POLL_INTERVAL_S until no instance of `workflow_id` is in `statuses`.

    Raises:
        ProgressTimeoutError: after a time that grows with `count`, the instances to wait for.
    """
    wanted = tuple(statuses)
    timeout_s = max(MIN_TIMEOUT_S, count * TIMEOUT_PER_INSTANCE_S)
    deadline = time.monotonic() + timeout_s
    while await any_in(stub, workflow_id, wanted):
        if time.monotonic() > deadline:
            names = ", ".join(pb.WorkflowStatus.Name(s) for s in wanted)
            raise ProgressTimeoutError(
                f"instances of {workflow_id} still {names} after {timeout_s:.0f}s"
            )
        await asyncio.sleep(POLL_INTERVAL_S)
