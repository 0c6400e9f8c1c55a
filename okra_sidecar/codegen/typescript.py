"""Render a workflow's types, typed handle and helpers as a typed TypeScript module."""

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
    Shim,
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
    return [f"{indent}/** {_in_comment(text)} */"]


def _in_comment(text: str) -> str:
    """`text` on one line that cannot end a `/** */` comment."""
    return " ".join(text.split()).replace("*/", "* /")


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

/** A handle on one instance, such as clients/node's WorkflowHandle. */
export interface InstanceHandle {{
  readonly id: string;
  result(options?: {{ timeoutMs?: number }}): Promise<unknown>;
  signal(signal: string, payload?: unknown, signalId?: string): Promise<void>;
}}

/** Any client that hands out instance handles, such as clients/node's OkraClient. */
export interface HandleSource {{
  getHandle(instanceId: string): InstanceHandle;
}}

export interface RunOptions {{
  correlationId?: string;
  tags?: Record<string, string>;
  /** Idempotency key: a repeated run with it returns the first instance. */
  requestId?: string;
}}
"""


def _handle(shim: Shim) -> list[str]:
    lines = [
        f"/** {shim.handle_summary} */",
        f"export class {shim.name}Handle {{",
        "  constructor(readonly handle: InstanceHandle) {}",
        "",
        "  get id(): string {",
        "    return this.handle.id;",
        "  }",
        "",
        "  /** The output once completed (rejects if it failed or was cancelled). */",
        f"  async result(options: {{ timeoutMs?: number }} = {{}}): Promise<{shim.output.root}> {{",
        f"    return (await this.handle.result(options)) as {shim.output.root};",
        "  }",
    ]
    if shim.signals:
        lines += [
            "",
            "  /** Deliver one of the signals the workflow listens for, with its payload. */",
        ]
        if shim.payloads:
            # One overload per signal with a payload schema, one for the others.
            for signal, types in shim.payloads.items():
                lines.append(_signal_def(json.dumps(signal), f"payload: {types.root}") + ";")
            if shim.untyped_signals:
                names = " | ".join(json.dumps(name) for name in shim.untyped_signals)
                lines.append(_signal_def(names, "payload?: unknown") + ";")
        lines += [
            _signal_def(f"{shim.name}Signal", "payload?: unknown") + " {",
            "    return this.handle.signal(signal, payload, signalId);",
            "  }",
        ]
    return [*lines, "}"]


def _signal_def(signal: str, payload: str) -> str:
    return f"  signal(signal: {signal}, {payload}, signalId?: string): Promise<void>"


def render_typescript(shim: Shim, *, function: str) -> str:
    """The module's source: the input and output types, the signals, WORKFLOW_ID, a typed
    handle, `run<Name>()`, `start<Name>()` and `<name>Handle()`."""
    blocks = shim.declarations(_object, _alias)
    described = _in_comment(shim.described)
    if shim.signals:
        names = " | ".join(json.dumps(name) for name in shim.signals)
        blocks.append(
            [
                "/** The signals the workflow's listen tasks wait for. */",
                f"export type {shim.name}Signal = {names};",
            ]
        )
    blocks.append(_handle(shim))
    # `_2faCheck` (a name starting with a digit) would give the class's own name.
    handle_function = (
        f"{function[0].lower()}{function[1:]}Handle"
        if function[0].isalpha()
        else f"handle{function.lstrip('_')}"
    )
    blocks += [
        [
            f"/** Start {described}; resolves to the instance id. */",
            f"export function run{function}(",
            "  client: WorkflowRunner,",
            f"  input: {shim.input.root},",
            "  options: RunOptions = {},",
            "): Promise<string> {",
            "  return client.run({ ...options, workflowId: WORKFLOW_ID, input });",
            "}",
        ],
        [
            f"/** Start {described}; resolves to a typed handle on the instance. */",
            f"export async function start{function}(",
            "  client: WorkflowRunner & HandleSource,",
            f"  input: {shim.input.root},",
            "  options: RunOptions = {},",
            f"): Promise<{shim.name}Handle> {{",
            f"  return {handle_function}(client, await run{function}(client, input, options));",
            "}",
        ],
        [
            f"/** A typed handle on an instance of {shim.workflow_id} that exists. */",
            f"export function {handle_function}(",
            "  client: HandleSource,",
            "  instanceId: string,",
            f"): {shim.name}Handle {{",
            f"  return new {shim.name}Handle(client.getHandle(instanceId));",
            "}",
        ],
    ]
    header = [
        f"// Typed input, output and helpers for workflow {described}.",
        f"// {shim.marker} from the workflow's input.schema, output.schema and listen",
        "// tasks; do not edit.",
        "",
        "import type {",
        "  HandleSource,",
        "  InstanceHandle,",
        "  RunOptions,",
        "  WorkflowRunner,",
        f'}} from "./{RUNTIME_MODULE}";',
        "",
        f"export const WORKFLOW_ID = {json.dumps(shim.workflow_id)};",
    ]
    body = "\n\n".join("\n".join(block) for block in blocks)
    return "\n".join(header) + "\n\n" + body + "\n"
