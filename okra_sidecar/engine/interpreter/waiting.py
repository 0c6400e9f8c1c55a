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

__all__ = ["WaitingTurn"]


class WaitingTurn(TurnBase):
    """Effects and listens for the running thread."""

    def next_effect_id(self) -> str:
        self.seq += 1
        return f"e{self.seq}"

    def ask(
        self, kind: EffectKind, node: TaskNode, request: dict[str, Any], slot: Slot | None
    ) -> str:
        """Record an effect; with a slot, the task waits in it for the result."""
        effect_id = self.next_effect_id()
        timeout_ms = None
        if slot is not None:
            slot["effect"] = effect_id
            ends = [w for w in (slot.get("deadline"), self.deadline) if w is not None]
            timeout_ms = max(min(ends) - self.now, 0) if ends else None
            self.slot = slot
        else:
            self.unawaited.add(effect_id)
        self.effects.append(Effect(effect_id, kind, node.reference, request, timeout_ms))
        return effect_id

    def start_call(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        body = node.body
        if isinstance(body, calls.FunctionCall):
            value = task_input
            if body.arguments is not None:
                value = self.eval(body.arguments, task_input, args, node.reference)
            self.push(node, raw, task_input, args, body.do)
            self.data = value  # the function's raw input is its arguments
            return
        try:
            request = body.request(task_input, args)
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        slot = self.new_slot(node, raw, task_input, args)
        if args.authorization is not None:
            slot["authorization"] = args.authorization
        self.ask(body.kind, node, request, slot)

    def start_run(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        body: calls.RunWorkflow = node.body
        try:
            request = body.request(task_input, args)
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        if body.wait:
            self.ask(body.kind, node, request, self.new_slot(node, raw, task_input, args))
        else:
            self.ask(body.kind, node, request, None)
            self.complete_task(node, args, task_input)

    def emit(self, node: TaskNode, task_input: Any, args: TaskArguments) -> None:
        body: calls.EmitEvent = node.body
        effect_id = f"e{self.seq + 1}"
        time_iso = datetime_descriptor(self.now)["iso8601"]
        try:
            event = body.build(
                task_input, args, event_id=f"{self.state['id']}:{effect_id}", time_iso=time_iso
            )
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        self.ask(body.kind, node, {"event": event}, None)
        self.complete_task(node, args, event)

    def results(self) -> dict[str, Signal]:
        """Effect results in the inbox by effect id (the first of duplicates)."""
        if self._results is None:
            self._results = {}
            for signal in self.signals:
                event = signal.event
                if event.get("type") != RESULT_EVENT_TYPE:
                    continue
                data = event.get("data")
                effect_id = data.get("effectId") if isinstance(data, dict) else None
                if isinstance(effect_id, str) and effect_id not in self._results:
                    self._results[effect_id] = signal
        return self._results

    def take(self, signal: Signal) -> None:
        self.changed = True
        self.taken.add(signal.entry_id)
        self.consumed.append(signal.entry_id)

    def resume_effect(self, slot: Slot, node: TaskNode) -> bool:
        signal = self.results().get(slot["effect"])
        if signal is None or signal.entry_id in self.taken:
            return False
        self.take(signal)
        self.slot = None
        data = signal.event.get("data")
        if not isinstance(data, dict):
            data = {}
        if data.get("ok") is not True:
            error = outside_error(data.get("error"), node.reference)
            raise WorkflowFaultError(error, task=node.reference)
        value = data.get("value")
        if isinstance(node.body, calls.RunWorkflow) and not node.body.returns:
            value = None
        self.complete_task(node, self.slot_args(slot, node), value)
        return True

    def drop_stale_results(self) -> None:
        """Consume the effect results nobody waits for any more: they would never be used."""
        awaited = awaited_effects(self.stack, self.slot)
        for signal in self.signals:
            if signal.entry_id in self.taken or signal.event.get("type") != RESULT_EVENT_TYPE:
                continue
            data = signal.event.get("data")
            effect_id = data.get("effectId") if isinstance(data, dict) else None
            # The first result of an awaited effect stays for its task; duplicates go.
            if effect_id not in awaited or self.results().get(effect_id) is not signal:
                self.take(signal)

    def start_listen(
        self, node: TaskNode, slot: Slot, task_input: Any, args: TaskArguments
    ) -> None:
        try:
            keys = expected_correlation(node.body.to, task_input, args)
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        if keys:
            slot["corr"] = keys
        if node.body.foreach is not None:
            slot.update({"queue": [], "outputs": [], "n": 0, "done": False})

    def resume_listen(self, slot: Slot, node: TaskNode) -> bool:
        spec = node.body
        args = self.slot_args(slot, node)
        progress = ListenProgress(slot)
        before = len(progress.events)
        done = slot.get("done", False)
        if not done:
            try:
                consumed, done = advance_listen(
                    spec.to, spec.read, progress, self.signals, self.taken, args
                )
            except ExpressionError as exc:
                raise expression_fault(exc, node.reference) from None
            if consumed:
                self.changed = True
                self.consumed.extend(consumed)
                slot = {**slot, **progress.to_state()}
                if spec.foreach is not None:
                    queue = slot["queue"] + progress.events[before:]
                    slot = {**slot, "queue": queue, "done": done}
                self.slot = slot
        if spec.foreach is not None:
            return self.next_listened(slot, node)
        if not done:
            return False
        self.changed = True
        self.slot = None
        output = [read_event(event, spec.read) for event in progress.events]
        self.complete_task(node, args, output)
        return True

    def next_listened(self, slot: Slot, node: TaskNode) -> bool:
        """`foreach`: run the tasks for the next queued event, or complete the listen."""
        spec = node.body
        foreach = spec.foreach
        while slot["queue"]:
            self.changed = True
            event, *rest = slot["queue"]
            item = read_event(event, spec.read)
            outer = self.variables_below(len(self.stack)) or {}
            variables = {**outer, foreach.item: item, foreach.at: slot["n"]}
            saved: Slot = {**slot, "queue": rest}
            if foreach.do is None:
                args = self.slot_args(slot, node)
                args.variables = variables
                slot = self.listened(node, args, saved, item)
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
            self.slot = None
            self.stack.append(frame)
            self.data = item
            return True
        self.slot = slot
        if not slot["done"]:
            return False
        self.changed = True
        self.slot = None
        self.complete_task(node, self.slot_args(slot, node), slot["outputs"])
        return True

    def next_event(self, frame: Frame) -> None:
        """The tasks of one listened event ran: record its output and go back to the listen."""
        node = self.plan.nodes[frame["task"]]
        args = self.frame_args(frame, node)
        saved = self.listened(node, args, frame["listen"], self.data)
        self.stack.pop()
        self.slot = saved

    def listened(self, node: TaskNode, args: TaskArguments, saved: Slot, output: Any) -> Slot:
        """Apply foreach.output and foreach.export to one event's output; the updated slot."""
        foreach = node.body.foreach
        ref = node.reference
        if foreach.output_as is not None or foreach.export_as is not None:
            args.set_raw_output(output)
        if foreach.output_as is not None:
            output = self.eval(foreach.output_as, output, args, ref)
        if foreach.output_schema is not None:
            self.validate(foreach.output_schema, output, "foreach output", ref)
        if foreach.export_as is not None:
            args.output = output
            self.export(foreach.export_as, output, args, ref)
        if foreach.export_schema is not None:
            self.validate(foreach.export_schema, self.context, "exported context", ref)
        return {**saved, "outputs": [*saved["outputs"], output], "n": saved["n"] + 1}
