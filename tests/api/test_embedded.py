"""With no Redis URL the sidecar runs its own redis-server, and its data survives a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.config import RedisSettings
from tests.helpers import make_settings, running_sidecar, to_python, value, wait_for_status


async def test_embedded_redis_keeps_instances_across_restarts(tmp_path: Path) -> None:
    settings = replace(make_settings("unused"), redis=RedisSettings(url=None, data_dir=tmp_path))
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.embedded is not None
        assert sidecar.redis_url.startswith("unix://")
        run = await stub.Run(
            pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 3}))
        )
        await wait_for_status(stub, run.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    assert (tmp_path / "redis" / "appendonly.aof").exists()

    async with running_sidecar(settings) as (_, stub):
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=run.instance_id))
        assert status.status == pb.WORKFLOW_STATUS_WAITING
        await stub.Signal(
            pb.SignalRequest(
                instance_id=run.instance_id, signal="approve", payload=value({"by": "x"})
            )
        )
        done = await wait_for_status(stub, run.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert to_python(done.output) == {"amount": 3, "approvedBy": "x"}
