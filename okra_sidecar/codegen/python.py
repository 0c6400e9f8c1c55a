"""Render a workflow's types and `run_<name>` helper as a typed Python module."""

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
    SchemaTypes,
    TypeRef,
    UnionType,
)

__all__ = ["render_python"]

TYPING_NAMES = ("Any", "Literal", "NotRequired", "TypeAlias", "TypedDict")

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


def _docstring(text: str, indent: str) -> list[str]:
    if not text:
        return []
    clean = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"').strip()
    return [f'{indent}"""{clean}"""']


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


def render_python(
    types: SchemaTypes, *, workflow_id: str, title: str, function: str, marker: str
) -> str:
    """The module's source: the input types, WORKFLOW_ID and `async def <function>`."""
    described = f"{workflow_id} ({title})" if title else workflow_id
    blocks: list[list[str]] = []
    for decl in types.declarations:
        blocks.append(_object(decl) if isinstance(decl, ObjectDecl) else _alias(decl))
    run = [
        f"async def {function}(",
        "    client: OkraClient,",
        f"    input: {types.root},",
        "    *,",
        "    correlation_id: str | None = None,",
        "    tags: Mapping[str, str] | None = None,",
        "    request_id: str | None = None,",
        "    timeout_s: float | None = None,",
        ") -> str:",
        f'    """Start {workflow_id}; returns the new instance\'s id."""',
        "    return await client.run(",
        "        WORKFLOW_ID,",
        "        input,",
        "        correlation_id=correlation_id,",
        "        tags=tags,",
        "        request_id=request_id,",
        "        timeout_s=timeout_s,",
        "    )",
    ]
    body = "\n\n\n".join("\n".join(block) for block in [*blocks, run])
    # Import only the typing names the declarations use, so linters find nothing unused.
    used = [name for name in TYPING_NAMES if re.search(rf"\b{name}\b", body)]
    names = ", ".join(json.dumps(n) for n in ["WORKFLOW_ID", types.root, function])
    header = [
        f'"""Typed input and run helper for workflow {described}.',
        "",
        f"{marker} from the workflow's input.schema; do not edit.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Mapping",
        *([f"from typing import {', '.join(used)}"] if used else []),
        "",
        "from okra_client import OkraClient",
        "",
        f"__all__ = [{names}]",
        "",
        f"WORKFLOW_ID = {json.dumps(workflow_id)}",
    ]
    return "\n".join(header) + "\n\n\n" + body + "\n"
