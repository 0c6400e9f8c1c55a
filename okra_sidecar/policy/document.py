"""Policy documents: the Host API specification's keys from JSON or YAML, checked, compiled whole.

A document is a mapping of the specification's dotted keys (`policy.workflow.run.allowed`, ...)
to values; nested mappings (`policy: {workflow: {run: {allowed: [...]}}}`) mean the same. JSON
may carry `//` and `/* */` comments, as the specification's snippets do. Every key is checked
and every condition compiled before anything is used: one bad key refuses the whole set, naming each
problem, and the set in force stays.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any

import yaml

from okra_sidecar.admission import MAX_INSTANCES_PER_WORKFLOW
from okra_sidecar.errors import FieldViolation, PolicyLoadError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.parsing import ParseLimitError, ParseLimits, load_json, load_yaml
from okra_sidecar.policy.cel import CelCompileError, CelEngine, CelProgram
from okra_sidecar.policy.globs import GlobList, check_pattern
from okra_sidecar.policy.rates import Rate, parse_rate

P = "policy.workflow."
RUN_ALLOWED = P + "run.allowed"
RUN_BLOCKED = P + "run.blocked"
RUN_CONDITION = P + "run.condition"
SIGNAL_ALLOWED = P + "signal.allowed"
SIGNAL_ALLOWED_SIGNALS = P + "signal.allowedSignals"
SIGNAL_CONDITION = P + "signal.condition"
QUERY_MAX_RESULTS = P + "query.maxResults"
QUERY_ALLOWED_STATUSES = P + "query.allowedStatuses"
QUERY_CONDITION = P + "query.condition"
RUN_RATE_LIMIT = P + "run.rateLimit"
SIGNAL_RATE_LIMIT = P + "signal.rateLimit"
QUERY_RATE_LIMIT = P + "query.rateLimit"
MAX_CONCURRENT_INSTANCES = P + "maxConcurrentInstances"
CONDITION = P + "condition"
RUN_MAX_INPUT_SIZE_KB = P + "run.maxInputSizeKb"
RUN_REQUIRED_INPUT_FIELDS = P + "run.requiredInputFields"
CANCEL_ALLOWED = P + "cancel.allowed"
CANCEL_CONDITION = P + "cancel.condition"
CANCEL_REQUIRE_REASON = P + "cancel.requireReason"
AUDIT = P + "audit"
AUDIT_LEVEL = P + "auditLevel"
ALERT_ON_FAILURE = P + "alertOnFailure"
RUN_CROSS_NAMESPACE = P + "run.crossNamespace"
RUN_ALLOWED_NAMESPACES = P + "run.allowedNamespaces"
MAX_DURATION_MINUTES = P + "maxDurationMinutes"
DEFAULT_TIMEOUT_MS = P + "defaultTimeoutMs"
TIMEOUT_ACTION = P + "timeoutAction"
EMIT_ALLOWED = P + "emit.allowed"
EMIT_ALLOWED_TYPES = P + "emit.allowedTypes"
EMIT_CONDITION = P + "emit.condition"
HISTORY_ALLOWED = P + "history.allowed"
HISTORY_CONDITION = P + "history.condition"
SCHEDULE_ALLOWED = P + "schedule.allowed"
SCHEDULE_OWNER_ONLY = P + "schedule.ownerOnly"
SCHEDULE_CONDITION = P + "schedule.condition"
TASK_ALLOWED = P + "task.allowed"
TASK_ALLOWED_QUEUES = P + "task.allowedQueues"
TASK_CONDITION = P + "task.condition"
# The WorkflowOperatorAPI: a switch and a condition per verb, and one condition for them all.
OPERATOR_VERBS = ("suspend", "resume", "retry", "reset", "delete", "bulk")
OPERATOR_ALLOWED = {verb: P + f"{verb}.allowed" for verb in OPERATOR_VERBS}
OPERATOR_CONDITIONS = {verb: P + f"{verb}.condition" for verb in OPERATOR_VERBS}
OPERATOR_CONDITION = P + "operator.condition"
BULK_MAX_INSTANCES = P + "bulk.maxInstances"

# What each condition may read: Run has no instance yet; signal and cancel act on one.
BASE_ROOTS = frozenset({"request", "workflow", "service", "env"})
INSTANCE_ROOTS = BASE_ROOTS | {"instance"}
CONDITION_ROOTS = {
    RUN_CONDITION: BASE_ROOTS,
    SIGNAL_CONDITION: INSTANCE_ROOTS,
    QUERY_CONDITION: BASE_ROOTS,
    CONDITION: BASE_ROOTS,
    CANCEL_CONDITION: INSTANCE_ROOTS,
    EMIT_CONDITION: BASE_ROOTS | {"event"},
    HISTORY_CONDITION: INSTANCE_ROOTS,
    SCHEDULE_CONDITION: BASE_ROOTS | {"schedule"},
    TASK_CONDITION: BASE_ROOTS | {"task"},
    **dict.fromkeys(OPERATOR_CONDITIONS.values(), INSTANCE_ROOTS),
    # A bulk rpc is about an operation, not one instance: `bulk` says which and what it does.
    OPERATOR_CONDITIONS["bulk"]: BASE_ROOTS | {"bulk"},
    OPERATOR_CONDITION: INSTANCE_ROOTS | {"bulk"},
}
RATE_KEYS = {"run": RUN_RATE_LIMIT, "signal": SIGNAL_RATE_LIMIT, "query": QUERY_RATE_LIMIT}
AUDIT_LEVELS = ("none", "summary", "full")
TIMEOUT_ACTIONS = ("fail", "cancel", "continue")
GLOB_LIST_KEYS = (
    RUN_ALLOWED,
    RUN_BLOCKED,
    SIGNAL_ALLOWED_SIGNALS,
    ALERT_ON_FAILURE,
    RUN_ALLOWED_NAMESPACES,
    EMIT_ALLOWED_TYPES,
    TASK_ALLOWED_QUEUES,
)
BOOL_KEYS = (
    SIGNAL_ALLOWED,
    CANCEL_ALLOWED,
    CANCEL_REQUIRE_REASON,
    AUDIT,
    RUN_CROSS_NAMESPACE,
    EMIT_ALLOWED,
    HISTORY_ALLOWED,
    SCHEDULE_ALLOWED,
    SCHEDULE_OWNER_ONLY,
    TASK_ALLOWED,
    *OPERATOR_ALLOWED.values(),
)
KNOWN_KEYS = frozenset(
    {
        *GLOB_LIST_KEYS,
        *BOOL_KEYS,
        *CONDITION_ROOTS,
        *RATE_KEYS.values(),
        QUERY_MAX_RESULTS,
        QUERY_ALLOWED_STATUSES,
        MAX_CONCURRENT_INSTANCES,
        MAX_INSTANCES_PER_WORKFLOW,
        RUN_MAX_INPUT_SIZE_KB,
        RUN_REQUIRED_INPUT_FIELDS,
        BULK_MAX_INSTANCES,
        AUDIT_LEVEL,
        MAX_DURATION_MINUTES,
        DEFAULT_TIMEOUT_MS,
        TIMEOUT_ACTION,
    }
)
MAX_QUERY_RESULTS = 1000


@dataclass(frozen=True)
class PolicySet:
    """A checked, compiled policy document; the defaults are "no policy set"."""

    document: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    source: str = "none"
    run_allowed: GlobList = GlobList()
    run_blocked: GlobList = GlobList()
    signal_allowed: bool = True
    signal_allowed_signals: GlobList = GlobList()
    query_max_results: int | None = None
    query_allowed_statuses: tuple[str, ...] = ()
    conditions: dict[str, CelProgram] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)
    max_concurrent_instances: int = 0
    max_instances_per_workflow: tuple[tuple[GlobList, int], ...] = ()
    run_max_input_bytes: int | None = None
    run_required_input_fields: tuple[tuple[GlobList, tuple[str, ...]], ...] = ()
    cancel_allowed: bool = True
    cancel_require_reason: bool = False
    audit_level: str = "none"
    alert_on_failure: GlobList = GlobList()
    run_cross_namespace: bool = True
    run_allowed_namespaces: GlobList = GlobList()
    max_duration_ms: int | None = None
    default_timeout_ms: int | None = None
    timeout_action: str = "fail"
    emit_allowed: bool = True
    emit_allowed_types: GlobList = GlobList()
    history_allowed: bool = True
    schedule_allowed: bool = True
    schedule_owner_only: bool = False
    task_allowed: bool = True
    task_allowed_queues: GlobList = GlobList()
    # An operator verb (`suspend`, ...) is allowed unless its `<verb>.allowed` is false.
    operator_allowed: Mapping[str, bool] = field(default_factory=dict)
    bulk_max_instances: int | None = None

    @property
    def digest(self) -> str:
        return document_digest(self.document)

    def condition(self, key: str) -> CelProgram | None:
        return self.conditions.get(key)

    def workflow_limit(self, key: str) -> int:
        """maxInstancesPerWorkflow for `namespace.name`: an exact entry, else the first glob."""
        for patterns, limit in self.max_instances_per_workflow:
            if patterns.patterns[0] == key:
                return limit
        for patterns, limit in self.max_instances_per_workflow:
            if patterns.match([key]):
                return limit
        return 0


def document_digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


# -- reading text ---------------------------------------------------------------------------


def strip_json_comments(text: str) -> str:
    """Remove // and /* */ comments outside JSON strings (as the specification's snippets have)."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


# A policy set is a flat list of keys: shallow, small, and never needs many aliases.
POLICY_LIMITS = ParseLimits(max_bytes=1024 * 1024, max_depth=32, max_aliases=100, max_nodes=100_000)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    pairs = [
        (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True))
        for k, v in node.value
    ]
    return _no_duplicates(pairs)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def parse_policy_text(text: str, *, source: str) -> dict[str, Any]:
    """A flat policy document from JSON (comments allowed) or YAML text.

    Raises:
        PolicyLoadError: the text is neither, a key repeats, or the shape is wrong.
    """
    stripped = text.strip()
    try:
        if len(text) > POLICY_LIMITS.max_bytes:  # before stripping comments from all of it
            raise ParseLimitError(f"is over the limit of {POLICY_LIMITS.max_bytes} bytes")
        if stripped.startswith("{"):
            data = load_json(
                strip_json_comments(text), POLICY_LIMITS, object_pairs_hook=_no_duplicates
            )
        else:
            data = load_yaml(text, _UniqueKeyLoader, POLICY_LIMITS)
    except ParseLimitError as exc:
        raise _refused(source, [("", f"refused: the document {exc}")]) from None
    except _DuplicateKeyError as exc:
        raise _refused(
            source, [(str(exc), "appears twice; give each key once (combine conditions with &&)")]
        ) from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise _refused(source, [("", f"is neither JSON nor YAML: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _refused(source, [("", "must be a mapping of policy keys to values")])
    return flatten(data, source=source)


def flatten(data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Join nested mappings into the specification's dotted keys; refuse unknown or repeated."""
    flat: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []

    def walk(prefix: str, mapping: Mapping[Any, Any]) -> None:
        for raw_key, value in mapping.items():
            key = f"{prefix}{raw_key}"
            if key in KNOWN_KEYS:
                if key in flat:
                    problems.append((key, "appears twice; give each key once"))
                flat[key] = value
            elif isinstance(value, Mapping) and any(k.startswith(key + ".") for k in KNOWN_KEYS):
                walk(key + ".", value)
            else:
                close = get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.8)
                hint = f"; did you mean {close[0]}?" if close else ""
                problems.append((key, f"is not a policy key{hint}"))

    walk("", data)
    if problems:
        raise _refused(source, problems)
    return flat


def _refused(source: str, problems: list[tuple[str, str]]) -> PolicyLoadError:
    listed = "; ".join(f"{key}: {problem}" if key else problem for key, problem in problems)
    return PolicyLoadError(
        f"policy set from {source} refused, the set in force stays: {listed}",
        [FieldViolation(key or source, problem) for key, problem in problems],
    )


# -- checking and compiling ------------------------------------------------------------------


def _glob_list(value: Any) -> GlobList:
    if not isinstance(value, list):
        raise ValueError('must be a list of names ("*" matches any characters)')
    for item in value:
        problem = check_pattern(item)
        if problem:
            raise ValueError(problem)
    return GlobList.of(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _whole(value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"must be a whole number of at least {minimum}, not {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum}, not {value}")
    return value


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"must be a positive number, not {value!r}")
    return float(value)


def _choice(value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"must be one of {', '.join(options)}, not {value!r}")
    return str(value)


def _workflow_mapping(value: Any) -> list[tuple[GlobList, Any]]:
    if not isinstance(value, dict):
        raise ValueError('must map workflow names (namespace.name, "*" allowed) to values')
    entries = []
    for pattern, item in value.items():
        problem = check_pattern(pattern)
        if problem:
            raise ValueError(problem)
        entries.append((GlobList.of([pattern]), item))
    return entries


def _per_workflow_limits(value: Any) -> tuple[tuple[GlobList, int], ...]:
    entries = []
    for patterns, limit in _workflow_mapping(value):
        pattern = patterns.patterns[0]
        if pattern.count(".") > 1:
            raise ValueError(
                f"{pattern!r} names a version; limits count every version of a workflow "
                "together, so use namespace.name"
            )
        entries.append((patterns, _whole(limit, 0)))
    return tuple(entries)


def _required_fields(value: Any) -> tuple[tuple[GlobList, tuple[str, ...]], ...]:
    entries = []
    for patterns, names in _workflow_mapping(value):
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{patterns.patterns[0]}: must be a list of input field names")
        entries.append((patterns, tuple(names)))
    return tuple(entries)


def _statuses(value: Any) -> tuple[str, ...]:
    known = [s.value for s in InstanceStatus]
    if not isinstance(value, list) or not all(item in known for item in value):
        raise ValueError(f"must be a list of statuses from {', '.join(known)}")
    return tuple(value)


_NOT_A_SETTING = object()  # a key read as a whole elsewhere (conditions, rates, ...)


def _setting(key: str, value: Any) -> Any:
    """A plain (not condition, not rate) key's value, checked and converted.

    Raises:
        ValueError: what is wrong with the value.
    """
    if key in GLOB_LIST_KEYS:
        return _glob_list(value)
    if key in BOOL_KEYS:
        return _bool(value)
    if key == QUERY_MAX_RESULTS:
        return _whole(value, 1, MAX_QUERY_RESULTS)
    if key == QUERY_ALLOWED_STATUSES:
        return _statuses(value)
    if key == BULK_MAX_INSTANCES:
        return _whole(value, 1)
    if key == MAX_CONCURRENT_INSTANCES:
        return _whole(value, 0)
    if key == MAX_INSTANCES_PER_WORKFLOW:
        return _per_workflow_limits(value)
    if key == RUN_MAX_INPUT_SIZE_KB:
        return int(_positive(value) * 1024)
    if key == RUN_REQUIRED_INPUT_FIELDS:
        return _required_fields(value)
    if key == AUDIT_LEVEL:
        return _choice(value, AUDIT_LEVELS)
    if key == MAX_DURATION_MINUTES:
        return int(_positive(value) * 60_000)
    if key == DEFAULT_TIMEOUT_MS:
        return _whole(value, 1)
    if key == TIMEOUT_ACTION:
        return _choice(value, TIMEOUT_ACTIONS)
    return _NOT_A_SETTING


def compile_policies(
    document: Mapping[str, Any],
    *,
    cel: CelEngine,
    env_names: frozenset[str],
    source: str,
    version: int = 0,
) -> PolicySet:
    """Check every key and compile every condition; all or nothing.

    Raises:
        PolicyLoadError: one violation per bad key, each with what to change.
    """
    flat = flatten(document, source=source)
    values: dict[str, Any] = {}
    conditions: dict[str, CelProgram] = {}
    rates: dict[str, Rate] = {}
    problems: list[tuple[str, str]] = []
    for key, value in flat.items():
        try:
            if key in CONDITION_ROOTS:
                conditions[key] = cel.compile(
                    value, roots=CONDITION_ROOTS[key], env_names=env_names
                )
            elif key in RATE_KEYS.values():
                verb = next(v for v, k in RATE_KEYS.items() if k == key)
                rates[verb] = parse_rate(value)
            elif (setting := _setting(key, value)) is not _NOT_A_SETTING:
                values[key] = setting
        except (CelCompileError, ValueError) as exc:
            problems.append((key, str(exc)))
    if problems:
        raise _refused(source, problems)
    audit_on = values.get(AUDIT, AUDIT_LEVEL in values)
    return PolicySet(
        document=json.loads(canonical_json(flat)),
        version=version,
        source=source,
        run_allowed=values.get(RUN_ALLOWED, GlobList()),
        run_blocked=values.get(RUN_BLOCKED, GlobList()),
        signal_allowed=values.get(SIGNAL_ALLOWED, True),
        signal_allowed_signals=values.get(SIGNAL_ALLOWED_SIGNALS, GlobList()),
        query_max_results=values.get(QUERY_MAX_RESULTS),
        query_allowed_statuses=values.get(QUERY_ALLOWED_STATUSES, ()),
        conditions=conditions,
        rates=rates,
        max_concurrent_instances=values.get(MAX_CONCURRENT_INSTANCES, 0),
        max_instances_per_workflow=values.get(MAX_INSTANCES_PER_WORKFLOW, ()),
        run_max_input_bytes=values.get(RUN_MAX_INPUT_SIZE_KB),
        run_required_input_fields=values.get(RUN_REQUIRED_INPUT_FIELDS, ()),
        cancel_allowed=values.get(CANCEL_ALLOWED, True),
        cancel_require_reason=values.get(CANCEL_REQUIRE_REASON, False),
        # `audit: true` alone means a summary record per decision; `audit: false` means none.
        audit_level=values.get(AUDIT_LEVEL, "summary") if audit_on else "none",
        alert_on_failure=values.get(ALERT_ON_FAILURE, GlobList()),
        run_cross_namespace=values.get(RUN_CROSS_NAMESPACE, True),
        run_allowed_namespaces=values.get(RUN_ALLOWED_NAMESPACES, GlobList()),
        max_duration_ms=values.get(MAX_DURATION_MINUTES),
        default_timeout_ms=values.get(DEFAULT_TIMEOUT_MS),
        timeout_action=values.get(TIMEOUT_ACTION, "fail"),
        emit_allowed=values.get(EMIT_ALLOWED, True),
        emit_allowed_types=values.get(EMIT_ALLOWED_TYPES, GlobList()),
        history_allowed=values.get(HISTORY_ALLOWED, True),
        schedule_allowed=values.get(SCHEDULE_ALLOWED, True),
        schedule_owner_only=values.get(SCHEDULE_OWNER_ONLY, False),
        task_allowed=values.get(TASK_ALLOWED, True),
        task_allowed_queues=values.get(TASK_ALLOWED_QUEUES, GlobList()),
        operator_allowed={verb: values.get(key, True) for verb, key in OPERATOR_ALLOWED.items()},
        bulk_max_instances=values.get(BULK_MAX_INSTANCES),
    )


def load_policy_text(
    text: str, *, cel: CelEngine, env_names: frozenset[str], source: str, version: int = 0
) -> PolicySet:
    """Parse and compile a policy file's text; see `compile_policies`."""
    document = parse_policy_text(text, source=source)
    return compile_policies(document, cel=cel, env_names=env_names, source=source, version=version)


__all__ = [
    "KNOWN_KEYS",
    "PolicySet",
    "compile_policies",
    "load_policy_text",
    "parse_policy_text",
    "strip_json_comments",
]
