"""WorkflowRegistry: definitions loaded from files, shared through Redis, cached per process."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jsonschema import validators
from jsonschema.protocols import Validator

from okra_sidecar.engine.definitions.dsl import (
    DEFINITION_LIMITS,
    WorkflowDefinition,
    load_definition_text,
    parse_definition,
)
from okra_sidecar.errors import DefinitionError, NotFoundError, Reason
from okra_sidecar.store.base import Store

logger = logging.getLogger(__name__)

DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")
SEMVER_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class RegisteredWorkflow:
    """A definition with its input validator, compiled once."""

    definition: WorkflowDefinition
    input_validator: Validator | None


def canonical_content(definition: WorkflowDefinition) -> str:
    """The text stored in Redis: formatting-independent, so YAML and JSON of one document match."""
    return json.dumps(definition.document, sort_keys=True, separators=(",", ":"))


def semver_key(version: str) -> tuple[int, int, int, int, str]:
    """Orders versions as semver does: a pre-release sorts before its release."""
    match = SEMVER_RE.fullmatch(version)
    if not match:
        return (-1, -1, -1, -1, version)
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


def compile_input_validator(definition: WorkflowDefinition) -> Validator | None:
    if definition.input_schema is None:
        return None
    cls = validators.validator_for(definition.input_schema)
    return cls(definition.input_schema, format_checker=cls.FORMAT_CHECKER)


def read_directory(
    directory: Path, *, max_bytes: int = DEFINITION_LIMITS.max_bytes
) -> list[WorkflowDefinition]:
    """Parse every definition file under directory, all or nothing.

    A file over `max_bytes` (maxDefinitionBytes) is refused without being parsed.

    Raises:
        DefinitionError: one or more files are broken; the message lists each with its problem.
    """
    if not directory.is_dir():
        raise DefinitionError(str(directory), "", "is not a directory of workflow definitions")
    loaded: dict[str, tuple[WorkflowDefinition, str]] = {}
    problems: list[str] = []
    for path in sorted(p for p in directory.rglob("*") if p.suffix in DEFINITION_SUFFIXES):
        try:
            definition = read_file(path, max_bytes=max_bytes)
        except DefinitionError as exc:
            problems.append(str(exc))
            continue
        earlier = loaded.get(definition.id)
        if earlier and canonical_content(earlier[0]) != canonical_content(definition):
            problems.append(
                f"{path}: workflow {definition.id} is also defined, differently, in {earlier[1]}; "
                "bump document.version in one of them"
            )
        loaded.setdefault(definition.id, (definition, str(path)))
    if problems:
        raise DefinitionError(str(directory), "", "\n  " + "\n  ".join(problems))
    return [definition for definition, _ in loaded.values()]


def read_file(path: Path, *, max_bytes: int = DEFINITION_LIMITS.max_bytes) -> WorkflowDefinition:
    """The definition in the file `path`; one over `max_bytes` is refused without being parsed.

    Raises:
        DefinitionError: the file is broken, missing or too large.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DefinitionError(
                str(path), "", f"is {size} bytes; maxDefinitionBytes is {max_bytes}"
            )
        text = path.read_text()
    except OSError as exc:
        raise DefinitionError(str(path), "", f"cannot be read: {exc.strerror}") from exc
    limits = replace(DEFINITION_LIMITS, max_bytes=max_bytes)
    return load_definition_text(text, source=str(path), limits=limits)


def read_definitions(
    path: Path, *, max_bytes: int = DEFINITION_LIMITS.max_bytes
) -> list[WorkflowDefinition]:
    """The definition in the file `path`, or every one under the directory `path`.

    Raises:
        DefinitionError: the file is broken or missing, or a file under the directory is.
    """
    if path.is_dir():
        return read_directory(path, max_bytes=max_bytes)
    return [read_file(path, max_bytes=max_bytes)]


class WorkflowRegistry:
    """Every sidecar registers its files in Redis and reads the others' from there."""

    def __init__(self, *, store: Store) -> None:
        self._store = store
        # Registered versions are immutable, so a cached entry never goes stale.
        self._cache: dict[str, RegisteredWorkflow] = {}

    def _remember(self, definition: WorkflowDefinition) -> RegisteredWorkflow:
        entry = self._cache.get(definition.id)
        if entry is None:
            entry = RegisteredWorkflow(definition, compile_input_validator(definition))
            self._cache[definition.id] = entry
        return entry

    async def register(self, definitions: list[WorkflowDefinition]) -> None:
        """Register each definition; an id already holding other content is refused.

        Raises:
            AlreadyExistsError: a version was changed without bumping it.
        """
        for definition in definitions:
            created = await self._store.register_definition(
                definition.id, canonical_content(definition), workflow_key=definition.key
            )
            self._remember(definition)
            logger.info("workflow %s %s", definition.id, "registered" if created else "unchanged")

    def _parse_stored(self, workflow_id: str, content: str) -> RegisteredWorkflow:
        entry = self._cache.get(workflow_id)
        if entry is not None:
            return entry
        document: Any = json.loads(content)
        return self._remember(parse_definition(document, source=f"redis:{workflow_id}"))

    async def get(self, workflow_id: str) -> RegisteredWorkflow:
        """The exact version `namespace.name.version`.

        Raises:
            NotFoundError: no sidecar registered it.
        """
        entry = self._cache.get(workflow_id)
        if entry is not None:
            return entry
        content = await self._store.get_definition(workflow_id)
        if content is None:
            raise NotFoundError(
                f"workflow {workflow_id} is not registered; ListWorkflows shows the ones that are",
                reason=Reason.WORKFLOW_NOT_FOUND,
                metadata={"workflow": workflow_id},
            )
        return self._parse_stored(workflow_id, content)

    async def resolve(self, workflow_id: str) -> RegisteredWorkflow:
        """`namespace.name.version`, or `namespace.name` for its highest registered version."""
        if workflow_id.count(".") >= 2:
            return await self.get(workflow_id)
        prefix = workflow_id + "."
        versions = await self._store.definition_versions(workflow_id)
        if not versions:
            raise NotFoundError(
                f"workflow {workflow_id} has no registered version; "
                "ListWorkflows shows the ones that are",
                reason=Reason.WORKFLOW_NOT_FOUND,
                metadata={"workflow": workflow_id},
            )
        return await self.get(max(versions, key=lambda wid: semver_key(wid[len(prefix) :])))

    async def list(self) -> list[WorkflowDefinition]:
        """Every registered version, ordered by namespace, name and version."""
        # Ids first: a definition already parsed here is not read from Redis again.
        entries = [
            (await self.get(wid)).definition for wid in await self._store.list_definition_ids()
        ]
        return sorted(entries, key=lambda d: (d.namespace, d.name, semver_key(d.version)))
