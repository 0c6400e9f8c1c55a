"""A run form generated from a workflow's input schema, and the JSON it submits.

Top-level properties of a simple type (string, number, integer, boolean, enum) become fields
with the schema's constraints as HTML attributes, so the browser checks them first; anything
else is entered as JSON. The sidecar validates the whole input again, as it does every Run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from okra_sidecar.console.html import esc

__all__ = ["FormError", "input_form", "input_from_form"]

SIMPLE_TYPES = ("string", "number", "integer", "boolean")
RAW_FIELD = "__json"


class FormError(ValueError):
    """A submitted field that is not what its type needs."""


def _properties(schema: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    if not schema or schema.get("type") != "object":
        return {}
    props = schema.get("properties")
    return {k: v for k, v in props.items() if isinstance(v, Mapping)} if props else {}


def _simple(prop: Mapping[str, Any]) -> bool:
    return prop.get("type") in SIMPLE_TYPES or isinstance(prop.get("enum"), list)


def input_form(schema: Mapping[str, Any] | None) -> str:
    """The fields of a run form (without the <form> element)."""
    props = _properties(schema)
    if not props:
        return f'<label>input (JSON)<textarea name="{RAW_FIELD}" required>{{}}</textarea></label>'
    required = set((schema or {}).get("required") or [])
    fields = []
    for name, prop in props.items():
        need = " required" if name in required else ""
        hint = esc(prop.get("description") or prop.get("type") or "JSON")
        label = f"<span>{esc(name)}{' *' if need else ''} <span class=muted>{hint}</span></span>"
        kind = prop.get("type")
        if isinstance(prop.get("enum"), list):
            options = "".join(
                f'<option value="{esc(json.dumps(v))}">{esc(v)}</option>' for v in prop["enum"]
            )
            empty = "" if need else '<option value="">(none)</option>'
            control = f'<select name="enum:{esc(name)}"{need}>{empty}{options}</select>'
        elif kind == "boolean":
            control = f'<input type=checkbox name="bool:{esc(name)}" value="true">'
        elif kind in ("number", "integer"):
            attrs = "".join(
                f' {html}="{esc(prop[key])}"'
                for key, html in (("minimum", "min"), ("maximum", "max"))
                if isinstance(prop.get(key), int | float)
            )
            step = "1" if kind == "integer" else "any"
            control = f'<input type=number step={step} name="{kind}:{esc(name)}"{attrs}{need}>'
        elif kind == "string":
            attrs = "".join(
                f' {html}="{esc(prop[key])}"'
                for key, html in (("minLength", "minlength"), ("maxLength", "maxlength"))
                if isinstance(prop.get(key), int)
            )
            if isinstance(prop.get("pattern"), str):
                attrs += f' pattern="{esc(prop["pattern"])}"'
            control = f'<input name="string:{esc(name)}"{attrs}{need}>'
        else:
            control = f'<textarea name="json:{esc(name)}"{need}></textarea>'
        fields.append(f"<label>{label}{control}</label>")
    return "".join(fields)


def input_from_form(form: Mapping[str, str]) -> Any:
    """The JSON input a submitted run form stands for; empty optional fields are left out."""
    if RAW_FIELD in form:
        return _json(form[RAW_FIELD], "input")
    data: dict[str, Any] = {}
    for key, raw in form.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in ("enum", "bool", "number", "integer", "string", "json"):
            continue
        if kind == "bool":
            data[name] = raw == "true"
        elif raw == "":
            continue
        elif kind == "string":
            data[name] = raw
        elif kind == "integer":
            try:
                data[name] = int(raw)
            except ValueError:
                raise FormError(f"{name}: {raw!r} is not a whole number") from None
        elif kind == "number":
            try:
                number = float(raw)
            except ValueError:
                raise FormError(f"{name}: {raw!r} is not a number") from None
            data[name] = int(number) if number.is_integer() else number
        else:
            data[name] = _json(raw, name)
    return data


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormError(f"{name}: not JSON ({exc.msg} at column {exc.colno})") from None
