"""The seven code-level checks; they run on every call and cannot be turned off."""

from __future__ import annotations

import re
from typing import Any

from jsonschema.protocols import Validator

from okra_sidecar.errors import FieldViolation, InvalidInputError, Reason
from okra_sidecar.instances import INSTANCE_ID_RE
from okra_sidecar.parsing import ParseLimitError, check_depth

LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
SEMVER = r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
WORKFLOW_ID_RE = re.compile(rf"^{LABEL}\.{LABEL}(?:\.{SEMVER})?$")
SIGNAL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_QUERY_LIMIT = 1000
MAX_SCHEMA_VIOLATIONS = 20


def check_workflow_id(workflow_id: str, *, field: str = "workflow_id") -> None:
    """Rule 1: `namespace.name.version` (or `namespace.name`), lowercase labels, semver."""
    if not workflow_id:
        raise InvalidInputError.for_field(field, "is required, e.g. order.processing.1.0.0")
    if len(workflow_id) > 300 or not WORKFLOW_ID_RE.fullmatch(workflow_id):
        raise InvalidInputError.for_field(
            field,
            f"{workflow_id[:100]!r} is not a workflow id: expected namespace.name.version "
            "(lowercase letters, digits and '-', semver version), e.g. order.processing.1.0.0",
        )


def check_input_schema(
    data: Any,
    validator: Validator | None,
    *,
    field: str = "input",
    schema: str = "the workflow's input",
) -> None:
    """Rule 2: the input matches the definition's input.schema (and a signal's payload the
    schema its listen task declares); `schema` names whose schema, in the message."""
    if validator is None:
        return
    try:
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    except RecursionError:
        # A recursive schema with a deeply nested value: refuse the value, not the server.
        problem = f"nests too deeply to check against {schema} schema; send a flatter value"
        raise InvalidInputError(
            f"{field} {problem}",
            [FieldViolation(field, problem)],
            reason=Reason.INPUT_SCHEMA_MISMATCH,
        ) from None
    if not errors:
        return
    violations = [
        FieldViolation(
            ".".join([field, *(str(p) for p in error.absolute_path)]), error.message[:500]
        )
        for error in errors[:MAX_SCHEMA_VIOLATIONS]
    ]
    first = violations[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise InvalidInputError(
        f"{first.field} does not match {schema} schema: {first.description}{more}",
        violations,
        reason=Reason.INPUT_SCHEMA_MISMATCH,
    )


def check_signal_name(name: str) -> None:
    """Rule 3: signal names are 1-128 letters, digits, underscores and dashes."""
    if not SIGNAL_NAME_RE.fullmatch(name):
        raise InvalidInputError.for_field(
            "signal",
            f"{name[:100]!r} is not a signal name: use 1 to 128 letters, digits, _ and -",
        )


def check_input_size(size_bytes: int, limit_bytes: int, *, field: str = "input") -> None:
    """Rule 4: inputs and payloads stay under the configured size (1 MiB by default)."""
    if size_bytes > limit_bytes:
        raise InvalidInputError.for_field(
            field, f"is {size_bytes} bytes; the limit is {limit_bytes} bytes"
        )


def check_input_depth(
    data: Any, limit: int, *, field: str = "input", encoded_bytes: int | None = None
) -> None:
    """Rule 4, depth: objects and arrays nest at most `limit` deep (32 by default).

    Protobuf decoders stop at 100 nested messages and each JSON level is two of them (Value,
    then Struct or ListValue), so deeper input would be stored but its Query pages could not
    be read by clients.

    `encoded_bytes` is the size of the protobuf Value `data` was converted from, if it was:
    each object or array in it is a field of its own (a tag and a length, two bytes at least)
    inside its parent's, so a Value under 2 * (limit + 1) bytes cannot nest too deep, and is
    not walked.
    """
    if encoded_bytes is not None and encoded_bytes < 2 * (limit + 1):
        return
    try:
        check_depth(data, limit)
    except ParseLimitError:
        raise InvalidInputError.for_field(
            field, f"nests objects and arrays more than {limit} deep (maxInputDepth)"
        ) from None


def check_instance_id(instance_id: str) -> str:
    """Rule 5: instance ids are the UUIDs that Run returns; returns it in lowercase, as stored
    (a UUID's hex digits may be written in either case)."""
    instance_id = instance_id.lower()
    if not INSTANCE_ID_RE.fullmatch(instance_id):
        raise InvalidInputError.for_field(
            "instance_id",
            f"{instance_id[:100]!r} is not an instance id: expected the UUID that Run returned",
        )
    return instance_id


def check_query_limit(limit: int) -> int:
    """Rule 6: a query page holds at most 1000 instances; 0 means the default of 100."""
    if limit < 0 or limit > MAX_QUERY_LIMIT:
        raise InvalidInputError.for_field(
            "limit", f"must be between 1 and {MAX_QUERY_LIMIT} (0 for the default 100), got {limit}"
        )
    return limit or 100


def check_not_self(target_key: str, caller_workflow_id: str) -> None:
    """Rule 7: a workflow may not run itself directly (caller named by its instance's workflow)."""
    caller_key = ".".join(caller_workflow_id.split(".")[:2])
    if caller_workflow_id and caller_key == target_key:
        raise InvalidInputError.for_field(
            "workflow_id", f"workflow {target_key} may not run itself"
        )
