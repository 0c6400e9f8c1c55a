"""Command line: `okra-sidecar serve`, `migrate`, `validate`, `health` and `codegen`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from okra_sidecar import __version__
from okra_sidecar.config import Settings
from okra_sidecar.config_sources import ConfigError
from okra_sidecar.engine.runtime.registry import read_definitions
from okra_sidecar.errors import (
    AlreadyExistsError,
    DefinitionError,
    DurabilityError,
    PolicyLoadError,
    StartupError,
    StoreUnavailableError,
)
from okra_sidecar.policy.auth import AuthConfigError
from okra_sidecar.store.keys import LAYOUT_VERSION
from okra_sidecar.telemetry.logs import setup_logging


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """`serve`'s flags; each names the variable it overrides (config_sources.FLAG_KEYS)."""
    serve.add_argument("--config", help="YAML config file (env OKRA_CONFIG)")
    serve.add_argument("--listen", help="HOST:PORT to serve on (env OKRA_LISTEN)")
    serve.add_argument(
        "--redis-url",
        help="redis://HOST:PORT/DB; none starts an embedded redis-server (env OKRA_REDIS_URL)",
    )
    serve.add_argument("--workflows", help="directory of workflow definitions (env OKRA_WORKFLOWS)")
    serve.add_argument("--policies", help="policy file (env OKRA_POLICIES)")
    serve.add_argument("--data-dir", help="folder for the embedded Redis (env OKRA_DATA_DIR)")
    serve.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING (env OKRA_LOG_LEVEL)"
    )
    serve.add_argument(
        "--log-format",
        default=None,
        help="auto (default: text on a terminal, else JSON), json or text (env OKRA_LOG_FORMAT)",
    )
    serve.add_argument(
        "--tls-cert", help="PEM certificate (chain) to serve TLS with (env OKRA_TLS_CERT_FILE)"
    )
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert (env OKRA_TLS_KEY_FILE)")
    serve.add_argument(
        "--tls-client-ca",
        help="PEM CA certificates; clients must present a certificate they signed "
        "(env OKRA_TLS_CLIENT_CA_FILE)",
    )
    serve.add_argument(
        "--health-listen",
        help="HOST:PORT of a plaintext port serving only gRPC health, for probes "
        "(env OKRA_HEALTH_LISTEN)",
    )
    serve.add_argument(
        "--redis-wait",
        help="how long to wait at start for an unreachable Redis, e.g. 30s; "
        "default: until it answers (env OKRA_REDIS_WAIT)",
    )
    serve.add_argument(
        "--admin-listen",
        default=None,
        help="HOST:PORT serving Prometheus /metrics; off by default (env OKRA_ADMIN_LISTEN)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okra-sidecar",
        description="A durable workflow sidecar over Redis.",
        # Operators look here first; their verbs live in the `okra` command beside this one.
        epilog="To operate a running sidecar's instances (list, signal, cancel, suspend, "
        "resume, retry, reset, delete, watch, bulk operations) and schedules, use the `okra` "
        "command installed beside this one: `okra --help`.",
    )
    parser.add_argument("--version", action="version", version=f"okra-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_flags(commands.add_parser("serve", help="run the sidecar"))
    migrate = commands.add_parser(
        "migrate",
        help="convert the store in Redis to this version's layout (stop every sidecar first)",
    )
    migrate.add_argument("--config", help="YAML config file (env OKRA_CONFIG)")
    migrate.add_argument("--redis-url", help="as for serve (env OKRA_REDIS_URL)")
    migrate.add_argument("--data-dir", help="as for serve (env OKRA_DATA_DIR)")
    commands.add_parser(
        "engine", help="internal: an engine child process of `serve` (settings on stdin)"
    )
    validate = commands.add_parser("validate", help="check workflow definitions, as serve would")
    validate.add_argument("path", help="a definition file, or a directory of them")
    validate.add_argument(
        "--config", help="YAML config file whose limits apply, as for serve (env OKRA_CONFIG)"
    )
    health = commands.add_parser(
        "health", help="exit 0 if the sidecar's gRPC health service reports SERVING"
    )
    health.add_argument(
        "--address", help="HOST:PORT to check (default: OKRA_LISTEN, else 127.0.0.1:50051)"
    )
    health.add_argument("--service", default="", help="service name; '' is the whole server")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.add_argument("--cacert", help="dial with TLS, trusting these PEM CA certificates")
    health.add_argument("--cert", help="PEM client certificate, for a sidecar requiring one")
    health.add_argument("--key", help="PEM private key of --cert")
    health.add_argument("--servername", help="name to check the sidecar's certificate against")
    codegen = commands.add_parser(
        "codegen",
        help="write typed modules (input, output, signals, run helpers and handles) "
        "from workflow definitions",
    )
    codegen.add_argument("--lang", required=True, choices=["python", "typescript"])
    codegen.add_argument(
        "--workflows", required=True, help="a definition file, or a directory of them"
    )
    codegen.add_argument(
        "--out",
        help="directory to write the modules into "
        "(default: $XDG_CACHE_HOME/okra-sidecar/codegen/LANG, XDG_CACHE_HOME being ~/.cache)",
    )
    return parser


def run_codegen(args: argparse.Namespace) -> int:
    """Write one typed module per workflow version; exit 1 naming the problem if any."""
    from okra_sidecar.codegen import CodegenError, default_out, generate

    out = Path(args.out) if args.out else default_out(args.lang, os.environ)
    try:
        written = generate(args.lang, read_definitions(Path(args.workflows)), out)
    except (DefinitionError, CodegenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Check definitions with the limits serve would apply (the config file, OKRA_* variables)."""
    try:
        settings = Settings.load(flags={"config": args.config}, environ=os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        definitions = read_definitions(
            Path(args.path), max_bytes=settings.engine.max_definition_bytes
        )
    except DefinitionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for definition in definitions:
        print(f"ok {definition.id}")
    return 0


def run_health(args: argparse.Namespace) -> int:
    """The container health check: prints the status, exit 0 only when SERVING."""
    import grpc
    from okra_client.tls import ClientTls

    from okra_sidecar.health import check_health, local_target

    target = args.address or local_target(os.environ.get("OKRA_LISTEN") or "127.0.0.1:50051")
    tls = None
    if args.cacert or args.cert or args.key or args.servername:
        try:
            tls = ClientTls(
                ca_file=args.cacert,
                cert_file=args.cert,
                key_file=args.key,
                server_name=args.servername,
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        status = check_health(target, service=args.service, timeout_s=args.timeout, tls=tls)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "ERROR"
        print(f"{target}: {code}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{target}: {status}")
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return run_health(args)
    if args.command == "codegen":
        return run_codegen(args)
    if args.command == "engine":
        return run_engine_process()
    if args.command == "validate":
        return run_validate(args)
    flags = {
        # `migrate` takes only the flags that say where the store is.
        key: getattr(args, key, None)
        for key in (
            *("config", "listen", "redis_url", "workflows", "policies", "data_dir"),
            *("admin_listen", "log_level", "log_format"),
            *("tls_cert", "tls_key", "tls_client_ca", "health_listen", "redis_wait"),
        )
    }
    try:
        settings = Settings.load(flags=flags, environ=os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.telemetry)
    if args.command == "migrate":
        return run_migrate(settings)
    from okra_sidecar.api.tls import TlsConfigError
    from okra_sidecar.server import serve

    # Exit 2: the settings or files given are wrong; exit 1: the environment refused them.
    try:
        asyncio.run(serve(settings))
    except (
        DefinitionError,
        AlreadyExistsError,
        PolicyLoadError,
        AuthConfigError,
        TlsConfigError,
    ) as exc:
        print(f"error: refusing to start: {exc}", file=sys.stderr)
        return 2
    except DurabilityError as exc:
        print(f"error: refusing to start: {exc}", file=sys.stderr)
        return 1
    except (StartupError, StoreUnavailableError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_migrate(settings: Settings) -> int:
    """Convert the store to this version's layout; exit 1 naming the problem if it cannot."""
    from okra_sidecar.server import migrate

    try:
        report = asyncio.run(migrate(settings))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.from_version == LAYOUT_VERSION:
        print(f"the store is in layout version {LAYOUT_VERSION} already; nothing to migrate")
    else:
        print(
            f"migrated the store from layout version {report.from_version} to "
            f"{LAYOUT_VERSION}: {report.instances} instances, {report.indexes} indexes, "
            f"{report.streams} streams, {report.records} schedules and bulk operations"
        )
    return 0


def run_engine_process() -> int:
    """An engine child of `serve` (engineProcesses > 0); its settings come on stdin."""
    from okra_sidecar.store.embedded import terminate_with_parent

    # Before the imports below, which take seconds on a busy host: a parent killed meanwhile
    # must not leave us importing, holding its standard output open.
    terminate_with_parent(signal.SIGKILL)
    from okra_sidecar.engine.runtime.forking import FORK_SERVER_ENV, serve_forks
    from okra_sidecar.engine.runtime.processes import (
        BOARD_FD_ENV,
        STORE_UNAVAILABLE_EXIT,
        adopt_parent,
        read_settings,
    )
    from okra_sidecar.server import run_engine, warm_engine_process

    if not adopt_parent():
        print("error: the engine process runs only as a child of `serve`", file=sys.stderr)
        return 1
    settings = read_settings()
    setup_logging(settings.telemetry)

    def take_turns() -> int:
        try:
            asyncio.run(run_engine(settings))
        except StoreUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return STORE_UNAVAILABLE_EXIT
        return 0

    fork_server = os.environ.get(FORK_SERVER_ENV)
    if fork_server is None:
        return take_turns()

    def take_turns_forked() -> int:
        # A forked child asks for its own PDEATHSIG (fork clears it); its parent is ours.
        return take_turns() if adopt_parent() else 1

    warm_engine_process()
    return serve_forks(int(fork_server), take_turns_forked, descriptor_env=BOARD_FD_ENV)


if __name__ == "__main__":
    sys.exit(main())
