"""Workflow definitions: parse a DSL 1.x document, check it precisely and compile its tasks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NoReturn

import yaml

from okra_sidecar.engine.definitions.call_compiler import compile_authentication
from okra_sidecar.engine.definitions.compiler import TaskCompiler, pointer, pointer_join
from okra_sidecar.engine.definitions.durations import DurationSpec
from okra_sidecar.engine.definitions.listen_compiler import compile_consumption
from okra_sidecar.engine.definitions.tasks import ListenSpec, SchemaCheck, WorkflowPlan
from okra_sidecar.engine.definitions.try_compiler import compile_retry
from okra_sidecar.errors import DefinitionError
from okra_sidecar.parsing import ParseLimitError, ParseLimits
from okra_sidecar.parsing import load_yaml as load_bounded_yaml

__all__ = [
    "DEFINITION_LIMITS",
    "WorkflowDefinition",
    "load_definition_text",
    "parse_definition",
    "parse_yaml",
]
# maxDefinitionBytes replaces the size; 64 levels is far beyond any real definition's nesting
# and far below what the checker's recursion can take.
DEFINITION_LIMITS = ParseLimits(max_bytes=1024 * 1024, max_depth=64)

# RFC 1123 label, lowercase and without dots: the id joins namespace, name and version with dots.
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_ROOT_KEYS = ("document", "input", "use", "do", "timeout", "output", "schedule", "evaluate")
_DOCUMENT_KEYS = ("dsl", "namespace", "name", "version", "title", "summary", "tags", "metadata")
_USE_KEYS = (
    "authentications",
    "catalogs",
    "errors",
    "extensions",
    "functions",
    "retries",
    "secrets",
    "timeouts",
)
_SCHEDULE_TRIGGERS = (("cron", "cron"), ("every", "every"), ("after", "after"), ("on", "event"))


@dataclass(frozen=True)
class WorkflowDefinition:
    """A loaded, checked and compiled workflow definition."""

    namespace: str
    name: str
    version: str
    document: dict[str, Any]
    input_schema: dict[str, Any] | None
    triggers: tuple[str, ...]
    title: str
    summary: str
    plan: WorkflowPlan = field(repr=False, compare=False)
    # Signal name -> the schema its payload must match, from the listen tasks' metadata.
    signal_payloads: Mapping[str, SchemaCheck] = field(
        default_factory=dict, repr=False, compare=False
    )

    # Cached: a Run asks for both several times, and a definition never changes.
    @cached_property
    def id(self) -> str:
        """The fully qualified id: `namespace.name.version`."""
        return f"{self.namespace}.{self.name}.{self.version}"

    @cached_property
    def key(self) -> str:
        """The id without the version: `namespace.name`."""
        return f"{self.namespace}.{self.name}"


class _JsonLoader(yaml.SafeLoader):
    """YAML 1.2-like scalars: only true/false are booleans and dates stay strings.

    PyYAML follows YAML 1.1, where `on:` (as in `schedule.on`) is the boolean True and
    `2024-01-01` a date that JSON cannot carry.
    """


_JsonLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag
        not in (
            "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:timestamp",
        )
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_JsonLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str, limits: ParseLimits = DEFINITION_LIMITS) -> Any:
    """Parse YAML (or JSON) into JSON-compatible values, within `limits`.

    Raises:
        yaml.YAMLError: the text is not YAML.
        ParseLimitError: the text is too large, too deep or expands too far through aliases.
    """
    return load_bounded_yaml(text, _JsonLoader, limits)


def load_definition_text(
    text: str, *, source: str, limits: ParseLimits = DEFINITION_LIMITS
) -> WorkflowDefinition:
    """Parse a YAML or JSON definition and load it.

    Raises:
        DefinitionError: the text is not YAML/JSON, breaks `limits`, or the definition is
            invalid; the message names `source`.
    """
    try:
        document = parse_yaml(text, limits)
    except ParseLimitError as exc:
        raise DefinitionError(source, "", f"refused: the document {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError(source, "", f"not valid YAML or JSON: {problem}{where}") from None
    try:
        return parse_definition(document, source=source)
    except RecursionError:
        raise DefinitionError(source, "", "tasks are nested too deeply to check") from None


def parse_definition(document: Any, *, source: str) -> WorkflowDefinition:
    """Check a parsed definition and compile it.

    Raises:
        DefinitionError: with the JSON pointer of the first problem and what it is.
    """
    return _DefinitionLoader(source).load(document)


class _DefinitionLoader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> NoReturn:
        raise DefinitionError(self.source, path, problem)

    def load(self, document: Any) -> WorkflowDefinition:
        if not isinstance(document, dict):
            self.fail("", "a workflow definition must be an object (a YAML or JSON mapping)")
        for key in document:
            if key not in _ROOT_KEYS:
                self.fail(pointer(str(key)), f"unknown property '{key}' in a workflow")
        namespace, name, version, title, summary = self.header(document.get("document"))
        if "do" not in document:
            self.fail("", "a workflow needs 'do', the list of its tasks")
        self.evaluate(document.get("evaluate"))
        self.find_self_run(document.get("do"), "/do", namespace, name)
        use = self.use(document.get("use"))
        errors, timeouts = self.reusables(use)
        compiler = TaskCompiler(
            self.source,
            errors=errors,
            timeouts=timeouts,
            retries=use.get("retries", {}),
            authentications=use.get("authentications", {}),
            functions=use.get("functions", {}),
        )
        for error_name, error in errors.items():
            compiler.check_error(error, pointer("use", "errors", error_name))
        # Every reusable component is checked, used or not.
        for name, authentication in use.get("authentications", {}).items():
            if "use" in authentication:
                self.fail(
                    pointer("use", "authentications", name, "use"),
                    "an authentication defined in use.authentications cannot 'use' another one",
                )
            compile_authentication(
                compiler, authentication, pointer("use", "authentications", name)
            )
        for name, policy in use.get("retries", {}).items():
            compile_retry(compiler, policy, pointer("use", "retries", name))
        for name in use.get("functions", {}):
            compiler.function(name, pointer("use", "functions", name))
        input_from, input_check = compiler.io(document.get("input"), "/input", "from")
        compiler.task_list(document["do"], "/do")
        output_as, output_check = compiler.io(document.get("output"), "/output", "as")
        timeout = None
        if "timeout" in document:
            timeout = compiler.timeout(document["timeout"], "/timeout")
        triggers = self.schedule(document.get("schedule"), compiler)
        plan = WorkflowPlan(
            lists=compiler.lists,
            nodes=compiler.nodes,
            input_from=input_from,
            input_schema=input_check,
            output_as=output_as,
            output_schema=output_check,
            timeout=timeout,
        )
        return WorkflowDefinition(
            namespace=namespace,
            name=name,
            version=version,
            document=document,
            input_schema=input_check.schema if input_check else None,
            triggers=triggers,
            title=title,
            summary=summary,
            plan=plan,
            signal_payloads=self.signal_payloads(plan),
        )

    def signal_payloads(self, plan: WorkflowPlan) -> dict[str, SchemaCheck]:
        """Every listen task's payload schemas; a signal declared twice, the same both times."""
        payloads: dict[str, SchemaCheck] = {}
        where: dict[str, str] = {}
        for node in plan.nodes.values():
            if not isinstance(node.body, ListenSpec):
                continue
            for name, check in node.body.payloads.items():
                earlier = payloads.get(name)
                if earlier is not None and earlier.schema != check.schema:
                    self.fail(
                        pointer_join(node.reference, "metadata", "signals", name),
                        f"signal '{name}' has another payload schema at {where[name]}; "
                        "declare one schema per signal (or the same one in both places)",
                    )
                payloads[name] = check
                where.setdefault(name, pointer_join(node.reference, "metadata", "signals", name))
        return payloads

    def header(self, value: Any) -> tuple[str, str, str, str, str]:
        if value is None:
            self.fail("", "a workflow needs 'document' (dsl, namespace, name, version)")
        if not isinstance(value, dict):
            self.fail("/document", "'document' must be an object")
        for key in value:
            if key not in _DOCUMENT_KEYS:
                self.fail(pointer("document", str(key)), f"unknown property '{key}' in 'document'")
        for key in ("dsl", "namespace", "name", "version"):
            if key not in value:
                self.fail("/document", f"'document' needs '{key}'")
            if not isinstance(value[key], str):
                self.fail(pointer("document", key), f"'{key}' must be a string")
        dsl = value["dsl"]
        if not _SEMVER_RE.fullmatch(dsl):
            self.fail("/document/dsl", f"'{dsl}' is not a DSL version (e.g. 1.0.0)")
        if not dsl.startswith("1."):
            self.fail(
                "/document/dsl", f"DSL version '{dsl}' is not supported by this runtime (1.x only)"
            )
        for key in ("namespace", "name"):
            if not _LABEL_RE.fullmatch(value[key]):
                self.fail(
                    pointer("document", key),
                    f"'{value[key]}' is not a valid {key}: use 1 to 63 lowercase letters, digits "
                    "and '-', starting and ending with a letter or digit",
                )
        if not _SEMVER_RE.fullmatch(value["version"]):
            self.fail(
                "/document/version",
                f"'{value['version']}' is not a semantic version (e.g. 1.0.0)",
            )
        for key in ("title", "summary"):
            if key in value and not isinstance(value[key], str):
                self.fail(pointer("document", key), f"'{key}' must be a string")
        for key in ("tags", "metadata"):
            if key in value and not isinstance(value[key], dict):
                self.fail(pointer("document", key), f"'{key}' must be an object")
        return (
            value["namespace"],
            value["name"],
            value["version"],
            value.get("title", ""),
            value.get("summary", ""),
        )

    def evaluate(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            self.fail("/evaluate", "'evaluate' must be an object")
        for key in value:
            if key not in ("language", "mode"):
                self.fail(pointer("evaluate", str(key)), f"unknown property '{key}' in 'evaluate'")
        language = value.get("language", "jq")
        if language != "jq":
            self.fail(
                "/evaluate/language",
                f"expression language '{language}' is not supported by this runtime (only jq)",
            )
        mode = value.get("mode", "strict")
        if mode not in ("strict", "loose"):
            self.fail("/evaluate/mode", "'mode' must be strict or loose")
        if mode == "loose":
            self.fail(
                "/evaluate/mode", "loose expression mode is not supported by this runtime (strict)"
            )

    def find_self_run(self, value: Any, path: str, namespace: str, name: str) -> None:
        """Refuse a `run.workflow` of this very workflow, wherever it is nested."""
        if isinstance(value, list):
            for index, item in enumerate(value):
                self.find_self_run(item, pointer_join(path, index), namespace, name)
        elif isinstance(value, dict):
            run = value.get("run")
            target = run.get("workflow") if isinstance(run, dict) else None
            if (
                isinstance(target, dict)
                and target.get("namespace") == namespace
                and target.get("name") == name
            ):
                self.fail(pointer_join(path, "run", "workflow"), "a workflow may not run itself")
            for key, item in value.items():
                self.find_self_run(item, pointer_join(path, str(key)), namespace, name)

    def use(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail("/use", "'use' must be an object")
        for key, item in value.items():
            if key not in _USE_KEYS:
                self.fail(pointer("use", str(key)), f"unknown property '{key}' in 'use'")
            expected = list if key in ("extensions", "secrets") else dict
            if not isinstance(item, expected):
                kind = "a list" if expected is list else "an object"
                self.fail(pointer("use", key), f"'use.{key}' must be {kind}")
        if value.get("extensions"):
            self.fail(
                "/use/extensions", "extensions ('use.extensions') are not supported by this runtime"
            )
        for secret_index, secret in enumerate(value.get("secrets", [])):
            if not isinstance(secret, str):
                self.fail(pointer("use", "secrets", secret_index), "a secret must be a name")
        for key in ("authentications", "catalogs", "errors", "functions", "retries", "timeouts"):
            for entry, item in value.get(key, {}).items():
                if not isinstance(item, dict):
                    self.fail(pointer("use", key, str(entry)), f"'{entry}' must be an object")
        return value

    def reusables(self, use: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, DurationSpec]]:
        compiler = TaskCompiler(self.source, errors={}, timeouts={})
        timeouts = {
            name: compiler.timeout(item, pointer("use", "timeouts", name))
            for name, item in use.get("timeouts", {}).items()
        }
        return dict(use.get("errors", {})), timeouts

    def schedule(self, value: Any, compiler: TaskCompiler) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail("/schedule", "'schedule' must be an object")
        known = [key for key, _ in _SCHEDULE_TRIGGERS]
        for key in value:
            if key not in known:
                self.fail(pointer("schedule", str(key)), f"unknown property '{key}' in 'schedule'")
        if not value:
            self.fail("/schedule", "'schedule' needs one of every, cron, after, on")
        cron = value.get("cron")
        if "cron" in value and (not isinstance(cron, str) or len(cron.split()) not in (5, 6)):
            self.fail("/schedule/cron", "'cron' must be a CRON expression such as '0 0 * * *'")
        for key in ("every", "after"):
            if key in value:
                spec = compiler.duration(value[key], pointer("schedule", key))
                if spec.ms is not None and spec.ms <= 0:
                    self.fail(pointer("schedule", key), f"'{key}' must be longer than zero")
        if "on" in value:
            compile_consumption(compiler, value["on"], "/schedule/on")
        return tuple(trigger for key, trigger in _SCHEDULE_TRIGGERS if key in value)
