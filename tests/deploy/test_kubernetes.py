"""deploy/kubernetes: manifests agree with each other, the image and the running sidecar."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from okra_sidecar.config import Settings
from okra_sidecar.engine.registry import read_directory
from okra_sidecar.server import SERVICE_NAME, start_sidecar
from tests.deploy.support import (
    DOCKERFILE,
    EXAMPLE_VARIABLES,
    KUBERNETES_DIR,
    REPO_ROOT,
    SIDECAR_VARIABLES,
    env_list,
    lay_out_like_a_configmap,
    load_documents,
    parse_dockerfile,
    port_of,
)

SIDECAR = "okra-sidecar"


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the kustomization, by (kind, name)."""
    kustomization = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    on_disk = sorted(
        p.name for p in KUBERNETES_DIR.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert listed == on_disk, "kustomization.yaml must list every manifest"
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in listed:
        for document in load_documents(KUBERNETES_DIR / name):
            assert {"apiVersion", "kind", "metadata"} <= document.keys(), name
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def pod_spec() -> dict[str, Any]:
    return dict(manifests()[("Deployment", "orders")]["spec"]["template"]["spec"])


def containers() -> dict[str, dict[str, Any]]:
    spec = pod_spec()
    every = [*spec.get("initContainers", []), *spec["containers"]]
    return {c["name"]: c for c in every}


def sidecar_container() -> dict[str, Any]:
    return containers()[SIDECAR]


def configmap_data(name: str) -> dict[str, str]:
    return dict(manifests()[("ConfigMap", name)]["data"])


def mounted_configmaps(container: dict[str, Any]) -> dict[str, str]:
    """Mount path -> ConfigMap name."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    found = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert mount.get("readOnly") is True, mount
            found[mount["mountPath"]] = volume["configMap"]["name"]
    return found


def test_images_are_the_one_image_the_dockerfile_builds() -> None:
    kustomization = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["name"] == "okra-sidecar"
    assert {c["image"] for c in containers().values()} == {"okra-sidecar"}
    compose = load_documents(KUBERNETES_DIR.parent / "docker-compose.yml")[0]
    assert compose["services"]["sidecar"]["image"] == f"okra-sidecar:{image['newTag']}"


def test_sidecar_is_a_native_sidecar_listening_on_its_port() -> None:
    (init,) = pod_spec()["initContainers"]
    assert init["name"] == SIDECAR and init["restartPolicy"] == "Always"
    env = env_list(init)
    assert set(env) <= SIDECAR_VARIABLES, set(env) - SIDECAR_VARIABLES
    (port,) = init["ports"]
    assert port_of(env["OKRA_LISTEN"]) == port["containerPort"]
    assert env["OKRA_LISTEN"].startswith("0.0.0.0:"), "kubelet probes dial the pod IP"
    _, stages = parse_dockerfile(DOCKERFILE)
    (expose,) = stages[-1].all("EXPOSE")
    assert expose.values == (str(port["containerPort"]),)


def test_probes_use_grpc_health_on_the_served_port_and_names() -> None:
    container = sidecar_container()
    port = container["ports"][0]["containerPort"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]["grpc"]
        assert probe["port"] == port, kind
        assert probe.get("service", "") in {"", SERVICE_NAME}, kind
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME


def test_every_container_has_resources_and_a_locked_down_context() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    _, stages = parse_dockerfile(DOCKERFILE)
    (user,) = stages[-1].all("USER")
    assert str(spec["securityContext"]["runAsUser"]) == user.values[0].partition(":")[0]
    assert spec["automountServiceAccountToken"] is False
    statefulset = manifests()[("StatefulSet", "okra-redis")]["spec"]["template"]["spec"]
    for container in [*containers().values(), *statefulset["containers"]]:
        resources = container["resources"]
        assert set(resources) == {"requests", "limits"}, container["name"]
        assert {"cpu", "memory"} <= resources["requests"].keys() & resources["limits"].keys()
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]


def test_mounted_configmaps_are_where_the_sidecar_reads() -> None:
    container = sidecar_container()
    env, mounted = env_list(container), mounted_configmaps(container)
    assert mounted[env["OKRA_WORKFLOWS"]] == "okra-workflows"
    policies = Path(env["OKRA_POLICIES"])
    assert mounted[str(policies.parent)] == "okra-policies"
    assert policies.name in configmap_data("okra-policies")
    assert configmap_data("okra-policies")[policies.name] == (
        (KUBERNETES_DIR.parent / "policies.yaml").read_text()
    ), "the okra-policies ConfigMap and deploy/policies.yaml differ"


def test_redis_url_names_the_statefulset_and_its_port() -> None:
    found = manifests()
    url = env_list(sidecar_container())["OKRA_REDIS_URL"]
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    statefulset = found[("StatefulSet", "okra-redis")]
    service = found[("Service", statefulset["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    assert host == f"{statefulset['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"]
    redis = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    if env_list(sidecar_container()).get("OKRA_DURABILITY") == "aof":
        assert redis["args"][redis["args"].index("--appendfsync") + 1] == "always"
    data_dir = redis["args"][redis["args"].index("--dir") + 1]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in redis["volumeMounts"]
    policy = found[("NetworkPolicy", "okra-redis")]
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    labels = found[("Deployment", "orders")]["spec"]["template"]["metadata"]["labels"]
    assert allowed.items() <= labels.items()


def test_example_app_calls_the_sidecar_on_loopback() -> None:
    app = containers()["app"]
    env = env_list(app)
    assert set(env) <= EXAMPLE_VARIABLES
    assert (
        env["OKRA_ADDRESS"] == f"127.0.0.1:{port_of(env_list(sidecar_container())['OKRA_LISTEN'])}"
    )
    script = app["command"][1]
    assert (REPO_ROOT / "deploy" / "example" / Path(script).name).is_file()


def test_workflows_configmap_loads(tmp_path: Path) -> None:
    files = sorted((KUBERNETES_DIR.parent / "workflows").glob("*.yaml"))
    assert configmap_data("okra-workflows") == {p.name: p.read_text() for p in files}, (
        "the okra-workflows ConfigMap and deploy/workflows differ"
    )
    lay_out_like_a_configmap(configmap_data("okra-workflows"), tmp_path / "workflows")
    ids = [d.id for d in read_directory(tmp_path / "workflows")]
    assert ids == ["examples.approval.1.0.0"]


async def test_sidecar_started_from_the_container_env_serves_its_probes(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    """The container's env, with mounts laid out as kubelet does, starts a sidecar whose
    probed health services report SERVING, and the example app completes a round on it."""
    container = sidecar_container()
    env = env_list(container)
    mounts = mounted_configmaps(container)
    translated = dict(env)
    for mount_path, name in mounts.items():
        local = tmp_path / mount_path.strip("/").replace("/", "_")
        lay_out_like_a_configmap(configmap_data(name), local)
        for key, value in env.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                translated[key] = str(local) + value[len(mount_path) :]
    assert translated["OKRA_WORKFLOWS"] != env["OKRA_WORKFLOWS"]
    assert translated["OKRA_POLICIES"] != env["OKRA_POLICIES"]
    translated["OKRA_REDIS_URL"] = redis_url
    translated["OKRA_LISTEN"] = "127.0.0.1:0"
    settings = Settings.load(flags={}, environ=translated)
    sidecar = await start_sidecar(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = container[kind]["grpc"].get("service", "")
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, kind
        app = containers()["app"]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO_ROOT / "deploy" / "example" / Path(app["command"][1]).name),
            env={**os.environ, "OKRA_ADDRESS": f"127.0.0.1:{sidecar.port}"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, err.decode()
        assert "is completed" in out.decode() and "'approved': True" in out.decode()
    finally:
        await sidecar.stop(None)


@pytest.mark.parametrize("path", sorted(KUBERNETES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_parses(path: Path) -> None:
    assert load_documents(path)
