"""Words for load-time messages: JSON pointers to a place in a definition, JSON kinds of values."""

from __future__ import annotations

from typing import Any

__all__ = ["kind_of", "pointer", "pointer_join"]


def pointer(*parts: str | int) -> str:
    """A JSON pointer from raw parts (RFC 6901 escaping of `~` and `/`)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def pointer_join(base: str, *parts: str | int) -> str:
    """`base` (already a pointer) extended by raw parts."""
    return base + pointer(*parts)


def kind_of(value: Any) -> str:
    """`a string`, `an object`...: the JSON kind of a value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
