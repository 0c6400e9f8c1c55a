"""GrpcCaller: the `call: grpc` effect, a unary call made from the proto file at run time.

The proto is compiled once per sidecar with grpcio-tools' protoc (the `grpc-proto` extra; the
task fails with a problem naming it when it is missing) into a descriptor pool of its
own; the request message is built from the task's `arguments` (proto JSON mapping, either field
spelling) and the response comes back as JSON with the proto's field names. This is the one
module outside api/ and server/ that imports grpc: it is a gRPC client by nature.
"""

from __future__ import annotations

import asyncio
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.outbound import OutboundGuard, guarded_client
from okra_sidecar.executors.problems import EffectFailedError, problem
from okra_sidecar.policy.causation import CAUSE_METADATA, CausationGuard
from okra_sidecar.telemetry import inject_traceparent

__all__ = ["GrpcCaller", "http_status"]

GRPC_TOOLS_MISSING = (
    "gRPC calls from a .proto file need protoc from grpcio-tools, which is not installed: "
    "install the sidecar with its grpc-proto extra (pip install 'okra-sidecar[grpc-proto]')"
)

# gRPC status -> the HTTP status a problem carries (as grpc-gateway maps them).
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def _proto_uri(proto: Any) -> str:
    if isinstance(proto, dict):
        endpoint = proto.get("endpoint", proto.get("uri"))
        if isinstance(endpoint, dict):
            endpoint = endpoint.get("uri")
        return str(endpoint or "")
    return str(proto or "")


def compile_proto(path: Path) -> descriptor_pool.DescriptorPool:
    """A descriptor pool with `path` and everything it imports, compiled by protoc.

    Raises:
        EffectFailedError: protoc refused the file, or grpcio-tools is not installed.
    """
    try:
        # Imported here: grpcio-tools is an optional extra, for the workflows that need it.
        from grpc_tools import protoc
    except ImportError as exc:
        raise EffectFailedError(problem("configuration", 500, GRPC_TOOLS_MISSING)) from exc
    includes = str(resources.files("grpc_tools").joinpath("_proto"))
    with tempfile.TemporaryDirectory(prefix="okra-proto-") as scratch:
        out = Path(scratch) / "set.pb"
        code = protoc.main(
            [
                "protoc",
                f"-I{path.parent}",
                f"-I{includes}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                path.name,
            ]
        )
        if code != 0 or not out.exists():
            raise EffectFailedError(
                problem("configuration", 400, f"protoc could not compile {path} (exit {code})")
            )
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


class GrpcCaller:
    def __init__(
        self,
        *,
        hosts: HostMap,
        base_dir: Path,
        default_timeout_s: float = 30.0,
        guard: OutboundGuard | None = None,
        causation: CausationGuard | None = None,
    ) -> None:
        self._causation = causation
        self._hosts = hosts
        self._base_dir = base_dir
        self._default_timeout_s = default_timeout_s
        # Proto files only from the workflows folder unless the guard names other roots.
        self._guard = guard or OutboundGuard(file_roots=[base_dir])
        self._fetch = guarded_client(self._guard)
        self._pools: dict[str, descriptor_pool.DescriptorPool] = {}
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        await self._fetch.aclose()

    async def _pool(self, uri: str) -> descriptor_pool.DescriptorPool:
        async with self._lock:
            pool = self._pools.get(uri)
            if pool is None:
                pool = await self._load(uri)
                self._pools[uri] = pool
            return pool

    async def _load(self, uri: str) -> descriptor_pool.DescriptorPool:
        parts = urlsplit(uri)
        if parts.scheme in ("http", "https"):
            try:
                # No redirects: one could lead where the proto's own URL would be refused.
                response = await self._fetch.get(self._hosts.url(uri), timeout=30.0)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise EffectFailedError(
                    problem("communication", 503, f"cannot fetch proto {uri}: {exc}")
                ) from None
            with tempfile.TemporaryDirectory(prefix="okra-proto-") as scratch:
                path = Path(scratch) / (Path(parts.path).name or "service.proto")
                path.write_text(response.text)
                return await asyncio.to_thread(compile_proto, path)
        # file://app/greet.proto and plain paths: relative ones from the workflows folder.
        text = uri.removeprefix("file://")
        path = Path(text)
        if not path.is_absolute():
            path = self._base_dir / path
        path = self._guard.check_file(path)
        if not path.is_file():
            raise EffectFailedError(problem("configuration", 400, f"proto file {uri} not found"))
        return await asyncio.to_thread(compile_proto, path)

    async def _channel(self, target: str) -> grpc.aio.Channel:
        """A channel to an address the guard checked, keeping `target` as the authority."""
        parts = urlsplit(f"//{target}")
        host, port = parts.hostname or "", parts.port or 443
        address = (await self._guard.resolve(host, port))[0]
        pinned = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        channel = self._channels.get((pinned, target))
        if channel is None:
            channel = grpc.aio.insecure_channel(
                pinned, options=[("grpc.default_authority", target)]
            )
            self._channels[(pinned, target)] = channel
        return channel

    async def call(
        self, request: dict[str, Any], *, timeout_ms: int | None = None, cause: str = ""
    ) -> Any:
        """Invoke the method; the response message as JSON. `cause` is the calling instance,
        sent signed as `okra-cause` so that a sidecar's Run can tell where a chain comes from.

        Raises:
            EffectFailedError: the proto, service or method is wrong (configuration), or the
                call failed (communication, with the gRPC status mapped to HTTP).
        """
        pool = await self._pool(_proto_uri(request.get("proto")))
        service_spec = request.get("service") or {}
        service_name = str(service_spec.get("name") or "")
        method_name = str(request.get("method") or "")
        try:
            service = pool.FindServiceByName(service_name)
            method = service.methods_by_name[method_name]
        except KeyError:
            raise EffectFailedError(
                problem("configuration", 400, f"no method {service_name}/{method_name} in proto")
            ) from None
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        try:
            message = json_format.ParseDict(request.get("arguments") or {}, request_class())
        except json_format.ParseError as exc:
            raise EffectFailedError(
                problem("validation", 400, f"arguments do not fit {method.input_type.name}: {exc}")
            ) from None
        target = self._hosts.target(str(service_spec.get("host") or ""), service_spec.get("port"))
        invoke: Any = (await self._channel(target)).unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        timeout = (timeout_ms / 1000) if timeout_ms else self._default_timeout_s
        try:
            # The called service continues the trace, and sees the DSL's `authentication`
            # ({"scheme", "parameter"}, resolved by engine/definitions/calls.py) as `authorization`.
            headers = inject_traceparent({})
            authentication = request.get("authentication")
            if isinstance(authentication, dict) and authentication.get("parameter"):
                headers["authorization"] = (
                    f"{authentication.get('scheme', 'Bearer')} {authentication['parameter']}"
                )
            if cause and self._causation is not None:
                headers[CAUSE_METADATA] = await self._causation.sign(cause)
            metadata = tuple(headers.items()) or None
            reply = await invoke(message, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise EffectFailedError(
                    problem("timeout", 408, f"{service_name}/{method_name}: {exc.details()}")
                ) from None
            raise EffectFailedError(
                problem(
                    "communication",
                    http_status(code),
                    f"{service_name}/{method_name} failed: {code.name}: {exc.details()}",
                )
            ) from None
        return json_format.MessageToDict(reply, preserving_proto_field_name=True)
