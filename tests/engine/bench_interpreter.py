"""Micro-benchmark of advance() on a three-`set` workflow (run by hand, not a test)."""

from __future__ import annotations

import statistics
import time

from okra_sidecar.engine.definitions.dsl import load_definition_text
from okra_sidecar.engine.interpreter.interpreter import advance, start_state

DEFINITIONS = {
    "jq": """
document: {dsl: '1.0.0', namespace: bench, name: steps, version: '1.0.0'}
do:
  - first:
      set:
        n: ${ .n + 1 }
  - second:
      set:
        n: ${ .n * 10 }
  - third:
      set:
        n: ${ .n + 2 }
        done: true
""",
    "paths": """
document: {dsl: '1.0.0', namespace: bench, name: three-paths, version: '1.0.0'}
do:
  - pick:
      set:
        order: ${ .order }
        customer: ${ .order.customer }
  - label:
      set:
        label: shipping
        customer: ${ .customer }
  - done:
      set:
        done: true
        who: ${ .customer.name }
""",
}


def main(rounds: int = 5, turns: int = 4000) -> None:
    for label, text in DEFINITIONS.items():
        definition = load_definition_text(text, source=f"{label}.yaml")
        workflow_input = {"n": 1, "order": {"id": 7, "customer": {"name": "Ada"}}}
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(turns):
                state = start_state(
                    definition, instance_id=str(i), workflow_input=workflow_input, now_ms=1
                )
                advance(definition, state, signals=(), now_ms=1)
            samples.append((time.perf_counter() - start) / turns * 1e6)
        print(f"{label}: {statistics.median(samples):.1f} µs per turn (start_state + advance)")
        state = start_state(definition, instance_id="x", workflow_input=workflow_input, now_ms=1)
        result = advance(definition, state, signals=(), now_ms=1)
        print(f"  {result.outcome.value}: {result.output}")


if __name__ == "__main__":
    main()
