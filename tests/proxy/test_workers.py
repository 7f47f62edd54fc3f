"""Workers under one supervisor: shared TCP listeners, sticky UDP flows,
batches in one round trip, and healing when a worker or the whole proxy dies."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from pontoon.proxy.client import DaemonProxy, ProxyClient, terminate
from tests.proxy.helpers import LOOPBACK, alive, connect, wait_for

PORTS = 3
STREAMS_PER_PORT = 3


def _owner(proxy, sock: socket.socket, workers: list[int]) -> int:
    """The worker holding the proxy's end of a client connection."""
    client_port = sock.getsockname()[1]
    listen_port = sock.getpeername()[1]
    inode = _tcp_inode(listen_port, client_port)
    for pid in workers:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def _tcp_inode(local_port: int, remote_port: int) -> str:
    """/proc/net/tcp: the socket 127.0.0.1:local_port <-> 127.0.0.1:remote_port."""
    local, remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    raise AssertionError(f"no socket {local} -> {remote}")


class Stream:
    """A client echoing through the proxy in a loop until stopped or cut."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.sock.settimeout(2)
        self.rounds = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        payload = os.urandom(4096)
        try:
            while not self._stop.is_set():
                self.sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = self.sock.recv(len(payload) - len(got))
                    if not chunk:
                        raise ConnectionError("EOF")
                    got += chunk
                assert got == payload
                self.rounds += 1
        except (OSError, ConnectionError) as exc:
            self.error = str(exc) or type(exc).__name__

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)
        self.sock.close()


def _spread(proxy, ports: list[int]) -> list[Stream]:
    """Streams on every port, on at least two workers: while the first
    worker with a stream is stopped, wake-ups go to the others."""
    streams = [Stream(port) for port in ports]
    wait_for(lambda: all(s.rounds for s in streams), what="streams to flow")
    first = _owner(proxy, streams[0].sock, proxy.workers())
    os.kill(first, signal.SIGSTOP)
    try:
        more = [Stream(port) for port in ports for _ in range(STREAMS_PER_PORT - 1)]
    finally:
        os.kill(first, signal.SIGCONT)
    streams += more
    wait_for(lambda: all(s.rounds for s in streams), what="every stream to flow")
    return streams


def test_kill_one_worker_only_its_connections_end(make_proxy, tcp_server) -> None:
    proxy = make_proxy(workers=2)
    backend = tcp_server()
    ports = [proxy.publish(f"p{i}", "tcp", backend.port) for i in range(PORTS)]
    streams = _spread(proxy, ports)
    try:
        workers = proxy.workers()
        owners = {id(s): _owner(proxy, s.sock, workers) for s in streams}
        assert len(set(owners.values())) == 2, "the streams did not spread over both workers"
        victim = owners[id(streams[0])]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # New connections to every port are served within a second (by the
        # surviving worker at once, by the replacement soon after).
        for port in ports:
            with connect(port, timeout=1) as sock:
                sock.sendall(b"new")
                assert sock.recv(10) == b"new"
        wait_for(lambda: victim not in proxy.workers() and len(proxy.workers()) == 2,
                 timeout=1 - (time.monotonic() - killed), what="a replacement worker")  # fmt: skip
        theirs = [s for s in streams if owners[id(s)] == victim]
        ours = [s for s in streams if owners[id(s)] != victim]
        wait_for(lambda: all(s.error for s in theirs), what="the victim's streams to end")
        before = {id(s): s.rounds for s in ours}
        wait_for(lambda: all(s.rounds > before[id(s)] + 5 for s in ours), what="others to flow")
        assert not [s.error for s in ours if s.error]
        assert proxy.client.info()["worker_restarts"] == 1
        # The replacement serves every port alone (the survivor stopped).
        now = proxy.workers()
        survivor = next(pid for pid in now if pid in workers)
        os.kill(survivor, signal.SIGSTOP)
        try:
            for port in ports:
                with connect(port, timeout=1) as sock:
                    sock.sendall(b"fresh")
                    assert sock.recv(10) == b"fresh"
        finally:
            os.kill(survivor, signal.SIGCONT)
    finally:
        for s in streams:
            s.stop()


def test_udp_flows_stay_in_one_worker(make_proxy, udp_echo) -> None:
    proxy = make_proxy(workers=2)
    port = proxy.publish("dns", "udp", udp_echo.port)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for sock in clients:
            sock.settimeout(2)
        for i in range(20):
            for sock in clients:
                sock.sendto(b"q%d" % i, (LOOPBACK, port))
                assert sock.recv(10) == b"q%d" % i
    finally:
        for sock in clients:
            sock.close()
    # One flow per client, each with one backend socket, however many workers.
    assert len(set(udp_echo.peers)) == 4
    assert proxy.client.stats()["dns"]["connections_total"] == 4


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} descriptors, hard limit {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def test_a_thousand_ports_in_one_round_trip(make_proxy, tcp_server) -> None:
    _raise_fd_limit(4096)
    proxy = make_proxy(workers=2)
    backend = tcp_server()
    socks = []
    try:
        for _ in range(1000):
            sock = socket.socket()
            socks.append(sock)
            sock.bind((LOOPBACK, 0))
        batch = [(f"m{i}", "tcp", s, LOOPBACK, backend.port) for i, s in enumerate(socks)]
        ports = [s.getsockname()[1] for s in socks]
        trips = proxy.client.round_trips
        proxy.client.add_many(batch)
        assert proxy.client.round_trips == trips + 1
    finally:
        for sock in socks:
            sock.close()
    assert len(proxy.client.list()) == 1000
    for port in ports[::97]:
        with connect(port) as sock:
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"
    trips = proxy.client.round_trips
    assert len(proxy.client.remove_many([f"m{i}" for i in range(1000)])) == 1000
    assert proxy.client.round_trips == trips + 1
    assert proxy.client.list() == {}
    for port in ports[::97]:
        with pytest.raises(ConnectionRefusedError):
            connect(port)


def test_workers_die_with_the_supervisor(make_proxy, tcp_server) -> None:
    proxy = make_proxy(workers=2)
    port = proxy.publish("w", "tcp", tcp_server().port)
    workers = proxy.workers()
    os.kill(proxy.pid, signal.SIGKILL)
    # No orphan keeps the host port bound: a new proxy needs it.
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=2, what="workers to exit")
    with pytest.raises(ConnectionRefusedError):
        connect(port)


def test_daemon_side_brings_a_dead_proxy_back(tmp_path, tcp_server) -> None:
    """DaemonProxy notices the proxy's death by itself and calls back the
    daemon, which re-reserves its ports and hands them again."""
    backend = tcp_server()
    ports: list[int] = []

    def hand_over(handle: DaemonProxy) -> None:
        socks = []
        for i, port in enumerate(ports or [0, 0]):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port))
            socks.append((f"d{i}", "tcp", sock, LOOPBACK, backend.port))
        handle.add_many(socks)
        ports[:] = [s.getsockname()[1] for _, _, s, _, _ in socks]
        for _, _, sock, _, _ in socks:
            sock.close()

    restored = threading.Event()
    handle = DaemonProxy(tmp_path / "p.sock", tmp_path / "p.log", workers=2)
    handle.on_restart = lambda: (hand_over(handle), restored.set())
    pids = []
    try:
        hand_over(handle)
        with ProxyClient.connect(tmp_path / "p.sock") as client:
            pids.append(client.ping())
        os.kill(pids[0], signal.SIGKILL)
        killed = time.monotonic()
        assert restored.wait(2), "no restart within two seconds"
        for port in ports:
            with connect(port, timeout=1) as sock:
                sock.sendall(b"back")
                assert sock.recv(10) == b"back"
        assert time.monotonic() - killed < 2
        assert handle.proxy_restarts == 1
        with ProxyClient.connect(tmp_path / "p.sock") as client:
            pids.append(client.ping())
        assert pids[1] != pids[0]
    finally:
        handle.close()
        for pid in pids:
            terminate(pid, timeout=3)
