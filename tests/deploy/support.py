"""Reading deploy/: a small Dockerfile parser, .dockerignore matching, manifest helpers."""

from __future__ import annotations

import fnmatch
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from okra_sidecar.config import ENV_VARIABLES

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"
KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
# Variables the sidecar reads (config.py), plus OKRA_CONFIG and OKRA_LOG_LEVEL (cli.py).
SIDECAR_VARIABLES = frozenset(ENV_VARIABLES) | {"OKRA_CONFIG", "OKRA_LOG_LEVEL"}
# What deploy/example/app.py reads.
EXAMPLE_VARIABLES = frozenset({"OKRA_ADDRESS"})


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of `CMD ["a", "b"]`; AssertionError for the shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + len("CMD") :]
        loaded = yaml.safe_load(text.strip())
        assert isinstance(loaded, list), f"{self.keyword} must use the exec (JSON) form"
        return [str(item) for item in loaded]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE pairs (the only ENV form this Dockerfile uses)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {instruction.arguments!r}: use KEY=VALUE"
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages; continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends in a continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, rest.strip()))
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


def env_list(container: dict[str, Any]) -> dict[str, str]:
    """A Kubernetes container's env as a dict (every entry here has a plain value)."""
    values = {}
    for entry in container.get("env", []):
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
