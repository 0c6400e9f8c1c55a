"""DSL durations: ISO 8601 strings, inline objects or expressions, resolved to milliseconds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from okra_sidecar.engine.definitions.expressions import (
    NO_VARIABLES,
    CompiledExpression,
    compile_expression,
    is_expression,
)

__all__ = ["INLINE_UNITS", "DurationSpec", "iso_duration_ms", "parse_duration"]

# The schema's pattern, with groups: years, months, weeks, days, hours, minutes, seconds.
_ISO_RE = re.compile(
    r"^P(?!$)(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?"
    r"(?:(\d+(?:\.\d+)?)D)?(?:T(?=\d)(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
    r"(?:(\d+(?:\.\d+)?)S)?)?$"
)
_ISO_UNITS_MS = (None, None, 604_800_000, 86_400_000, 3_600_000, 60_000, 1_000)
INLINE_UNITS: Mapping[str, int] = {
    "days": 86_400_000,
    "hours": 3_600_000,
    "minutes": 60_000,
    "seconds": 1_000,
    "milliseconds": 1,
}


def iso_duration_ms(text: str) -> int:
    """Milliseconds of an ISO 8601 duration such as `PT30S` or `P1DT2H`.

    Raises:
        ValueError: not an ISO 8601 duration, or one with years or months (no fixed length).
    """
    match = _ISO_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"'{text}' is not an ISO 8601 duration (e.g. PT30S, P1DT2H)")
    if match[1] is not None or match[2] is not None:
        raise ValueError(
            f"'{text}' counts years or months, which have no fixed length; use weeks, days "
            "or smaller units"
        )
    total = Decimal(0)
    for group, unit in zip(match.groups()[2:], _ISO_UNITS_MS[2:], strict=True):
        if group is not None and unit is not None:
            total += Decimal(group) * unit
    return int(total)


@dataclass(frozen=True, slots=True)
class DurationSpec:
    """A duration known at load (`ms`) or computed by an expression when the task runs."""

    ms: int | None
    expression: CompiledExpression | None = None

    def resolve(self, data: Any, args: Mapping[str, Any]) -> int:
        """Milliseconds of this duration.

        Raises:
            ExpressionError: the expression fails.
            ValueError: the expression gives something that is not a duration.
        """
        if self.ms is not None:
            return self.ms
        assert self.expression is not None
        value = self.expression.evaluate(data, args)
        if isinstance(value, str):
            return iso_duration_ms(value)
        if isinstance(value, dict):
            return _inline_ms(value)
        raise ValueError(f"the duration expression gave {value!r}, not an ISO 8601 duration")


def _inline_ms(value: Mapping[str, Any]) -> int:
    if not value:
        raise ValueError("a duration needs at least one of " + ", ".join(INLINE_UNITS))
    total = 0
    for key, amount in value.items():
        unit = INLINE_UNITS.get(key)
        if unit is None:
            raise ValueError(
                f"unknown duration unit '{key}'; expected one of " + ", ".join(INLINE_UNITS)
            )
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise ValueError(f"duration '{key}' must be a non-negative integer, not {amount!r}")
        total += amount * unit
    return total


def parse_duration(value: Any, *, variables: frozenset[str] = NO_VARIABLES) -> DurationSpec:
    """Parse a duration as written in a definition (`variables`: those in scope).

    Raises:
        ValueError: with the problem, for the caller to place in a DefinitionError.
        ExpressionError: an expression duration does not compile.
    """
    if is_expression(value):
        return DurationSpec(None, compile_expression(value, variables=variables))
    if isinstance(value, str):
        return DurationSpec(iso_duration_ms(value))
    if isinstance(value, dict):
        return DurationSpec(_inline_ms(value))
    raise ValueError(
        "a duration must be an ISO 8601 string (e.g. PT30S) or an object of "
        + ", ".join(INLINE_UNITS)
    )
