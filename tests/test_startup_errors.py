"""`okra-sidecar serve` that cannot start says why in one line naming the setting to change.

Exit code 2: the command line or settings are wrong in themselves; 1: they are well-formed but
the environment refuses them (a port in use, a data dir owned, Redis not answering).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from okra_sidecar.store.embedded import LOCK_NAME

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def serve(*flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The exit code and the one line on stderr; fails if the process printed more."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OKRA_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-m", "okra_sidecar", "serve", *flags],
        env={**environ, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stdout == "", (result.stdout, result.stderr)
    return result.returncode, lines[0]


@contextmanager
def listening_socket() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_redis_url_without_a_scheme_is_bad_configuration() -> None:
    code, line = serve("--listen=127.0.0.1:0", "--redis-url", "localhost:6379")
    assert code == 2
    assert line.startswith("error: --redis-url: 'localhost:6379' is not a Redis URL")
    assert "redis://HOST:PORT/DB" in line


def test_a_bad_redis_url_names_the_variable_it_came_from() -> None:
    code, line = serve("--listen=127.0.0.1:0", env={"OKRA_REDIS_URL": "localhost:6379"})
    assert code == 2
    assert line.startswith("error: OKRA_REDIS_URL: 'localhost:6379' is not a Redis URL")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:secret@h:port/0", "bad port"),
        ("redis://a:7000,b:x", "Redis URL 'redis://b:x': bad port"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be none, optional or required"),
        ("rediss://h?ssl_ca_certs=/nonexistent/ca.pem", "cannot load its TLS files"),
        ("redis://h/zero", "db must be a number"),
    ],
)
def test_a_redis_url_that_cannot_be_used_is_bad_configuration(url: str, problem: str) -> None:
    code, line = serve("--listen=127.0.0.1:0", "--redis-url", url)
    assert code == 2
    assert line.startswith("error: --redis-url: Redis URL ")
    assert problem in line and "secret" not in line


def test_an_unknown_flag_is_bad_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "okra_sidecar", "serve", "--port=50051"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --port=50051" in result.stderr


def test_a_redis_that_does_not_answer_names_the_redis_url_flag() -> None:
    port = closed_port()
    # Without --redis-wait the start waits on (logging so) until Redis answers.
    code, line = serve(
        "--listen=127.0.0.1:0",
        f"--redis-url=redis://:secret@127.0.0.1:{port}/0",
        "--redis-wait=1s",
        "--log-level=ERROR",
    )
    assert code == 1
    assert line.startswith(f"error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0 (")
    assert "--redis-url (OKRA_REDIS_URL)" in line
    assert "(waited 1s: --redis-wait (OKRA_REDIS_WAIT))" in line
    assert "retry" not in line and "secret" not in line


def test_a_listen_port_in_use_names_the_listen_flag(redis_url: str) -> None:
    with listening_socket() as port:
        code, line = serve(f"--listen=127.0.0.1:{port}", f"--redis-url={redis_url}")
    assert code == 1
    assert line == (
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use (another sidecar?); "
        "stop that process or choose another port with --listen (OKRA_LISTEN)"
    )


def test_an_admin_port_in_use_names_the_admin_listen_flag(redis_url: str) -> None:
    with listening_socket() as port:
        code, line = serve(
            "--listen=127.0.0.1:0",
            f"--admin-listen=127.0.0.1:{port}",
            f"--redis-url={redis_url}",
        )
    assert code == 1
    assert line.endswith("choose another port with --admin-listen (OKRA_ADMIN_LISTEN)")


def test_a_data_dir_another_sidecar_owns_names_the_data_dir_flag(tmp_path: Path) -> None:
    # Hold the embedded Redis' lock as a running sidecar does.
    (tmp_path / "redis").mkdir()
    fd = os.open(tmp_path / "redis" / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, line = serve("--listen=127.0.0.1:0", f"--data-dir={tmp_path}")
    finally:
        os.close(fd)
    assert code == 1
    assert line == (
        f"error: another sidecar owns {tmp_path / 'redis'} (its lock file is held); "
        "stop it, or give this one its own --data-dir (OKRA_DATA_DIR)"
    )
