"""Render a workflow's types, typed handle and helpers as a typed Python module."""

from __future__ import annotations

import json
import keyword
import re

from okra_sidecar.codegen.schema import (
    AliasDecl,
    AnyType,
    ListType,
    LiteralType,
    MapType,
    NamedType,
    ObjectDecl,
    PrimitiveType,
    Shim,
    TypeRef,
    UnionType,
)

__all__ = ["render_python"]

TYPING_NAMES = ("Any", "Literal", "NotRequired", "TypeAlias", "TypedDict", "cast", "overload")

PRIMITIVE = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "null": "None",
}


def _type(ref: TypeRef) -> str:
    if isinstance(ref, PrimitiveType):
        return PRIMITIVE[ref.name]
    if isinstance(ref, AnyType):
        return "Any"
    if isinstance(ref, LiteralType):
        values = [_literal(v) for v in ref.values if v is not None]
        literal = f"Literal[{', '.join(values)}]" if values else ""
        none = "None" if None in ref.values else ""
        return " | ".join(part for part in (literal, none) if part)
    if isinstance(ref, ListType):
        return f"list[{_type(ref.item)}]"
    if isinstance(ref, MapType):
        return f"dict[str, {_type(ref.value)}]"
    if isinstance(ref, UnionType):
        return " | ".join(_type(option) for option in ref.options)
    assert isinstance(ref, NamedType)
    return ref.name


def _literal(value: str | int | bool) -> str:
    # JSON's string syntax is Python's too, with the double quotes ruff format prefers.
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _in_docstring(text: str) -> str:
    """`text` escaped for a \"\"\"docstring\"\"\": a `"` next to the closing quotes would end it."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _docstring(text: str, indent: str) -> list[str]:
    if not text:
        return []
    return [f'{indent}"""{_in_docstring(text.strip())}"""']


def _object(decl: ObjectDecl) -> list[str]:
    identifiers = all(f.key.isidentifier() and not keyword.iskeyword(f.key) for f in decl.fields)
    if not identifiers:
        # Keys that are not Python names need the functional form; its types are strings,
        # so forward references work there too.
        entries = [
            f"        {json.dumps(f.key)}: {json.dumps(_field_type(f.type, f.required))},"
            for f in decl.fields
        ]
        lines = [
            f"{decl.name} = TypedDict(",
            f"    {json.dumps(decl.name)},",
            "    {",
            *entries,
            "    },",
            ")",
        ]
        if decl.description:
            lines.append(f"{decl.name}.__doc__ = {json.dumps(decl.description)}")
        return lines
    lines = [f"class {decl.name}(TypedDict):", *_docstring(decl.description, "    ")]
    if decl.description and decl.fields:
        lines.append("")
    for f in decl.fields:
        if f.description:
            lines.append(f"    # {' '.join(f.description.split())}")
        lines.append(f"    {f.key}: {_field_type(f.type, f.required)}")
    if not decl.fields:
        lines.append("    pass")
    return lines


def _field_type(ref: TypeRef, required: bool) -> str:
    text = _type(ref)
    return text if required else f"NotRequired[{text}]"


def _alias(decl: AliasDecl) -> list[str]:
    # Quoted, so that an alias may name a type declared after it (or itself).
    lines = [f"{decl.name}: TypeAlias = {json.dumps(_type(decl.type))}"]
    if decl.description:
        lines.insert(0, f"# {' '.join(decl.description.split())}")
    return lines


def _handle_function(snake: str) -> str:
    """`<snake>_handle`; `handle_<snake>` for a name starting with a digit (`2fa-check`)."""
    return f"{snake}_handle" if snake[0].isalpha() else f"handle_{snake}"


def _handle(shim: Shim) -> list[str]:
    """`<Name>Handle`: the client's WorkflowHandle with a typed result and typed signals."""
    lines = [
        f"class {shim.name}Handle:",
        f'    """{shim.handle_summary}"""',
        "",
        "    def __init__(self, handle: WorkflowHandle) -> None:",
        "        self.handle = handle",
        "",
        "    @property",
        "    def id(self) -> str:",
        "        return self.handle.id",
        "",
        "    async def result(",
        "        self,",
        "        *,",
        "        timeout_s: float | None = None,",
        f"    ) -> {shim.output.root}:",
        '        """The output once completed (WorkflowFailedError if failed or cancelled)."""',
        "        output = await self.handle.result(timeout_s=timeout_s)",
        f"        return cast({json.dumps(shim.output.root)}, output)",
    ]
    if shim.signals:
        lines += _signal(shim)
    return lines


def _signal_def(signal: str, payload: str, ending: str) -> list[str]:
    return [
        "    async def signal(",
        "        self,",
        f"        signal: {signal},",
        f"        payload: {payload},",
        "        *,",
        "        signal_id: str | None = None,",
        "        timeout_s: float | None = None,",
        f"    ) -> SignalResult:{ending}",
    ]


def _literal_of(names: tuple[str, ...]) -> str:
    return f"Literal[{', '.join(json.dumps(name) for name in names)}]"


def _signal(shim: Shim) -> list[str]:
    """`signal()`: one overload per signal with a payload schema, one for the others."""
    lines: list[str] = []
    payload = "Json = None"
    if shim.payloads:
        for signal, types in shim.payloads.items():
            lines += ["", "    @overload", *_signal_def(_literal_of((signal,)), types.root, " ...")]
        if shim.untyped_signals:
            literal = _literal_of(shim.untyped_signals)
            lines += ["", "    @overload", *_signal_def(literal, "Json = None", " ...")]
        payload = "Any = None"
    return [
        *lines,
        "",
        *_signal_def(f"{shim.name}Signal", payload, ""),
        '        """Deliver one of the signals the workflow listens for, with its payload."""',
        "        return await self.handle.signal(",
        "            signal,",
        "            payload,",
        "            signal_id=signal_id,",
        "            timeout_s=timeout_s,",
        "        )",
    ]


# The options every starting helper takes, and how it passes them on to the client.
OPTIONS = [
    "    *,",
    "    correlation_id: str | None = None,",
    "    tags: Mapping[str, str] | None = None,",
    "    request_id: str | None = None,",
    "    timeout_s: float | None = None,",
]
PASSED = [
    "        correlation_id=correlation_id,",
    "        tags=tags,",
    "        request_id=request_id,",
    "        timeout_s=timeout_s,",
]


def _helpers(shim: Shim, snake: str) -> list[list[str]]:
    """`run_<snake>`, `start_<snake>` and `<snake>_handle`."""
    run = [
        f"async def run_{snake}(",
        "    client: OkraClient,",
        f"    input: {shim.input.root},",
        *OPTIONS,
        ") -> str:",
        f'    """Start {shim.workflow_id}; returns the new instance\'s id."""',
        "    return await client.run(",
        "        WORKFLOW_ID,",
        "        input,",
        *PASSED,
        "    )",
    ]
    start = [
        f"async def start_{snake}(",
        "    client: OkraClient,",
        f"    input: {shim.input.root},",
        *OPTIONS,
        f") -> {shim.name}Handle:",
        f'    """Start {shim.workflow_id}; returns a typed handle on the new instance."""',
        "    handle = await client.start(",
        "        WORKFLOW_ID,",
        "        input,",
        *PASSED,
        "    )",
        f"    return {shim.name}Handle(handle)",
    ]
    handle = [
        f"def {_handle_function(snake)}(",
        "    client: OkraClient,",
        "    instance_id: str,",
        f") -> {shim.name}Handle:",
        f'    """A typed handle on an instance of {shim.workflow_id} that exists."""',
        f"    return {shim.name}Handle(client.get_handle(instance_id))",
    ]
    return [run, start, handle]


def _header(shim: Shim, snake: str, body: str) -> list[str]:
    """The docstring, imports (only the typing names `body` uses), `__all__`, WORKFLOW_ID."""
    used = [name for name in TYPING_NAMES if re.search(rf"\b{name}\b", body)]
    client_names = ["OkraClient", "WorkflowHandle"]
    if shim.signals:
        client_names = ["Json", "OkraClient", "SignalResult", "WorkflowHandle"]
    exported = [
        "WORKFLOW_ID",
        shim.input.root,
        shim.output.root,
        *(types.root for types in shim.payloads.values()),
        *([f"{shim.name}Signal"] if shim.signals else []),
        f"{shim.name}Handle",
        f"run_{snake}",
        f"start_{snake}",
        f"{_handle_function(snake)}",
    ]
    return [
        f'"""Typed input, output and helpers for workflow {_in_docstring(shim.described)}.',
        "",
        f"{shim.marker} from the workflow's input.schema, output.schema and",
        "listen tasks; do not edit.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Mapping",
        f"from typing import {', '.join(used)}",
        "",
        f"from okra_client import {', '.join(client_names)}",
        "",
        "__all__ = [",
        *(f"    {json.dumps(n)}," for n in exported),
        "]",
        "",
        f"WORKFLOW_ID = {json.dumps(shim.workflow_id)}",
    ]


def render_python(shim: Shim, *, snake: str) -> str:
    """The module's source: the input and output types, the signals, WORKFLOW_ID, a typed
    handle and `run_<snake>`, `start_<snake>` and `<snake>_handle`."""
    blocks = shim.declarations(_object, _alias)
    if shim.signals:
        names = ", ".join(json.dumps(name) for name in shim.signals)
        blocks.append(
            [
                "# The signals the workflow's listen tasks wait for.",
                f"{shim.name}Signal: TypeAlias = Literal[{names}]",
            ]
        )
    blocks.append(_handle(shim))
    blocks += _helpers(shim, snake)
    body = "\n\n\n".join("\n".join(block) for block in blocks)
    return "\n".join(_header(shim, snake, body)) + "\n\n\n" + body + "\n"
