"""listen for events: correlation, foreach and the subscriptions routers act on."""

from __future__ import annotations

import pytest

from okra_sidecar.engine.interpreter.interpreter import InboxSignal, TurnOutcome, advance
from okra_sidecar.errors import DefinitionError

from .support import T0, begin, result_signal, signal, task_events, workflow

ROOMS = """
do:
  - consumeReading:
      listen:
        to:
          all:
            - with: {source: 'https://my.home.com/sensor', type: my.home.sensors.temperature}
              correlate:
                roomId: {from: .roomid}
            - with: {source: 'https://my.home.com/sensor', type: my.home.sensors.humidity}
              correlate:
                roomId: {from: .roomid}
"""


def reading(entry_id: str, kind: str, room: str, value: int) -> InboxSignal:
    return signal(
        entry_id,
        f"my.home.sensors.{kind}",
        {"reading": value},
        source="https://my.home.com/sensor",
        roomid=room,
    )


def test_without_expect_the_first_event_fixes_the_correlation_key() -> None:
    definition = workflow(ROOMS)
    first = begin(definition)
    assert first.subscriptions == [
        {
            "task": "/do/0/consumeReading",
            "with": {"source": "https://my.home.com/sensor", "type": kind},
            "correlate": {"roomId": {"from": ".roomid"}},
        }
        for kind in ("my.home.sensors.temperature", "my.home.sensors.humidity")
    ]
    inbox = [
        reading("1-0", "temperature", "kitchen", 21),
        reading("2-0", "humidity", "bath", 80),
        reading("3-0", "humidity", "kitchen", 40),
    ]
    partial = advance(definition, first.state, signals=inbox[:2], now_ms=T0)
    assert partial.consumed == ["1-0"]
    assert partial.subscriptions[1]["correlate"] == {
        "roomId": {"from": ".roomid", "expect": "kitchen"}
    }
    done = advance(definition, partial.state, signals=inbox[1:], now_ms=T0)
    assert done.consumed == ["3-0"]
    assert done.output == [{"reading": 21}, {"reading": 40}]
    assert done.subscriptions == []


def test_expect_is_evaluated_when_the_listen_starts() -> None:
    definition = workflow(
        """
        do:
          - paid:
              listen:
                to:
                  one:
                    with: {type: payment.done}
                    correlate:
                      orderId: {from: .data.order, expect: '${ .order.id }'}
                      currency: {from: .data.currency, expect: EUR}
        """
    )
    first = begin(definition, {"order": {"id": "o-2"}})
    assert first.subscriptions == [
        {
            "task": "/do/0/paid",
            "with": {"type": "payment.done"},
            "correlate": {
                "orderId": {"from": ".data.order", "expect": "o-2"},
                "currency": {"from": ".data.currency", "expect": "EUR"},
            },
        }
    ]
    inbox = [
        signal("1-0", "payment.done", {"order": "o-1", "currency": "EUR"}),
        signal("2-0", "payment.done", {"order": "o-2", "currency": "USD"}),
        signal("3-0", "payment.done", {"order": "o-2", "currency": "EUR"}),
        signal("4-0", "payment.done", "not an object"),
    ]
    done = advance(definition, first.state, signals=inbox, now_ms=T0)
    assert done.consumed == ["3-0"]
    assert done.output == [{"order": "o-2", "currency": "EUR"}]


def test_a_failing_expect_faults_the_listen() -> None:
    definition = workflow(
        """
        do:
          - paid:
              listen:
                to:
                  one:
                    with: {type: payment.done}
                    correlate: {orderId: {from: .data.order, expect: '${ .order.id + 1 }'}}
        """
    )
    result = begin(definition, {"order": {"id": "o-2"}})
    assert result.error is not None
    assert result.error["instance"] == "/do/0/paid"


def test_subscriptions_leave_out_attributes_given_by_expressions() -> None:
    definition = workflow(
        """
        do:
          - callDoctor:
              listen:
                to:
                  any:
                    - with: {type: temperature, data: '${ .temperature > 38 }'}
                  until:
                    one: {with: {type: shift.ended, subject: '${ . == "ward-1" }'}}
        """
    )
    assert begin(definition).subscriptions == [
        {"task": "/do/0/callDoctor", "with": {"type": "temperature"}},
        {"task": "/do/0/callDoctor", "with": {"type": "shift.ended"}},
    ]


FOREACH = """
do:
  - collect:
      listen:
        to:
          any: [{with: {type: reading}}]
          until: '${ length >= 3 }'
      foreach:
        item: event
        at: i
        do:
          - double: {set: '${ {value: ($event.n * 2), at: $i} }'}
        output: {as: '${ .value }'}
        export: {as: '${ $context + {last: $event.n} }'}
  - after: {set: {readings: '${ . }', last: '${ $context.last }'}}
"""


def test_foreach_runs_the_tasks_for_each_event_in_order() -> None:
    definition = workflow(FOREACH)
    first = begin(definition)
    inbox = [signal("1-0", "reading", {"n": 1}), signal("2-0", "reading", {"n": 2})]
    two = advance(definition, first.state, signals=inbox, now_ms=T0)
    assert two.outcome is TurnOutcome.WAITING and two.consumed == ["1-0", "2-0"]
    assert two.subscriptions == [{"task": "/do/0/collect", "with": {"type": "reading"}}]
    assert task_events(two).count("/do/0/collect/foreach/do/0/double") == 2
    done = advance(definition, two.state, signals=[signal("3-0", "reading", {"n": 5})], now_ms=T0)
    assert done.output == {"readings": [2, 4, 10], "last": 5}


def test_foreach_without_tasks_transforms_each_event() -> None:
    definition = workflow(
        """
        do:
          - collect:
              listen: {to: {all: [{with: {type: a}}, {with: {type: b}}]}, read: envelope}
              foreach:
                output: {as: '${ $item.type + ($index | tostring) }'}
        """
    )
    inbox = [signal("1-0", "b"), signal("2-0", "a")]
    assert begin(definition, signals=inbox).output == ["b0", "a1"]


def test_foreach_tasks_may_wait_for_effects_while_events_queue() -> None:
    definition = workflow(
        """
        do:
          - relay:
              listen: {to: {any: [], until: '${ length >= 2 }'}}
              foreach:
                item: event
                do:
                  - post:
                      call: http
                      with:
                        method: post
                        endpoint: https://chat.example/room
                        body: {event: '${ $event }'}
        """
    )
    first = begin(definition)
    inbox = [signal("1-0", "x", 1), signal("2-0", "y", 2)]
    posting = advance(definition, first.state, signals=inbox, now_ms=T0)
    assert posting.current_step == "/do/0/relay/foreach/do/0/post"
    assert [e.request["body"] for e in posting.effects] == [{"event": 1}]
    assert posting.subscriptions == []  # both events are in: the listen is satisfied
    second = advance(
        definition, posting.state, signals=[result_signal("e1", value="ok1")], now_ms=T0
    )
    assert [e.request["body"] for e in second.effects] == [{"event": 2}]
    done = advance(definition, second.state, signals=[result_signal("e2", value="ok2")], now_ms=T0)
    assert done.output == ["ok1", "ok2"]


def test_a_listen_still_open_subscribes_while_its_foreach_works() -> None:
    definition = workflow(
        """
        do:
          - relay:
              listen: {to: {any: [{with: {type: x}}], until: '${ false }'}}
              foreach:
                do: [{post: {call: chat.post, with: {event: '${ $item }'}}}]
        """
    )
    busy = begin(definition, signals=[signal("1-0", "x", 1)])
    assert busy.current_step == "/do/0/relay/foreach/do/0/post"
    assert busy.subscriptions == [{"task": "/do/0/relay", "with": {"type": "x"}}]


def test_a_listen_timeout_covers_its_foreach_tasks() -> None:
    definition = workflow(
        """
        do:
          - relay:
              timeout: {after: PT1M}
              listen: {to: {one: {with: {type: x}}}}
              foreach:
                do: [{pause: {wait: PT2M}}]
        """
    )
    busy = begin(definition, signals=[signal("1-0", "x", 1)])
    assert busy.wake_at_ms == T0 + 60_000
    failed = advance(definition, busy.state, signals=[], now_ms=T0 + 60_000)
    assert failed.error is not None
    assert (failed.error["status"], failed.error["instance"]) == (408, "/do/0/relay")


@pytest.mark.parametrize(
    ("listen", "path", "problem"),
    [
        (
            "{listen: {to: {one: {with: {type: t}, correlate: {k: {expect: x}}}}}}",
            "/do/0/l/listen/to/one/correlate/k",
            "correlation 'k' needs 'from', a runtime expression",
        ),
        (
            "{listen: {to: {one: {with: {type: t}, correlate: {k: {from: .a, by: x}}}}}}",
            "/do/0/l/listen/to/one/correlate/k/by",
            "unknown property 'by' in 'k'",
        ),
        (
            "{listen: {to: {any: []}}, foreach: {item: a, at: a}}",
            "/do/0/l/foreach",
            "'item' and 'at' must name different variables, not both 'a'",
        ),
        (
            "{listen: {to: {any: []}}, foreach: {output: {as: '${ $nope }'}}}",
            "/do/0/l/foreach/output/as",
            "invalid expression '${ $nope }': $nope is not defined",
        ),
    ],
)
def test_bad_listens_are_refused(listen: str, path: str, problem: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(f"do: [{{l: {listen}}}]")
    assert (caught.value.path, caught.value.problem) == (path, problem)


def test_a_running_turn_keeps_the_subscriptions_of_open_listens() -> None:
    definition = workflow(
        """
        do:
          - split:
              fork:
                branches:
                  - wait: {listen: {to: {one: {with: {type: go}}}}}
                  - busy: {do: [{a: {set: {a: 1}}}, {b: {set: {b: 1}}}, {c: {set: {c: 1}}}]}
        """
    )
    running = begin(definition, max_steps=3)
    assert running.outcome is TurnOutcome.RUNNING
    assert running.subscriptions == [
        {"task": "/do/0/split/fork/branches/0/wait", "with": {"type": "go"}}
    ]


def test_correlated_events_run_foreach_one_by_one() -> None:
    definition = workflow(
        """
        do:
          - collect:
              listen:
                to:
                  any:
                    - with: {type: line}
                      correlate: {order: {from: .data.order, expect: '${ .id }'}}
                  until: '${ length == 2 }'
              foreach:
                item: line
                do: [{price: {call: pricing.quote, with: {sku: '${ $line.sku }'}}}]
                output: {as: .price}
        """
    )
    first = begin(definition, {"id": "o-1"})
    inbox = [
        signal("1-0", "line", {"order": "o-2", "sku": "x"}),
        signal("2-0", "line", {"order": "o-1", "sku": "a"}),
        signal("3-0", "line", {"order": "o-1", "sku": "b"}),
    ]
    quoting = advance(definition, first.state, signals=inbox, now_ms=T0)
    assert quoting.consumed == ["2-0", "3-0"]
    prices = []
    result = quoting
    while result.outcome is TurnOutcome.WAITING:
        (effect,) = result.effects
        prices.append(effect.request["arguments"]["sku"])
        value = {"price": len(prices) * 10}
        result = advance(
            definition,
            result.state,
            signals=[result_signal(effect.effect_id, value=value)],
            now_ms=T0,
        )
    assert prices == ["a", "b"]
    assert result.output == [10, 20]
