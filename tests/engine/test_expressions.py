"""jq runtime expressions: compile once, evaluate with arguments, walk values."""

from __future__ import annotations

from typing import Any

import pytest

from okra_sidecar.engine.definitions.expressions import (
    CompiledExpression,
    ConstantValue,
    ExpressionError,
    TemplateValue,
    compile_expression,
    compile_field,
    compile_value,
    evaluate,
    evaluate_condition,
    evaluate_value,
    is_expression,
)

DATA = {"a": {"b": 2, "s": "x"}, "items": [1, 2, 3], "flag": False}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${ .a }", True),
        ("  ${.a}  ", True),
        ("${ {x: 1} }", True),
        (".a", False),
        ("$input", False),
        ("text ${ .a }", False),
        (3, False),
        (None, False),
    ],
)
def test_is_expression(value: Any, expected: bool) -> None:
    assert is_expression(value) is expected


def test_compiles_once_and_caches() -> None:
    assert compile_expression("${ .a.b + 1 }") is compile_expression("${ .a.b + 1 }")
    assert evaluate("${ .a.b + 1 }", DATA, {}) == 3


def test_syntax_error_names_expression_and_jq_message() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression("${ .a ||| }")
    assert caught.value.expression == "${ .a ||| }"
    assert caught.value.message.startswith("syntax error")
    assert "line" not in caught.value.message  # the wrapper's positions are dropped


def test_unknown_variable_is_a_compile_error() -> None:
    with pytest.raises(ExpressionError, match=r"\$nope is not defined"):
        compile_expression("${ $nope }")


def test_runtime_error_carries_jq_message() -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate("${ .a.s.x + 1 }", DATA, {})
    assert caught.value.message == 'Cannot index string with string ("x")'


def test_arguments_are_bound_as_variables() -> None:
    args = {"context": {"user": "ada"}, "input": {"n": 1}, "workflow": {"id": "w1"}}
    assert evaluate("${ [$context.user, $input.n, $workflow.id, .a.b] }", DATA, args) == [
        "ada",
        1,
        "w1",
        2,
    ]


def test_missing_argument_is_null() -> None:
    assert evaluate("${ $output }", DATA, {}) is None
    assert evaluate("${ $secrets | length }", DATA, {}) == 0


def test_first_output_or_null() -> None:
    assert evaluate("${ .items[] }", DATA, {}) == 1
    assert evaluate("${ empty }", DATA, {}) is None


@pytest.mark.parametrize(
    "source", [".", ".a", ".a.b", ".missing.deeper", "$input", "$input.n", "$context.x.y"]
)
def test_simple_paths_agree_with_jq(source: str) -> None:
    fast = compile_expression("${ " + source + " }")
    slow = compile_expression("${ (" + source + ") }")
    args = {"input": {"n": 5}, "context": {"x": None}}
    assert fast.evaluate(DATA, args) == slow.evaluate(DATA, args)


@pytest.mark.parametrize("source", [".a.b.c", ".items.x", ".flag.x"])
def test_simple_paths_fail_like_jq(source: str) -> None:
    with pytest.raises(ExpressionError) as fast:
        evaluate("${ " + source + " }", DATA, {})
    with pytest.raises(ExpressionError) as slow:
        evaluate("${ (" + source + ") }", DATA, {})
    assert fast.value.message == slow.value.message


def test_environment_is_hidden() -> None:
    assert evaluate("${ $ENV }", None, {}) == {}
    assert evaluate("${ env }", None, {}) == {}


def test_now_reads_the_given_clock() -> None:
    assert evaluate("${ now }", None, {"now": 1234.5}) == 1234.5
    assert isinstance(evaluate("${ now }", None, {}), float)


def test_modules_cannot_be_imported() -> None:
    with pytest.raises(ExpressionError):
        compile_expression('${ import "x" as x; . }')


def test_trailing_comment_is_allowed() -> None:
    assert compile_field(".a.b # the b").evaluate(DATA, {}) == 2


def test_compile_field_takes_bare_jq() -> None:
    compiled = compile_field('.color == "red"')
    assert compiled.evaluate({"color": "red"}, {}) is True
    assert compile_field("${ .a.b }").evaluate(DATA, {}) == 2
    assert isinstance(compile_field({"x": "${ .a.b }"}), TemplateValue)


def test_constant_values_are_not_copied() -> None:
    value = {"x": [1, {"y": "plain"}]}
    compiled = compile_value(value)
    assert isinstance(compiled, ConstantValue)
    assert compiled.evaluate(DATA, {}) is value


def test_template_with_several_jq_leaves_is_one_program() -> None:
    value = {
        "shape": "circle",
        "sum": "${ .items | add }",
        "nested": {"list": ["${ .a.b * 10 }", 7], "path": "${ .a.s }"},
        "ctx": "${ $context.k }",
    }
    compiled = compile_value(value)
    assert isinstance(compiled, TemplateValue)
    assert compiled._combined is not None
    expected = {"shape": "circle", "sum": 6, "nested": {"list": [20, 7], "path": "x"}, "ctx": "v"}
    assert compiled.evaluate(DATA, {"context": {"k": "v"}}) == expected


def test_template_reports_the_failing_leaf() -> None:
    compiled = compile_value({"ok": "${ .a.b + 1 }", "bad": "${ .a.s + 1 }"})
    with pytest.raises(ExpressionError) as caught:
        compiled.evaluate(DATA, {})
    assert caught.value.expression == "${ .a.s + 1 }"


def test_template_empty_leaf_is_null() -> None:
    compiled = compile_value({"a": "${ empty }", "b": "${ .items[] }"})
    assert compiled.evaluate(DATA, {}) == {"a": None, "b": 1}


def test_evaluate_value_returns_same_object_without_expressions() -> None:
    value = {"a": [1, 2], "b": {"c": "text"}}
    assert evaluate_value(value, DATA, {}) is value
    assert evaluate_value({"a": "${ .a.b }", "b": ["${ .items[1] }", "k"]}, DATA, {}) == {
        "a": 2,
        "b": [2, "k"],
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (".flag", False),
        (".missing", False),
        (".a", True),
        ("0", True),
        ('""', True),
        (".a.b > 1", True),
    ],
)
def test_conditions_use_jq_truthiness(source: str, expected: bool) -> None:
    assert evaluate_condition(source, DATA, {}) is expected


def test_expression_repr_names_its_text() -> None:
    assert repr(compile_expression("${ .a }")) == "CompiledExpression('${ .a }')"
    assert isinstance(compile_expression("${ .a }"), CompiledExpression)


def test_variables_in_scope_are_read_from_the_arguments() -> None:
    scope = frozenset({"color", "index"})
    args = {"color": "red", "index": 2, "input": {"n": 1}}
    fast = compile_expression("${ $color }", variables=scope)
    slow = compile_expression('${ "\\($color)-\\($index)-\\($input.n)" }', variables=scope)
    assert fast.evaluate(None, args) == "red"
    assert slow.evaluate(None, args) == "red-2-1"
    assert compile_field(".x + $index", variables=scope).evaluate({"x": 1}, args) == 3
    assert compile_value({"c": "${ $color }", "i": "${ $index + 1 }"}, variables=scope).evaluate(
        None, args
    ) == {"c": "red", "i": 3}
    assert compile_expression("${ $color }", variables=scope) is fast
    with pytest.raises(ExpressionError, match=r"\$color is not defined"):
        compile_expression("${ $color }")
    with pytest.raises(ExpressionError, match="syntax error"):
        compile_expression("${ $color | }", variables=scope)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # What the input's JSON text must carry through: UTF-8 text, integers beyond 64 bits
        # (orjson refuses them; the stdlib writes them), keys that are not strings.
        ({"v": "é☃"}, "é☃"),
        ({"v": 2**70}, 2**70),
        ({"v": {1: "one"}}, {"1": "one"}),
        # NaN and infinities are null, as the store writes them between turns.
        ({"v": float("nan")}, None),
        ({"v": float("inf")}, None),
    ],
)
def test_input_reaches_jq_as_json(data: dict[str, Any], expected: Any) -> None:
    assert compile_expression("${ .v | . }").evaluate(data, {}) == expected
    template = compile_value({"x": "${ .v | . }", "y": "${ [.v] | .[0] }"})
    assert isinstance(template, TemplateValue) and template._combined is not None
    assert template.evaluate(data, {}) == {"x": expected, "y": expected}


def test_input_that_is_not_json_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="value is not JSON"):
        compile_expression("${ .v | . }").evaluate({"v": {1, 2}}, {})
