"""`python -m bench.engine_turns`: CPU instructions of the engine child per instance, counted
by callgrind with the engine taking one turn at a time.

bench.instructions counts the engine child's first turn of W1's Runs with 64 turns in
flight: how many work items each read and each pipelined write serve depends on how fast
the Runs arrive, so that count moves with the machine's load. Here the engine takes one turn
at a time (engineConcurrency 1): each turn costs its own read, load and commit whatever the
pace, and the count per instance repeats within a few percent from run to run. It counts
the engine child while `count` instances of W2's workflow (`bench.steps`: one turn each) or
W3's (`bench.approve`: a Run, then a Signal: two turns) run to their end, after
WARM_UP_INSTANCES uncounted ones. The serving process, redis-server and the client are not
counted; the engine child's background loops (timers, heartbeats, orphan claims) are, for
the window's length. Needs valgrind, as bench.instructions does.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.cpu import CpuMeter, child_pids, process_name
from bench.instructions import START_TIMEOUT_S, callgrind_launcher, counted
from bench.processes import sidecar_process
from bench.workloads import APPROVE, STEPS, Client, run_to_the_end

__all__ = ["WORKFLOWS", "measure"]

# The workflows counted, by the name --workflow takes: W2's and W3's.
WORKFLOWS = {"steps": STEPS, "approve": APPROVE}
WARM_UP_INSTANCES = 50
COUNT = 300
# Calls in flight from the client: the engine still takes one turn at a time.
CONCURRENCY = 16


async def measure(workflow: str, count: int, *, warm_up: int = WARM_UP_INSTANCES) -> float:
    """The engine child's instructions per instance of `workflow` (a name of WORKFLOWS)."""
    workflow_id = WORKFLOWS[workflow]
    env = {
        # One engine child, the one counted, taking one turn at a time: no spare, no slow lane.
        "OKRA_ENGINE_PROCESSES": "1",
        "OKRA_ENGINE_SPARE": "false",
        "OKRA_SLOW_EXPRESSION_MS": "0",
        "OKRA_ENGINE_CONCURRENCY": "1",
    }
    with tempfile.TemporaryDirectory(prefix="okra-engine-turns-") as scratch:
        work_dir = Path(scratch)
        out_dir = work_dir / "callgrind"
        out_dir.mkdir()
        async with (
            sidecar_process(
                work_dir,
                env=env,
                launcher=callgrind_launcher(out_dir),
                start_timeout_s=START_TIMEOUT_S,
            ) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            [engine] = [pid for pid in child_pids(server.pid) if "redis" not in process_name(pid)]
            client = Client(
                stub=pb_grpc.WorkflowHostAPIStub(channel),
                meter=CpuMeter.for_process(server.pid),
                concurrency=CONCURRENCY,
            )
            await run_to_the_end(client, workflow_id, warm_up)
            [instructions] = await counted(
                out_dir, [engine], lambda: run_to_the_end(client, workflow_id, count)
            )
    return instructions / count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_turns", description=__doc__)
    parser.add_argument("--workflow", choices=sorted(WORKFLOWS), default="steps")
    parser.add_argument("--count", type=int, default=COUNT, help="counted instances (300)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("error: valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    per_instance = asyncio.run(measure(args.workflow, args.count))
    name = WORKFLOWS[args.workflow]
    print(f"{name}: engine child {per_instance / 1e6:.3f} M instructions per instance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
