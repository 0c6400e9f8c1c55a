"""Bounded parsing of YAML and JSON text that callers, definitions or remote servers send.

A YAML alias bomb is a few hundred bytes whose aliases expand to 10^9 nodes: PyYAML builds it
quickly (a shared node is constructed once), but whatever walks the result afterwards (the
definition checker, the canonical JSON, the policy flattener) walks every expansion and runs
for minutes or exhausts memory. Deep nesting exhausts Python's recursion limit instead, with a
traceback that names no file. Every parse of untrusted text therefore checks, before anything
walks the result: its size, its nesting depth, its alias count and its node count with every
alias expanded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["ParseLimitError", "ParseLimits", "check_depth", "load_json", "load_yaml"]


@dataclass(frozen=True)
class ParseLimits:
    """How large a document may be; the defaults suit policy sets and definitions."""

    max_bytes: int = 1024 * 1024
    max_depth: int = 64  # nested mappings and sequences (objects and arrays)
    max_aliases: int = 1000
    max_nodes: int = 1_000_000  # counted with every alias expanded


class ParseLimitError(ValueError):
    """The text is larger, deeper or more aliased than its limits allow."""


def _check_size(text: str, limits: ParseLimits) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise ParseLimitError(f"is {size} bytes; the limit is {limits.max_bytes} bytes")


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes under `root`, aliases expanded, counted once per distinct node (memoized)."""
    sizes: dict[int, int] = {}
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:
        node, children_done = pending.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            total = 1 + sum(sizes[id(child)] for child in children)
            if total > limit:
                raise ParseLimitError(
                    f"expands to more than {limit} nodes (aliases are counted at each use)"
                )
            sizes[id(node)] = total
            continue
        pending.append((node, True))
        pending.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _bounded(base: type[yaml.SafeLoader], limits: ParseLimits) -> type[yaml.SafeLoader]:
    """`base` with the composer counting depth and aliases as it builds the node graph."""

    class BoundedLoader(base):  # type: ignore[valid-type,misc]  # a class made per call
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0
            self._aliases = 0

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > limits.max_aliases:
                    raise ParseLimitError(f"uses more than {limits.max_aliases} aliases")
                return super().compose_node(parent, index)  # type: ignore[no-any-return]
            if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
                return super().compose_node(parent, index)  # type: ignore[no-any-return]
            self._depth += 1
            try:
                if self._depth > limits.max_depth:
                    raise ParseLimitError(f"nests more than {limits.max_depth} levels deep")
                return super().compose_node(parent, index)  # type: ignore[no-any-return]
            finally:
                self._depth -= 1

        def fetch_flow_collection_start(self, token_class: type[yaml.Token]) -> None:
            # Refused as the scanner opens the level past the limit: before it, PyYAML's
            # scanner looks up to 1024 characters ahead for a possible key at every open
            # `[` or `{`, at a cost growing with the depth (a tenth of a second of the serving
            # process for 5,000 `[`, before the composer saw the 65th level).
            super().fetch_flow_collection_start(token_class)
            if self.flow_level > limits.max_depth:
                raise ParseLimitError(f"nests more than {limits.max_depth} levels deep")

        def compose_document(self) -> yaml.Node:
            node: yaml.Node = super().compose_document()
            _expanded_size(node, limits.max_nodes)
            return node

    return BoundedLoader


def load_yaml(text: str, loader: type[yaml.SafeLoader], limits: ParseLimits) -> Any:
    """One YAML (or JSON) document through `loader`, within `limits`.

    Raises:
        ParseLimitError: the text breaks a limit.
        yaml.YAMLError: the text is not YAML.
    """
    _check_size(text, limits)
    try:
        return yaml.load(text, Loader=_bounded(loader, limits))  # a SafeLoader subclass
    except RecursionError:
        # The depth limit stops the composer first; this guards the constructors beneath it.
        raise ParseLimitError(f"nests more than {limits.max_depth} levels deep") from None


def load_json(
    text: str | bytes,
    limits: ParseLimits,
    *,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """A JSON document within `limits` (the stdlib parser: no aliases, so no expansion).

    Raises:
        ParseLimitError: the text breaks a limit.
        ValueError: the text is not JSON (json.JSONDecodeError is one).
    """
    if isinstance(text, bytes):
        if len(text) > limits.max_bytes:
            raise ParseLimitError(f"is {len(text)} bytes; the limit is {limits.max_bytes} bytes")
    else:
        _check_size(text, limits)
    try:
        data = json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ParseLimitError(f"nests more than {limits.max_depth} levels deep") from None
    check_depth(data, limits.max_depth)
    return data


def check_depth(data: Any, max_depth: int) -> None:
    """Refuse objects and arrays nested more than `max_depth` deep (without recursing).

    Raises:
        ParseLimitError: they are.
    """
    level: list[tuple[Any, int]] = [(data, 1)]
    while level:
        value, depth = level.pop()
        if not isinstance(value, dict | list):
            continue
        if depth > max_depth:
            raise ParseLimitError(f"nests more than {max_depth} levels deep")
        children = value.values() if isinstance(value, dict) else value
        level.extend((child, depth + 1) for child in children)
