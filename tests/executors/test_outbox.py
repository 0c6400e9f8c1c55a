"""What a turn commits beside its state: effects, published emits, subscriptions, parent results."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from okra_sidecar.engine.interpreter.effects import RESULT_EVENT_TYPE, Effect, EffectKind
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome
from okra_sidecar.engine.runtime.outbox import turn_extras
from okra_sidecar.engine.runtime.routing import subscription_matches, subscription_types
from okra_sidecar.executors.dispatcher import task_service
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.base import TurnSnapshot


def snapshot(**changes: Any) -> TurnSnapshot:
    base: dict[str, Any] = {
        "instance_id": "i-1",
        "workflow_id": "shop.order.1.0.0",
        "status": InstanceStatus.RUNNING,
        "revision": "3",
        "state": {},
        "index_member": "m",
        "inbox": [],
    }
    return TurnSnapshot(**{**base, **changes})


def result(**changes: Any) -> Any:
    base: dict[str, Any] = {
        "outcome": TurnOutcome.WAITING,
        "output": None,
        "error": None,
        "effects": [],
        "subscriptions": [],
    }
    return SimpleNamespace(**{**base, **changes})


def test_plain_turns_have_no_extras() -> None:
    assert turn_extras(snapshot(), result(), 0) is None
    assert turn_extras(snapshot(), result(outcome=TurnOutcome.COMPLETED), 0) is None


def test_emits_are_published_by_the_commit_and_calls_go_to_the_executors() -> None:
    emit = Effect("/do/0/tell#1", EffectKind.EMIT, "/do/0/tell", {"event": {"type": "a.b"}})
    call = Effect("/do/1/get#1", EffectKind.HTTP, "/do/1/get", {"method": "GET", "uri": "x"})
    extras = turn_extras(snapshot(), result(effects=[emit, call]), 1_700_000_000_000)
    assert extras is not None
    assert extras.effects == [call.to_json()]
    (event,) = extras.events
    assert event["type"] == "a.b" and event["specversion"] == "1.0"
    assert event["time"] == "2023-11-14T22:13:20Z"
    again = turn_extras(snapshot(), result(effects=[emit]), 1_700_000_000_000)
    assert again is not None and again.events[0]["id"] == event["id"]  # re-run, same event
    assert extras.inbox == []


def test_subscriptions_are_set_and_dropped() -> None:
    filters = [{"task": "/do/0/wait", "with": {"type": "paid"}}, {"task": "/do/0/wait", "with": {}}]
    extras = turn_extras(snapshot(), result(subscriptions=filters), 0)
    assert extras is not None and extras.subscriptions is not None
    assert extras.subscriptions.types == ("", "paid")
    stopped = turn_extras(snapshot(subscriptions='{"types":["paid"]}'), result(), 0)
    assert stopped is not None and stopped.subscriptions is not None
    assert stopped.subscriptions.filters == []


def test_a_finished_child_reports_to_its_parent() -> None:
    child = snapshot(parent_id="p-1", parent_effect="/do/2/run#1")
    done = turn_extras(child, result(outcome=TurnOutcome.COMPLETED, output={"ok": 1}), 0)
    assert done is not None and done.parent_event is not None
    assert done.parent_event["type"] == RESULT_EVENT_TYPE
    assert done.parent_event["data"] == {
        "effectId": "/do/2/run#1",
        "ok": True,
        "value": {"ok": 1},
        "error": None,
    }
    problem = {"type": "t", "status": 500, "title": "x", "detail": "y"}
    failed = turn_extras(child, result(outcome=TurnOutcome.FAILED, error=problem), 0)
    assert failed is not None and failed.parent_event is not None
    assert failed.parent_event["data"]["error"] == problem
    assert turn_extras(child, result(), 0) is None  # still running: nothing to report


async def test_subscription_matching() -> None:
    paid = [
        {
            "with": {"type": "paid", "source": "shop"},
            "correlate": {"order": {"from": ".data.order", "expect": "o-1"}},
        }
    ]
    event = {"type": "paid", "source": "shop", "data": {"order": "o-1"}}
    assert await subscription_matches(paid, event)
    assert not await subscription_matches(paid, {**event, "data": {"order": "o-2"}})
    assert not await subscription_matches(paid, {**event, "source": "other"})
    hot = [{"with": {"type": "temp", "data": "${ .celsius > 38 }"}}]
    assert await subscription_matches(hot, {"type": "temp", "data": {"celsius": 39}})
    assert not await subscription_matches(hot, {"type": "temp", "data": {"celsius": 37}})
    # Needs the instance's arguments: the router lets the interpreter decide.
    mine = [{"with": {"type": "t", "data": "${ $context.x == . }"}}]
    assert await subscription_matches(mine, {"type": "t", "data": 1})
    assert subscription_types([{"with": {"type": "${ .x }"}}]) == ("",)


def test_worker_tasks_go_to_the_service_in_metadata_else_the_namespace() -> None:
    document = {
        "do": [
            {"book": {"call": "book", "metadata": {"service": "travel"}}},
            {"pay": {"call": "pay"}},
        ]
    }
    assert task_service(document, "/do/0/book", "shop.order.1.0.0") == "travel"
    assert task_service(document, "/do/1/pay", "shop.order.1.0.0") == "shop"
    assert task_service(None, "/do/9/x", "shop.order.1.0.0") == "shop"
