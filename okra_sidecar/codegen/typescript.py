"""Render a workflow's types and `run<Name>` helper as a typed TypeScript module."""

from __future__ import annotations

import json
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

__all__ = ["RUNTIME_MODULE", "render_runtime", "render_typescript"]

RUNTIME_MODULE = "_runtime"
PRIMITIVE = {
    "string": "string",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}
IDENTIFIER_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")


def _type(ref: TypeRef) -> str:
    if isinstance(ref, PrimitiveType):
        return PRIMITIVE[ref.name]
    if isinstance(ref, AnyType):
        return "unknown"
    if isinstance(ref, LiteralType):
        return " | ".join(json.dumps(value) for value in ref.values)
    if isinstance(ref, ListType):
        return f"Array<{_type(ref.item)}>"
    if isinstance(ref, MapType):
        return f"Record<string, {_type(ref.value)}>"
    if isinstance(ref, UnionType):
        return " | ".join(_type(option) for option in ref.options)
    assert isinstance(ref, NamedType)
    return ref.name


def _doc(text: str, indent: str) -> list[str]:
    if not text:
        return []
    return [f"{indent}/** {' '.join(text.split()).replace('*/', '* /')} */"]


def _object(decl: ObjectDecl) -> list[str]:
    lines = [*_doc(decl.description, ""), f"export interface {decl.name} {{"]
    for f in decl.fields:
        key = f.key if IDENTIFIER_RE.match(f.key) else json.dumps(f.key)
        lines.extend(_doc(f.description, "  "))
        lines.append(f"  {key}{'' if f.required else '?'}: {_type(f.type)};")
    lines.append("}")
    return lines


def _alias(decl: AliasDecl) -> list[str]:
    return [*_doc(decl.description, ""), f"export type {decl.name} = {_type(decl.type)};"]


def render_runtime(marker: str) -> str:
    """The module every shim imports: what a client must offer, and the run options."""
    return f"""// {marker}; do not edit.

/** Any client with the Host API specification's `run`, such as clients/node's OkraClient. */
export interface WorkflowRunner {{
  run(workflow: {{
    workflowId: string;
    input: unknown;
    correlationId?: string;
    tags?: Record<string, string>;
    requestId?: string;
  }}): Promise<string>;
}}

export interface RunOptions {{
  correlationId?: string;
  tags?: Record<string, string>;
  /** Idempotency key: a repeated run with it returns the first instance. */
  requestId?: string;
}}
"""


def render_typescript(
    types: SchemaTypes, *, workflow_id: str, title: str, function: str, marker: str
) -> str:
    """The module's source: the input types, WORKFLOW_ID and `<function>()`."""
    described = f"{workflow_id} ({title})" if title else workflow_id
    blocks = [
        _object(decl) if isinstance(decl, ObjectDecl) else _alias(decl)
        for decl in types.declarations
    ]
    run = [
        f"/** Start {described}; resolves to the instance id. */",
        f"export function {function}(",
        "  client: WorkflowRunner,",
        f"  input: {types.root},",
        "  options: RunOptions = {},",
        "): Promise<string> {",
        "  return client.run({ ...options, workflowId: WORKFLOW_ID, input });",
        "}",
    ]
    header = [
        f"// Typed input and run helper for workflow {described}.",
        f"// {marker} from the workflow's input.schema; do not edit.",
        "",
        f'import type {{ RunOptions, WorkflowRunner }} from "./{RUNTIME_MODULE}";',
        "",
        f"export const WORKFLOW_ID = {json.dumps(workflow_id)};",
    ]
    body = "\n\n".join("\n".join(block) for block in [*blocks, run])
    return "\n".join(header) + "\n\n" + body + "\n"
