"""JSON Schema to a small type model that the Python and TypeScript writers render.

Handles objects (properties, required, additionalProperties), arrays, enums and const,
type lists, anyOf/oneOf (unions), allOf of objects (merged), nested schemas and `$ref`s within
the document (`#/$defs/...`, `#/definitions/...` or any JSON pointer). Validation-only keywords
(minimum, pattern, minLength, ...) have no static type and are left to the sidecar, which
checks every Run against the full schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from okra_sidecar.errors import OkraError

__all__ = [
    "AliasDecl",
    "AnyType",
    "CodegenError",
    "Field",
    "ListType",
    "LiteralType",
    "MapType",
    "NamedType",
    "ObjectDecl",
    "PrimitiveType",
    "SchemaTypes",
    "Shim",
    "TypeRef",
    "UnionType",
    "pascal_case",
    "translate_schema",
]


class CodegenError(OkraError):
    """A schema the generator cannot turn into types, with where in which workflow."""


@dataclass(frozen=True)
class PrimitiveType:
    name: str  # "string", "integer", "number", "boolean", "null"


@dataclass(frozen=True)
class AnyType:
    pass


@dataclass(frozen=True)
class LiteralType:
    values: tuple[str | int | bool | None, ...]


@dataclass(frozen=True)
class ListType:
    item: TypeRef


@dataclass(frozen=True)
class MapType:
    value: TypeRef


@dataclass(frozen=True)
class UnionType:
    options: tuple[TypeRef, ...]


@dataclass(frozen=True)
class NamedType:
    name: str


TypeRef = PrimitiveType | AnyType | LiteralType | ListType | MapType | UnionType | NamedType


@dataclass(frozen=True)
class Field:
    key: str
    type: TypeRef
    required: bool
    description: str = ""


@dataclass(frozen=True)
class ObjectDecl:
    """A named object type: a TypedDict or a TypeScript interface."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""


@dataclass(frozen=True)
class AliasDecl:
    """A named non-object type: a type alias."""

    name: str
    type: TypeRef
    description: str = ""


@dataclass
class SchemaTypes:
    """What one schema becomes: the declarations and the root's name."""

    root: str
    declarations: list[ObjectDecl | AliasDecl] = field(default_factory=list)


@dataclass(frozen=True)
class Shim:
    """What one workflow's module holds: its id, types, and the signals it listens for."""

    workflow_id: str
    title: str
    marker: str
    name: str  # PascalCase, the prefix of the module's own names
    input: SchemaTypes
    output: SchemaTypes
    signals: tuple[str, ...]
    # Signal name -> its payload's types, for the signals whose listen task declares a schema.
    payloads: Mapping[str, SchemaTypes] = field(default_factory=dict)

    @property
    def untyped_signals(self) -> tuple[str, ...]:
        """The signals that carry any JSON (no payload schema declared)."""
        return tuple(s for s in self.signals if s not in self.payloads)

    @property
    def described(self) -> str:
        """The id and title on one line (a title's line breaks would end a `//` comment)."""
        title = " ".join(self.title.split())
        return f"{self.workflow_id} ({title})" if title else self.workflow_id

    @property
    def handle_summary(self) -> str:
        """The typed handle's one-line description."""
        listens = " and the signals it listens for" if self.signals else ""
        return f"An instance of {self.workflow_id}: its typed result{listens}."

    def declarations(
        self,
        object_lines: Callable[[ObjectDecl], list[str]],
        alias_lines: Callable[[AliasDecl], list[str]],
    ) -> list[list[str]]:
        """The input's declarations, the output's, then the payloads', each rendered as lines."""
        return [
            object_lines(decl) if isinstance(decl, ObjectDecl) else alias_lines(decl)
            for types in (self.input, self.output, *self.payloads.values())
            for decl in types.declarations
        ]


PRIMITIVES = ("string", "integer", "number", "boolean", "null")
# How deep schemas may nest counting through $refs: a definition nests at most 64 levels, but
# a chain of $refs has no bound, and each level is a few Python frames of the recursion below.
MAX_TYPE_DEPTH = 100


def pascal_case(text: str) -> str:
    """`ship-to` / `ship_to` / `shipTo` -> `ShipTo`; digits first get an underscore."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", text) if w]
    name = "".join(w[0].upper() + w[1:] for w in words) or "Value"
    return f"_{name}" if name[0].isdigit() else name


class _Translator:
    def __init__(
        self,
        document: Mapping[str, Any],
        *,
        source: str,
        prefix: str,
        label: str,
        taken: set[str],
    ) -> None:
        self.document = document
        self.source = source
        self.label = label
        # Names of $ref'd declarations start with the workflow's: OrderAddress.
        self.prefix = prefix
        self.result = SchemaTypes(root="")
        self.taken = taken
        self.by_pointer: dict[str, str] = {}
        self.depth = 0

    def fail(self, where: str, problem: str) -> CodegenError:
        return CodegenError(f"{self.source}: {self.label} at {where or '/'}: {problem}")

    def unique(self, wanted: str) -> str:
        name, n = wanted, 2
        while name in self.taken:
            name, n = f"{wanted}{n}", n + 1
        self.taken.add(name)
        return name

    def resolve(self, ref: str, where: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise self.fail(where, f"$ref {ref!r} points outside the document; only '#...' works")
        node: Any = self.document
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            token = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise self.fail(where, f"$ref {ref!r} points at nothing")
        if node is True:
            return {}
        if not isinstance(node, Mapping):
            raise self.fail(where, f"$ref {ref!r} is not a schema (or is `false`)")
        return node

    def named(self, ref: str, where: str) -> TypeRef:
        """The declaration a `$ref` stands for, declared once however often it is used."""
        if ref in self.by_pointer:
            return NamedType(self.by_pointer[ref])
        schema = self.resolve(ref, where)
        last = unquote(ref.rstrip("/").rsplit("/", 1)[-1])
        name = self.unique(self.prefix + pascal_case(last))
        self.by_pointer[ref] = name
        declared = self.declare(name, schema, ref)
        assert declared == NamedType(name)
        return declared

    def declare(self, name: str, schema: Mapping[str, Any], where: str) -> TypeRef:
        """Declare `name` for `schema` (an object or an alias) and refer to it."""
        description = str(schema.get("description") or schema.get("title") or "")
        if self.is_object(schema, where):
            fields = self.object_fields(name, schema, where)
            self.result.declarations.append(ObjectDecl(name, tuple(fields), description))
        else:
            # Reserve the slot first so that a recursive alias finds its own name.
            index = len(self.result.declarations)
            self.result.declarations.append(AliasDecl(name, AnyType(), description))
            self.result.declarations[index] = AliasDecl(
                name, self.type_of(schema, where, name), description
            )
        return NamedType(name)

    def is_object(
        self, schema: Mapping[str, Any], where: str, within: frozenset[int] = frozenset()
    ) -> bool:
        if "$ref" in schema or any(k in schema for k in ("anyOf", "oneOf", "enum", "const")):
            return False
        if "allOf" in schema:
            # `within`: the allOfs being looked into, so that one reached again through a
            # $ref is refused instead of recursing until Python gives up.
            if id(schema) in within:
                raise self.fail(where, "allOf includes itself through a $ref: it has no end")
            if len(within) >= MAX_TYPE_DEPTH:
                raise self.fail(where, f"allOfs nest more than {MAX_TYPE_DEPTH} levels deep")
            inner = within | {id(schema)}
            return all(self.is_object(self.part(p, where), where, inner) for p in schema["allOf"])
        kind = schema.get("type")
        return (kind == "object" or (kind is None and "properties" in schema)) and bool(
            schema.get("properties") or schema.get("allOf")
        )

    def part(self, sub: Any, where: str) -> Mapping[str, Any]:
        if sub is True:
            return {}
        if not isinstance(sub, Mapping):
            raise self.fail(where, f"expected a schema, got {sub!r}")
        if "$ref" in sub:
            return self.resolve(str(sub["$ref"]), where)
        return sub

    def object_fields(self, name: str, schema: Mapping[str, Any], where: str) -> list[Field]:
        parts = [self.part(p, where) for p in schema.get("allOf", [])] or [schema]
        if schema.get("allOf") and schema.get("properties"):
            parts.append(schema)
        fields: dict[str, Field] = {}

        def add(found: Field) -> None:
            # allOf: a key required by any part is required.
            earlier = fields.get(found.key)
            required = found.required or bool(earlier and earlier.required)
            fields[found.key] = replace(found, required=required)

        for part in parts:
            if part is not schema and part.get("allOf"):
                # An allOf within the allOf (often behind a $ref): its parts' fields too. It
                # ends: is_object refused an allOf that includes itself.
                for nested in self.object_fields(name, part, where):
                    add(nested)
                continue
            required = set(part.get("required", []))
            for key, sub in (part.get("properties") or {}).items():
                at = f"{where}/properties/{key}"
                kind = self.type_of(sub, at, name + pascal_case(key))
                description = str(sub.get("description") or "") if isinstance(sub, Mapping) else ""
                add(Field(key, kind, key in required, description))
            for key in required - set(part.get("properties") or {}):
                if key in fields:
                    fields[key] = Field(key, fields[key].type, True, fields[key].description)
        return list(fields.values())

    def type_of(self, schema: Any, where: str, name_hint: str) -> TypeRef:
        if self.depth >= MAX_TYPE_DEPTH:
            raise self.fail(
                where, f"schemas nest more than {MAX_TYPE_DEPTH} levels deep through $refs"
            )
        self.depth += 1
        try:
            return self.type_of_nested(schema, where, name_hint)
        finally:
            self.depth -= 1

    def type_of_nested(self, schema: Any, where: str, name_hint: str) -> TypeRef:
        if schema is True or schema == {}:
            return AnyType()
        if schema is False:
            raise self.fail(where, "a `false` schema accepts nothing")
        if not isinstance(schema, Mapping):
            raise self.fail(where, f"expected a schema, got {schema!r}")
        if "$ref" in schema:
            return self.named(str(schema["$ref"]), where)
        if "const" in schema:
            return self.literal([schema["const"]], where)
        if "enum" in schema:
            return self.literal(list(schema["enum"]), where)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                options = [
                    self.type_of(sub, f"{where}/{keyword}/{i}", f"{name_hint}Option{i + 1}")
                    for i, sub in enumerate(schema[keyword])
                ]
                return union(options)
        if "allOf" in schema:
            if self.is_object(schema, where):
                return self.declare(self.unique(name_hint), schema, where)
            members = schema["allOf"]
            if len(members) == 1:
                return self.type_of(members[0], f"{where}/allOf/0", name_hint)
            return AnyType()
        kind = schema.get("type")
        if isinstance(kind, list):
            return union([self.type_of({**schema, "type": k}, where, name_hint) for k in kind])
        if kind is None and "properties" in schema:
            kind = "object"
        if kind == "object":
            if schema.get("properties"):
                return self.declare(self.unique(name_hint), schema, where)
            extra = schema.get("additionalProperties", True)
            value = (
                AnyType()
                if extra in (True, False)
                else self.type_of(extra, f"{where}/additionalProperties", name_hint + "Value")
            )
            return MapType(value)
        if kind == "array":
            items = schema.get("items", True)
            return ListType(self.type_of(items, f"{where}/items", name_hint + "Item"))
        if kind in PRIMITIVES:
            return PrimitiveType(kind)
        if kind is None:
            return AnyType()
        raise self.fail(where, f"unknown type {kind!r}")

    def literal(self, values: list[Any], where: str) -> TypeRef:
        plain = [v for v in values if v is None or isinstance(v, str | bool | int)]
        if len(plain) == len(values) and values:
            return LiteralType(tuple(plain))
        # Floats, arrays and objects have no literal type: fall back to their JSON types.
        kinds = {type(v) for v in values}
        if kinds <= {int, float}:
            return PrimitiveType("number")
        return AnyType()

    def refuse_bare_cycles(self) -> None:
        """Refuse aliases that reach themselves through no object, array or map.

        `type A = B; type B = A` or `type A = string | A` is invalid TypeScript and a mypy
        error; recursion through an array, a map or an object's property is a valid type.
        """
        aliases = {d.name: d.type for d in self.result.declarations if isinstance(d, AliasDecl)}
        pointers = {name: pointer for pointer, name in self.by_pointer.items()}
        # Depth-first, without recursion: state 1 while a name is on `path`, 2 once done.
        state: dict[str, int] = {}
        for root in aliases:
            if root in state:
                continue
            state[root] = 1
            path, pending = [root], [iter(_bare_names(aliases[root]))]
            while path:
                name = next(pending[-1], None)
                if name is None:
                    state[path.pop()] = 2
                    pending.pop()
                elif name in aliases and state.get(name) == 1:
                    cycle = " -> ".join([*path[path.index(name) :], name])
                    raise self.fail(
                        pointers.get(name, ""),
                        f"the $ref cycle {cycle} passes through no object or array, so it "
                        "has no type; recurse through an array or an object's property",
                    )
                elif name in aliases and name not in state:
                    state[name] = 1
                    path.append(name)
                    pending.append(iter(_bare_names(aliases[name])))


def _bare_names(ref: TypeRef) -> list[str]:
    """The named types `ref` is, or is a union of: not inside a list or a map."""
    if isinstance(ref, NamedType):
        return [ref.name]
    if isinstance(ref, UnionType):
        return [name for option in ref.options for name in _bare_names(option)]
    return []


def union(options: list[TypeRef]) -> TypeRef:
    flat: list[TypeRef] = []
    for option in options:
        for each in option.options if isinstance(option, UnionType) else (option,):
            if each not in flat:
                flat.append(each)
    if any(isinstance(o, AnyType) for o in flat):
        return AnyType()
    return flat[0] if len(flat) == 1 else UnionType(tuple(flat))


def translate_schema(
    schema: Mapping[str, Any] | None,
    *,
    root_name: str,
    source: str,
    label: str = "input.schema",
    taken: set[str] | None = None,
) -> SchemaTypes:
    """The declarations for `schema`, the root one named `root_name`.

    `label` names the schema in errors; `taken` holds names already used in the module (the
    names declared here are added), so that two schemas of one workflow never collide.

    Raises:
        CodegenError: an external or dangling `$ref`, a `false` schema, an unknown type.
    """
    translator = _Translator(
        schema or {},
        source=source,
        prefix=re.sub(r"(Input|Output|Payload)$", "", root_name),
        label=label,
        taken=set() if taken is None else taken,
    )
    translator.result.root = translator.unique(root_name)
    translator.by_pointer["#"] = translator.result.root
    root = schema or {}
    if translator.is_object(root, ""):
        translator.declare(translator.result.root, root, "")
    else:
        translator.result.declarations.append(AliasDecl(translator.result.root, AnyType()))
        kind = translator.type_of(root, "", translator.result.root)
        translator.result.declarations[0] = AliasDecl(
            translator.result.root, kind, str(root.get("description") or "")
        )
    translator.refuse_bare_cycles()
    return translator.result
