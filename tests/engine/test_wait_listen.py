"""Blocking tasks across turns: wait (time) and listen (inbox CloudEvents)."""

from __future__ import annotations

import base64
import json

from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, advance

from .support import T0, begin, signal, task_events, workflow

TIMEOUT_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/timeout"


def test_wait_blocks_until_due_then_passes_input_through() -> None:
    definition = workflow(
        """
        do:
          - pause: {wait: PT30S}
          - after: {set: {waited: '${ .n }'}}
        """
    )
    first = begin(definition, {"n": 7})
    assert first.outcome is TurnOutcome.WAITING
    assert (first.current_step, first.wake_at_ms, first.changed) == (
        "/do/0/pause",
        T0 + 30_000,
        True,
    )
    assert task_events(first, "task.started") == ["/do/0/pause"]

    early = advance(definition, first.state, signals=(), now_ms=T0 + 29_999)
    assert early.outcome is TurnOutcome.WAITING
    assert early.changed is False and early.state is first.state
    assert (early.wake_at_ms, early.history, early.consumed) == (T0 + 30_000, [], [])

    due = advance(definition, first.state, signals=(), now_ms=T0 + 30_000)
    assert due.outcome is TurnOutcome.COMPLETED
    assert due.output == {"waited": 7}
    assert task_events(due) == ["/do/0/pause", "/do/1/after"]


def test_wait_ignores_signals() -> None:
    definition = workflow("do: [{pause: {wait: {minutes: 1}}}]")
    first = begin(definition)
    poked = advance(definition, first.state, signals=[signal("1-0", "x")], now_ms=T0 + 1)
    assert (poked.changed, poked.consumed) == (False, [])


def test_wait_duration_from_an_expression_and_zero_wait() -> None:
    definition = workflow(
        """
        do:
          - pause: {wait: '${ .delay }'}
          - none: {wait: PT0S}
        """
    )
    first = begin(definition, {"delay": "PT2S"})
    assert first.wake_at_ms == T0 + 2_000
    assert advance(definition, first.state, signals=(), now_ms=T0 + 2_000).output == {
        "delay": "PT2S"
    }


def test_wait_with_a_bad_duration_expression_faults() -> None:
    definition = workflow("do: [{pause: {wait: '${ .delay }'}}]")
    result = begin(definition, {"delay": "soon"})
    assert result.error is not None
    assert result.error["detail"] == "'soon' is not an ISO 8601 duration (e.g. PT30S, P1DT2H)"


APPROVAL = """
do:
  - ask:
      listen:
        to:
          one:
            with:
              type: com.example.approved
  - decide: {set: {by: '${ .[0].by }'}}
"""


def test_listen_one_with_the_signal_already_in_the_inbox() -> None:
    definition = workflow(APPROVAL)
    inbox = [
        signal("1-0", "com.example.other", {"by": "eve"}),
        signal("2-0", "com.example.approved", {"by": "ada"}),
    ]
    result = begin(definition, signals=inbox)
    assert result.outcome is TurnOutcome.COMPLETED
    assert result.output == {"by": "ada"}
    assert result.consumed == ["2-0"]  # the other event stays in the inbox


def test_listen_one_with_the_signal_arriving_later() -> None:
    definition = workflow(APPROVAL)
    first = begin(definition)
    assert first.outcome is TurnOutcome.WAITING
    assert (first.current_step, first.wake_at_ms) == ("/do/0/ask", None)
    unrelated = [signal("1-0", "com.example.other")]
    idle = advance(definition, first.state, signals=unrelated, now_ms=T0 + 5)
    assert (idle.changed, idle.consumed, idle.state is first.state) == (False, [], True)
    inbox = [*unrelated, signal("2-0", "com.example.approved", {"by": "ada"})]
    done = advance(definition, first.state, signals=inbox, now_ms=T0 + 10)
    assert done.outcome is TurnOutcome.COMPLETED
    assert (done.output, done.consumed) == ({"by": "ada"}, ["2-0"])


def test_listen_consumes_each_signal_once_in_inbox_order() -> None:
    definition = workflow(
        """
        do:
          - first: {listen: {to: {one: {with: {type: tick}}}}}
          - second: {listen: {to: {one: {with: {type: tick}}}}}
          - both: {set: {seen: '${ [$context, .] }'}}
        """
    )
    inbox = [signal("1-0", "tick", 1), signal("2-0", "tick", 2), signal("3-0", "tick", 3)]
    result = begin(definition, signals=inbox)
    assert result.consumed == ["1-0", "2-0"]
    assert result.output == {"seen": [{}, [2]]}


def test_listen_any_empty_takes_any_event() -> None:
    definition = workflow("do: [{anything: {listen: {to: {any: []}}}}]")
    result = begin(definition, signals=[signal("1-0", "whatever", {"k": 1}), signal("2-0", "more")])
    assert (result.output, result.consumed) == ([{"k": 1}], ["1-0"])


def test_listen_never_takes_effect_results() -> None:
    definition = workflow("do: [{anything: {listen: {to: {any: []}}}}]")
    inbox = [signal("1-0", "io.okra.effect.result", {"ok": True}), signal("2-0", "hello", 2)]
    result = begin(definition, signals=inbox)
    assert result.output == [2]
    # The result is for no awaited effect: it is dropped (consumed) after the listen took "2-0".
    assert result.consumed == ["2-0", "1-0"]


def test_listen_any_with_expression_filters() -> None:
    definition = workflow(
        """
        do:
          - callDoctor:
              listen:
                to:
                  any:
                    - with:
                        type: vitals.temperature
                        data: ${ .temperature > 38 }
                    - with:
                        type: vitals.bpm
                        data: ${ .bpm < 60 or .bpm > 100 }
        """
    )
    inbox = [
        signal("1-0", "vitals.temperature", {"temperature": 37}),
        signal("2-0", "vitals.bpm", "not an object"),  # the expression fails: no match
        signal("3-0", "vitals.bpm", {"bpm": 120}),
    ]
    result = begin(definition, signals=inbox)
    assert (result.output, result.consumed) == ([{"bpm": 120}], ["3-0"])


def test_filter_expressions_can_compare_with_runtime_arguments() -> None:
    definition = workflow(
        """
        do:
          - wait:
              listen:
                to:
                  one:
                    with:
                      subject: ${ $input.orderId }
                      data: {status: shipped}
        """
    )
    inbox = [
        signal("1-0", "order", {"status": "shipped"}, subject="o-2"),
        signal("2-0", "order", {"status": "packed"}, subject="o-1"),
        signal("3-0", "order", {"status": "shipped"}, subject="o-1"),
    ]
    result = begin(definition, {"orderId": "o-1"}, signals=inbox)
    assert result.consumed == ["3-0"]


def test_listen_all_collects_across_turns_in_consumption_order() -> None:
    definition = workflow(
        """
        do:
          - gather:
              listen:
                to:
                  all:
                    - with: {type: a}
                    - with: {type: b}
        """
    )
    first = begin(definition, signals=[signal("1-0", "b", "B1")])
    assert (first.outcome, first.consumed, first.changed) == (TurnOutcome.WAITING, ["1-0"], True)
    assert first.state["task"]["matched"] == [1]
    inbox = [signal("2-0", "b", "B2"), signal("3-0", "a", "A1")]
    done = advance(definition, first.state, signals=inbox, now_ms=T0 + 1)
    assert done.outcome is TurnOutcome.COMPLETED
    assert done.output == ["B1", "A1"]
    assert done.consumed == ["3-0"]  # the second b is not needed and stays


def test_listen_all_empty_completes_at_once() -> None:
    definition = workflow("do: [{nothing: {listen: {to: {all: []}}}}]")
    assert begin(definition).output == []


def listen_once(read: str) -> str:
    return f"""
        do:
          - l:
              listen:
                to: {{one: {{with: {{type: t}}}}}}
                read: {read}
        """


def test_read_modes() -> None:
    event = signal("1-0", "t", {"k": "v"})
    for read, expected in [
        ("data", [{"k": "v"}]),
        ("envelope", [event.event]),
        ("raw", [{"k": "v"}]),
    ]:
        assert begin(workflow(listen_once(read)), signals=[event]).output == expected, read
    encoded = base64.b64encode(b'{"k": 1}').decode()
    binary = signal("2-0", "t", data_base64=encoded)
    del binary.event["data"]
    assert begin(workflow(listen_once("raw")), signals=[binary]).output == [encoded]
    assert begin(workflow(listen_once("data")), signals=[binary]).output == [{"k": 1}]


def test_listen_any_until_an_expression_holds() -> None:
    definition = workflow(
        """
        do:
          - collect:
              listen:
                to:
                  any: [{with: {type: reading}}]
                  until: (. | length) >= 3
        """
    )
    first = begin(definition, signals=[signal("1-0", "reading", 1), signal("2-0", "reading", 2)])
    assert (first.outcome, first.consumed) == (TurnOutcome.WAITING, ["1-0", "2-0"])
    inbox = [signal("3-0", "noise"), signal("4-0", "reading", 3), signal("5-0", "reading", 4)]
    done = advance(definition, first.state, signals=inbox, now_ms=T0 + 1)
    assert (done.output, done.consumed) == ([1, 2, 3], ["4-0"])


def test_listen_any_until_an_event_is_consumed() -> None:
    definition = workflow(
        """
        do:
          - collect:
              listen:
                to:
                  any: []
                  until:
                    one:
                      with: {type: checked-out}
        """
    )
    inbox = [
        signal("1-0", "reading", 1),
        signal("2-0", "reading", 2),
        signal("3-0", "checked-out", "bye"),
        signal("4-0", "reading", 3),
    ]
    result = begin(definition, signals=inbox)
    assert result.output == [1, 2]  # the `until` event is consumed but not output
    assert result.consumed == ["1-0", "2-0", "3-0"]


def test_listen_timeout_wakes_and_faults() -> None:
    definition = workflow(
        """
        do:
          - ask:
              timeout: {after: PT1M}
              listen: {to: {one: {with: {type: approved}}}}
        """
    )
    first = begin(definition)
    assert first.wake_at_ms == T0 + 60_000
    in_time = advance(
        definition, first.state, signals=[signal("1-0", "approved")], now_ms=T0 + 59_000
    )
    assert in_time.outcome is TurnOutcome.COMPLETED
    late = advance(definition, first.state, signals=[signal("1-0", "approved")], now_ms=T0 + 60_000)
    assert late.outcome is TurnOutcome.FAILED
    assert late.consumed == []
    assert late.error == {
        "type": TIMEOUT_ERROR,
        "status": 408,
        "title": "Timeout",
        "detail": "timed out after 60000 ms",
        "instance": "/do/0/ask",
    }


def test_listen_output_goes_through_output_as() -> None:
    definition = workflow(
        """
        do:
          - ask:
              listen: {to: {one: {with: {type: approved}}}, read: envelope}
              output: {as: '${ {from: .[0].source, raw: $task.output[0].type} }'}
        """
    )
    result = begin(definition, signals=[signal("1-0", "approved")])
    assert result.output == {"from": "tests", "raw": "approved"}


def test_state_survives_a_json_round_trip_between_turns() -> None:
    definition = workflow(
        """
        do:
          - phase:
              do:
                - pause: {wait: PT1S}
                - ask: {listen: {to: {all: [{with: {type: a}}, {with: {type: b}}]}}}
          - done: {set: {events: '${ . }'}}
        """
    )
    result = begin(definition, {"x": 1})
    now = T0
    inboxes = [[], [signal("1-0", "a", 1)], [signal("2-0", "b", 2)]]
    for inbox in inboxes:
        now += 1_000
        state = json.loads(json.dumps(result.state))
        result = advance(definition, state, signals=inbox, now_ms=now)
    assert result.outcome is TurnOutcome.COMPLETED
    assert result.output == {"events": [1, 2]}
