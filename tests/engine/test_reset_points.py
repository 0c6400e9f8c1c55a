"""Reset points: what a turn notes at each top-level task, and the state Reset builds from it."""

from __future__ import annotations

from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, advance
from okra_sidecar.engine.interpreter.redrive import reset_state, top_level_tasks

from .support import T0, begin, run, task_events, workflow

STEPS = """
do:
  - first:
      set: {n: '${ .n + 1 }'}
      export: {as: '${ {seen: .n} }'}
  - inner:
      do:
        - a: {set: {n: '${ .n * 10 }'}}
        - b: {set: {n: '${ .n + 1 }', seen: '${ $context.seen }'}}
  - skipped:
      if: '${ false }'
      set: {never: true}
  - last: {set: {n: '${ .n + 2 }', seen: '${ .seen }'}}
"""


def test_a_turn_notes_each_top_level_task_once_with_its_data_and_context() -> None:
    definition = workflow(STEPS)
    done = run(definition, {"n": 1})
    assert done.outcome is TurnOutcome.COMPLETED
    # Nested tasks are not reset points; a task skipped by its `if` was reached all the same.
    assert list(done.reached) == ["/do/0/first", "/do/1/inner", "/do/2/skipped", "/do/3/last"]
    assert done.reached["/do/0/first"] == {"data": {"n": 1}, "context": {}}
    assert done.reached["/do/1/inner"] == {"data": {"n": 2}, "context": {"seen": 2}}
    assert top_level_tasks(definition.plan) == list(done.reached)


def test_a_reset_state_runs_on_from_its_task_with_the_data_it_first_had() -> None:
    definition = workflow(STEPS)
    done = run(definition, {"n": 1})
    assert done.output == {"n": 23, "seen": 2}
    point = done.reached["/do/1/inner"]
    state = reset_state(done.state, definition.plan, "/do/1/inner", point)
    assert state["status"] == "running" and state["seq"] == done.state["seq"]
    again = advance(definition, state, signals=(), now_ms=T0 + 1)
    assert again.outcome is TurnOutcome.COMPLETED and again.output == {"n": 23, "seen": 2}
    # `skipped` is reached (its `if` is false), not started.
    started = ["/do/1/inner", "/do/1/inner/do/0/a", "/do/1/inner/do/1/b", "/do/3/last"]
    assert task_events(again, "task.started") == started
    # The reset's own turn notes its points again; the store keeps only the first of each.
    assert list(again.reached) == ["/do/1/inner", "/do/2/skipped", "/do/3/last"]


def test_a_waiting_instance_reset_waits_again() -> None:
    definition = workflow(
        """
        do:
          - ask: {set: {asked: true}}
          - wait:
              listen: {to: {one: {with: {type: go}}}}
        """
    )
    waiting = begin(definition, {})
    assert waiting.outcome is TurnOutcome.WAITING and list(waiting.reached) == [
        "/do/0/ask",
        "/do/1/wait",
    ]
    state = reset_state(waiting.state, definition.plan, "/do/0/ask", waiting.reached["/do/0/ask"])
    assert state["task"] is None and state["stack"] == [{"list": "/do", "index": 0}]
    again = advance(definition, state, signals=(), now_ms=T0 + 1)
    assert again.outcome is TurnOutcome.WAITING and again.current_step == "/do/1/wait"
