"""CEL conditions: names checked at load, JSON activations, errors that deny."""

from __future__ import annotations

from typing import Any

import pytest

from okra_sidecar.policy.cel import CelCompileError, CelEngine, CelEvaluationError, to_cel

ROOTS = frozenset({"request", "workflow", "instance", "service", "env"})
ENV = frozenset({"DEPLOYMENT_ENV"})


def evaluate(cel: CelEngine, source: str, **activation: Any) -> bool:
    program = cel.compile(source, roots=ROOTS, env_names=ENV)
    return program.evaluate({name: to_cel(value) for name, value in activation.items()})


TEAM_A: dict[str, Any] = {"metadata": {"x-team": "a"}, "auth": {"claims": {"role": "admin"}}}
NO_CLAIMS: dict[str, Any] = {"metadata": {}, "auth": {"claims": {}}}


@pytest.mark.parametrize(
    ("source", "activation", "expected"),
    [
        (
            "request.metadata['x-team'] == 'a' && [1, 2].exists(x, x > 1)",
            {"request": TEAM_A},
            True,
        ),
        (
            "request.metadata['x-team'] == 'a' && [1, 2].exists(x, x > 1)",
            {"request": {"metadata": {"x-team": "b"}}},
            False,
        ),
        (
            "instance.tags.team == 'a' && instance.workflow.startsWith('a.')",
            {"instance": {"tags": {"team": "a"}, "workflow": "a.b.1.0.0"}},
            True,
        ),
        (
            "instance.tags.team == 'a' && instance.workflow.startsWith('a.')",
            {"instance": {"tags": {"team": "a"}, "workflow": "b.a.1.0.0"}},
            False,
        ),
        (
            "size(request.auth.claims) > 0 || service.namespace == workflow.namespace",
            {
                "request": NO_CLAIMS,
                "service": {"namespace": "app"},
                "workflow": {"namespace": "app"},
            },
            True,
        ),
        (
            "size(request.auth.claims) > 0 || service.namespace == workflow.namespace",
            {"request": NO_CLAIMS, "service": {"namespace": "app"}, "workflow": {"namespace": "x"}},
            False,
        ),
        ("workflow.id.matches('^test\\\\.')", {"workflow": {"id": "test.smoke.1.0.0"}}, True),
        ("workflow.id.matches('^test\\\\.')", {"workflow": {"id": "tests.smoke.1.0.0"}}, False),
    ],
)
def test_names_the_activation_has_compile_and_decide(
    cel: CelEngine, source: str, activation: dict[str, Any], expected: bool
) -> None:
    assert evaluate(cel, source, **activation) is expected


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("user.role == 'admin'", "unknown name `user`"),
        ("request.claims.role == 'a'", "request has no field `claims`"),
        ("service.id == 'a'", "service has no field `id`"),
        ("env.PATH == '/bin'", "env.PATH is not in the environment allow-list"),
        ("request.auth.claims.role ==", "not valid CEL"),
        ("  ", "non-empty CEL expression"),
    ],
)
def test_unknown_names_are_refused_at_load(cel: CelEngine, source: str, problem: str) -> None:
    with pytest.raises(CelCompileError, match=problem):
        cel.compile(source, roots=ROOTS, env_names=ENV)


def test_json_activation_compares_like_cel(cel: CelEngine) -> None:
    claims = {"role": "admin", "level": 3, "canSignal": True, "groups": ["ops"]}
    request = {"auth": {"claims": claims}}
    assert evaluate(cel, "request.auth.claims.level >= 3", request=request)
    assert evaluate(cel, "'ops' in request.auth.claims.groups", request=request)
    assert evaluate(cel, "request.auth.claims.canSignal", request=request)
    assert not evaluate(cel, "request.auth.claims.role in ['operator']", request=request)


@pytest.mark.parametrize(
    ("source", "activation", "message"),
    [
        (
            "request.auth.claims.role == 'admin'",
            {"request": {"auth": {"claims": {}}}},
            "no such member in mapping: 'role'",
        ),
        ("request.auth.claims.n / 0 == 1", {"request": {"auth": {"claims": {"n": 1}}}}, "zero"),
        (
            "request.auth.claims.role == 1",
            {"request": {"auth": {"claims": {"role": "a"}}}},
            "overload",
        ),
        ("request.method", {"request": {"method": "Run"}}, "not true or false"),
        ("env.DEPLOYMENT_ENV == 'production'", {"env": {}}, "DEPLOYMENT_ENV"),
    ],
)
def test_evaluation_errors_raise(
    cel: CelEngine, source: str, activation: dict[str, Any], message: str
) -> None:
    with pytest.raises(CelEvaluationError, match=message):
        evaluate(cel, source, **activation)


def test_outcomes_are_remembered_by_the_values_read(cel: CelEngine) -> None:
    program = cel.compile(
        "request.auth.claims.level == 1 && workflow.id != 'a.b'", roots=ROOTS, env_names=ENV
    )
    built: list[int] = []

    def decide(claims: dict[str, Any], workflow_id: str = "x.y") -> bool:
        values = {"request": {"auth": {"claims": claims}}, "workflow": {"id": workflow_id}}

        def activation() -> dict[str, Any]:
            built.append(1)
            return {name: to_cel(value) for name, value in values.items()}

        return program.decide(values, activation)

    assert decide({"level": 1, "sub": "a"}) is True
    assert decide({"level": 1, "sub": "b"}) is True  # `sub` is not read: remembered
    assert len(built) == 1
    # 1.0 is not 1 in CEL (comparing them is an error), and the memo keeps them apart.
    with pytest.raises(CelEvaluationError, match="no such overload"):
        decide({"level": 1.0})
    assert decide({"level": 1}, "a.b") is False
    with pytest.raises(CelEvaluationError, match="'level'"):
        decide({})
    with pytest.raises(CelEvaluationError, match="'level'"):
        decide({"sub": "c"})  # the remembered error
    assert len(built) == 4


def test_has_gives_a_bool(cel: CelEngine) -> None:
    program = cel.compile(
        "workflow.namespace != 'legacy' || "
        "(has(request.auth.claims.role) && request.auth.claims.role == 'exporter')",
        roots=frozenset({"request", "workflow"}),
        env_names=frozenset(),
    )
    activation = {
        "workflow": to_cel({"namespace": "legacy"}),
        "request": to_cel({"auth": {"claims": {"role": "exporter"}}}),
    }
    assert program.evaluate(activation) is True


@pytest.mark.parametrize(
    ("source", "claims", "allowed"),
    [
        ("has(request.auth.claims.role)", {"role": "admin"}, True),
        ("has(request.auth.claims.role)", {}, False),
        ("!has(request.auth.claims.role)", {}, True),
        ("!has(request.auth.claims.role)", {"role": "admin"}, False),
        ("has(request.auth.claims.role) && request.auth.claims.role == 'admin'", {}, False),
        (
            "has(request.auth.claims.role) && request.auth.claims.role == 'admin'",
            {"role": "admin"},
            True,
        ),
        ("!has(request.auth.claims.role) || request.auth.claims.role == 'ops'", {}, True),
        (
            "!has(request.auth.claims.role) || request.auth.claims.role == 'ops'",
            {"role": "admin"},
            False,
        ),
        ("has(request.auth.claims.role) == false", {}, True),
    ],
)
def test_has_guards_optional_claims(
    cel: CelEngine, source: str, claims: dict[str, Any], allowed: bool
) -> None:
    assert evaluate(cel, source, request={"auth": {"claims": claims}}) is allowed


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("(" * 1000 + "true" + ")" * 1000, "nest more than 32 deep"),
        ("1" + "+1" * 1300 + " == 2", "nested too deeply"),
        ("!" * 2000 + "true", "nested too deeply"),
        ("true && " * 600 + "true", "at most 4096 characters"),
    ],
)
def test_deep_conditions_are_refused_not_crashed(cel: CelEngine, source: str, problem: str) -> None:
    with pytest.raises(CelCompileError, match=problem):
        cel.compile(source, roots=ROOTS, env_names=ENV)
