"""Refuse JSON schemas whose validation would never end: `$ref` cycles that make no progress.

A schema may refer to itself through an object property or an array item (a tree): each
round then validates a smaller part of the instance, so it ends. A cycle through `$ref`,
`allOf`/`anyOf`/`oneOf`, `not`, `if`/`then`/`else` or `dependentSchemas` alone keeps
validating the same value until Python gives up (`{"$ref": "#"}`,
`{"anyOf": [{"type": "string"}, {"$ref": "#"}]}`). A long chain of `$ref`s that does end
still costs stack frames for each link, so its length is capped too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["MAX_REF_CHAIN", "ref_problem"]

# $refs followed in a row on one value; each costs a few frames of jsonschema's recursion.
MAX_REF_CHAIN = 32

# Keywords whose subschemas apply to the same value (no progress into the instance).
_SAME_VALUE_ONE = ("not", "if", "then", "else")
_SAME_VALUE_LIST = ("allOf", "anyOf", "oneOf")
_SAME_VALUE_MAP = ("dependentSchemas", "dependencies")
# Keywords whose subschemas apply to a part of the value (a property, an item, a key).
_PART_ONE = (
    "items",
    "additionalItems",
    "additionalProperties",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
_PART_LIST = ("items", "prefixItems")
_PART_MAP = ("properties", "patternProperties")
# Keywords that hold schemas applied only through a $ref.
_HOLDERS = ("$defs", "definitions")
_REFS = ("$ref", "$dynamicRef", "$recursiveRef")


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _children(node: Mapping[str, Any], at: str) -> Iterator[tuple[str, Any, bool]]:
    """(pointer, subschema, applies to the same value?) for each subschema of `node`."""
    for key in (*_SAME_VALUE_ONE, *_PART_ONE):
        if isinstance(node.get(key), dict):
            yield f"{at}/{_escape(key)}", node[key], key in _SAME_VALUE_ONE
    for key in (*_SAME_VALUE_LIST, *_PART_LIST):
        if isinstance(node.get(key), list):
            for index, sub in enumerate(node[key]):
                yield f"{at}/{key}/{index}", sub, key in _SAME_VALUE_LIST
    for key in (*_SAME_VALUE_MAP, *_PART_MAP, *_HOLDERS):
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                yield f"{at}/{key}/{_escape(str(name))}", sub, key in _SAME_VALUE_MAP


class _Graph:
    """Every subschema by pointer, with the edges that validate the same value."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.anchors: dict[str, str] = {}
        self.same: dict[str, list[tuple[str, bool]]] = {}  # pointer -> [(target, is a $ref)]
        stack: list[tuple[str, Any]] = [("", schema)]
        while stack:
            at, node = stack.pop()
            if not isinstance(node, dict) or at in self.nodes:
                continue
            self.nodes[at] = node
            for key in ("$anchor", "$dynamicAnchor"):
                if isinstance(node.get(key), str):
                    self.anchors.setdefault(node[key], at)
            edges: list[tuple[str, bool]] = []
            for pointer, sub, same in _children(node, at):
                stack.append((pointer, sub))
                if same and isinstance(sub, dict):
                    edges.append((pointer, False))
            self.same[at] = edges
        for at, node in self.nodes.items():
            for key in _REFS:
                target = self.resolve(node.get(key))
                if target is not None:
                    self.same[at].append((target, True))

    def resolve(self, ref: Any) -> str | None:
        """The pointer a document-local `$ref` names, or None (external, or nothing there)."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        fragment = ref[1:]
        if fragment and not fragment.startswith("/"):
            return self.anchors.get(fragment)
        return fragment if fragment in self.nodes else None


def ref_problem(schema: Mapping[str, Any]) -> tuple[str, str] | None:
    """(pointer, problem) for a `$ref` cycle that makes no progress or an over-long `$ref`
    chain in `schema`, or None when validating any value with it ends. The pointer is in
    the schema ("" for its root)."""
    graph = _Graph(schema)
    # Longest run of $refs from each node along same-value edges; also finds cycles.
    longest: dict[str, int] = {}
    for start in graph.nodes:
        if start in longest:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        on_path = {start}
        while stack:
            at, index = stack[-1]
            edges = graph.same[at]
            if index < len(edges):
                stack[-1] = (at, index + 1)
                target, _ = edges[index]
                if target in on_path:
                    cycle = " -> ".join(f"#{p}" for p in [*path[path.index(target) :], target])
                    return at, (
                        f"the $ref cycle {cycle} passes through no object property or array "
                        "item, so validating it would never end"
                    )
                if target not in longest:
                    stack.append((target, 0))
                    path.append(target)
                    on_path.add(target)
                continue
            longest[at] = max((longest[t] + is_ref for t, is_ref in edges), default=0)
            if longest[at] > MAX_REF_CHAIN:
                return at, (
                    f"a chain of more than {MAX_REF_CHAIN} $refs on one value starts here; "
                    "shorten it"
                )
            stack.pop()
            path.pop()
            on_path.discard(at)
    return None
