"""Helpers for the userland proxy tests: a handle on a spawned proxy and
small threaded backends on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pontoon.proxy.client import ProxyClient

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass
class Proxy:
    pid: int
    control: Path
    log: Path
    client: ProxyClient

    def publish(self, mapping_id: str, proto: str, backend_port: int, host: str = LOOPBACK) -> int:
        """Bind a host socket, hand it over, close our copy; returns the port."""
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((host, 0))
            self.client.add(mapping_id, proto, sock, LOOPBACK, backend_port)
            return sock.getsockname()[1]

    def workers(self) -> list[int]:
        return [int(pid) for pid in self.client.info()["workers"]]

    def tree(self) -> list[int]:
        """The supervisor and its workers."""
        return [self.pid, *self.workers()]

    def fds(self) -> int:
        """Descriptors held by the whole proxy (supervisor and workers)."""
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.tree())

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.tree())


def alive(pid: int) -> bool:
    """Running (a zombie has exited already)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Backends ----------------------------------------------------------------


class TcpServer:
    """A threaded TCP server on 127.0.0.1; `handler(conn)` runs per connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(512)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            self.conns.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn)

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(2)
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for t in self._threads:
            t.join(2)


def echo(conn: socket.socket) -> None:
    """Echo until EOF, then half-close back."""
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


class UdpEcho:
    """A threaded UDP echo server on 127.0.0.1 that records its peers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer)
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=timeout)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
