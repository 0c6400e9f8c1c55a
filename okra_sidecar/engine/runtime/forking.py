"""ForkServer: engine children forked from a process that has imported everything already.

A new engine child started as `python -m okra_sidecar engine` spends a second of CPU importing
before its first turn, and on a busy host several seconds pass: the slow lane's child is
started anew after every hostile expression it stops, and a regular child killed to move one
there leaves its work to a spare that must itself be replaced. So the parent starts one fork
server once, which imports the engine and then only forks, in milliseconds, a child per request.

The fork server has no thread and no event loop, so forking it is safe (the serving process,
with gRPC's threads, is not). Its children are forked with `CLONE_PARENT`: they are the
sidecar's children, not the fork server's, so the sidecar reaps them, reads their exit status,
and they die with it (PDEATHSIG), exactly as children it started itself. Where that clone is
not available (another architecture, no pidfd), the parent starts children as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import signal
import socket
import sys
from collections.abc import Callable, Mapping

from okra_sidecar.subprocesses import signal_child

__all__ = [
    "FORK_SERVER_ENV",
    "ForkServer",
    "ForkServerError",
    "ForkedChild",
    "fork_supported",
    "serve_forks",
    "start_engine_command",
    "wait_or_kill",
]

logger = logging.getLogger(__name__)

# In the fork server: the descriptor of its end of the socket pair with the parent.
FORK_SERVER_ENV = "OKRA_ENGINE_FORK_SERVER_FD"
# Its name in ps and /proc/<pid>/comm (15 characters at most), told apart from the children.
FORK_SERVER_NAME = "okra-forkserver"
CHILD_NAME = "okra-engine"
# The first fork waits for the fork server's imports: seconds on a busy host.
FORK_TIMEOUT_S = 60.0
CLONE_PARENT = 0x00008000
SIGCHLD = 17
# clone(2) takes the flags first on these; the other arguments are all zero here.
_CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}
PR_SET_NAME = 15


class ForkServerError(Exception):
    """The fork server is gone or did not answer; the caller starts the child itself."""


def fork_supported() -> bool:
    return (
        sys.platform == "linux"
        and platform.machine() in _CLONE_SYSCALL
        and hasattr(os, "pidfd_open")
        and hasattr(signal, "pidfd_send_signal")
        and _pidfd_works()
    )


def _pidfd_works() -> bool:
    """Whether the kernel (or an emulator such as valgrind) answers pidfd_open at all."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def _fork_sibling() -> int:
    """fork(), but the child's parent is our parent (CLONE_PARENT): 0 in the child.

    What os.fork() does around the syscall (locks, the interpreter's state, at-fork hooks),
    with the flag it cannot pass. PyDLL keeps the GIL held across the call, as os.fork does.
    """
    libc = ctypes.PyDLL(None, use_errno=True)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = int(libc.syscall(_CLONE_SYSCALL[platform.machine()], CLONE_PARENT | SIGCHLD, 0, 0, 0, 0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return pid


def _set_name(name: str) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def serve_forks(fd: int, run_child: Callable[[], int], *, descriptor_env: str) -> int:
    """In the fork server: fork a child per request until the parent closes the socket.

    A request is the child's own environment variables (JSON) with one descriptor, its board,
    whose number the child finds in `descriptor_env`; the answer is its pid. In the child,
    `run_child` runs and its result is the exit status.
    """
    _set_name(FORK_SERVER_NAME)
    # Ctrl-C reaches the whole process group: the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=fd)
    channel.setblocking(True)
    # What is alive now stays shared with every child instead of being copied by the collector.
    gc.collect()
    gc.freeze()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, 65536, 1)
        except OSError:
            return 0
        if not data:
            return 0  # the parent closed its end: it is stopping, or gone
        pid = _fork_sibling()
        if pid == 0:
            channel.close()
            env = json.loads(data)
            if fds:
                env[descriptor_env] = str(fds[0])
            _enter_child(env, run_child)
        for received in fds:
            os.close(received)
        channel.sendall(f"{pid}\n".encode())


def _enter_child(env: Mapping[str, str], run_child: Callable[[], int]) -> None:
    """In a forked child: take its environment and run it; never returns to the server loop."""
    code = 1
    try:
        _set_name(CHILD_NAME)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.environ.update(env)
        code = run_child()
    except BaseException:
        logger.exception("engine process failed")
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkedChild:
    """A child the fork server forked for us: waited for, signalled and reaped through a pidfd.

    The same surface as the asyncio process of a child we start ourselves.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        # Readable once the process has exited (it stays a zombie until we reap it).
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0  # reaped by someone else: its status is lost
        if pid == 0:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status) if status else 0
        if not self._exited.done():
            self._exited.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        # By pidfd: never a process that took this pid after ours was reaped.
        signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkServer:
    """The parent's side: starts the fork server and asks it for children."""

    def __init__(self, *, payload: bytes, parent_env: Mapping[str, str]) -> None:
        self._payload = payload
        self._parent_env = dict(parent_env)
        self._process: asyncio.subprocess.Process | None = None
        self._channel: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._buffer = b""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def started(self) -> bool:
        """Started (and not stopped since), though perhaps dead: `fork` then says so."""
        return self._process is not None

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = {**os.environ, **self._parent_env, FORK_SERVER_ENV: str(theirs.fileno())}
            process = await start_engine_command(env, theirs.fileno(), self._payload)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._process, self._channel, self._buffer = process, ours, b""

    async def fork(self, env: Mapping[str, str], board_fd: int) -> ForkedChild:
        """A new child with these environment variables and the board descriptor.

        Raises:
            ForkServerError: the fork server is gone or did not answer in time.
        """
        async with self._lock:
            channel = self._channel
            if channel is None or self._process is None or self._process.returncode is not None:
                raise ForkServerError("the fork server is not running")
            try:
                request = json.dumps(dict(env)).encode()
                socket.send_fds(channel, [request], [board_fd])
                pid = await asyncio.wait_for(self._read_pid(channel), FORK_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ForkServerError(f"the fork server did not fork: {exc!r}") from exc
            return ForkedChild(pid)

    async def _read_pid(self, channel: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            chunk = await loop.sock_recv(channel, 64)
            if not chunk:
                raise OSError("the fork server closed its socket")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return int(line)

    async def stop(self, timeout_s: float) -> None:
        """Close our end (the fork server then exits), and wait for it."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        process, self._process = self._process, None
        if process is not None:
            await wait_or_kill(process, timeout_s)


async def start_engine_command(
    env: Mapping[str, str], fd: int, payload: bytes
) -> asyncio.subprocess.Process:
    """`python -m okra_sidecar engine`, given the descriptor `fd` and the pickled settings."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "okra_sidecar",
        "engine",
        stdin=asyncio.subprocess.PIPE,
        env=dict(env),
        pass_fds=(fd,),
    )
    assert process.stdin is not None
    process.stdin.write(payload)
    await process.stdin.drain()
    process.stdin.close()
    return process


async def wait_or_kill(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    """Wait for a process told to stop (or that stops at the end of its input); kill it late."""
    if process.returncode is not None:
        return
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        signal_child(process, signal.SIGKILL)
        await process.wait()
