"""for loops and fork branches: data flow, variables, effects per item and per branch."""

from __future__ import annotations

import copy

import pytest

from okra_sidecar.engine.interpreter.effects import EffectKind
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, advance
from okra_sidecar.errors import DefinitionError

from .support import T0, begin, result_signal, run, signal, task_events, workflow

EXPRESSION_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/expression"


# -- for -----------------------------------------------------------------------------------------


def test_for_passes_each_iteration_output_to_the_next() -> None:
    definition = workflow(
        """
        do:
          - loopColors:
              for: {each: color, in: '.colors'}
              do:
                - markProcessed:
                    set:
                      processed: '${ {colors: (.processed.colors + [$color]),
                                      indexes: (.processed.indexes + [$index])} }'
          - after: {set: {done: '${ .processed.colors | length }'}}
        """
    )
    result = run(definition, {"colors": ["red", "green", "blue"]})
    assert result.output == {"done": 3}
    assert task_events(result).count("/do/0/loopColors/do/0/markProcessed") == 3


@pytest.mark.parametrize("items", [[], None])
def test_for_over_nothing_outputs_its_input(items: list[int] | None) -> None:
    definition = workflow(
        """
        do:
          - loop:
              for: {in: .items}
              do: [{never: {set: {x: 1}}}]
        """
    )
    assert run(definition, {"items": items}).output == {"items": items}


def test_for_over_a_non_array_faults() -> None:
    definition = workflow("do: [{loop: {for: {in: .items}, do: [{x: {set: {a: 1}}}]}}]")
    result = run(definition, {"items": {"a": 1}})
    assert result.error is not None
    assert (result.error["type"], result.error["detail"], result.error["instance"]) == (
        EXPRESSION_ERROR,
        "'for.in' must give an array to enumerate, not an object",
        "/do/0/loop",
    )


def test_for_while_stops_the_loop_and_at_names_the_index() -> None:
    definition = workflow(
        """
        do:
          - loop:
              for: {each: n, in: .items, at: i}
              while: '${ (.sum // 0) + $n <= 6 }'
              do:
                - add: {set: {sum: '${ (.sum // 0) + $n }', last: '${ $i }'}}
        """
    )
    assert run(definition, {"items": [1, 2, 3, 4]}).output == {"sum": 6, "last": 2}


def test_exit_leaves_the_loop() -> None:
    definition = workflow(
        """
        do:
          - loop:
              for: {in: .items}
              do:
                - add: {set: {seen: '${ (.seen // []) + [$item] }'}}
                - stop:
                    switch:
                      - enough: {when: '${ $item == 2 }', then: exit}
                      - more: {then: continue}
                - next: {set: {seen: '${ .seen }'}}
          - after: {set: {final: '${ .seen }'}}
        """
    )
    assert run(definition, {"items": [1, 2, 3]}).output == {"final": [1, 2]}


def test_nested_loops_see_both_variables() -> None:
    definition = workflow(
        """
        do:
          - rows:
              for: {each: row, in: .rows, at: r}
              do:
                - cols:
                    for: {each: col, in: .cols}
                    do:
                      - cell:
                          set: '${ . + {cells: ((.cells // []) + ["\\($row)\\($col)\\($r)"])} }'
        """
    )
    output = run(definition, {"rows": ["a", "b"], "cols": [1, 2]}).output
    assert output["cells"] == ["a10", "a20", "b11", "b21"]


def test_loop_variables_are_not_in_scope_outside_the_loop() -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(
            """
            do:
              - loop:
                  for: {each: pet, in: .pets}
                  do: [{x: {set: {a: 1}}}]
                  output: {as: '${ $pet }'}
            """
        )
    assert caught.value.path == "/do/0/loop/output/as"
    assert "$pet is not defined" in caught.value.problem


@pytest.mark.parametrize(
    ("loop", "path", "problem"),
    [
        ("{each: input, in: .x}", "/do/0/l/for/each", "'input' is a reserved name"),
        ("{each: 'a-b', in: .x}", "/do/0/l/for/each", "'a-b' is not a valid variable name"),
        ("{each: a, at: a, in: .x}", "/do/0/l/for", "'each' and 'at' must name different"),
        ("{each: a}", "/do/0/l/for", "'for' needs 'in'"),
    ],
)
def test_bad_loops_are_refused(loop: str, path: str, problem: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(f"do: [{{l: {{for: {loop}, do: [{{x: {{set: {{a: 1}}}}}}]}}}}]")
    assert caught.value.path == path
    assert caught.value.problem.startswith(problem)


def test_for_with_an_effect_per_item() -> None:
    definition = workflow(
        """
        do:
          - charge:
              for: {each: order, in: .orders}
              do:
                - pay:
                    call: payments.charge
                    with: {order: '${ $order.id }'}
                    output: {as: '${ $input + {paid: (($input.paid // []) + [.receipt])} }'}
        """
    )
    result = begin(definition, {"orders": [{"id": "a"}, {"id": "b"}]})
    receipts = []
    while result.outcome is TurnOutcome.WAITING:
        (effect,) = result.effects
        assert effect.task == "/do/0/charge/do/0/pay"
        receipts.append(effect.request["arguments"]["order"])
        value = {"receipt": f"r-{effect.request['arguments']['order']}"}
        inbox = [result_signal(effect.effect_id, value=value)]
        result = advance(definition, result.state, signals=inbox, now_ms=T0)
    assert receipts == ["a", "b"]
    assert result.output["paid"] == ["r-a", "r-b"]


def test_a_loop_timeout_bounds_all_its_iterations() -> None:
    definition = workflow(
        """
        do:
          - loop:
              for: {in: .items}
              timeout: {after: PT10S}
              do: [{pause: {wait: PT6S}}]
        """
    )
    first = begin(definition, {"items": [1, 2]})
    second = advance(definition, first.state, signals=[], now_ms=T0 + 6_000)
    assert second.outcome is TurnOutcome.WAITING and second.wake_at_ms == T0 + 10_000
    failed = advance(definition, second.state, signals=[], now_ms=T0 + 10_000)
    assert failed.error is not None
    assert (failed.error["status"], failed.error["instance"]) == (408, "/do/0/loop")


# -- fork ----------------------------------------------------------------------------------------

TWO_CALLS = """
do:
  - both:
      fork:
        compete: {compete}
        branches:
          - nurse:
              call: http
              with:
                method: put
                endpoint: https://hospital.example/nurse
                body: '${{ .room }}'
          - doctor:
              call: http
              with: {{method: put, endpoint: 'https://hospital.example/doctor'}}
              output: {{as: '${{ {{doctor: .}} }}'}}
"""


def test_fork_outputs_each_branch_in_declaration_order_whatever_the_arrival() -> None:
    definition = workflow(TWO_CALLS.format(compete="false"))
    first = begin(definition, {"room": 7})
    assert first.outcome is TurnOutcome.WAITING
    assert first.current_step == "/do/0/both/fork/branches/0/nurse"
    assert [(e.effect_id, e.task) for e in first.effects] == [
        ("e1", "/do/0/both/fork/branches/0/nurse"),
        ("e2", "/do/0/both/fork/branches/1/doctor"),
    ]
    assert first.effects[0].request["body"] == 7
    frozen = copy.deepcopy(first.state)
    for order in (["e1", "e2"], ["e2", "e1"]):
        result = first
        for effect_id in order:
            inbox = [result_signal(effect_id, value=effect_id)]
            result = advance(definition, result.state, signals=inbox, now_ms=T0)
        assert result.output == ["e1", {"doctor": "e2"}]
        assert task_events(result)[-1] == "/do/0/both"
    both = advance(
        definition,
        first.state,
        signals=[result_signal("e2", value="e2"), result_signal("e1", value="e1")],
        now_ms=T0,
    )
    assert both.output == ["e1", {"doctor": "e2"}]
    assert first.state == frozen


def test_compete_the_first_result_wins_and_the_losers_results_are_dropped() -> None:
    definition = workflow(TWO_CALLS.format(compete="true"))
    first = begin(definition, {"room": 7})
    won = advance(
        definition, first.state, signals=[result_signal("e2", value="doc")], now_ms=T0 + 1
    )
    assert won.outcome is TurnOutcome.COMPLETED
    assert won.output == {"doctor": "doc"}
    assert task_events(won, "task.cancelled") == ["/do/0/both/fork/branches/0/nurse"]
    tie = advance(
        definition,
        first.state,
        signals=[result_signal("e2", value="doc"), result_signal("e1", value="nurse")],
        now_ms=T0 + 1,
    )
    assert tie.output == "nurse"  # same turn: declaration order decides
    assert sorted(tie.consumed) == ["result-e1", "result-e2"]


def test_compete_ctk_with_sets_picks_the_first_branch() -> None:
    definition = workflow(
        """
        do:
          - branchWithCompete:
              fork:
                compete: true
                branches:
                  - setRed: {set: {colors: '${ .colors + ["red"] }'}}
                  - setGreen: {set: {colors: '${ .colors + ["green"] }'}}
        """
    )
    result = run(definition)
    assert result.output == {"colors": ["red"]}
    assert "/do/0/branchWithCompete/fork/branches/1/setGreen" not in task_events(
        result, "task.started"
    )


def test_a_fault_in_a_branch_faults_the_fork_and_an_outer_try_catches_it() -> None:
    definition = workflow(
        """
        do:
          - guarded:
              try:
                - split:
                    fork:
                      branches:
                        - slow: {listen: {to: {one: {with: {type: never}}}}}
                        - bad: {raise: {error: {type: 'https://example.com/bad', status: 400}}}
              catch:
                as: e
                do: [{note: {set: {failed: '${ $e.instance }'}}}]
        """
    )
    result = begin(definition)
    assert result.output == {"failed": "/do/0/guarded/try/0/split/fork/branches/1/bad"}
    assert result.subscriptions == []


def test_branches_wait_in_their_own_tasks_and_see_loop_variables() -> None:
    definition = workflow(
        """
        do:
          - each:
              for: {each: who, in: .people}
              do:
                - ask:
                    fork:
                      branches:
                        - yes: {listen: {to: {one: {with: {type: '${ "yes-" + $who }'}}}}}
                        - name: {set: {name: '${ $who }'}}
        """
    )
    first = begin(definition, {"people": ["ada"]})
    assert first.outcome is TurnOutcome.WAITING
    assert first.current_step == "/do/0/each/do/0/ask/fork/branches/0/yes"
    assert first.subscriptions == [{"task": "/do/0/each/do/0/ask/fork/branches/0/yes", "with": {}}]
    done = advance(
        definition, first.state, signals=[signal("1-0", "yes-ada", {"ok": 1})], now_ms=T0
    )
    assert done.output == [[{"ok": 1}], {"name": "ada"}]


def test_a_fork_can_run_out_of_steps_and_go_on_next_turn() -> None:
    definition = workflow(
        """
        do:
          - split:
              fork:
                branches:
                  - a: {do: [{a1: {set: {a: 1}}}, {a2: {set: {a: 2}}}]}
                  - b: {do: [{b1: {set: {b: 1}}}, {b2: {set: {b: 2}}}]}
        """
    )
    result = begin(definition, max_steps=3)
    assert result.outcome is TurnOutcome.RUNNING
    assert result.current_step == "/do/0/split/fork/branches/0/a/do/1/a2"
    turns = 1
    while result.outcome is TurnOutcome.RUNNING:
        result = advance(definition, result.state, signals=[], now_ms=T0, max_steps=3)
        turns += 1
    assert result.output == [{"a": 2}, {"b": 2}]
    assert turns == 3


def test_a_fork_branch_cannot_jump_to_another_branch() -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(
            """
            do:
              - split:
                  fork:
                    branches:
                      - a: {set: {a: 1}, then: b}
                      - b: {set: {b: 1}}
            """
        )
    assert (caught.value.path, caught.value.problem) == (
        "/do/0/split/fork/branches/0/a/then",
        "a fork branch cannot jump to 'b'; use continue, exit or end",
    )


def test_a_fork_timeout_abandons_its_branches() -> None:
    definition = workflow(
        """
        do:
          - split:
              timeout: {after: PT1S}
              fork:
                branches:
                  - a: {call: slow.a}
                  - b: {call: slow.b}
        """
    )
    first = begin(definition)
    assert [e.kind for e in first.effects] == [EffectKind.WORKER, EffectKind.WORKER]
    failed = advance(definition, first.state, signals=[result_signal("e1")], now_ms=T0 + 1_000)
    assert failed.error is not None
    assert (failed.error["status"], failed.error["instance"]) == (408, "/do/0/split")
    assert failed.consumed == ["result-e1"]


def test_end_in_a_branch_ends_the_workflow_with_its_data() -> None:
    definition = workflow(
        """
        do:
          - split:
              fork:
                branches:
                  - slow: {call: slow.work}
                  - stop: {set: {stopped: true}, then: end}
          - never: {set: {never: true}}
        """
    )
    result = begin(definition)
    assert result.outcome is TurnOutcome.COMPLETED
    assert result.output == {"stopped": True}
    assert result.effects == []  # the other branch's call was abandoned in the same turn
