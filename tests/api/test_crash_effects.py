"""SIGKILL a sidecar in the middle of outside work: an HTTP call, a fork of calls, a retry
backoff and a worker task. After a restart every instance completes exactly once, and every
worker task reached the worker at least once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.worker import TaskContext, TaskWorker
from tests.api.test_process import channel_to, completions, free_port, start_process
from tests.helpers import Stub, eventually, to_python, value, wait_for_status

pytestmark = pytest.mark.slow
DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}
HEADER = "document: {dsl: '1.0.0', namespace: crash, name: %s, version: '1.0.0'}\n"
WORKFLOWS = {
    "http": """
do:
  - fetch:
      call: http
      with: {method: get, endpoint: 'http://slow.test/slow/{n}'}
  - finish:
      set: {n: '${ $workflow.input.n }', got: '${ .slow }'}
""",
    "fork": """
do:
  - both:
      fork:
        branches:
          - left:
              call: http
              with: {method: get, endpoint: 'http://slow.test/slow/left'}
          - right:
              call: http
              with: {method: get, endpoint: 'http://slow.test/slow/right'}
  - finish:
      set: {n: '${ $workflow.input.n }'}
""",
    "retry": """
do:
  - attempt:
      try:
        - flaky:
            call: http
            with: {method: get, endpoint: 'http://slow.test/flaky/{n}'}
      catch:
        errors:
          with: {status: 503}
        retry:
          delay: {seconds: 1}
          limit:
            attempt: {count: 5}
  - finish:
      set: {n: '${ $workflow.input.n }'}
""",
    "work": """
do:
  - work:
      call: crash-work
      with: {n: '${ .n }'}
  - finish:
      set: {n: '${ $workflow.input.n }', result: '${ .done }'}
""",
}
PER_KIND = 6


class SlowServer:
    """`/slow/*` answers after a delay; `/flaky/<n>` fails with 503 the first time for each n."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.requests[self.path] += 1
                    count = server.requests[self.path]
                body: dict[str, Any]
                if self.path.startswith("/slow/"):
                    time.sleep(2.0)
                    status, body = 200, {"slow": True}
                elif self.path.startswith("/flaky/") and count == 1:
                    status, body = 503, {"retry": "later"}
                else:
                    status, body = 200, {"ok": True}
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler


@contextmanager
def slow_server() -> Iterator[tuple[SlowServer, str]]:
    state = SlowServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    server.daemon_threads = True
    # Replies to the killed sidecar fail with a broken pipe; that is the point, not news.
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_workflows(folder: Path) -> None:
    for name, body in WORKFLOWS.items():
        (folder / f"{name}.yaml").write_text(HEADER % name + body)


async def start(redis_url: str, port: int, folder: Path, stand_in: str) -> Any:
    env = {"OKRA_TASK_LEASE_MS": "1000", "OKRA_HTTP_HOSTS": f"slow.test={stand_in}"}
    return await start_process(redis_url, port, workflows=folder, env=env)


async def test_sigkill_mid_effects_completes_every_instance_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    write_workflows(tmp_path)
    port = free_port()
    worked: Counter[int] = Counter()
    with slow_server() as (server, address):
        first = await start(redis_url, port, tmp_path, address)
        worker = TaskWorker(target=f"127.0.0.1:{port}", service="crash", heartbeat_s=0.3)

        @worker.task("crash-work")
        async def crash_work(arguments: Any, context: TaskContext) -> Any:
            worked[int(arguments["n"])] += 1
            await asyncio.sleep(1.5)  # the sidecar dies while this runs
            return {"done": arguments["n"]}

        running_worker = asyncio.create_task(worker.run())
        second = None
        try:
            ids: dict[str, list[str]] = {}
            async with channel_to(port) as stub:
                for kind in WORKFLOWS:
                    ids[kind] = [
                        (
                            await stub.Run(
                                pb.RunRequest(
                                    workflow_id=f"crash.{kind}.1.0.0", input=value({"n": n})
                                )
                            )
                        ).instance_id
                        for n in range(PER_KIND)
                    ]

                # Kill once calls are in flight, backoffs are pending and tasks are held.
                async def in_flight() -> bool:
                    slow = sum(v for k, v in server.requests.items() if k.startswith("/slow/"))
                    flaky = sum(v for k, v in server.requests.items() if k.startswith("/flaky/"))
                    return slow >= PER_KIND and flaky >= PER_KIND and len(worked) >= 1

                await eventually(in_flight, timeout_s=30, what="calls and tasks in flight")
            first.kill()
            await first.wait()
            second = await start(redis_url, port, tmp_path, address)
            # A channel of its own: the worker's, still backing off from the dead process,
            # would otherwise lend this one its connection failure.
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = Stub(channel)
                for kind, instance_ids in ids.items():
                    for n, instance_id in enumerate(instance_ids):
                        done = await wait_for_status(stub, instance_id, DONE, timeout_s=30)
                        assert done.status == pb.WORKFLOW_STATUS_COMPLETED, (kind, done.error)
                        assert to_python(done.output)["n"] == n
            for instance_ids in ids.values():
                for instance_id in instance_ids:
                    assert await completions(redis, instance_id) == 1
            # Every worker task reached the worker, some maybe twice; none was lost.
            assert set(worked) == set(range(PER_KIND))
        finally:
            worker.stop()
            await asyncio.wait_for(running_worker, timeout=10)
            for process in (first, second):
                if process is not None and process.returncode is None:
                    process.terminate()
                    await process.wait()
