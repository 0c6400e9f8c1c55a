"""Tasks that ask for outside work: `call` (http, grpc, worker functions), `emit`, `run.workflow`.

Each compiles, when the definition loads (call_compiler.py), into a body whose `request()`
builds the JSON request of an Effect (effects.py) from the task's transformed input. The
request shapes agreed with the executors (every value already evaluated, JSON only):

- http: `{"method": "GET", "uri": "https://...", "headers": {name: str}, "query": {name: str},
  "body": any | null, "output": "content" | "response" | "raw", "redirect": bool}`. `uri` is
  fully resolved: `{name}` templates filled from the task input (RFC 6570 simple expansion of
  top-level properties), expressions evaluated. `basic` and `bearer` authentication become an
  `Authorization` header here (unless `headers` already has one). The executor answers with the
  content (`content`), `{request, statusCode, headers, content}` (`response`) or the base64 body
  (`raw`), or with an RFC 7807 problem (`.../errors/communication`, `status` = HTTP status).
- grpc: `{"proto": uri, "service": {"name", "host", "port": int | null}, "method",
  "arguments": {..}}`, plus `"authentication": {"scheme", "parameter"}` when the service has
  one. The executor answers with the response message as JSON.
- openapi: `{"document": {"endpoint": uri}, "operationId", "parameters": {..}, "output",
  "redirect"}`, plus `"authentication": {"basic": {"username", "password"}}` or
  `{"bearer": {"token"}}` (evaluated) when the call has one. The value is as for http.
- worker: `{"function": name, "arguments": {..}}` for a custom function that neither the spec
  nor `use.functions` defines: the service's own code runs it.
- child: `{"workflow": {"namespace", "name", "version"}, "input": any}`; the value is the child's
  output, the error the child's.
- emit: `{"event": {CloudEvent attributes with `data`}}`, `id`, `specversion` and `time` filled in
  when the definition leaves them out. An emit does not wait for its effect: the task outputs
  the event at once and the executor's result, when it comes, is dropped.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from okra_sidecar.engine.definitions.expressions import (
    CompiledValue,
    ExpressionError,
)
from okra_sidecar.engine.definitions.pointers import kind_of
from okra_sidecar.engine.interpreter.effects import EffectKind

__all__ = [
    "UNSUPPORTED_CALLS",
    "AuthPolicy",
    "EmitEvent",
    "FunctionCall",
    "GrpcCall",
    "HttpCall",
    "OpenApiCall",
    "RunWorkflow",
    "UriTemplate",
    "WorkerCall",
    "is_catalog_reference",
]

UNSUPPORTED_CALLS = frozenset({"asyncapi", "a2a", "mcp"})
_TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")


def is_catalog_reference(name: str) -> bool:
    """`log:1.0.0@catalog` or a function definition's URI: both are fetched, not supported."""
    return "@" in name or "://" in name


class UriTemplate:
    """An endpoint with `{name}` placeholders, filled from the top level of the task input."""

    __slots__ = ("names", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.names = tuple(_TEMPLATE_RE.findall(text))

    def evaluate(self, data: Any, args: Mapping[str, Any]) -> Any:
        if not self.names:
            return self.text
        source = data if isinstance(data, dict) else {}

        def fill(match: re.Match[str]) -> str:
            value = source.get(match[1])
            if value is None:
                return ""
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, str | int | float):
                return quote(str(value), safe="")
            raise ExpressionError(
                match[0],
                f"the URI template variable '{match[1]}' must be a string, number, boolean or "
                f"null, not {kind_of(value)}",
            )

        return _TEMPLATE_RE.sub(fill, self.text)


@dataclass(frozen=True, slots=True, eq=False)
class AuthPolicy:
    """`basic` or `bearer` authentication, resolved to the `$authorization` descriptor."""

    scheme: str
    fields: CompiledValue

    def settings(self, data: Any, args: Mapping[str, Any]) -> dict[str, Any]:
        """The policy as the DSL writes it, evaluated: `{"basic": {username, password}}`..."""
        return {self.scheme.lower(): self.fields.evaluate(data, args)}

    def resolve(self, data: Any, args: Mapping[str, Any]) -> dict[str, Any]:
        values = self.fields.evaluate(data, args)
        if self.scheme == "Basic":
            username, password = values.get("username"), values.get("password")
            if not isinstance(username, str) or not isinstance(password, str):
                raise ExpressionError(
                    "authentication.basic", "the username and password must be strings"
                )
            token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            return {"scheme": "Basic", "parameter": token}
        token = values.get("token")
        if not isinstance(token, str):
            raise ExpressionError("authentication.bearer", "the bearer token must be a string")
        return {"scheme": "Bearer", "parameter": token}


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ExpressionError(what, f"'{what}' must be an object, not {kind_of(value)}")
    result: dict[str, str] = {}
    for name, item in value.items():
        if item is None:
            continue
        if isinstance(item, str):
            result[name] = item
        elif isinstance(item, bool | int | float):
            result[name] = json.dumps(item)
        else:
            raise ExpressionError(
                what, f"{what} '{name}' must be a string, number or boolean, not {kind_of(item)}"
            )
    return result


@dataclass(frozen=True, slots=True, eq=False)
class HttpCall:
    method: CompiledValue
    endpoint: CompiledValue
    authentication: AuthPolicy | None
    headers: CompiledValue | None
    query: CompiledValue | None
    body: CompiledValue | None
    output: str
    redirect: bool

    kind: ClassVar[EffectKind] = EffectKind.HTTP

    def request(self, data: Any, args: Any) -> dict[str, Any]:
        """The http effect request; sets `args.authorization` first, for `$authorization`.

        Raises:
            ExpressionError: an expression fails or gives a value of the wrong type.
        """
        if self.authentication is not None:
            args.authorization = self.authentication.resolve(data, args)
        method = self.method.evaluate(data, args)
        if not isinstance(method, str) or not method:
            raise ExpressionError("method", f"the HTTP method must be a string, not {method!r}")
        uri = self.endpoint.evaluate(data, args)
        if not isinstance(uri, str) or not uri:
            raise ExpressionError("endpoint", f"the endpoint must be a URI string, not {uri!r}")
        headers = _string_map(
            None if self.headers is None else self.headers.evaluate(data, args), "header"
        )
        authorization = args.authorization
        if authorization is not None and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"{authorization['scheme']} {authorization['parameter']}"
        query = _string_map(
            None if self.query is None else self.query.evaluate(data, args), "query"
        )
        return {
            "method": method.upper(),
            "uri": uri,
            "headers": headers,
            "query": query,
            "body": None if self.body is None else self.body.evaluate(data, args),
            "output": self.output,
            "redirect": self.redirect,
        }


@dataclass(frozen=True, slots=True, eq=False)
class GrpcCall:
    arguments: CompiledValue  # the whole `with`, minus the service's authentication
    authentication: AuthPolicy | None

    kind: ClassVar[EffectKind] = EffectKind.GRPC

    def request(self, data: Any, args: Any) -> dict[str, Any]:
        if self.authentication is not None:
            args.authorization = self.authentication.resolve(data, args)
        values = self.arguments.evaluate(data, args)
        proto = values["proto"]["endpoint"]
        if isinstance(proto, dict):
            proto = proto.get("uri")
        service = values["service"]
        for name, item in (("proto", proto), ("service.name", service.get("name"))):
            if not isinstance(item, str) or not item:
                raise ExpressionError(name, f"'{name}' must be a non-empty string")
        port = service.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            raise ExpressionError("service.port", f"the port must be an integer, not {port!r}")
        arguments = values.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise ExpressionError("arguments", "'arguments' must be an object")
        request: dict[str, Any] = {
            "proto": proto,
            "service": {"name": service["name"], "host": service.get("host"), "port": port},
            "method": values["method"],
            "arguments": arguments or {},
        }
        if args.authorization is not None:
            request["authentication"] = args.authorization
        return request


@dataclass(frozen=True, slots=True, eq=False)
class OpenApiCall:
    arguments: CompiledValue  # the whole `with`, minus the authentication
    authentication: AuthPolicy | None

    kind: ClassVar[EffectKind] = EffectKind.OPENAPI

    def request(self, data: Any, args: Any) -> dict[str, Any]:
        values = self.arguments.evaluate(data, args)
        endpoint = values["document"]["endpoint"]
        if isinstance(endpoint, dict):
            endpoint = endpoint.get("uri")
        if not isinstance(endpoint, str) or not endpoint:
            raise ExpressionError("document.endpoint", "the document endpoint must be a URI")
        parameters = values.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ExpressionError("parameters", "'parameters' must be an object")
        request: dict[str, Any] = {
            "document": {"endpoint": endpoint},
            "operationId": values["operationId"],
            "parameters": parameters or {},
            "output": values.get("output", "content"),
            "redirect": values.get("redirect", False),
        }
        if self.authentication is not None:
            args.authorization = self.authentication.resolve(data, args)
            request["authentication"] = self.authentication.settings(data, args)
        return request


@dataclass(frozen=True, slots=True, eq=False)
class WorkerCall:
    function: str
    arguments: CompiledValue | None

    kind: ClassVar[EffectKind] = EffectKind.WORKER

    def request(self, data: Any, args: Any) -> dict[str, Any]:
        arguments = {} if self.arguments is None else self.arguments.evaluate(data, args)
        return {"function": self.function, "arguments": arguments}


@dataclass(frozen=True, slots=True, eq=False)
class FunctionCall:
    """A call of a `use.functions` entry: its one-task TaskList runs with `with` as input."""

    function: str
    do: str
    arguments: CompiledValue | None


@dataclass(frozen=True, slots=True, eq=False)
class RunWorkflow:
    workflow: dict[str, str]
    input: CompiledValue | None
    wait: bool
    returns: bool  # False for `return: none`

    kind: ClassVar[EffectKind] = EffectKind.CHILD

    def request(self, data: Any, args: Any) -> dict[str, Any]:
        value = data if self.input is None else self.input.evaluate(data, args)
        return {"workflow": dict(self.workflow), "input": value}


@dataclass(frozen=True, slots=True, eq=False)
class EmitEvent:
    event: CompiledValue

    kind: ClassVar[EffectKind] = EffectKind.EMIT

    def build(self, data: Any, args: Any, *, event_id: str, time_iso: str) -> dict[str, Any]:
        """The CloudEvent to emit, with `id`, `specversion` and `time` defaulted."""
        attributes = self.event.evaluate(data, args)
        if not isinstance(attributes, dict):
            raise ExpressionError("emit.event.with", "the event must be an object")
        for name in ("source", "type"):
            value = attributes.get(name)
            if not isinstance(value, str) or not value:
                raise ExpressionError(
                    f"emit.event.with.{name}", f"the event's '{name}' must be a non-empty string"
                )
        event = {"specversion": "1.0", "id": event_id, "time": time_iso}
        event.update(attributes)
        if "data" in event and "datacontenttype" not in event:
            event["datacontenttype"] = "application/json"
        return event
