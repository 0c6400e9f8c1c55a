"""try: catching errors (filters, as, when, exceptWhen), retry policies, handlers, timeouts."""

from __future__ import annotations

from typing import Any

import pytest

from okra_sidecar.engine.interpreter.faults import ERROR_TYPE_ALIAS_PREFIX
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, TurnResult, advance
from okra_sidecar.engine.interpreter.retries import jitter_ms, retry_delay_ms
from okra_sidecar.errors import ERROR_TYPE_PREFIX

from .support import (
    COMMUNICATION_ERROR,
    T0,
    begin,
    result_signal,
    run,
    task_events,
    workflow,
)

TIMEOUT_ERROR = ERROR_TYPE_PREFIX + "timeout"
UNAVAILABLE = {"type": COMMUNICATION_ERROR, "status": 503, "title": "Service Unavailable"}


# -- catching ------------------------------------------------------------------------------------

TRY_GET = """
do:
  - tryGetPet:
      try:
        - getPet:
            call: http
            with:
              method: get
              endpoint: https://petstore.example/pet/{{name}}
      catch:
        errors:
          with:
            type: {type}
            status: {status}
        as: err
        do:
          - setError:
              set:
                error: ${{ $err }}
  - after: {{set: {{result: '${{ . }}'}}}}
"""


@pytest.mark.parametrize(
    "error_type", [COMMUNICATION_ERROR, ERROR_TYPE_ALIAS_PREFIX + "communication"]
)
def test_a_caught_error_runs_the_handler_with_the_error(error_type: str) -> None:
    definition = workflow(TRY_GET.format(type=error_type, status=404))
    first = begin(definition, {"name": "Milou"})
    assert first.current_step == "/do/0/tryGetPet/try/0/getPet"
    not_found = {"type": COMMUNICATION_ERROR, "status": 404, "title": "Not Found"}
    done = advance(
        definition, first.state, signals=[result_signal("e1", error=not_found)], now_ms=T0 + 1
    )
    assert done.outcome is TurnOutcome.COMPLETED
    assert done.output == {
        "result": {
            "error": {
                "type": COMMUNICATION_ERROR,
                "status": 404,
                "title": "Not Found",
                "detail": None,
                "instance": "/do/0/tryGetPet/try/0/getPet",
            }
        }
    }
    assert task_events(done, "task.faulted") == ["/do/0/tryGetPet/try/0/getPet"]
    assert task_events(done) == [
        "/do/0/tryGetPet/catch/do/0/setError",
        "/do/0/tryGetPet",
        "/do/1/after",
    ]


def test_an_error_the_filter_does_not_match_faults_the_workflow() -> None:
    definition = workflow(TRY_GET.format(type=COMMUNICATION_ERROR, status=503))
    first = begin(definition, {"name": "Milou"})
    not_found = {"type": COMMUNICATION_ERROR, "status": 404}
    failed = advance(
        definition, first.state, signals=[result_signal("e1", error=not_found)], now_ms=T0 + 1
    )
    assert failed.outcome is TurnOutcome.FAILED
    assert failed.error is not None
    assert (failed.error["status"], failed.error["instance"]) == (
        404,
        "/do/0/tryGetPet/try/0/getPet",
    )


def raising(error_type: str, status: int, extra: str = "") -> str:
    return f"{{raise: {{error: {{type: '{error_type}', status: {status}{extra}}}}}}}"


def test_catch_without_handler_outputs_the_try_input() -> None:
    definition = workflow(
        f"""
        do:
          - guarded:
              input: {{from: '${{ {{kept: .n}} }}'}}
              try:
                - first: {{set: {{changed: true}}}}
                - boom: {raising("https://example.com/e", 400)}
              catch: {{}}
        """
    )
    result = run(definition, {"n": 1})
    assert result.output == {"kept": 1}


@pytest.mark.parametrize(
    ("catch", "caught"),
    [
        ("{when: '${ .status == 409 }'}", True),
        ("{when: '${ $error.status == 400 }'}", False),
        ("{exceptWhen: '${ .status == 409 }'}", False),
        ("{exceptWhen: '${ .title == null }'}", True),
        ("{errors: {with: {title: Conflict}}}", True),
        ("{errors: {with: {instance: /do/0/t/try/0/boom}}}", True),
        ("{errors: {with: {details: Already there}}}", True),
        ("{errors: {with: {detail: Other}}}", False),
        ("{as: e, when: '${ $e.type == \"https://example.com/conflict\" }'}", True),
    ],
)
def test_catch_filters_and_conditions(catch: str, caught: bool) -> None:
    boom = raising("https://example.com/conflict", 409, ", title: Conflict, detail: Already there")
    definition = workflow(
        f"""
        do:
          - t:
              try:
                - boom: {boom}
              catch: {catch}
        """
    )
    result = run(definition, {"n": 1})
    assert (result.outcome is TurnOutcome.COMPLETED) is caught


def test_nested_try_the_inner_passes_what_it_does_not_catch() -> None:
    definition = workflow(
        f"""
        do:
          - outer:
              try:
                - inner:
                    try:
                      - boom: {raising("https://example.com/a", 400)}
                    catch:
                      errors: {{with: {{status: 500}}}}
                      do: [{{never: {{set: {{who: inner}}}}}}]
                - skipped: {{set: {{who: skipped}}}}
              catch:
                as: problem
                do: [{{handled: {{set: {{who: outer, status: '${{ $problem.status }}'}}}}}}]
        """
    )
    assert run(definition).output == {"who": "outer", "status": 400}


def test_an_error_in_the_handler_is_not_caught_by_the_same_try() -> None:
    definition = workflow(
        f"""
        do:
          - outer:
              try:
                - t:
                    try:
                      - boom: {raising("https://example.com/a", 400)}
                    catch:
                      do: [{{again: {raising("https://example.com/b", 401)}}}]
              catch:
                errors: {{with: {{status: 401}}}}
                do: [{{ok: {{set: {{handledBy: outer}}}}}}]
        """
    )
    assert run(definition).output == {"handledBy": "outer"}


def test_a_failing_catch_condition_faults_past_its_try() -> None:
    definition = workflow(
        f"""
        do:
          - t:
              try:
                - boom: {raising("https://example.com/a", 400)}
              catch:
                when: '${{ .status + "x" }}'
        """
    )
    result = run(definition)
    assert result.error is not None
    assert (result.error["type"], result.error["instance"]) == (
        ERROR_TYPE_PREFIX + "expression",
        "/do/0/t",
    )


def test_a_try_inside_a_loop_sees_the_loop_variables_in_its_handler() -> None:
    definition = workflow(
        f"""
        do:
          - each:
              for: {{each: n, in: .items}}
              do:
                - t:
                    try:
                      - boom: {raising("https://example.com/a", 400)}
                    catch:
                      do: [{{note: {{set: {{seen: '${{ (.seen // []) + [$n] }}'}}}}}}]
        """
    )
    assert run(definition, {"items": [1, 2]}).output == {"seen": [1, 2]}


# -- timeouts ------------------------------------------------------------------------------------


def test_a_task_timeout_inside_a_try_is_caught() -> None:
    definition = workflow(
        """
        do:
          - t:
              try:
                - slow: {call: ping, timeout: {after: PT1S}}
              catch:
                errors: {with: {type: 'https://serverlessworkflow.io/dsl/errors/types/timeout'}}
                as: e
                do: [{late: {set: {status: '${ $e.status }', at: '${ $e.instance }'}}}]
        """
    )
    first = begin(definition)
    caught = advance(definition, first.state, signals=[], now_ms=T0 + 1_000)
    assert caught.output == {"status": 408, "at": "/do/0/t/try/0/slow"}
    late = advance(definition, caught.state, signals=[result_signal("e1")], now_ms=T0 + 2_000)
    assert late.changed is False


def test_the_timeout_of_the_try_itself_is_not_caught_by_it() -> None:
    definition = workflow(
        """
        do:
          - t:
              timeout: {after: PT5S}
              try:
                - pause: {wait: PT1M}
              catch: {}
        """
    )
    first = begin(definition)
    assert first.wake_at_ms == T0 + 5_000
    failed = advance(definition, first.state, signals=[], now_ms=T0 + 5_000)
    assert failed.error is not None
    assert (failed.error["status"], failed.error["instance"], failed.error["detail"]) == (
        408,
        "/do/0/t",
        "timed out after 5000 ms",
    )


# -- retries -------------------------------------------------------------------------------------

RETRY = """
use:
  retries:
    default:
      delay: {{seconds: 3}}
      backoff: {{{backoff}: {{}}}}
      limit: {{attempt: {{count: 2}}}}
do:
  - tryGetPet:
      try:
        - getPet:
            call: http
            with: {{method: get, endpoint: 'https://petstore.example/pet/1'}}
      catch:
        errors: {{with: {{type: '{error}', status: 503}}}}
        retry: {retry}
        {handler}
"""


def retry_workflow(backoff: str = "exponential", retry: str = "default", handler: str = "") -> Any:
    return workflow(
        RETRY.format(backoff=backoff, error=COMMUNICATION_ERROR, retry=retry, handler=handler)
    )


def fail_attempt(definition: Any, result: TurnResult, now: int) -> TurnResult:
    effect = result.effects[-1]
    inbox = [result_signal(effect.effect_id, error=UNAVAILABLE)]
    return advance(definition, result.state, signals=inbox, now_ms=now)


def test_an_error_result_is_retried_after_the_backoff_then_succeeds() -> None:
    definition = retry_workflow()
    first = begin(definition)
    backoff = fail_attempt(definition, first, T0 + 100)
    assert backoff.outcome is TurnOutcome.WAITING
    assert backoff.current_step == "/do/0/tryGetPet"
    assert backoff.wake_at_ms == T0 + 100 + 3_000
    assert backoff.effects == []
    early = advance(definition, backoff.state, signals=[], now_ms=T0 + 3_099)
    assert early.changed is False
    retried = advance(definition, backoff.state, signals=[], now_ms=T0 + 3_100)
    assert [e.effect_id for e in retried.effects] == ["e2"]
    assert task_events(retried, "task.retried") == ["/do/0/tryGetPet"]
    second = fail_attempt(definition, retried, T0 + 3_200)
    assert second.wake_at_ms == T0 + 3_200 + 6_000  # exponential: 3 s, then 6 s
    third = advance(definition, second.state, signals=[], now_ms=T0 + 9_200)
    done = advance(
        definition,
        third.state,
        signals=[result_signal("e3", value={"id": 1})],
        now_ms=T0 + 9_300,
    )
    assert done.output == {"id": 1}
    # The late result of an abandoned attempt, arriving now, is dropped.
    assert done.outcome is TurnOutcome.COMPLETED


def test_exhausted_retries_fault_with_the_last_error() -> None:
    definition = retry_workflow(backoff="constant")
    result = begin(definition)
    wakes = []
    for attempt in range(3):
        result = fail_attempt(definition, result, T0 + 10_000 * attempt)
        if result.outcome is TurnOutcome.WAITING:
            wakes.append(result.wake_at_ms)
            result = advance(definition, result.state, signals=[], now_ms=result.wake_at_ms or 0)
    assert wakes == [T0 + 3_000, T0 + 13_000]  # constant: 3 s each time, two retries
    assert result.outcome is TurnOutcome.FAILED
    assert result.error is not None
    assert (result.error["status"], result.error["instance"]) == (
        503,
        "/do/0/tryGetPet/try/0/getPet",
    )


def test_exhausted_retries_with_a_handler_run_the_handler() -> None:
    definition = retry_workflow(
        retry="{delay: PT1S, limit: {attempt: {count: 0}}}",
        handler="do: [{compensate: {set: {gaveUp: '${ $error.status }'}}}]",
    )
    first = begin(definition)
    done = fail_attempt(definition, first, T0)
    assert done.output == {"gaveUp": 503}


def test_linear_backoff_and_an_inline_policy() -> None:
    definition = retry_workflow(
        retry="{delay: {milliseconds: 100}, backoff: {linear: {}}, limit: {attempt: {count: 3}}}"
    )
    result = begin(definition)
    delays: list[int] = []
    for _ in range(3):
        now = T0 + 1_000_000 * (len(delays) + 1)
        result = fail_attempt(definition, result, now)
        assert result.wake_at_ms is not None
        delays.append(result.wake_at_ms - now)
        result = advance(definition, result.state, signals=[], now_ms=result.wake_at_ms)
    assert delays == [100, 200, 300]


def test_a_retry_policy_condition_can_refuse_a_retry() -> None:
    definition = retry_workflow(
        retry="{delay: PT1S, when: '${ .status == 500 }'}",
        handler="do: [{handled: {set: {handled: true}}}]",
    )
    first = begin(definition)
    assert fail_attempt(definition, first, T0).output == {"handled": True}


def test_the_retry_duration_limit_stops_retries() -> None:
    definition = retry_workflow(retry="{delay: PT10S, limit: {duration: PT15S}}")
    first = begin(definition)
    backoff = fail_attempt(definition, first, T0 + 1_000)
    assert backoff.wake_at_ms == T0 + 11_000
    retried = advance(definition, backoff.state, signals=[], now_ms=T0 + 11_000)
    failed = fail_attempt(definition, retried, T0 + 11_500)  # next try would start at 21.5 s
    assert failed.outcome is TurnOutcome.FAILED


def test_each_attempt_is_bounded_by_the_attempt_duration() -> None:
    definition = workflow(
        """
        do:
          - t:
              try:
                - slow: {call: ping}
              catch:
                errors: {with: {type: 'https://serverlessworkflow.io/spec/1.0.0/errors/timeout'}}
                retry:
                  delay: PT1S
                  limit: {attempt: {count: 1, duration: PT5S}}
        """
    )
    first = begin(definition)
    assert first.wake_at_ms == T0 + 5_000
    backoff = advance(definition, first.state, signals=[], now_ms=T0 + 5_000)
    assert backoff.outcome is TurnOutcome.WAITING and backoff.wake_at_ms == T0 + 6_000
    retried = advance(definition, backoff.state, signals=[], now_ms=T0 + 6_000)
    assert [e.effect_id for e in retried.effects] == ["e2"]
    assert retried.wake_at_ms == T0 + 11_000
    failed = advance(definition, retried.state, signals=[], now_ms=T0 + 11_000)
    assert failed.error is not None
    assert (failed.error["type"], failed.error["instance"]) == (TIMEOUT_ERROR, "/do/0/t")


def test_jitter_is_deterministic_and_within_bounds() -> None:
    values = {jitter_ms(100, 200, f"instance|/do/0/t|{n}") for n in range(50)}
    assert all(100 <= v <= 200 for v in values) and len(values) > 10
    assert jitter_ms(100, 200, "seed") == jitter_ms(100, 200, "seed")
    assert jitter_ms(5, 5, "seed") == 5
    assert [retry_delay_ms("exponential", 100, n) for n in (1, 2, 3)] == [100, 200, 400]

    definition = retry_workflow(
        retry="{delay: PT1S, jitter: {from: {milliseconds: 10}, to: {milliseconds: 900}}}"
    )
    first = begin(definition)
    one = fail_attempt(definition, first, T0)
    two = fail_attempt(definition, first, T0)
    assert one.wake_at_ms == two.wake_at_ms
    assert one.wake_at_ms is not None and T0 + 1_010 <= one.wake_at_ms <= T0 + 1_900


def test_retrying_a_raise_runs_the_try_tasks_again_from_the_first() -> None:
    definition = workflow(
        f"""
        do:
          - t:
              try:
                - count: {{set: {{n: '${{ .n + 1 }}'}}}}
                - boom: {raising("https://example.com/flaky", 503)}
              catch:
                retry: {{delay: PT1S, limit: {{attempt: {{count: 2}}}}}}
        """
    )
    result = begin(definition, {"n": 0})
    starts = task_events(result, "task.started").count("/do/0/t/try/0/count")
    while result.outcome is TurnOutcome.WAITING:
        assert result.wake_at_ms is not None
        result = advance(definition, result.state, signals=[], now_ms=result.wake_at_ms)
        starts += task_events(result, "task.started").count("/do/0/t/try/0/count")
    assert starts == 3
    assert result.outcome is TurnOutcome.FAILED


def test_unknown_retry_policy_names_are_refused() -> None:
    from okra_sidecar.errors import DefinitionError

    with pytest.raises(DefinitionError) as caught:
        retry_workflow(retry="missing")
    assert (caught.value.path, caught.value.problem) == (
        "/do/0/tryGetPet/catch/retry",
        "'missing' is not a retry policy defined in use.retries",
    )
