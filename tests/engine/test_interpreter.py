"""The pure interpreter: task flow, data flow, faults and the guarantees of a turn."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from okra_sidecar import __version__
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, advance, start_state

from .support import T0, begin, run, task_events, workflow

EXPRESSION_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/expression"
VALIDATION_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/validation"


def test_set_tasks_run_in_order_in_one_turn() -> None:
    definition = workflow(
        """
        do:
          - first: {set: {n: '${ .n + 1 }'}}
          - second: {set: {n: '${ .n * 10 }'}}
          - third: {set: {n: '${ .n + 2 }', done: true}}
        """
    )
    result = begin(definition, {"n": 1})
    assert result.outcome is TurnOutcome.COMPLETED
    assert result.output == {"n": 22, "done": True}
    assert (result.current_step, result.error, result.wake_at_ms) == ("", None, None)
    assert result.changed and result.consumed == []
    assert [e["type"] for e in result.history] == [
        "workflow.started",
        *["task.started", "task.completed"] * 3,
        "workflow.completed",
    ]
    assert task_events(result) == ["/do/0/first", "/do/1/second", "/do/2/third"]
    assert result.state["status"] == "completed"
    assert result.state["output"] == {"n": 22, "done": True}


def test_set_with_a_direct_expression() -> None:
    definition = workflow("do: [{pick: {set: '${ .items | map(. * 2) }'}}]")
    assert run(definition, {"items": [1, 2]}).output == [2, 4]


def test_then_jumps_to_a_named_task_and_end_stops() -> None:
    definition = workflow(
        """
        do:
          - a: {set: {seen: '${ [\"a\"] }'}, then: c}
          - b: {set: {seen: '${ .seen + [\"b\"] }'}, then: end}
          - c: {set: {seen: '${ .seen + [\"c\"] }'}, then: b}
          - d: {set: {seen: never}}
        """
    )
    result = run(definition)
    assert result.output == {"seen": ["a", "c", "b"]}
    assert task_events(result) == ["/do/0/a", "/do/2/c", "/do/1/b"]


def test_exit_leaves_the_enclosing_do_and_continues_after_it() -> None:
    definition = workflow(
        """
        do:
          - outer:
              do:
                - one: {set: {path: '${ [\"one\"] }'}, then: exit}
                - two: {set: {path: never}}
          - after: {set: {path: '${ .path + [\"after\"] }'}}
        """
    )
    result = run(definition)
    assert result.output == {"path": ["one", "after"]}
    assert task_events(result) == ["/do/0/outer/do/0/one", "/do/0/outer", "/do/1/after"]


def test_exit_at_the_top_level_ends_the_workflow() -> None:
    definition = workflow(
        """
        do:
          - one: {set: {x: 1}, then: exit}
          - two: {set: {x: 2}}
        """
    )
    assert run(definition).output == {"x": 1}


def test_end_inside_a_nested_do_ends_the_workflow() -> None:
    definition = workflow(
        """
        do:
          - outer:
              output: {as: {wrapped: '${ . }'}}
              do:
                - inner:
                    do:
                      - stop: {set: {x: 1}, then: end}
                      - never: {set: {x: 2}}
          - after: {set: {x: 3}}
        output: {as: '${ {final: .x} }'}
        """
    )
    result = run(definition)
    assert result.output == {"final": 1}  # composites are not completed by `end`
    assert task_events(result) == ["/do/0/outer/do/0/inner/do/0/stop"]


def test_nested_do_data_flow() -> None:
    definition = workflow(
        """
        do:
          - compose:
              input: {from: .order}
              output: {as: '${ {order: $input.id, result: .} }'}
              do:
                - price: {set: {total: '${ .qty * .unit }'}}
                - tax: {set: {total: '${ .total * 1.5 }'}}
        """
    )
    result = run(definition, {"order": {"id": "o-1", "qty": 2, "unit": 10}})
    assert result.output == {"order": "o-1", "result": {"total": 30}}
    assert task_events(result, "task.started") == [
        "/do/0/compose",
        "/do/0/compose/do/0/price",
        "/do/0/compose/do/1/tax",
    ]


def test_if_false_skips_the_task_and_its_then() -> None:
    definition = workflow(
        """
        do:
          - refuse:
              if: .age < 18
              raise: {error: {type: 'https://example.com/minor', status: 403}}
              then: end
          - greet: {set: {greeting: '${ "hello " + .name }'}}
        """
    )
    result = run(definition, {"age": 30, "name": "Ada"})
    assert result.output == {"greeting": "hello Ada"}
    assert task_events(result, "task.started") == ["/do/1/greet"]
    minor = run(definition, {"age": 12, "name": "Bo"})
    assert minor.outcome is TurnOutcome.FAILED
    assert minor.error is not None and minor.error["status"] == 403


def test_skipped_task_passes_its_input_through() -> None:
    definition = workflow("do: [{never: {if: '${ false }', set: {x: 1}}}]")
    assert run(definition, {"kept": True}).output == {"kept": True}


def test_export_replaces_the_context() -> None:
    definition = workflow(
        """
        do:
          - login:
              set: {user: ada}
              export: {as: '$context + {user: .user}'}
          - count:
              set: {n: 1}
              export: {as: '${ $context + {n: $output.n, input: $input, raw: $task.output} }'}
          - show:
              set: {who: '${ $context.user }', n: '${ $context.n }'}
        """
    )
    result = run(definition)
    assert result.output == {"who": "ada", "n": 1}
    assert result.context == {"user": "ada", "n": 1, "input": {"user": "ada"}, "raw": {"n": 1}}
    assert result.state["context"] == result.context


def test_export_must_produce_an_object() -> None:
    definition = workflow("do: [{a: {set: {x: 1}, export: {as: .x}}}]")
    result = run(definition)
    assert result.error is not None
    assert result.error["type"] == VALIDATION_ERROR
    assert result.error["detail"] == "export.as: the context must be an object, not a number"


def test_switch_takes_the_first_matching_case() -> None:
    definition = workflow(
        """
        do:
          - route:
              switch:
                - big: {when: .n > 100, then: large}
                - some: {when: .n > 10, then: medium}
                - other: {then: small}
          - large: {set: {size: large}, then: end}
          - medium: {set: {size: medium}, then: end}
          - small: {set: {size: small}, then: end}
        """
    )
    assert run(definition, {"n": 500}).output == {"size": "large"}
    assert run(definition, {"n": 50}).output == {"size": "medium"}
    assert run(definition, {"n": 5}).output == {"size": "small"}


def test_switch_without_a_match_follows_the_task_then() -> None:
    definition = workflow(
        """
        do:
          - route:
              switch:
                - red: {when: '.color == "red"', then: paint}
              then: end
          - paint: {set: {painted: true}}
        """
    )
    result = run(definition, {"color": "blue"})
    assert result.output == {"color": "blue"}
    no_then = workflow(
        """
        do:
          - route: {switch: [{red: {when: '.color == "red"', then: exit}}]}
          - paint: {set: {painted: true}}
        """
    )
    assert run(no_then, {"color": "blue"}).output == {"painted": True}


def test_goto_loop_counts_until_done() -> None:
    definition = workflow(
        """
        do:
          - bump: {set: {n: '${ .n + 1 }'}}
          - check:
              switch:
                - more: {when: .n < 5, then: bump}
                - enough: {then: continue}
          - done: {set: {total: '${ .n }'}}
        """
    )
    assert run(definition, {"n": 0}).output == {"total": 5}


def test_max_steps_yields_running_and_resumes() -> None:
    definition = workflow(
        """
        do:
          - bump: {set: {n: '${ .n + 1 }'}}
          - check: {switch: [{more: {when: .n < 10, then: bump}}]}
        """
    )
    first = begin(definition, {"n": 0}, max_steps=5)
    assert first.outcome is TurnOutcome.RUNNING
    assert first.current_step == "/do/1/check"  # bump, check, bump, check, bump
    assert first.changed and first.wake_at_ms is None
    assert len(task_events(first, "task.started")) == 5
    result = first
    turns = 1
    while result.outcome is TurnOutcome.RUNNING:
        result = advance(definition, result.state, signals=(), now_ms=T0, max_steps=5)
        turns += 1
    assert result.output == {"n": 10}
    assert turns == 4  # 20 task runs, 5 per turn


def test_an_endless_loop_cannot_hang_a_turn() -> None:
    definition = workflow("do: [{spin: {set: {x: 1}, then: spin}}]")
    result = begin(definition, max_steps=50)
    assert result.outcome is TurnOutcome.RUNNING
    assert len(task_events(result)) == 50


def test_raise_inline_error_with_expressions() -> None:
    definition = load_raise()
    result = run(definition, {"who": "ada"})
    assert result.outcome is TurnOutcome.FAILED
    assert result.error == {
        "type": "https://example.com/errors/denied",
        "status": 403,
        "title": "Denied",
        "detail": "ada may not run wf:1.0.0",
        "instance": "/do/0/deny",
    }
    assert result.output is None and result.current_step == ""
    assert [e["type"] for e in result.history][-2:] == ["task.faulted", "workflow.faulted"]
    assert result.state["status"] == "failed" and result.state["error"] == result.error


def load_raise() -> Any:
    return workflow(
        """
        do:
          - deny:
              raise:
                error:
                  type: https://example.com/errors/denied
                  status: 403
                  title: Denied
                  detail: >-
                    ${ "\\(.who) may not run \\($workflow.definition.document.name):\\(
                    $workflow.definition.document.version)" }
        """
    )


def test_raise_a_reusable_error_with_its_own_instance() -> None:
    definition = workflow(
        """
        use:
          errors:
            notImplemented:
              type: https://example.com/errors/not-implemented
              status: 501
              instance: /somewhere
        do:
          - todo: {raise: {error: notImplemented}}
        """
    )
    result = run(definition)
    assert result.error == {
        "type": "https://example.com/errors/not-implemented",
        "status": 501,
        "title": None,
        "detail": None,
        "instance": "/somewhere",
    }
    assert task_events(result, "task.faulted") == ["/do/0/todo"]


def test_expression_error_faults_with_the_spec_error() -> None:
    definition = workflow(
        """
        do:
          - ok: {set: {name: ada}}
          - broken: {set: {x: '${ .name.first }'}}
        """
    )
    result = run(definition)
    assert result.outcome is TurnOutcome.FAILED
    assert result.error == {
        "type": EXPRESSION_ERROR,
        "status": 400,
        "title": "Expression Error",
        "detail": "expression '${ .name.first }' failed: Cannot index string with string "
        '("first")',
        "instance": "/do/1/broken",
    }
    assert task_events(result, "task.faulted") == ["/do/1/broken"]


def test_workflow_input_and_output_transformations() -> None:
    definition = workflow(
        """
        input: {from: '${ {n: .value, raw: $workflow.input} }'}
        do:
          - double: {set: {n: '${ .n * 2 }', ctx: '${ $context }'}}
        output: {as: .n}
        """
    )
    assert run(definition, {"value": 21}).output == 42


def test_workflow_input_is_validated() -> None:
    definition = workflow(
        """
        input:
          schema:
            document: {type: object, required: [orderId]}
        do: [{a: {set: {ok: true}}}]
        """
    )
    assert run(definition, {"orderId": "o-1"}).outcome is TurnOutcome.COMPLETED
    result = run(definition, {"other": 1})
    assert result.error is not None
    assert result.error["type"] == VALIDATION_ERROR
    assert result.error["detail"] == "workflow input: 'orderId' is a required property"
    assert result.error["instance"] == "/"


def test_task_schemas_are_enforced() -> None:
    definition = workflow(
        """
        do:
          - make:
              set: {n: '${ .n }'}
              output:
                schema: {document: {type: object, properties: {n: {type: integer}}}}
        """
    )
    assert run(definition, {"n": 3}).output == {"n": 3}
    result = run(definition, {"n": "three"})
    assert result.error is not None
    assert result.error["detail"] == "task output: 'three' is not of type 'integer' (at /n)"
    assert result.error["instance"] == "/do/0/make"


def test_runtime_arguments() -> None:
    definition = workflow(
        """
        do:
          - look:
              input: {from: '${ {given: .} }'}
              set:
                task: '${ $task | {name, reference, input, startedAt} }'
                workflow: '${ $workflow | {id, input, startedAt, name: .definition.document.name} }'
                runtime: ${ $runtime }
                input: ${ $input }
                secrets: ${ $secrets }
                authorization: ${ $authorization }
              output:
                as: '${ . + {raw: $task.output.input} }'
        """
    )
    started = {
        "iso8601": "2023-11-14T22:13:20.000Z",
        "epoch": {"seconds": T0 // 1000, "milliseconds": T0},
    }
    result = run(definition, {"x": 1})
    assert result.output == {
        "task": {
            "name": "look",
            "reference": "/do/0/look",
            "input": {"x": 1},
            "startedAt": started,
        },
        "workflow": {"id": "instance-1", "input": {"x": 1}, "startedAt": started, "name": "wf"},
        "runtime": {"name": "okra-sidecar", "version": __version__, "metadata": {}},
        "input": {"given": {"x": 1}},
        "secrets": {},
        "authorization": None,
        "raw": {"given": {"x": 1}},
    }


def test_now_is_the_turn_clock() -> None:
    definition = workflow("do: [{stamp: {set: {at: '${ now }'}}}]")
    assert run(definition).output == {"at": T0 / 1000}


def test_same_turn_twice_gives_the_same_result_and_never_mutates_state() -> None:
    definition = workflow(
        """
        do:
          - a:
              do:
                - b: {set: {n: '${ .n + 1 }'}, export: {as: '{last: .n}'}}
                - c: {wait: PT1S}
          - d: {set: {n: '${ .n + $context.last }'}}
        """
    )
    state = start_state(definition, instance_id="i", workflow_input={"n": 1}, now_ms=T0)
    frozen = copy.deepcopy(state)
    first = advance(definition, state, signals=(), now_ms=T0)
    again = advance(definition, state, signals=(), now_ms=T0)
    assert first == again
    assert state == frozen
    waiting = copy.deepcopy(first.state)
    done = advance(definition, first.state, signals=(), now_ms=T0 + 1000)
    assert done == advance(definition, first.state, signals=(), now_ms=T0 + 1000)
    assert first.state == waiting
    assert done.output == {"n": 4}


def test_a_finished_instance_does_not_change() -> None:
    definition = workflow("do: [{a: {set: {x: 1}}}]")
    done = run(definition)
    again = advance(definition, done.state, signals=(), now_ms=T0 + 5)
    assert again.state is done.state
    assert (again.outcome, again.output, again.changed, again.history) == (
        TurnOutcome.COMPLETED,
        {"x": 1},
        False,
        [],
    )
    failed = run(workflow("do: [{a: {raise: {error: {type: 'https://e', status: 500}}}}]"))
    assert advance(definition, failed.state, signals=(), now_ms=T0).outcome is TurnOutcome.FAILED


def test_workflow_timeout_faults_a_waiting_instance() -> None:
    definition = workflow(
        """
        timeout: {after: PT10S}
        do: [{hold: {wait: PT1M}}]
        """
    )
    first = begin(definition)
    assert first.wake_at_ms == T0 + 10_000
    early = advance(definition, first.state, signals=(), now_ms=T0 + 9_999)
    assert early.changed is False
    late = advance(definition, first.state, signals=(), now_ms=T0 + 10_000)
    assert late.outcome is TurnOutcome.FAILED
    assert late.error == {
        "type": "https://serverlessworkflow.io/spec/1.0.0/errors/timeout",
        "status": 408,
        "title": "Timeout",
        "detail": "timed out after 10000 ms",
        "instance": "/",
    }


def test_composite_timeout_names_the_composite() -> None:
    definition = workflow(
        """
        do:
          - phase:
              timeout: {after: {seconds: 5}}
              do: [{hold: {wait: PT1M}}]
        """
    )
    first = begin(definition)
    assert first.wake_at_ms == T0 + 5_000
    late = advance(definition, first.state, signals=(), now_ms=T0 + 6_000)
    assert late.error is not None and late.error["instance"] == "/do/0/phase"


def test_a_version_1_state_goes_on_as_a_version_2_one() -> None:
    definition = workflow("do: [{hold: {wait: PT1S}}, {after: {call: ping}}]")
    waiting = begin(definition).state
    old = {k: v for k, v in waiting.items() if k != "seq"}
    old["v"] = 1
    result = advance(definition, old, signals=(), now_ms=T0 + 1_000)
    assert (result.state["v"], result.state["seq"]) == (2, 1)
    assert [e.effect_id for e in result.effects] == ["e1"]
    with pytest.raises(ValueError, match="unknown state version 3"):
        advance(definition, {**waiting, "v": 3}, signals=(), now_ms=T0)
