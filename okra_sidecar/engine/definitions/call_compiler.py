"""Compile `call`, `emit` and `run.workflow` tasks into the bodies of calls.py, at load."""

from __future__ import annotations

from typing import Any

from okra_sidecar.engine.definitions.calls import (
    AuthPolicy,
    EmitEvent,
    GrpcCall,
    HttpCall,
    OpenApiCall,
    RunWorkflow,
    UriTemplate,
    WorkerCall,
)
from okra_sidecar.engine.definitions.compiling import Compiler
from okra_sidecar.engine.definitions.expressions import CompiledValue, is_expression
from okra_sidecar.engine.definitions.pointers import pointer, pointer_join

__all__ = [
    "compile_authentication",
    "compile_emit",
    "compile_grpc",
    "compile_http",
    "compile_openapi",
    "compile_run_workflow",
    "compile_worker",
]

_OUTPUTS = ("content", "response", "raw")


_HTTP_KEYS = frozenset({"method", "endpoint", "headers", "body", "query", "output", "redirect"})


_UNSUPPORTED_AUTH = ("certificate", "digest", "oauth2", "oidc")


def _check_keys(c: Compiler, value: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    label = path.rsplit("/", 1)[-1]
    for key in value:
        if key not in allowed:
            c.fail(pointer_join(path, key), f"unknown property '{key}' in '{label}'")


def compile_authentication(c: Compiler, value: Any, path: str) -> AuthPolicy:
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


def _endpoint(c: Compiler, value: Any, path: str) -> tuple[CompiledValue, AuthPolicy | None]:
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


def compile_http(c: Compiler, name: str, arguments: Any, path: str) -> HttpCall:
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


def compile_grpc(c: Compiler, name: str, arguments: Any, path: str) -> GrpcCall:
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


def compile_openapi(c: Compiler, name: str, arguments: Any, path: str) -> OpenApiCall:
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


def compile_worker(c: Compiler, function: str, arguments: Any, path: str) -> WorkerCall:
    if arguments is not None and not isinstance(arguments, dict):
        c.fail(path, "'with' must be an object of the function's arguments")
    return WorkerCall(function, None if arguments is None else c.value(arguments, path))


def compile_emit(c: Compiler, value: Any, path: str) -> EmitEvent:
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


def compile_run_workflow(c: Compiler, value: dict[str, Any], path: str) -> RunWorkflow:
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
