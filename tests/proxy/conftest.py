"""Fixtures for the userland proxy tests: a proxy per test (spawned for real,
killed by pid at teardown) and threaded backends on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pontoon.proxy.client import ProxyClient, ProxyError, spawn, terminate
from tests.proxy.helpers import Proxy, TcpServer, UdpEcho, alive, echo, wait_for


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    pids: list[int] = []
    clients: list[ProxyClient] = []

    def factory(**spawn_options: Any) -> Proxy:
        control = tmp_path / f"proxy{len(pids)}.sock"
        log = tmp_path / f"proxy{len(pids)}.log"
        pid = spawn(control, log, log_level="debug", **spawn_options)
        pids.append(pid)  # before anything else can fail: teardown must kill it
        clients.append(ProxyClient.connect(control, timeout=2.0))
        clients[-1].stats()  # answered by every worker: all have started (fd counts settle)
        return Proxy(pid, control, log, clients[-1])

    yield factory
    workers = []
    for client in clients:
        with contextlib.suppress(ProxyError):
            workers += client.info()["workers"]
        client.close()
    for pid in pids:
        terminate(pid, timeout=3.0)
        assert not Path(f"/proc/{pid}").exists(), f"proxy {pid} still running"
    # Workers die with their supervisor (and are reaped by whoever adopts them).
    wait_for(lambda: not any(alive(pid) for pid in workers), what="the workers to exit")


@pytest.fixture
def proxy(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy()


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], TcpServer]]:
    servers: list[TcpServer] = []

    def factory(handler: Callable[[socket.socket], None] = echo) -> TcpServer:
        servers.append(TcpServer(handler))
        return servers[-1]

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    server = UdpEcho()
    yield server
    server.close()
