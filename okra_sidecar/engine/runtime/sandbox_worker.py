"""The expression sandbox's worker process (engine/runtime/sandbox.py): jq, one line at a time.

Reads `{"text": jq source, "data": value}` lines on standard input and answers each with
`{"value": first output}` or `{"error": message}` on standard output, until its input ends.
Its parent kills it when an answer is late; a capped data segment makes jq's allocations fail
here (jq then aborts the process) rather than exhaust the host.

    python -m okra_sidecar.engine.runtime.sandbox_worker MEMORY_MB
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

from okra_sidecar.engine.definitions.expressions import ExpressionError, compile_expression
from okra_sidecar.engine.runtime.memory import limit_memory, refuse_core_dumps
from okra_sidecar.store.embedded import terminate_with_parent


def answer(line: bytes) -> dict[str, Any]:
    request = json.loads(line)
    try:
        expression = compile_expression(str(request["text"]), bare=True)
        return {"value": expression.evaluate(request.get("data"), {})}
    except ExpressionError as exc:
        return {"error": exc.message}


def main(argv: list[str]) -> int:
    # SIGKILL: an evaluation that never ends never runs a SIGTERM handler.
    terminate_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    limit_memory(int(argv[0]) if argv else 0)
    refuse_core_dumps()
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        out.write(json.dumps(answer(line)).encode() + b"\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
