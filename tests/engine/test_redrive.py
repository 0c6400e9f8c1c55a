"""Retry of a failed instance: the state goes back to the task that raised, and runs it again."""

from __future__ import annotations

from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, advance
from okra_sidecar.engine.interpreter.redrive import retry_state

from .support import (
    COMMUNICATION_ERROR,
    T0,
    begin,
    result_signal,
    run,
    task_events,
    workflow,
)

CHARGE = """
do:
  - prepare:
      set: {order: '${ .order }', step: prepared}
      export: {as: '${ {attempt: "first"} }'}
  - charge:
      do:
        - note: {set: {order: '${ .order }', noted: true}}
        - pay:
            call: http
            with: {method: post, endpoint: 'https://pay.example/charge', body: '${ . }'}
  - done: {set: {paid: '${ . }', attempt: '${ $context.attempt }'}}
"""
DOWN = {"type": COMMUNICATION_ERROR, "status": 503, "title": "Service Unavailable"}


def test_a_failed_call_runs_again_from_its_task_with_the_data_it_had() -> None:
    definition = workflow(CHARGE)
    first = begin(definition, {"order": 7})
    assert first.current_step == "/do/1/charge/do/1/pay"
    [effect] = first.effects
    failed = advance(
        definition, first.state, signals=[result_signal(effect.effect_id, error=DOWN)], now_ms=T0
    )
    assert failed.outcome is TurnOutcome.FAILED
    redrive = retry_state(failed.state, variables={"attempt": "second"})
    assert redrive is not None
    retried, task = redrive
    assert retried["status"] == "running" and task == "/do/1/charge/do/1/pay"
    again = advance(definition, retried, signals=[], now_ms=T0 + 1)
    # The call task starts over (a new effect, the same request); `note` does not run again.
    assert again.outcome is TurnOutcome.WAITING
    assert task_events(again, "task.started") == ["/do/1/charge/do/1/pay"]
    [second] = again.effects
    assert second.effect_id != effect.effect_id
    assert second.request["body"] == effect.request["body"] == {"order": 7, "noted": True}
    done = advance(
        definition,
        again.state,
        signals=[result_signal(second.effect_id, value={"receipt": "r-1"})],
        now_ms=T0 + 2,
    )
    assert done.outcome is TurnOutcome.COMPLETED
    assert done.output == {"paid": {"receipt": "r-1"}, "attempt": "second"}


def test_without_variables_the_context_is_the_one_it_failed_with() -> None:
    definition = workflow(CHARGE)
    first = begin(definition, {"order": 1})
    [effect] = first.effects
    failed = advance(
        definition, first.state, signals=[result_signal(effect.effect_id, error=DOWN)], now_ms=T0
    )
    redrive = retry_state(failed.state)
    assert redrive is not None and redrive[0]["context"] == {"attempt": "first"}


def test_an_error_caught_by_a_try_leaves_no_retry_point() -> None:
    definition = workflow(
        """
do:
  - guarded:
      try:
        - boom: {raise: {error: {type: 'https://example.com/boom', status: 400}}}
      catch: {errors: {with: {status: 400}}}
  - fine: {set: {ok: true}}
  - late: {raise: {error: {type: 'https://example.com/late', status: 500}}}
"""
    )
    failed = run(definition)
    assert failed.outcome is TurnOutcome.FAILED
    redrive = retry_state(failed.state)
    assert redrive is not None and redrive[1] == "/do/2/late"
    again = advance(definition, redrive[0], signals=[], now_ms=T0)
    # It fails again at `late`, the task that raised last, not at the caught `boom`.
    assert task_events(again, "task.started") == ["/do/2/late"]
    assert again.outcome is TurnOutcome.FAILED


def test_a_failure_outside_any_task_cannot_be_retried() -> None:
    definition = workflow(
        """
timeout: {after: {milliseconds: 10}}
do:
  - hold: {wait: {seconds: 5}}
"""
    )
    waiting = begin(definition)
    timed_out = advance(definition, waiting.state, signals=[], now_ms=T0 + 20)
    assert timed_out.outcome is TurnOutcome.FAILED
    assert retry_state(timed_out.state) is None
    assert retry_state(waiting.state) is None  # not failed at all
