"""deploy/kubernetes: manifests agree with each other, the image and the running sidecar."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from okra_sidecar.config import Settings
from okra_sidecar.engine.runtime.registry import read_directory
from okra_sidecar.exposure import exposure_warning
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


def secrets() -> dict[str, dict[str, str]]:
    """Every Secret's stringData, by name."""
    return {
        name: dict(document["stringData"])
        for (kind, name), document in manifests().items()
        if kind == "Secret"
    }


def sidecar_env() -> dict[str, str]:
    return env_list(sidecar_container(), secrets())


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


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


def test_sidecar_is_a_native_sidecar_serving_the_api_on_loopback_only() -> None:
    (init,) = pod_spec()["initContainers"]
    assert init["name"] == SIDECAR and init["restartPolicy"] == "Always"
    env = env_list(init, secrets())
    assert set(env) <= SIDECAR_VARIABLES, set(env) - SIDECAR_VARIABLES
    assert env["OKRA_LISTEN"].startswith("127.0.0.1:"), "only the pod's containers call the API"
    ports = named_ports(init)
    assert port_of(env["OKRA_HEALTH_LISTEN"]) == ports["health"]
    assert env["OKRA_HEALTH_LISTEN"].startswith("0.0.0.0:"), "kubelet probes dial the pod IP"
    assert port_of(env["OKRA_ADMIN_LISTEN"]) == ports["metrics"]
    _, stages = parse_dockerfile(DOCKERFILE)
    (expose,) = stages[-1].all("EXPOSE")
    assert expose.values == (str(port_of(stages[-1].env()["OKRA_LISTEN"])),)


def test_probes_ask_liveness_and_readiness_on_the_health_port() -> None:
    container = sidecar_container()
    port = named_ports(container)["health"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]["grpc"]
        assert probe["port"] == port, kind
    # Liveness is the whole server, which a Redis outage leaves SERVING; readiness the API.
    assert container["livenessProbe"]["grpc"].get("service", "") == ""
    assert container["startupProbe"]["grpc"].get("service", "") == ""
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME


def test_auth_is_required_and_the_app_signs_with_the_same_secret() -> None:
    sidecar, app = sidecar_env(), env_list(containers()["app"], secrets())
    assert sidecar["OKRA_AUTH_MODE"] == "required"
    assert sidecar["OKRA_AUTH_HS256_SECRET"] == app["OKRA_TOKEN_SECRET"]
    assert len(sidecar["OKRA_AUTH_HS256_SECRET"]) >= 32
    assert sidecar["OKRA_AUTH_AUDIENCE"] == app["OKRA_TOKEN_AUDIENCE"]
    assert exposure_warning(Settings.load(flags={}, environ=sidecar)) is None


def test_network_policy_admits_only_the_scraper_to_the_pods() -> None:
    policy = manifests()[("NetworkPolicy", "orders")]["spec"]
    labels = manifests()[("Deployment", "orders")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ports == {named_ports(sidecar_container())["metrics"]}


def test_metrics_are_scraped_and_traces_exported() -> None:
    annotations = manifests()[("Deployment", "orders")]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == named_ports(sidecar_container())["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    env = sidecar_env()
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")
    assert env["OTEL_SERVICE_NAME"]


def test_redis_has_a_disruption_budget() -> None:
    found = manifests()
    budget = found[("PodDisruptionBudget", "okra-redis")]["spec"]
    labels = found[("StatefulSet", "okra-redis")]["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] == 1


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
    env, mounted = sidecar_env(), mounted_configmaps(container)
    assert mounted[env["OKRA_WORKFLOWS"]] == "okra-workflows"
    policies = Path(env["OKRA_POLICIES"])
    assert mounted[str(policies.parent)] == "okra-policies"
    assert policies.name in configmap_data("okra-policies")
    assert configmap_data("okra-policies")[policies.name] == (
        (KUBERNETES_DIR.parent / "policies.yaml").read_text()
    ), "the okra-policies ConfigMap and deploy/policies.yaml differ"


def test_redis_url_names_the_statefulset_and_its_port() -> None:
    found = manifests()
    url = sidecar_env()["OKRA_REDIS_URL"]
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    statefulset = found[("StatefulSet", "okra-redis")]
    service = found[("Service", statefulset["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    assert host == f"{statefulset['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"]
    redis = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    if sidecar_env().get("OKRA_DURABILITY") == "aof":
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
    env = env_list(app, secrets())
    assert set(env) <= EXAMPLE_VARIABLES
    assert env["OKRA_ADDRESS"] == f"127.0.0.1:{port_of(sidecar_env()['OKRA_LISTEN'])}"
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


# The manifests deploy one redis-server (StatefulSet okra-redis) whose AOF settings the test
# gives its Redis; the test Cluster's masters run without AOF, so durability aof cannot start.
@pytest.mark.single_store
async def test_sidecar_started_from_the_container_env_serves_its_probes(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    """The container's env, with mounts laid out as kubelet does, starts a sidecar whose
    probed health services report SERVING, and the example app completes a round on it."""
    container = sidecar_container()
    env = sidecar_env()
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
    translated["OKRA_HEALTH_LISTEN"] = "127.0.0.1:0"
    translated["OKRA_ADMIN_LISTEN"] = "127.0.0.1:0"
    translated["OTEL_TRACES_EXPORTER"] = "none"  # no collector here
    settings = Settings.load(flags={}, environ=translated)
    # The StatefulSet's redis-server fsyncs every write (checked above); so must the test's,
    # or a sidecar at durability aof refuses to start on a Redis older than 7.2.
    statefulset = manifests()[("StatefulSet", "okra-redis")]["spec"]["template"]["spec"]
    args = statefulset["containers"][0]["args"]
    fsync: Any = (await redis.config_get("appendfsync"))["appendfsync"]
    if "--appendfsync" in args:
        await redis.config_set("appendfsync", args[args.index("--appendfsync") + 1])
    try:
        sidecar = await start_sidecar(settings)
    finally:
        await redis.config_set("appendfsync", fsync)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = container[kind]["grpc"].get("service", "")
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, kind
        assert sidecar.admin is not None
        admin = f"http://127.0.0.1:{sidecar.admin.port}"
        async with httpx.AsyncClient(base_url=admin) as scraper:
            for path in ("/metrics", "/healthz", "/readyz"):
                assert (await scraper.get(path)).status_code == 200, path
        app = containers()["app"]
        app_env = env_list(app, secrets())
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO_ROOT / "deploy" / "example" / Path(app["command"][1]).name),
            env={**os.environ, **app_env, "OKRA_ADDRESS": f"127.0.0.1:{sidecar.port}"},
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
