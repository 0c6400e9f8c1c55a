"""A small Python worker for the sidecar's TaskWorker API.

    worker = TaskWorker(target="127.0.0.1:50051", service="orders")

    @worker.task("charge")
    async def charge(arguments: dict) -> dict:
        return {"charged": arguments["amount"]}

    await worker.run()  # until worker.stop()

See docs/workers.md for the protocol, to write a worker in any language.
"""

from __future__ import annotations

from okra_sidecar.worker.worker import TaskContext, TaskFailedError, TaskWorker

__all__ = ["TaskContext", "TaskFailedError", "TaskWorker"]
