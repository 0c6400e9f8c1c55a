"""Reading deploy/: the Dockerfile (with Docker's parser), .dockerignore, manifests."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile  # type: ignore[import-not-found]  # a compiled module without stubs
import yaml

from okra_sidecar.config_sources import ENV_VARIABLES

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"
KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
# Variables the sidecar reads (config_sources.py), plus OKRA_CONFIG and OKRA_LOG_LEVEL (cli.py).
SIDECAR_VARIABLES = frozenset(ENV_VARIABLES) | {"OKRA_CONFIG", "OKRA_LOG_LEVEL"}
# What deploy/example/app.py reads.
EXAMPLE_VARIABLES = frozenset({"OKRA_ADDRESS", "OKRA_TOKEN_SECRET", "OKRA_TOKEN_AUDIENCE"})


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction as Docker's own parser (moby/buildkit) reads it."""

    keyword: str
    values: tuple[str, ...]
    flags: tuple[str, ...] = ()
    json: bool = False

    def exec_form(self) -> list[str]:
        """The argv of `CMD ["a", "b"]` (or HEALTHCHECK's after CMD); fails for shell form."""
        assert self.json, f"{self.keyword} must use the exec (JSON) form"
        values = list(self.values)
        return values[1:] if self.keyword == "HEALTHCHECK" and values[0] == "CMD" else values


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            pairs = instruction.values
            values.update(zip(pairs[::2], pairs[1::2], strict=True))
        return values


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, parsed by Docker's own Dockerfile parser."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        keyword = command.cmd.upper()
        if keyword == "FROM":
            values = command.value
            name = values[2] if len(values) == 3 and values[1].upper() == "AS" else None
            stages.append(Stage(base=values[0], name=name))
        elif not stages and keyword == "ARG":
            key, _, default = command.value[0].partition("=")
            args[key] = default
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(
                Instruction(keyword, tuple(command.value), tuple(command.flags), command.json)
            )
    return args, stages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether the build context leaves `path` out (last matching pattern wins)."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        if body.startswith("**/"):
            matched = any(fnmatch.fnmatch(part, body[3:]) for part in parts)
        else:
            matched = any(fnmatch.fnmatch(prefix, body) for prefix in prefixes)
        if matched:
            excluded = not negated
    return excluded


def read_dockerignore(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def load_documents(path: Path) -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in documents), f"{path.name}: a non-mapping document"
    return documents


def env_list(
    container: dict[str, Any], secrets: dict[str, dict[str, str]] | None = None
) -> dict[str, str]:
    """A Kubernetes container's env as a dict: plain values, and Secret keys from `secrets`.

    `secrets` maps a Secret's name to its `stringData`; an entry whose Secret or key is not
    there fails the test.
    """
    values = {}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            known = (secrets or {}).get(ref["name"], {})
            assert ref["key"] in known, f"{container['name']}: {entry['name']}: no {ref}"
            values[entry["name"]] = known[ref["key"]]
            continue
        assert "value" in entry, f"{container['name']}: {entry['name']} has no plain value"
        values[entry["name"]] = str(entry["value"])
    return values


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def lay_out_like_a_configmap(data: dict[str, str], target: Path) -> None:
    """Write a ConfigMap's keys as kubelet mounts them: symlinks into `..data`."""
    versioned = target / "..2024_01_01_00_00_00.000000001"
    versioned.mkdir(parents=True)
    for key, content in data.items():
        (versioned / key).write_text(content)
    os.symlink(versioned.name, target / "..data")
    for key in data:
        os.symlink(f"..data/{key}", target / key)
