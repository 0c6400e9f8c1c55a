"""Outside work: effects asked for by call, run and emit, and their results coming back."""

from __future__ import annotations

import copy

from okra_sidecar.engine.interpreter.effects import EffectKind
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, advance

from .support import (
    COMMUNICATION_ERROR,
    T0,
    HttpFake,
    begin,
    drive,
    only_effect,
    result_signal,
    signal,
    task_events,
    workflow,
)

VALIDATION_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/validation"
TIMEOUT_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/timeout"
GET_PET = """
do:
  - getPet:
      call: http
      with:
        method: get
        endpoint: https://petstore.example/v2/pet/{petId}
      output:
        as: '${ {name: .name, raw: $task.output.id} }'
  - after: {set: {pet: '${ . }'}}
"""


def test_http_call_asks_for_an_effect_and_waits_for_its_result() -> None:
    definition = workflow(GET_PET)
    first = begin(definition, {"petId": 7})
    assert first.outcome is TurnOutcome.WAITING
    assert first.current_step == "/do/0/getPet"
    assert first.wake_at_ms is None and first.subscriptions == []
    effect = only_effect(first.effects)
    assert (effect.effect_id, effect.kind, effect.task, effect.timeout_ms) == (
        "e1",
        EffectKind.HTTP,
        "/do/0/getPet",
        None,
    )
    assert effect.request == {
        "method": "GET",
        "uri": "https://petstore.example/v2/pet/7",
        "headers": {},
        "query": {},
        "body": None,
        "output": "content",
        "redirect": False,
    }
    assert first.state["seq"] == 1

    unrelated = advance(definition, first.state, signals=[signal("1-0", "x")], now_ms=T0 + 5)
    assert (unrelated.changed, unrelated.consumed, unrelated.effects) == (False, [], [])

    result = result_signal("e1", value={"id": 7, "name": "Rex"}, entry_id="9-0")
    done = advance(definition, first.state, signals=[result], now_ms=T0 + 10)
    assert done.outcome is TurnOutcome.COMPLETED
    assert done.output == {"pet": {"name": "Rex", "raw": 7}}
    assert done.consumed == ["9-0"] and done.effects == []
    assert task_events(done) == ["/do/0/getPet", "/do/1/after"]


def test_an_error_result_faults_the_task_with_its_problem() -> None:
    definition = workflow(GET_PET)
    first = begin(definition, {"petId": 7})
    problem = {"type": COMMUNICATION_ERROR, "status": 503, "title": "Service Unavailable"}
    failed = advance(
        definition, first.state, signals=[result_signal("e1", error=problem)], now_ms=T0 + 1
    )
    assert failed.outcome is TurnOutcome.FAILED
    assert failed.error == {
        "type": COMMUNICATION_ERROR,
        "status": 503,
        "title": "Service Unavailable",
        "detail": None,
        "instance": "/do/0/getPet",
    }
    assert [e["type"] for e in failed.history] == ["task.faulted", "workflow.faulted"]


def test_the_ctk_spelling_of_an_outside_error_type_is_raised_in_the_dsl_spelling() -> None:
    definition = workflow(GET_PET)
    first = begin(definition, {"petId": 7})
    problem = {"type": "https://serverlessworkflow.io/dsl/errors/types/communication"}
    failed = advance(
        definition, first.state, signals=[result_signal("e1", error=problem)], now_ms=T0 + 1
    )
    assert failed.error is not None
    assert (failed.error["type"], failed.error["status"]) == (COMMUNICATION_ERROR, 500)


def test_a_turn_is_pure_and_repeatable() -> None:
    definition = workflow(GET_PET)
    first = begin(definition, {"petId": 7})
    frozen = copy.deepcopy(first.state)
    inbox = [result_signal("e1", value={"id": 7, "name": "Rex"})]
    one = advance(definition, first.state, signals=inbox, now_ms=T0 + 10)
    two = advance(definition, first.state, signals=inbox, now_ms=T0 + 10)
    assert first.state == frozen
    assert (one.state, one.output, one.history, one.consumed) == (
        two.state,
        two.output,
        two.history,
        two.consumed,
    )
    again = begin(definition, {"petId": 7})
    assert again.effects == first.effects and again.state == first.state


def test_effect_ids_stay_unique_across_turns_and_tasks() -> None:
    definition = workflow(
        """
        do:
          - one: {call: ping, with: {n: 1}}
          - two: {call: ping, with: {n: '${ .n + 1 }'}}
          - three: {call: ping, with: {n: '${ .n + 1 }'}}
        """
    )
    result = begin(definition)
    seen: list[str] = []
    for n in (1, 2, 3):
        effect = only_effect(result.effects)
        assert effect.request == {"function": "ping", "arguments": {"n": n}}
        seen.append(effect.effect_id)
        inbox = [result_signal(effect.effect_id, value={"n": n})]
        result = advance(definition, result.state, signals=inbox, now_ms=T0 + n)
    assert result.output == {"n": 3}
    assert seen == ["e1", "e2", "e3"]


def test_late_duplicate_and_unknown_results_are_consumed_and_dropped() -> None:
    definition = workflow(
        """
        do:
          - first: {call: ping}
          - second: {call: ping}
        """
    )
    first = begin(definition)
    inbox = [result_signal("e1", value=1, entry_id="1-0")]
    second = advance(definition, first.state, signals=inbox, now_ms=T0 + 1)
    assert second.current_step == "/do/1/second" and second.consumed == ["1-0"]
    late = [
        result_signal("e1", value=1, entry_id="2-0"),  # delivered twice
        result_signal("e7", value=7, entry_id="3-0"),  # never asked for
        result_signal("e2", value=2, entry_id="4-0"),
        result_signal("e2", value=3, entry_id="5-0"),  # duplicate of the one used
    ]
    done = advance(definition, second.state, signals=late, now_ms=T0 + 2)
    assert done.output == 2
    assert sorted(done.consumed) == ["2-0", "3-0", "4-0", "5-0"]


def test_a_waiting_turn_drops_stale_results_without_moving() -> None:
    definition = workflow("do: [{first: {call: ping}}]")
    first = begin(definition)
    stale = advance(
        definition, first.state, signals=[result_signal("e9", entry_id="1-0")], now_ms=T0 + 1
    )
    assert stale.outcome is TurnOutcome.WAITING
    assert stale.consumed == ["1-0"] and stale.changed
    assert stale.state["task"] == first.state["task"]


def test_a_timeout_while_waiting_for_a_result_faults_and_the_late_result_is_dropped() -> None:
    definition = workflow(
        """
        do:
          - slow:
              call: http
              with: {method: post, endpoint: 'https://slow.example/work'}
              timeout: {after: PT2S}
        """
    )
    first = begin(definition)
    assert only_effect(first.effects).timeout_ms == 2_000
    assert first.wake_at_ms == T0 + 2_000
    timed_out = advance(definition, first.state, signals=[], now_ms=T0 + 2_000)
    assert timed_out.outcome is TurnOutcome.FAILED
    assert timed_out.error is not None
    assert (timed_out.error["type"], timed_out.error["status"], timed_out.error["instance"]) == (
        TIMEOUT_ERROR,
        408,
        "/do/0/slow",
    )


def test_the_workflow_timeout_bounds_the_effect_and_faults_the_workflow() -> None:
    definition = workflow(
        """
        timeout: {after: PT10S}
        do:
          - slow: {call: ping, timeout: {after: PT1M}}
        """
    )
    first = begin(definition)
    assert only_effect(first.effects).timeout_ms == 10_000
    failed = advance(definition, first.state, signals=[], now_ms=T0 + 10_000)
    assert failed.error is not None
    assert (failed.error["status"], failed.error["instance"]) == (408, "/")
    late = advance(definition, failed.state, signals=[result_signal("e1")], now_ms=T0 + 11_000)
    assert late.changed is False  # a finished instance takes no more turns


def test_a_custom_function_is_a_worker_task() -> None:
    definition = workflow(
        """
        do:
          - charge:
              call: payments.charge
              with: {amount: '${ .total }', currency: EUR}
              output: {as: '${ {receipt: .id} }'}
        """
    )
    first = begin(definition, {"total": 12})
    effect = only_effect(first.effects)
    assert (effect.kind, effect.request) == (
        EffectKind.WORKER,
        {"function": "payments.charge", "arguments": {"amount": 12, "currency": "EUR"}},
    )
    done = advance(
        definition, first.state, signals=[result_signal("e1", value={"id": "r-1"})], now_ms=T0
    )
    assert done.output == {"receipt": "r-1"}


def test_a_reusable_function_runs_its_task_with_the_arguments_as_input() -> None:
    definition = workflow(
        """
        use:
          functions:
            getPetById:
              input:
                schema:
                  document: {type: object, required: [petId], properties: {petId: {type: integer}}}
              call: http
              with:
                method: get
                endpoint: https://petstore.example/v2/pet/{petId}
              output: {as: .name}
        do:
          - getPet:
              call: getPetById
              with: {petId: '${ .id }'}
              output: {as: '${ {name: ., asked: $input.id} }'}
        """
    )
    fake = HttpFake({("GET", "https://petstore.example/v2/pet/69"): (200, {"name": "Rex"})})
    result = drive(definition, {"id": 69}, answer=fake.answer)
    assert result.output == {"name": "Rex", "asked": 69}
    assert task_events(result) == ["/use/functions/getPetById", "/do/0/getPet"]

    bad = begin(definition, {"id": "x"})
    assert bad.error is not None
    assert (bad.error["type"], bad.error["instance"]) == (
        VALIDATION_ERROR,
        "/use/functions/getPetById",
    )


def test_a_reusable_function_may_be_a_worker_call_and_called_without_arguments() -> None:
    definition = workflow(
        """
        use:
          functions:
            notify: {call: mailer.send, with: {to: '${ .email }'}}
        do:
          - tell: {call: notify}
        """
    )
    first = begin(definition, {"email": "a@example.com"})
    effect = only_effect(first.effects)
    assert (effect.task, effect.request) == (
        "/use/functions/notify",
        {"function": "mailer.send", "arguments": {"to": "a@example.com"}},
    )


def test_run_workflow_starts_a_child_and_outputs_its_output() -> None:
    definition = workflow(
        """
        do:
          - register:
              run:
                workflow:
                  namespace: test
                  name: register-customer
                  version: '0.1.0'
                  input: {customer: '${ .user }'}
          - plain:
              run:
                workflow: {namespace: test, name: echo, version: '1.0.0'}
        """
    )
    first = begin(definition, {"user": {"id": 1}})
    effect = only_effect(first.effects)
    assert (effect.kind, effect.request) == (
        EffectKind.CHILD,
        {
            "workflow": {"namespace": "test", "name": "register-customer", "version": "0.1.0"},
            "input": {"customer": {"id": 1}},
        },
    )
    second = advance(
        definition, first.state, signals=[result_signal("e1", value={"ok": 1})], now_ms=T0
    )
    assert only_effect(second.effects).request["input"] == {"ok": 1}  # the task input
    child_error = {"type": "https://example.com/declined", "status": 402, "instance": "/do/3"}
    failed = advance(
        definition, second.state, signals=[result_signal("e2", error=child_error)], now_ms=T0
    )
    assert failed.error == {
        "type": "https://example.com/declined",
        "status": 402,
        "title": None,
        "detail": None,
        "instance": "/do/1/plain",
    }


def test_run_workflow_without_await_or_without_return() -> None:
    definition = workflow(
        """
        do:
          - fire:
              run:
                workflow: {namespace: test, name: audit, version: '1.0.0', input: {}}
                await: false
          - quiet:
              run:
                workflow: {namespace: test, name: audit, version: '1.0.0'}
                return: none
        """
    )
    first = begin(definition, {"n": 1})
    assert [e.effect_id for e in first.effects] == ["e1", "e2"]
    assert first.current_step == "/do/1/quiet"
    done = advance(
        definition,
        first.state,
        signals=[result_signal("e1", entry_id="1-0"), result_signal("e2", value={"x": 1})],
        now_ms=T0,
    )
    assert done.output is None
    assert sorted(done.consumed) == ["1-0", "result-e2"]


def test_emit_outputs_the_event_without_waiting() -> None:
    definition = workflow(
        """
        do:
          - emitEvent:
              emit:
                event:
                  with:
                    source: https://fake-source.com
                    type: com.fake-source.user.greeted.v1
                    data:
                      greetings: '${ "Hello \\(.first)!" }'
          - after: {set: {sent: '${ .id }'}}
        """
    )
    result = begin(definition, {"first": "John"})
    assert result.outcome is TurnOutcome.COMPLETED
    effect = only_effect(result.effects)
    event = {
        "specversion": "1.0",
        "id": "instance-1:e1",
        "time": "2023-11-14T22:13:20.000Z",
        "source": "https://fake-source.com",
        "type": "com.fake-source.user.greeted.v1",
        "data": {"greetings": "Hello John!"},
        "datacontenttype": "application/json",
    }
    assert (effect.kind, effect.request) == (EffectKind.EMIT, {"event": event})
    assert result.output == {"sent": "instance-1:e1"}


def test_emit_keeps_the_attributes_it_is_given() -> None:
    definition = workflow(
        """
        do:
          - tell:
              emit:
                event:
                  with: {id: my-id, source: 'https://s', type: t, time: '2020-01-01T00:00:00Z'}
        """
    )
    event = begin(definition).output
    assert event == {
        "specversion": "1.0",
        "id": "my-id",
        "source": "https://s",
        "type": "t",
        "time": "2020-01-01T00:00:00Z",
    }


def test_emit_with_a_bad_source_faults() -> None:
    definition = workflow("do: [{tell: {emit: {event: {with: {source: '${ .s }', type: t}}}}}]")
    result = begin(definition, {"s": 1})
    assert result.error is not None
    assert result.error["detail"] == (
        "expression 'emit.event.with.source' failed: the event's 'source' must be a non-empty "
        "string"
    )
    assert result.effects == []


def test_effects_abandoned_in_the_same_turn_are_not_returned() -> None:
    definition = workflow(
        """
        do:
          - race:
              fork:
                compete: true
                branches:
                  - slow: {call: http, with: {method: get, endpoint: 'https://slow.example'}}
                  - fast: {set: {winner: fast}}
          - tell: {emit: {event: {with: {source: 'https://s', type: done}}}}
        """
    )
    result = begin(definition)
    assert result.outcome is TurnOutcome.COMPLETED
    assert [e.kind for e in result.effects] == [EffectKind.EMIT]
    assert result.effects[0].effect_id == "e2"
