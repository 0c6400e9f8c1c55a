"""The partition fault's namespaces: a cut link drops everything until healed; no root, no fault."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from chaos import netns
from chaos.cli import choose_faults
from chaos.netns import Topology

PORT = 16379
# Answers one connection per line of output; exits after 20 s whatever happens.
LISTENER = f"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(); s.settimeout(20)
print("ready", flush=True)
while True:
    conn, _ = s.accept(); conn.sendall(b"hi"); conn.close()
"""
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5) as c:
        print(c.recv(2).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture
def topology() -> Iterator[Topology]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"the partition fault cannot run here: {reason}")
    made = Topology(1)
    try:
        made.create()
        yield made
    finally:
        made.close()


def connect(topology: Topology, netns_name: str, host: str) -> str:
    command = [*topology.exec_prefix(netns_name), sys.executable, "-c", CONNECT, host, str(PORT)]
    return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()


def test_a_cut_link_drops_everything_until_healed(topology: Topology) -> None:
    listener = subprocess.Popen(
        [*topology.exec_prefix(topology.redis_ns), sys.executable, "-c", LISTENER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        sidecar_ns = topology.sidecar_ns[0]
        assert connect(topology, sidecar_ns, topology.redis_host_for(0)) == "hi"
        assert connect(topology, topology.driver_ns, topology.redis_host()) == "hi"
        topology.cut(0)
        # Dropped, not refused: the connection times out, as across a failed switch.
        assert connect(topology, sidecar_ns, topology.redis_host_for(0)) == "TimeoutError"
        assert connect(topology, topology.driver_ns, topology.redis_host()) == "hi"
        topology.heal(0)
        assert connect(topology, sidecar_ns, topology.redis_host_for(0)) == "hi"
        # No route out of a namespace: only the links the suite made lead anywhere.
        assert connect(topology, sidecar_ns, "192.0.2.1") in ("OSError", "TimeoutError")
    finally:
        listener.kill()
        listener.communicate()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    topology.close()
    assert topology.redis_ns in names
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert topology.redis_ns not in after and topology.driver_ns not in after


def test_without_root_the_partition_is_left_out_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("chaos.netns.os.geteuid", lambda: 1000)
    assert netns.unavailable() == "it needs root (to create network namespaces)"
    kinds, partitioned = choose_faults("sidecar-kill,partition,redis-stop")
    assert (kinds, partitioned) == (["sidecar-kill", "redis-stop"], False)
    assert "partition fault skipped: it needs root" in capsys.readouterr().err
    assert choose_faults("engine-kill") == (["engine-kill"], False)
