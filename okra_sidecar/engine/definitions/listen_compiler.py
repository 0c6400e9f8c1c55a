"""Compile `listen` tasks and `schedule.on` event consumptions, at load.

What the compiled filters mean when events arrive is in interpreter/listening.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from okra_sidecar.engine.definitions.compiling import Compiler
from okra_sidecar.engine.definitions.expressions import (
    CompiledValue,
    ConstantValue,
    is_expression,
)
from okra_sidecar.engine.definitions.pointers import pointer_join
from okra_sidecar.engine.definitions.tasks import (
    Consumption,
    Correlation,
    EventFilter,
    ForeachSpec,
    ListenSpec,
    SchemaCheck,
)

__all__ = ["compile_consumption", "compile_listen", "listened_types"]

_STRING_ATTRIBUTES = frozenset(
    {"id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "specversion"}
)


_READ_MODES = ("data", "envelope", "raw")


def compile_listen(c: Compiler, body: Mapping[str, Any], path: str) -> ListenSpec:
    """A `listen` task: `listen` (`to`, `read`) and its `foreach`, if any."""
    value = body["listen"]
    listen_path = pointer_join(path, "listen")
    if not isinstance(value, dict):
        c.fail(listen_path, "'listen' must be an object with 'to'")
    for key in value:
        if key not in ("to", "read"):
            c.fail(pointer_join(listen_path, key), f"unknown property '{key}' in 'listen'")
    if "to" not in value:
        c.fail(listen_path, "'listen' needs 'to'")
    read = value.get("read", "data")
    if read not in _READ_MODES:
        c.fail(pointer_join(listen_path, "read"), "'read' must be one of data, envelope, raw")
    to = compile_consumption(c, value["to"], pointer_join(listen_path, "to"))
    foreach = None
    if "foreach" in body:
        foreach = _foreach(c, body["foreach"], pointer_join(path, "foreach"))
    return ListenSpec(to, read, foreach, _payloads(c, body.get("metadata"), path, to))


def listened_types(consumption: Consumption) -> Iterator[str]:
    """The event types a consumption waits for by a constant `with.type` (`until`'s too).

    A signal is delivered as a CloudEvent whose `type` is the signal's name, so these are the
    names a Signal can wake the task with; a type given by an expression is known only at run
    time.
    """
    for event_filter in consumption.filters:
        for name, expected in event_filter.attributes:
            if name == "type" and isinstance(expected, ConstantValue):
                if isinstance(expected.value, str):
                    yield expected.value
    if consumption.until is not None:
        yield from listened_types(consumption.until)


def _payloads(c: Compiler, metadata: Any, path: str, to: Consumption) -> dict[str, SchemaCheck]:
    """`metadata.signals`: signal name -> {schema}, the payload each must carry.

    The DSL has no place for an event's data schema (an event filter holds only `with` and
    `correlate`, and `with.dataschema` is a URI to match), so it lives in the task's free-form
    metadata, in the DSL's own schema form (`format`, `document`).
    """
    if not isinstance(metadata, dict) or "signals" not in metadata:
        return {}  # a metadata that is not an object is refused with the task's other keys
    signals_path = pointer_join(path, "metadata", "signals")
    declared = metadata["signals"]
    if not isinstance(declared, dict):
        c.fail(signals_path, "'metadata.signals' must be an object: signal name -> {schema}")
    listened = sorted(set(listened_types(to)))
    payloads: dict[str, SchemaCheck] = {}
    for name, entry in declared.items():
        entry_path = pointer_join(signals_path, name)
        if name not in listened:
            waits = ", ".join(listened) if listened else "no signal by a constant type"
            c.fail(
                entry_path,
                f"the task does not listen for signal '{name}' (it waits for {waits}); "
                "declare payloads only for the types its 'listen.to' names",
            )
        if not isinstance(entry, dict) or "schema" not in entry:
            c.fail(entry_path, f"'metadata.signals.{name}' must be an object with 'schema'")
        for key in entry:
            if key != "schema":
                c.fail(
                    pointer_join(entry_path, key),
                    f"unknown property '{key}' in 'metadata.signals.{name}'",
                )
        payloads[name] = c.schema(entry["schema"], pointer_join(entry_path, "schema"))
    return payloads


def _foreach(c: Compiler, value: Any, path: str) -> ForeachSpec:
    if not isinstance(value, dict):
        c.fail(path, "'foreach' must be an object (item, at, do, output, export)")
    for key in value:
        if key not in ("item", "at", "do", "output", "export"):
            c.fail(pointer_join(path, key), f"unknown property '{key}' in 'foreach'")
    item = value.get("item", "item")
    at = value.get("at", "index")
    if item == at:
        c.fail(path, f"'item' and 'at' must name different variables, not both '{at}'")
    with c.scope((item, pointer_join(path, "item")), (at, pointer_join(path, "at"))):
        do = None
        if "do" in value:
            do = c.task_list(value["do"], pointer_join(path, "do")).reference
        output_as, output_schema = c.io(value.get("output"), pointer_join(path, "output"), "as")
        export_as, export_schema = c.io(value.get("export"), pointer_join(path, "export"), "as")
    return ForeachSpec(item, at, do, output_as, output_schema, export_as, export_schema)


def compile_consumption(c: Compiler, value: Any, path: str, *, nested: bool = False) -> Consumption:
    """An event consumption strategy (`listen.to`, `schedule.on`, `until`)."""
    label = path.rsplit("/", 1)[-1]
    if not isinstance(value, dict):
        c.fail(path, f"'{label}' must be an object with one of 'one', 'any', 'all'")
    for key in value:
        if key not in ("one", "any", "all", "until"):
            c.fail(pointer_join(path, key), f"unknown property '{key}' in '{label}'")
    modes = [m for m in ("one", "any", "all") if m in value]
    if len(modes) != 1:
        c.fail(path, f"'{label}' needs exactly one of 'one', 'any', 'all'")
    mode = modes[0]
    mode_path = pointer_join(path, mode)
    if mode == "one":
        filters: tuple[EventFilter, ...] = (_event_filter(c, value["one"], mode_path),)
    else:
        items = value[mode]
        if not isinstance(items, list):
            c.fail(mode_path, f"'{mode}' must be a list of event filters")
        filters = tuple(
            _event_filter(c, item, pointer_join(mode_path, i)) for i, item in enumerate(items)
        )
    until_expression = until = None
    if "until" in value:
        until_path = pointer_join(path, "until")
        if nested:
            c.fail(until_path, "'until' cannot be nested inside 'until'")
        if mode != "any":
            c.fail(until_path, "'until' applies only to 'any'")
        raw = value["until"]
        if isinstance(raw, str):
            until_expression = c.field(raw, until_path)
        else:
            until = compile_consumption(c, raw, until_path, nested=True)
    return Consumption(mode, filters, until_expression, until)


def _event_filter(c: Compiler, value: Any, path: str) -> EventFilter:
    if not isinstance(value, dict):
        c.fail(path, "an event filter must be an object with 'with'")
    for key in value:
        if key not in ("with", "correlate"):
            c.fail(pointer_join(path, key), f"unknown property '{key}' in an event filter")
    if "with" not in value:
        c.fail(path, "an event filter needs 'with'")
    attributes = value.get("with")
    with_path = pointer_join(path, "with")
    if not isinstance(attributes, dict) or not attributes:
        c.fail(with_path, "'with' must be an object naming at least one event attribute")
    constants: list[tuple[str, CompiledValue]] = []
    dynamic: list[tuple[str, CompiledValue]] = []
    for name, expected in attributes.items():
        attr_path = pointer_join(with_path, name)
        if name in _STRING_ATTRIBUTES and not isinstance(expected, str):
            c.fail(attr_path, f"event attribute '{name}' must be a string")
        compiled = c.value(expected, attr_path)
        target = constants if isinstance(compiled, ConstantValue) else dynamic
        target.append((name, compiled))
    correlate: tuple[Correlation, ...] = ()
    if "correlate" in value:
        correlate = _correlate(c, value["correlate"], pointer_join(path, "correlate"))
    return EventFilter(tuple(constants + dynamic), correlate)


def _correlate(c: Compiler, value: Any, path: str) -> tuple[Correlation, ...]:
    if not isinstance(value, dict) or not value:
        c.fail(path, "'correlate' must map correlation keys to {from, expect}")
    found: list[Correlation] = []
    for key, item in value.items():
        item_path = pointer_join(path, key)
        if not isinstance(item, dict):
            c.fail(item_path, f"correlation '{key}' must be an object with 'from'")
        for name in item:
            if name not in ("from", "expect"):
                c.fail(pointer_join(item_path, name), f"unknown property '{name}' in '{key}'")
        source = item.get("from")
        if not isinstance(source, str) or not source.strip():
            c.fail(item_path, f"correlation '{key}' needs 'from', a runtime expression")
        expect = None
        if "expect" in item:
            raw = item["expect"]
            expect_path = pointer_join(item_path, "expect")
            # A constant or an expression: only `${ }` marks an expression here.
            expect = c.value(raw, expect_path) if is_expression(raw) else ConstantValue(raw)
        extract = c.field(source, pointer_join(item_path, "from"))
        found.append(Correlation(key, source, extract, expect))
    return tuple(found)
