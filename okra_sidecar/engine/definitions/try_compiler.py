"""Compile `try` tasks (catch clauses) and retry policies, at load.

How a caught error is handled at run time is in interpreter/retries.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from okra_sidecar.engine.definitions.compiling import Compiler
from okra_sidecar.engine.definitions.durations import DurationSpec
from okra_sidecar.engine.definitions.pointers import pointer, pointer_join
from okra_sidecar.engine.definitions.tasks import CatchSpec, RetryPolicy, TrySpec

__all__ = ["compile_retry", "compile_try"]

_BACKOFFS = ("constant", "linear", "exponential")


_FILTER_TYPES: Mapping[str, type] = {
    "type": str,
    "status": int,
    "instance": str,
    "title": str,
    "detail": str,
    "details": str,
}


def compile_try(c: Compiler, body: Mapping[str, Any], path: str) -> TrySpec:
    do = c.task_list(body["try"], pointer_join(path, "try"), key="try").reference
    if "catch" not in body:
        c.fail(path, "a 'try' task needs 'catch'")
    catch = body["catch"]
    catch_path = pointer_join(path, "catch")
    if not isinstance(catch, dict):
        c.fail(catch_path, "'catch' must be an object")
    for key in catch:
        if key not in ("errors", "as", "when", "exceptWhen", "retry", "do"):
            c.fail(pointer_join(catch_path, key), f"unknown property '{key}' in 'catch'")
    errors = _error_filter(c, catch.get("errors"), pointer_join(catch_path, "errors"))
    name = catch.get("as", "error")
    with c.scope((name, pointer_join(catch_path, "as"))):
        conditions = {
            key: c.condition(catch[key], pointer_join(catch_path, key))
            for key in ("when", "exceptWhen")
            if key in catch
        }
        retry = None
        if "retry" in catch:
            retry = compile_retry(c, catch["retry"], pointer_join(catch_path, "retry"))
        handler = None
        if "do" in catch:
            handler = c.task_list(catch["do"], pointer_join(catch_path, "do")).reference
    spec = CatchSpec(
        errors, name, conditions.get("when"), conditions.get("exceptWhen"), retry, handler
    )
    return TrySpec(do, spec)


def _error_filter(c: Compiler, value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        c.fail(path, "'errors' must be an object with 'with'")
    for key in value:
        if key != "with":
            c.fail(pointer_join(path, key), f"unknown property '{key}' in 'errors'")
    error_filter = value.get("with")
    with_path = pointer_join(path, "with")
    if not isinstance(error_filter, dict) or not error_filter:
        c.fail(with_path, "'with' must name at least one of type, status, instance, title, detail")
    for key, expected in error_filter.items():
        wanted = _FILTER_TYPES.get(key)
        if wanted is None:
            c.fail(pointer_join(with_path, key), f"unknown property '{key}' in an error filter")
        if not isinstance(expected, wanted) or isinstance(expected, bool):
            kind = "an integer" if wanted is int else "a string"
            c.fail(pointer_join(with_path, key), f"error filter '{key}' must be {kind}")
    return dict(error_filter)


def compile_retry(c: Compiler, value: Any, path: str) -> RetryPolicy:
    """An inline retry policy or the name of one in use.retries."""
    if isinstance(value, str):
        found = c.retries.get(value)
        if found is None:
            c.fail(path, f"'{value}' is not a retry policy defined in use.retries")
        return compile_retry(c, found, pointer("use", "retries", value))
    if not isinstance(value, dict):
        c.fail(path, "'retry' must be a retry policy or the name of one in use.retries")
    for key in value:
        if key not in ("when", "exceptWhen", "delay", "backoff", "limit", "jitter"):
            c.fail(pointer_join(path, key), f"unknown property '{key}' in a retry policy")
    when = c.condition(value["when"], pointer_join(path, "when")) if "when" in value else None
    except_when = None
    if "exceptWhen" in value:
        except_when = c.condition(value["exceptWhen"], pointer_join(path, "exceptWhen"))
    delay = c.duration(value["delay"], pointer_join(path, "delay")) if "delay" in value else None
    count, attempt_duration, duration = _limit(c, value.get("limit"), pointer_join(path, "limit"))
    jitter = None
    if "jitter" in value:
        jitter_path = pointer_join(path, "jitter")
        bounds = value["jitter"]
        if not isinstance(bounds, dict) or set(bounds) != {"from", "to"}:
            c.fail(jitter_path, "'jitter' must be an object with 'from' and 'to'")
        low = c.duration(bounds["from"], pointer_join(jitter_path, "from"))
        high = c.duration(bounds["to"], pointer_join(jitter_path, "to"))
        if low.ms is not None and high.ms is not None and low.ms > high.ms:
            c.fail(jitter_path, "'jitter.from' must not be longer than 'jitter.to'")
        jitter = (low, high)
    return RetryPolicy(
        when=when,
        except_when=except_when,
        delay=delay,
        backoff=_backoff(c, value.get("backoff"), pointer_join(path, "backoff")),
        count=count,
        attempt_duration=attempt_duration,
        duration=duration,
        jitter=jitter,
    )


def _backoff(c: Compiler, value: Any, path: str) -> str:
    if value is None:
        return "constant"
    if not isinstance(value, dict) or len(value) != 1:
        c.fail(path, "'backoff' must be one of constant, linear, exponential")
    kind, settings = next(iter(value.items()))
    if kind not in _BACKOFFS:
        c.fail(pointer_join(path, kind), f"unknown backoff '{kind}'")
    if settings is not None and settings != {}:
        c.fail(
            pointer_join(path, kind),
            f"'{kind}' backoff settings are not supported by this runtime; the retry 'delay' is "
            "the base of every backoff",
        )
    return str(kind)


def _limit(
    c: Compiler, value: Any, path: str
) -> tuple[int | None, DurationSpec | None, DurationSpec | None]:
    if value is None:
        return None, None, None
    if not isinstance(value, dict):
        c.fail(path, "'limit' must be an object (attempt, duration)")
    for key in value:
        if key not in ("attempt", "duration"):
            c.fail(pointer_join(path, key), f"unknown property '{key}' in 'limit'")
    duration = None
    if "duration" in value:
        duration = c.duration(value["duration"], pointer_join(path, "duration"))
    attempt = value.get("attempt", {})
    attempt_path = pointer_join(path, "attempt")
    if not isinstance(attempt, dict):
        c.fail(attempt_path, "'attempt' must be an object (count, duration)")
    for key in attempt:
        if key not in ("count", "duration"):
            c.fail(pointer_join(attempt_path, key), f"unknown property '{key}' in 'attempt'")
    count = attempt.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        c.fail(pointer_join(attempt_path, "count"), "'count' must be a non-negative integer")
    attempt_duration = None
    if "duration" in attempt:
        attempt_duration = c.duration(attempt["duration"], pointer_join(attempt_path, "duration"))
    return count, attempt_duration, duration
