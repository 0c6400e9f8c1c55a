"""TaskWorker: polls a sidecar for a service's worker tasks and runs registered handlers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from contextvars import Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format, struct_pb2
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.tls import ClientTls, open_channel
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context

from okra_sidecar.tasks import cancel_and_wait

if TYPE_CHECKING:
    from okra_client.gen.worker.v1.worker_pb2_grpc import TaskWorkerAsyncStub as Stub
else:
    Stub = wpb_grpc.TaskWorkerStub

__all__ = ["TaskContext", "TaskFailedError", "TaskWorker"]

logger = logging.getLogger(__name__)
RUNTIME_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/runtime"
Handler = Callable[..., Awaitable[Any]]


class TaskFailedError(Exception):
    """Raise from a handler to fail the task with this problem (the workflow may catch it)."""

    def __init__(
        self, detail: str, *, status: int = 500, type: str = RUNTIME_ERROR, title: str = ""
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.title = title or "Worker task failed"


@dataclass(frozen=True)
class TaskContext:
    """What a handler may want beside the arguments: ids for idempotency, the attempt."""

    task_id: str
    instance_id: str
    effect_id: str
    function: str
    attempt: int


def _to_python(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


def _to_value(data: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(data, message)
    return message


class TaskWorker:
    """Runs handlers for one service's tasks, at most `concurrency` at once.

    Tasks are delivered at least once: a handler may run again for the same task (the same
    `task_id`) after a crash or a lost lease, so handlers should be idempotent. Heartbeats keep
    the leases of running tasks; `stop()` stops polling, lets running handlers finish (up to
    `grace_s`) and leaves unfinished tasks to other workers.
    """

    def __init__(
        self,
        *,
        target: str,
        service: str,
        worker_id: str | None = None,
        concurrency: int = 8,
        heartbeat_s: float = 5.0,
        channel: grpc.aio.Channel | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.service = service
        self._tls = tls
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._target = target
        self._concurrency = concurrency
        self._heartbeat_s = heartbeat_s
        self._channel = channel
        self._owns_channel = channel is None
        self._handlers: dict[str, Handler] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        # The lease each running task came with: heartbeats must show it.
        self._leases: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._call: Any = None

    def task(self, function: str) -> Callable[[Handler], Handler]:
        """Register `async def handler(arguments[, context])` for `call: <function>`."""

        def register(handler: Handler) -> Handler:
            self._handlers[function] = handler
            return handler

        return register

    async def run(self, *, grace_s: float = 10.0) -> None:
        """Poll and run tasks until stop(); reconnects when the sidecar goes away."""
        if self._channel is None:
            self._channel = open_channel(self._target, self._tls)
        stub: Stub = wpb_grpc.TaskWorkerStub(self._channel)
        beats = asyncio.create_task(self._heartbeats(stub))
        try:
            while not self._stopping.is_set():
                try:
                    await self._poll(stub)
                except grpc.aio.AioRpcError as exc:
                    if self._stopping.is_set():
                        break
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    logger.warning("task stream lost (%s); reconnecting", exc.code().name)
                    await asyncio.sleep(0.5)
        finally:
            await cancel_and_wait([beats])
            running = list(self._running.values())
            if running:
                await asyncio.wait(running, timeout=grace_s)
            await cancel_and_wait(running)
            if self._owns_channel and self._channel is not None:
                await self._channel.close()
                self._channel = None

    def stop(self) -> None:
        """Stop polling; run() returns once running handlers finish."""
        self._stopping.set()
        if self._call is not None:
            self._call.cancel()

    async def _poll(self, stub: Stub) -> None:
        request = wpb.PollTasksRequest(
            service=self.service, worker_id=self.worker_id, max_in_flight=self._concurrency
        )
        self._call = stub.PollTasks(request)
        try:
            async for reply in self._call:
                task = reply.task
                if task.task_id in self._running:
                    continue
                self._leases[task.task_id] = task.lease
                self._running[task.task_id] = asyncio.create_task(self._handle(stub, task))
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise
        finally:
            self._call = None

    async def _handle(self, stub: Stub, task: wpb.Task) -> None:
        trace_token: Token[Context] | None = None
        try:
            handler = self._handlers.get(task.function)
            context = TaskContext(
                task.task_id, task.instance_id, task.effect_id, task.function, task.attempt
            )
            if handler is None:
                await stub.FailTask(
                    wpb.FailTaskRequest(
                        task_id=task.task_id,
                        lease=task.lease,
                        status=501,
                        title="No handler",
                        detail=f"worker {self.worker_id} has no handler for {task.function!r}",
                    )
                )
                return
            arguments = _to_python(task.arguments) if task.HasField("arguments") else None
            # The handler runs in the workflow's trace: spans it makes (with this process's
            # OpenTelemetry setup) continue from the step that enqueued the task.
            trace_token = (
                otel_context.attach(propagate.extract({"traceparent": task.traceparent}))
                if task.traceparent
                else None
            )
            try:
                takes_context = handler.__code__.co_argcount > 1
                result = await (
                    handler(arguments, context) if takes_context else handler(arguments)
                )
            except TaskFailedError as exc:
                await stub.FailTask(
                    wpb.FailTaskRequest(
                        task_id=task.task_id,
                        lease=task.lease,
                        type=exc.type,
                        status=exc.status,
                        title=exc.title,
                        detail=exc.detail,
                    )
                )
                return
            except Exception as exc:
                logger.exception("task %s (%s) failed", task.task_id, task.function)
                await stub.FailTask(
                    wpb.FailTaskRequest(
                        task_id=task.task_id,
                        lease=task.lease,
                        detail=f"{type(exc).__name__}: {exc}",
                    )
                )
                return
            await stub.CompleteTask(
                wpb.CompleteTaskRequest(
                    task_id=task.task_id, lease=task.lease, result=_to_value(result)
                )
            )
        except grpc.aio.AioRpcError as exc:
            # The outcome did not reach the sidecar: the lease runs out and the task comes back.
            logger.warning("task %s: could not report its outcome (%s)", task.task_id, exc)
        finally:
            self._running.pop(task.task_id, None)
            self._leases.pop(task.task_id, None)
            if trace_token is not None:
                otel_context.detach(trace_token)

    async def _heartbeats(self, stub: Stub) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if not self._running:
                continue
            try:
                task_ids = list(self._running)
                request = wpb.HeartbeatRequest(
                    worker_id=self.worker_id,
                    task_ids=task_ids,
                    leases=[self._leases[task_id] for task_id in task_ids],
                )
                reply = await stub.Heartbeat(request)
            except grpc.aio.AioRpcError as exc:
                logger.warning("heartbeat failed: %s", exc.code().name)
                continue
            lost = set(self._running) - set(reply.held_task_ids)
            for task_id in lost:
                logger.warning("task %s lease lost; another worker has it now", task_id)
