"""deploy/Dockerfile: multi-stage, slim, non-root, and its health check works for real."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest
from redis.asyncio import Redis

from okra_sidecar.cli import build_parser
from okra_sidecar.engine.runtime.registry import read_directory
from okra_sidecar.server import Sidecar
from tests.deploy.support import (
    DEPLOY_DIR,
    DOCKERFILE,
    REPO_ROOT,
    SIDECAR_VARIABLES,
    Stage,
    dockerignore_excludes,
    parse_dockerfile,
    port_of,
    read_dockerignore,
)
from tests.helpers import Stub

BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|pip install)\b")


def stages() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE)


def final_stage() -> Stage:
    return stages()[1][-1]


def test_two_stages_on_the_same_slim_base() -> None:
    args, parsed = stages()
    assert len(parsed) == 2
    build, runtime = parsed
    assert build.name == "build"
    assert build.base == runtime.base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", args["PYTHON_IMAGE"])
    copies = runtime.all("COPY")
    assert any(c.flags == ("--from=build",) for c in copies)


def test_final_stage_has_no_build_tools() -> None:
    for run in final_stage().all("RUN"):
        assert not BUILD_TOOLS.search(" ".join(run.values)), run.values


def test_runs_as_the_non_root_user_it_creates() -> None:
    runtime = final_stage()
    (user,) = runtime.all("USER")
    uid, _, gid = user.values[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)
    runs = " ".join(" ".join(run.values) for run in runtime.all("RUN"))
    assert f"useradd --system --uid {uid} " in runs and f"--gid {gid or uid} " in runs


def test_env_names_are_settings_the_sidecar_reads() -> None:
    env = final_stage().env()
    okra = {name for name in env if name.startswith("OKRA_")}
    assert okra and okra <= SIDECAR_VARIABLES, okra - SIDECAR_VARIABLES
    (expose,) = final_stage().all("EXPOSE")
    assert expose.values == (str(port_of(env["OKRA_LISTEN"])),)
    assert env["OKRA_LISTEN"].startswith("0.0.0.0:"), "a container must listen beyond loopback"
    assert "/opt/okra/bin" in env["PATH"]


def test_entrypoint_is_the_installed_command_serving() -> None:
    runtime = final_stage()
    (entrypoint,) = runtime.all("ENTRYPOINT")
    (cmd,) = runtime.all("CMD")
    argv = entrypoint.exec_form() + cmd.exec_form()
    assert argv[0] == "okra-sidecar"
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "okra-sidecar" in scripts
    assert build_parser().parse_args(argv[1:]).command == "serve"


def test_copied_sources_exist_and_reach_the_context() -> None:
    patterns = read_dockerignore(DEPLOY_DIR / "Dockerfile.dockerignore")
    _, parsed = stages()
    sources: list[str] = []
    for stage in parsed:
        for copy in stage.all("COPY"):
            if any(flag.startswith("--from=") for flag in copy.flags):
                continue
            sources.extend(word.rstrip("/") for word in copy.values[:-1])
    assert sources
    for source in sources:
        path = REPO_ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [
            f
            for f in files
            if not dockerignore_excludes(patterns, f.relative_to(REPO_ROOT).as_posix())
        ]
        assert kept, f"COPY {source}: Dockerfile.dockerignore leaves it out of the context"
    assert dockerignore_excludes(patterns, "tests/conftest.py")
    assert dockerignore_excludes(patterns, "okra_sidecar/__pycache__/cli.cpython-311.pyc")


def test_build_stage_copies_what_the_wheel_needs() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    build_copies = " ".join(" ".join(c.values) for c in stages()[1][0].all("COPY"))
    assert project["project"]["readme"] in build_copies
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert package in build_copies


def test_baked_in_workflows_load() -> None:
    env = final_stage().env()
    copies = [c.values for c in final_stage().all("COPY")]
    (source,) = [c[0] for c in copies if c[-1].rstrip("/") == env["OKRA_WORKFLOWS"]]
    assert read_directory(REPO_ROOT / source)


@pytest.mark.parametrize("live", [True, False], ids=["serving", "nothing-listening"])
async def test_healthcheck_command_against_a_sidecar(
    sidecar: tuple[Sidecar, Stub], redis: Redis, live: bool
) -> None:
    (healthcheck,) = final_stage().all("HEALTHCHECK")
    flags = {flag.partition("=")[0] for flag in healthcheck.flags}
    assert {"--interval", "--timeout", "--start-period", "--retries"} <= flags
    argv = healthcheck.exec_form()
    assert argv[:2] == ["okra-sidecar", "health"]
    port = sidecar[0].port if live else 1
    # The image's environment, with the port this test's sidecar got.
    env = {**os.environ, **final_stage().env(), "OKRA_LISTEN": f"0.0.0.0:{port}"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if live:
        assert process.returncode == 0, err.decode()
        assert out.decode().strip() == f"127.0.0.1:{port}: SERVING"
    else:
        assert process.returncode == 1
        assert "UNAVAILABLE" in err.decode()
