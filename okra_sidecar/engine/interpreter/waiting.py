"""Tasks that wait on the outside: effects (call, run.workflow, emit) and listened events.

A task asking for outside work records an Effect and, unless it is fire-and-forget (emit, a run
without `await`), waits in a slot for the result event; a listen waits for inbox events and
runs its `foreach` tasks for each of them (listening.py matches them).
"""

from __future__ import annotations

from typing import Any

from okra_sidecar.engine.definitions import calls
from okra_sidecar.engine.definitions.expressions import ExpressionError
from okra_sidecar.engine.definitions.tasks import TaskNode
from okra_sidecar.engine.interpreter.arguments import TaskArguments, datetime_descriptor
from okra_sidecar.engine.interpreter.effects import RESULT_EVENT_TYPE, Effect, EffectKind
from okra_sidecar.engine.interpreter.faults import (
    WorkflowFaultError,
    expression_fault,
    outside_error,
)
from okra_sidecar.engine.interpreter.listening import (
    ListenProgress,
    Signal,
    advance_listen,
    expected_correlation,
    read_event,
)
from okra_sidecar.engine.interpreter.threads import Frame, Slot, awaited_effects
from okra_sidecar.engine.interpreter.turn import TurnBase

__all__ = [
    "ask",
    "drop_stale_results",
    "emit",
    "listened",
    "next_effect_id",
    "next_event",
    "next_listened",
    "results",
    "resume_effect",
    "resume_listen",
    "start_call",
    "start_listen",
    "start_run",
    "take",
]


def next_effect_id(turn: TurnBase) -> str:
    turn.seq += 1
    return f"e{turn.seq}"


def ask(
    turn: TurnBase, kind: EffectKind, node: TaskNode, request: dict[str, Any], slot: Slot | None
) -> str:
    """Record an effect; with a slot, the task waits in it for the result."""
    effect_id = next_effect_id(turn)
    timeout_ms = None
    if slot is not None:
        slot["effect"] = effect_id
        ends = [w for w in (slot.get("deadline"), turn.deadline) if w is not None]
        timeout_ms = max(min(ends) - turn.now, 0) if ends else None
        turn.slot = slot
    else:
        turn.unawaited.add(effect_id)
    turn.effects.append(Effect(effect_id, kind, node.reference, request, timeout_ms))
    return effect_id


def start_call(
    turn: TurnBase, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments
) -> None:
    body = node.body
    if isinstance(body, calls.FunctionCall):
        value = task_input
        if body.arguments is not None:
            value = turn.eval(body.arguments, task_input, args, node.reference)
        turn.push(node, raw, task_input, args, body.do)
        turn.data = value  # the function's raw input is its arguments
        return
    try:
        request = body.request(task_input, args)
    except ExpressionError as exc:
        raise expression_fault(exc, node.reference) from None
    slot = turn.new_slot(node, raw, task_input, args)
    if args.authorization is not None:
        slot["authorization"] = args.authorization
    ask(turn, body.kind, node, request, slot)


def start_run(
    turn: TurnBase, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments
) -> None:
    body: calls.RunWorkflow = node.body
    try:
        request = body.request(task_input, args)
    except ExpressionError as exc:
        raise expression_fault(exc, node.reference) from None
    if body.wait:
        ask(turn, body.kind, node, request, turn.new_slot(node, raw, task_input, args))
    else:
        ask(turn, body.kind, node, request, None)
        turn.complete_task(node, args, task_input)


def emit(turn: TurnBase, node: TaskNode, task_input: Any, args: TaskArguments) -> None:
    body: calls.EmitEvent = node.body
    effect_id = f"e{turn.seq + 1}"
    time_iso = datetime_descriptor(turn.now)["iso8601"]
    try:
        event = body.build(
            task_input, args, event_id=f"{turn.state['id']}:{effect_id}", time_iso=time_iso
        )
    except ExpressionError as exc:
        raise expression_fault(exc, node.reference) from None
    ask(turn, body.kind, node, {"event": event}, None)
    turn.complete_task(node, args, event)


def results(turn: TurnBase) -> dict[str, Signal]:
    """Effect results in the inbox by effect id (the first of duplicates)."""
    if turn.effect_results is None:
        turn.effect_results = {}
        for signal in turn.signals:
            event = signal.event
            if event.get("type") != RESULT_EVENT_TYPE:
                continue
            data = event.get("data")
            effect_id = data.get("effectId") if isinstance(data, dict) else None
            if isinstance(effect_id, str) and effect_id not in turn.effect_results:
                turn.effect_results[effect_id] = signal
    return turn.effect_results


def take(turn: TurnBase, signal: Signal) -> None:
    turn.changed = True
    turn.taken.add(signal.entry_id)
    turn.consumed.append(signal.entry_id)


def resume_effect(turn: TurnBase, slot: Slot, node: TaskNode) -> bool:
    signal = results(turn).get(slot["effect"])
    if signal is None or signal.entry_id in turn.taken:
        return False
    take(turn, signal)
    turn.slot = None
    data = signal.event.get("data")
    if not isinstance(data, dict):
        data = {}
    if data.get("ok") is not True:
        error = outside_error(data.get("error"), node.reference)
        raise WorkflowFaultError(error, task=node.reference)
    value = data.get("value")
    if isinstance(node.body, calls.RunWorkflow) and not node.body.returns:
        value = None
    turn.complete_task(node, turn.slot_args(slot, node), value)
    return True


def drop_stale_results(turn: TurnBase) -> None:
    """Consume the effect results nobody waits for any more: they would never be used."""
    awaited = awaited_effects(turn.stack, turn.slot)
    for signal in turn.signals:
        if signal.entry_id in turn.taken or signal.event.get("type") != RESULT_EVENT_TYPE:
            continue
        data = signal.event.get("data")
        effect_id = data.get("effectId") if isinstance(data, dict) else None
        # The first result of an awaited effect stays for its task; duplicates go.
        if effect_id not in awaited or results(turn).get(effect_id) is not signal:
            take(turn, signal)


def start_listen(
    turn: TurnBase, node: TaskNode, slot: Slot, task_input: Any, args: TaskArguments
) -> None:
    try:
        keys = expected_correlation(node.body.to, task_input, args)
    except ExpressionError as exc:
        raise expression_fault(exc, node.reference) from None
    if keys:
        slot["corr"] = keys
    if node.body.foreach is not None:
        slot.update({"queue": [], "outputs": [], "n": 0, "done": False})


def resume_listen(turn: TurnBase, slot: Slot, node: TaskNode) -> bool:
    spec = node.body
    args = turn.slot_args(slot, node)
    progress = ListenProgress(slot)
    before = len(progress.events)
    done = slot.get("done", False)
    if not done:
        try:
            consumed, done = advance_listen(
                spec.to, spec.read, progress, turn.signals, turn.taken, args
            )
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        if consumed:
            turn.changed = True
            turn.consumed.extend(consumed)
            slot = {**slot, **progress.to_state()}
            if spec.foreach is not None:
                queue = slot["queue"] + progress.events[before:]
                slot = {**slot, "queue": queue, "done": done}
            turn.slot = slot
    if spec.foreach is not None:
        return next_listened(turn, slot, node)
    if not done:
        return False
    turn.changed = True
    turn.slot = None
    output = [read_event(event, spec.read) for event in progress.events]
    turn.complete_task(node, args, output)
    return True


def next_listened(turn: TurnBase, slot: Slot, node: TaskNode) -> bool:
    """`foreach`: run the tasks for the next queued event, or complete the listen."""
    spec = node.body
    foreach = spec.foreach
    while slot["queue"]:
        turn.changed = True
        event, *rest = slot["queue"]
        item = read_event(event, spec.read)
        outer = turn.variables_below(len(turn.stack)) or {}
        variables = {**outer, foreach.item: item, foreach.at: slot["n"]}
        saved: Slot = {**slot, "queue": rest}
        if foreach.do is None:
            args = turn.slot_args(slot, node)
            args.variables = variables
            slot = listened(turn, node, args, saved, item)
            continue
        frame: Frame = {
            "list": foreach.do,
            "index": 0,
            "kind": "foreach",
            "task": node.reference,
            "rawInput": slot["rawInput"],
            "input": slot["input"],
            "startedAt": slot["startedAt"],
            "listen": saved,
            "vars": variables,
        }
        if "deadline" in slot:
            frame["deadline"] = slot["deadline"]
        turn.slot = None
        turn.stack.append(frame)
        turn.data = item
        return True
    turn.slot = slot
    if not slot["done"]:
        return False
    turn.changed = True
    turn.slot = None
    turn.complete_task(node, turn.slot_args(slot, node), slot["outputs"])
    return True


def next_event(turn: TurnBase, frame: Frame) -> None:
    """The tasks of one listened event ran: record its output and go back to the listen."""
    node = turn.plan.nodes[frame["task"]]
    args = turn.frame_args(frame, node)
    saved = listened(turn, node, args, frame["listen"], turn.data)
    turn.stack.pop()
    turn.slot = saved


def listened(turn: TurnBase, node: TaskNode, args: TaskArguments, saved: Slot, output: Any) -> Slot:
    """Apply foreach.output and foreach.export to one event's output; the updated slot."""
    foreach = node.body.foreach
    ref = node.reference
    if foreach.output_as is not None or foreach.export_as is not None:
        args.set_raw_output(output)
    if foreach.output_as is not None:
        output = turn.eval(foreach.output_as, output, args, ref)
    if foreach.output_schema is not None:
        turn.validate(foreach.output_schema, output, "foreach output", ref)
    if foreach.export_as is not None:
        args.output = output
        turn.export(foreach.export_as, output, args, ref)
    if foreach.export_schema is not None:
        turn.validate(foreach.export_schema, turn.context, "exported context", ref)
    return {**saved, "outputs": [*saved["outputs"], output], "n": saved["n"] + 1}
