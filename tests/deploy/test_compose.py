"""deploy/docker-compose.yml agrees with the image, the sidecar's settings and the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from okra_sidecar.engine.runtime.registry import read_directory
from tests.deploy.support import (
    DEPLOY_DIR,
    DOCKERFILE,
    EXAMPLE_VARIABLES,
    SIDECAR_VARIABLES,
    parse_dockerfile,
    port_of,
)
from tests.deploy.support import load_documents as load

COMPOSE = DEPLOY_DIR / "docker-compose.yml"


def services() -> dict[str, Any]:
    (document,) = load(COMPOSE)
    found = document["services"]
    assert set(found) == {"redis", "sidecar", "example"}
    return dict(found)


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to the compose file) of each bind mount."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = (COMPOSE.parent / source).resolve()
    return found


def test_redis_persists_its_append_only_file() -> None:
    redis = services()["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
    (name,) = load(COMPOSE)[0]["volumes"]
    assert redis["volumes"][0].startswith(f"{name}:")
    assert redis["healthcheck"]["test"][-1] == "ping"
    if services()["sidecar"]["environment"].get("OKRA_DURABILITY") == "aof":
        # Else every WAITAOF waits for the next once-a-second fsync.
        assert command[command.index("--appendfsync") + 1] == "always"


def test_sidecar_builds_the_image_and_reads_real_settings() -> None:
    sidecar = services()["sidecar"]
    build = sidecar["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    env = sidecar["environment"]
    assert set(env) <= SIDECAR_VARIABLES, set(env) - SIDECAR_VARIABLES
    _, stages = parse_dockerfile(DOCKERFILE)
    (expose,) = stages[-1].all("EXPOSE")
    listen = port_of(env["OKRA_LISTEN"])
    assert expose.values == (str(listen),)
    (published,) = sidecar["ports"]
    assert published.startswith("127.0.0.1:") and port_of(published) == listen
    assert env["OKRA_REDIS_URL"].startswith("redis://redis:6379/")
    assert sidecar["depends_on"]["redis"]["condition"] == "service_healthy"
    assert sidecar["read_only"] is True and sidecar["cap_drop"] == ["ALL"]


def test_mounted_workflows_and_policies_exist() -> None:
    sidecar = services()["sidecar"]
    env, bound = sidecar["environment"], mounts(sidecar)
    assert read_directory(bound[env["OKRA_WORKFLOWS"]])
    assert bound[env["OKRA_POLICIES"]].is_file()


def test_example_reaches_the_sidecar_over_shared_loopback() -> None:
    found = services()
    example, sidecar = found["example"], found["sidecar"]
    assert example["image"] == sidecar["image"]
    assert example["network_mode"] == "service:sidecar"
    assert set(example["environment"]) <= EXAMPLE_VARIABLES
    address = example["environment"]["OKRA_ADDRESS"]
    assert address.startswith("127.0.0.1:")
    assert port_of(address) == port_of(sidecar["environment"]["OKRA_LISTEN"])
    assert example["depends_on"]["sidecar"]["condition"] == "service_healthy"
    _, stages = parse_dockerfile(DOCKERFILE)
    script = example["entrypoint"][-1]
    assert any(c.values[-1] == script for c in stages[-1].all("COPY"))
