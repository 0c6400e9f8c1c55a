"""RFC 7807 errors: the two spellings of the standard types, and the problems effects report."""

from __future__ import annotations

from okra_sidecar.engine.interpreter.faults import (
    ERROR_TYPE_ALIAS_PREFIX,
    canonical_error_type,
    error_matches,
    outside_error,
)
from okra_sidecar.errors import ERROR_TYPE_PREFIX

TIMEOUT_ERROR = ERROR_TYPE_PREFIX + "timeout"


def test_standard_error_types_match_in_both_spellings() -> None:
    dsl = ERROR_TYPE_PREFIX + "communication"
    ctk = ERROR_TYPE_ALIAS_PREFIX + "communication"
    assert canonical_error_type(ctk) == dsl
    assert canonical_error_type(dsl) == dsl
    assert canonical_error_type(ERROR_TYPE_ALIAS_PREFIX + "made-up") == (
        ERROR_TYPE_ALIAS_PREFIX + "made-up"
    )
    error = {"type": dsl, "status": 404, "title": "Not Found", "detail": "gone", "instance": "/x"}
    assert error_matches({"type": ctk}, error)
    assert error_matches({"type": dsl}, {**error, "type": ctk})
    assert error_matches({"type": dsl, "status": 404, "title": "Not Found"}, error)
    assert error_matches({"detail": "gone", "details": "gone", "instance": "/x"}, error)
    assert not error_matches({"type": "https://example.com/communication"}, error)
    assert not error_matches({"status": 503}, error)
    assert not error_matches({"status": True}, {**error, "status": 1})
    assert not error_matches({"details": "other"}, error)


def test_outside_errors_are_normalised() -> None:
    assert outside_error({"type": ERROR_TYPE_ALIAS_PREFIX + "timeout"}, "/do/0/x") == {
        "type": TIMEOUT_ERROR,
        "status": 408,
        "title": None,
        "detail": None,
        "instance": "/do/0/x",
    }
    assert outside_error("boom", "/do/0/x") == {
        "type": ERROR_TYPE_PREFIX + "runtime",
        "status": 500,
        "title": None,
        "detail": "the effect failed without a problem description: 'boom'",
        "instance": "/do/0/x",
    }
    weird = outside_error({"type": "https://e.com/x", "status": "bad", "title": 3}, "/i")
    assert (weird["status"], weird["title"]) == (500, None)
