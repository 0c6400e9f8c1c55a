"""Tasks that ask for outside work: `call` (http, grpc, worker functions), `emit`, `run.workflow`.

Each compiles, when the definition loads, into a body whose `request()` builds the JSON request
of an Effect (effects.py) from the task's transformed input. The request shapes agreed with the
executors (every value already evaluated, JSON only):

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
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from okra_sidecar.engine.definitions.expressions import (
    CompiledValue,
    ExpressionError,
    is_expression,
)
from okra_sidecar.engine.definitions.pointers import kind_of, pointer, pointer_join
from okra_sidecar.engine.interpreter.effects import EffectKind

if TYPE_CHECKING:
    from okra_sidecar.engine.definitions.compiler import TaskCompiler

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
    "compile_authentication",
    "compile_emit",
    "compile_grpc",
    "compile_http",
    "compile_openapi",
    "compile_run_workflow",
    "compile_worker",
    "is_catalog_reference",
]

UNSUPPORTED_CALLS = frozenset({"asyncapi", "a2a", "mcp"})
_OUTPUTS = ("content", "response", "raw")
_TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")
_HTTP_KEYS = frozenset({"method", "endpoint", "headers", "body", "query", "output", "redirect"})
_UNSUPPORTED_AUTH = ("certificate", "digest", "oauth2", "oidc")


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


# -- compiling -----------------------------------------------------------------------------------


def _check_keys(c: TaskCompiler, value: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    label = path.rsplit("/", 1)[-1]
    for key in value:
        if key not in allowed:
            c.fail(pointer_join(path, key), f"unknown property '{key}' in '{label}'")


def compile_authentication(c: TaskCompiler, value: Any, path: str) -> AuthPolicy:
    """An endpoint's authentication: inline `basic`/`bearer`, or `use` of a named one."""
    if isinstance(value, dict) and set(value) == {"use"}:
        name = value["use"]
        found = c.authentications.get(name) if isinstance(name, str) else None
        if found is None:
            c.fail(
                pointer_join(path, "use"),
                f"'{name}' is not an authentication defined in use.authentications",
            )
        return compile_authentication(c, found, pointer("use", "authentications", name))
    if not isinstance(value, dict) or len(value) != 1:
        c.fail(path, "an authentication must name one scheme (basic, bearer...) or 'use' one")
    scheme, settings = next(iter(value.items()))
    scheme_path = pointer_join(path, scheme)
    if scheme in _UNSUPPORTED_AUTH:
        c.fail(scheme_path, f"'{scheme}' authentication is not supported by this runtime")
    if scheme not in ("basic", "bearer"):
        c.fail(scheme_path, f"unknown authentication scheme '{scheme}'")
    if not isinstance(settings, dict):
        c.fail(scheme_path, f"'{scheme}' must be an object")
    if "use" in settings:
        c.fail(
            pointer_join(scheme_path, "use"),
            "secret-based authentication is not supported by this runtime (no secret store)",
        )
    fields = ("username", "password") if scheme == "basic" else ("token",)
    _check_keys(c, settings, frozenset(fields), scheme_path)
    for name in fields:
        if not isinstance(settings.get(name), str):
            c.fail(scheme_path, f"'{scheme}' authentication needs '{name}', a string")
    return AuthPolicy("Basic" if scheme == "basic" else "Bearer", c.value(settings, scheme_path))


def _endpoint(c: TaskCompiler, value: Any, path: str) -> tuple[CompiledValue, AuthPolicy | None]:
    authentication = None
    if isinstance(value, dict):
        _check_keys(c, value, frozenset({"uri", "authentication"}), path)
        if "authentication" in value:
            authentication = compile_authentication(
                c, value["authentication"], pointer_join(path, "authentication")
            )
        if "uri" not in value:
            c.fail(path, "an endpoint needs 'uri'")
        path = pointer_join(path, "uri")
        value = value["uri"]
    if not isinstance(value, str) or not value:
        c.fail(path, "an endpoint must be a URI, a runtime expression or {uri, authentication}")
    if is_expression(value):
        return c.value(value, path), authentication
    return UriTemplate(value), authentication


def compile_http(c: TaskCompiler, name: str, arguments: Any, path: str) -> HttpCall:
    if not isinstance(arguments, dict):
        c.fail(path, f"task '{name}' calls http: 'with' must be an object")
    _check_keys(c, arguments, _HTTP_KEYS, path)
    for key in ("method", "endpoint"):
        if key not in arguments:
            c.fail(path, f"an http call needs '{key}'")
    method = arguments["method"]
    if not isinstance(method, str) or not method:
        c.fail(pointer_join(path, "method"), "'method' must be a string such as get or post")
    endpoint, authentication = _endpoint(c, arguments["endpoint"], pointer_join(path, "endpoint"))
    maps: dict[str, CompiledValue | None] = {}
    for key in ("headers", "query"):
        item = arguments.get(key)
        if item is not None and not isinstance(item, dict) and not is_expression(item):
            c.fail(pointer_join(path, key), f"'{key}' must be an object or a runtime expression")
        maps[key] = None if item is None else c.value(item, pointer_join(path, key))
    output = arguments.get("output", "content")
    if output not in _OUTPUTS:
        c.fail(pointer_join(path, "output"), "'output' must be one of content, response, raw")
    redirect = arguments.get("redirect", False)
    if not isinstance(redirect, bool):
        c.fail(pointer_join(path, "redirect"), "'redirect' must be true or false")
    body = arguments.get("body")
    return HttpCall(
        method=c.value(method, pointer_join(path, "method")),
        endpoint=endpoint,
        authentication=authentication,
        headers=maps["headers"],
        query=maps["query"],
        body=None if "body" not in arguments else c.value(body, pointer_join(path, "body")),
        output=output,
        redirect=redirect,
    )


def compile_grpc(c: TaskCompiler, name: str, arguments: Any, path: str) -> GrpcCall:
    if not isinstance(arguments, dict):
        c.fail(path, f"task '{name}' calls grpc: 'with' must be an object")
    _check_keys(c, arguments, frozenset({"proto", "service", "method", "arguments"}), path)
    for key in ("proto", "service", "method"):
        if key not in arguments:
            c.fail(path, f"a grpc call needs '{key}'")
    proto = arguments["proto"]
    proto_path = pointer_join(path, "proto")
    if not isinstance(proto, dict) or "endpoint" not in proto:
        c.fail(proto_path, "'proto' must be an external resource with 'endpoint'")
    _check_keys(c, proto, frozenset({"name", "endpoint"}), proto_path)
    endpoint = proto["endpoint"]
    if isinstance(endpoint, dict):
        _check_keys(c, endpoint, frozenset({"uri"}), pointer_join(proto_path, "endpoint"))
        endpoint = endpoint.get("uri")
    if not isinstance(endpoint, str) or not endpoint:
        c.fail(pointer_join(proto_path, "endpoint"), "the proto endpoint must be a URI")
    service = arguments["service"]
    service_path = pointer_join(path, "service")
    if not isinstance(service, dict):
        c.fail(service_path, "'service' must be an object with 'name' and 'host'")
    _check_keys(c, service, frozenset({"name", "host", "port", "authentication"}), service_path)
    for key in ("name", "host"):
        if not isinstance(service.get(key), str) or not service[key]:
            c.fail(service_path, f"'service' needs '{key}', a string")
    port = service.get("port")
    if port is not None and not is_expression(port):
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            c.fail(pointer_join(service_path, "port"), "'port' must be an integer (0-65535)")
    if not isinstance(arguments["method"], str) or not arguments["method"]:
        c.fail(pointer_join(path, "method"), "'method' must be the name of a method")
    items = arguments.get("arguments")
    if items is not None and not isinstance(items, dict) and not is_expression(items):
        c.fail(pointer_join(path, "arguments"), "'arguments' must be an object")
    authentication = None
    if "authentication" in service:
        authentication = compile_authentication(
            c, service["authentication"], pointer_join(service_path, "authentication")
        )
    plain = {
        "proto": {"endpoint": endpoint},
        "service": {k: v for k, v in service.items() if k != "authentication"},
        "method": arguments["method"],
        "arguments": items,
    }
    return GrpcCall(c.value(plain, path), authentication)


def compile_openapi(c: TaskCompiler, name: str, arguments: Any, path: str) -> OpenApiCall:
    if not isinstance(arguments, dict):
        c.fail(path, f"task '{name}' calls openapi: 'with' must be an object")
    allowed = {"document", "operationId", "parameters", "authentication", "output", "redirect"}
    _check_keys(c, arguments, frozenset(allowed), path)
    for key in ("document", "operationId"):
        if key not in arguments:
            c.fail(path, f"an openapi call needs '{key}'")
    document = arguments["document"]
    document_path = pointer_join(path, "document")
    if not isinstance(document, dict) or "endpoint" not in document:
        c.fail(document_path, "'document' must be an external resource with 'endpoint'")
    _check_keys(c, document, frozenset({"name", "endpoint"}), document_path)
    endpoint = document["endpoint"]
    if isinstance(endpoint, dict):
        _check_keys(c, endpoint, frozenset({"uri"}), pointer_join(document_path, "endpoint"))
        endpoint = endpoint.get("uri")
    if not isinstance(endpoint, str) or not endpoint:
        c.fail(pointer_join(document_path, "endpoint"), "the document endpoint must be a URI")
    if not isinstance(arguments["operationId"], str) or not arguments["operationId"]:
        c.fail(pointer_join(path, "operationId"), "'operationId' must be a string")
    parameters = arguments.get("parameters")
    if (
        parameters is not None
        and not isinstance(parameters, dict)
        and not is_expression(parameters)
    ):
        c.fail(pointer_join(path, "parameters"), "'parameters' must be an object")
    output = arguments.get("output", "content")
    if output not in _OUTPUTS:
        c.fail(pointer_join(path, "output"), "'output' must be one of content, response, raw")
    redirect = arguments.get("redirect", False)
    if not isinstance(redirect, bool):
        c.fail(pointer_join(path, "redirect"), "'redirect' must be true or false")
    authentication = None
    if "authentication" in arguments:
        authentication = compile_authentication(
            c, arguments["authentication"], pointer_join(path, "authentication")
        )
    plain = {
        "document": {"endpoint": endpoint},
        "operationId": arguments["operationId"],
        "parameters": parameters,
        "output": output,
        "redirect": redirect,
    }
    return OpenApiCall(c.value(plain, path), authentication)


def compile_worker(c: TaskCompiler, function: str, arguments: Any, path: str) -> WorkerCall:
    if arguments is not None and not isinstance(arguments, dict):
        c.fail(path, "'with' must be an object of the function's arguments")
    return WorkerCall(function, None if arguments is None else c.value(arguments, path))


def compile_emit(c: TaskCompiler, value: Any, path: str) -> EmitEvent:
    if not isinstance(value, dict) or set(value) != {"event"}:
        c.fail(path, "'emit' must be an object with 'event'")
    event = value["event"]
    event_path = pointer_join(path, "event")
    if not isinstance(event, dict) or set(event) != {"with"}:
        c.fail(event_path, "'event' must be an object with 'with', the event's attributes")
    attributes = event["with"]
    with_path = pointer_join(event_path, "with")
    if not isinstance(attributes, dict):
        c.fail(with_path, "'with' must be an object of event attributes")
    for key in ("source", "type"):
        if not isinstance(attributes.get(key), str) or not attributes[key]:
            c.fail(with_path, f"an emitted event needs '{key}', a string")
    return EmitEvent(c.value(attributes, with_path))


def compile_run_workflow(c: TaskCompiler, value: dict[str, Any], path: str) -> RunWorkflow:
    _check_keys(c, value, frozenset({"workflow", "await", "return"}), path)
    target = value["workflow"]
    target_path = pointer_join(path, "workflow")
    if not isinstance(target, dict):
        c.fail(target_path, "'workflow' must be an object with namespace, name and version")
    _check_keys(c, target, frozenset({"namespace", "name", "version", "input"}), target_path)
    reference: dict[str, str] = {}
    for key in ("namespace", "name", "version"):
        item = target.get(key)
        if not isinstance(item, str) or not item:
            c.fail(target_path, f"'workflow' needs '{key}', a string")
        reference[key] = item
    wait = value.get("await", True)
    if not isinstance(wait, bool):
        c.fail(pointer_join(path, "await"), "'await' must be true or false")
    returns = value.get("return", "stdout")
    if returns not in ("stdout", "none"):
        c.fail(
            pointer_join(path, "return"),
            f"'return: {returns}' is not supported by this runtime for a workflow (stdout, the "
            "child's output, or none)",
        )
    child_input = None
    if "input" in target:
        child_input = c.value(target["input"], pointer_join(target_path, "input"))
    return RunWorkflow(reference, child_input, wait, returns == "stdout")
