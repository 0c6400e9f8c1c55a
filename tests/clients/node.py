"""The Node.js toolchain for tests: `npm ci` into clients/node when needed, and `tsc`.

clients/node/package-lock.json pins every package; node_modules is installed once and reused
until the lockfile changes. Tests that need Node skip, saying why, where `node` or `npm` is
missing; in CI (`CI=true`) they fail instead, so that a runner without Node cannot pass them
silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NODE_DIR = REPO_ROOT / "clients" / "node"
STAMP_NAME = ".okra-lock-sha256"
INSTALL_TIMEOUT_S = 300
# How long one script may run against a sidecar.
SCRIPT_TIMEOUT_S = 60


@dataclass(frozen=True)
class NodeToolchain:
    node: str
    project: Path

    @property
    def tsc(self) -> list[str]:
        return [self.node, str(self.project / "node_modules" / "typescript" / "bin" / "tsc")]


def _lock_digest() -> str:
    return hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()


def ensure_node_modules() -> NodeToolchain:
    """Node and clients/node/node_modules as package-lock.json pins it; skips without Node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = "node and npm are not installed: the Node.js client and tsc tests need them"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} (CI=true: install them on the runner)", pytrace=False)
        pytest.skip(missing)
    stamp = NODE_DIR / "node_modules" / STAMP_NAME
    digest = _lock_digest()
    if not stamp.is_file() or stamp.read_text() != digest:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        assert result.returncode == 0, f"npm ci in {NODE_DIR} failed:\n{result.stderr}"
        stamp.write_text(digest)
    return NodeToolchain(node=node, project=NODE_DIR)


def run_tsc(toolchain: NodeToolchain, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*toolchain.tsc, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def build_client(toolchain: NodeToolchain) -> NodeToolchain:
    """The client and its test scripts compiled by tsc (strict) into clients/node/dist."""
    built = run_tsc(toolchain, "-p", ".", cwd=NODE_DIR)
    assert built.returncode == 0, f"tsc -p clients/node:\n{built.stdout}{built.stderr}"
    return toolchain


async def run_node(toolchain: NodeToolchain, script: Path, *args: str) -> dict[str, Any]:
    """Run a compiled script; its last line is a JSON report with `ok`."""
    process = await asyncio.create_subprocess_exec(
        toolchain.node,
        str(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), SCRIPT_TIMEOUT_S)
    assert process.returncode == 0, f"node {script.name} failed:\n{err.decode()}{out.decode()}"
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    assert report["ok"] is True
    return report
