"""The requests call tasks build: http, grpc and openapi, with endpoints and authentication."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from okra_sidecar.engine.interpreter.effects import EffectKind
from okra_sidecar.engine.interpreter.interpreter import advance

from .support import (
    T0,
    begin,
    only_effect,
    result_signal,
    workflow,
)

EXPRESSION_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/expression"


def test_http_request_resolution() -> None:
    definition = workflow(
        """
        use:
          authentications:
            petStore: {bearer: {token: '${ .token }'}}
        do:
          - find:
              call: http
              with:
                method: '${ .verb }'
                endpoint:
                  uri: 'https://api.example/{kind}/{id}/{missing}/{flag}?q={text}'
                  authentication: {use: petStore}
                headers:
                  Accept: application/json
                  X-Count: '${ .count }'
                  X-None: '${ null }'
                query: '${ {limit: .count, all: true} }'
                body: {who: '${ .kind }', auth: '${ $authorization.scheme }'}
                output: response
                redirect: true
              output:
                as: '${ {scheme: $authorization.scheme, status: .statusCode} }'
        """
    )
    workflow_input = {
        "verb": "post",
        "kind": "pets",
        "id": 3,
        "flag": False,
        "text": "a b/c",
        "count": 2,
        "token": "t0k",
    }
    first = begin(definition, workflow_input)
    assert only_effect(first.effects).request == {
        "method": "POST",
        "uri": "https://api.example/pets/3//false?q=a%20b%2Fc",
        "headers": {"Accept": "application/json", "X-Count": "2", "Authorization": "Bearer t0k"},
        "query": {"limit": "2", "all": "true"},
        "body": {"who": "pets", "auth": "Bearer"},
        "output": "response",
        "redirect": True,
    }
    response = {"statusCode": 201, "content": {}}
    done = advance(
        definition, first.state, signals=[result_signal("e1", value=response)], now_ms=T0
    )
    assert done.output == {"scheme": "Bearer", "status": 201}


def test_basic_authentication_and_an_explicit_authorization_header() -> None:
    definition = workflow(
        """
        do:
          - login:
              call: http
              with:
                method: get
                endpoint:
                  uri: https://auth.example/me
                  authentication: {basic: {username: '${ .user }', password: secret}}
          - mine:
              call: http
              with:
                method: get
                headers: {authorization: Token abc}
                endpoint:
                  uri: https://auth.example/me
                  authentication: {bearer: {token: xyz}}
        """
    )
    first = begin(definition, {"user": "ada"})
    expected = "Basic " + base64.b64encode(b"ada:secret").decode()
    assert only_effect(first.effects).request["headers"] == {"Authorization": expected}
    second = advance(definition, first.state, signals=[result_signal("e1")], now_ms=T0)
    assert only_effect(second.effects).request["headers"] == {"authorization": "Token abc"}


@pytest.mark.parametrize(
    ("endpoint", "workflow_input", "detail"),
    [
        (
            "'https://x.example/{id}'",
            {"id": {"nested": 1}},
            "expression '{id}' failed: the URI template variable 'id' must be a string, "
            "number, boolean or null, not an object",
        ),
        (
            "'${ .uri }'",
            {"uri": 5},
            "expression 'endpoint' failed: the endpoint must be a URI string, not 5",
        ),
    ],
)
def test_bad_endpoints_raise_expression_errors(
    endpoint: str, workflow_input: Any, detail: str
) -> None:
    definition = workflow(
        f"do: [{{get: {{call: http, with: {{method: get, endpoint: {endpoint}}}}}}}]"
    )
    result = begin(definition, workflow_input)
    assert result.error is not None
    assert (result.error["type"], result.error["detail"]) == (EXPRESSION_ERROR, detail)
    assert result.effects == []


def test_a_header_must_be_a_scalar() -> None:
    definition = workflow(
        "do: [{get: {call: http, with: {method: get, endpoint: 'https://x.example', "
        "headers: '${ {a: [1]} }'}}}]"
    )
    result = begin(definition)
    assert result.error is not None
    assert result.error["detail"] == (
        "expression 'header' failed: header 'a' must be a string, number or boolean, not a list"
    )


def test_grpc_call_request_and_response() -> None:
    definition = workflow(
        """
        do:
          - greet:
              call: grpc
              with:
                proto: {endpoint: 'file://app/greet.proto'}
                service:
                  name: GreeterApi.Greeter
                  host: localhost
                  port: 5011
                  authentication: {bearer: {token: '${ .token }'}}
                method: SayHello
                arguments: {name: '${ .user }'}
          - bare:
              call: grpc
              with:
                proto: {endpoint: {uri: 'file://app/greet.proto'}}
                service: {name: GreeterApi.Greeter, host: localhost}
                method: SayBye
        """
    )
    first = begin(definition, {"user": "Ada", "token": "t"})
    effect = only_effect(first.effects)
    assert (effect.kind, effect.request) == (
        EffectKind.GRPC,
        {
            "proto": "file://app/greet.proto",
            "service": {"name": "GreeterApi.Greeter", "host": "localhost", "port": 5011},
            "method": "SayHello",
            "arguments": {"name": "Ada"},
            "authentication": {"scheme": "Bearer", "parameter": "t"},
        },
    )
    second = advance(
        definition, first.state, signals=[result_signal("e1", value={"message": "hi"})], now_ms=T0
    )
    assert only_effect(second.effects).request == {
        "proto": "file://app/greet.proto",
        "service": {"name": "GreeterApi.Greeter", "host": "localhost", "port": None},
        "method": "SayBye",
        "arguments": {},
    }
    done = advance(definition, second.state, signals=[result_signal("e2", value={})], now_ms=T0)
    assert done.output == {}


def test_openapi_call_request() -> None:
    definition = workflow(
        """
        do:
          - findPet:
              call: openapi
              with:
                document: {endpoint: {uri: 'https://petstore.example/swagger.json'}}
                operationId: findPetsByStatus
                parameters: {status: '${ .status }'}
                authentication: {basic: {username: '${ .user }', password: pw}}
                output: response
              output: {as: '${ {n: (.content | length), auth: $authorization.scheme} }'}
        """
    )
    first = begin(definition, {"status": "available", "user": "ada"})
    effect = only_effect(first.effects)
    assert (effect.kind, effect.request) == (
        EffectKind.OPENAPI,
        {
            "document": {"endpoint": "https://petstore.example/swagger.json"},
            "operationId": "findPetsByStatus",
            "parameters": {"status": "available"},
            "output": "response",
            "redirect": False,
            "authentication": {"basic": {"username": "ada", "password": "pw"}},
        },
    )
    value = {"statusCode": 200, "content": [1, 2]}
    done = advance(definition, first.state, signals=[result_signal("e1", value=value)], now_ms=T0)
    assert done.output == {"n": 2, "auth": "Basic"}
