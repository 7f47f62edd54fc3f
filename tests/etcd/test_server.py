"""The lab's etcd helper: start, health, stop by PID (also from another
process's view), and running inside a network namespace."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pontoon.errors import Unavailable
from pontoon.lab.etcd import EtcdServer, free_tcp_port
from tests.etcd.conftest import new_server, running, store_opener


def test_start_writes_a_pid_file_and_stop_removes_everything(tmp_path: Path):
    server = new_server(tmp_path / "etcd")
    with running(server):
        pid = server.pid
        assert pid is not None
        assert server.pid_file.read_text().strip() == str(pid)
        assert server.url == f"etcd://127.0.0.1:{server.client_port}"
        # A second helper for the same data directory (say `lab down`) finds it.
        other = EtcdServer(tmp_path / "etcd", "127.0.0.1", server.client_port, server.peer_port)
        assert other.pid == pid
        with pytest.raises(RuntimeError, match="already runs"):
            other.start()
        other.stop()
        assert server.pid is None
    assert not server.pid_file.exists()


def test_stop_ignores_a_pid_that_is_not_this_etcd(tmp_path: Path):
    server = new_server(tmp_path / "etcd")
    server.pid_file.parent.mkdir(parents=True, exist_ok=True)
    server.pid_file.write_text(f"{os.getpid()}\n")  # ours: must survive
    assert server.pid is None
    server.stop()
    assert not server.pid_file.exists()


def test_a_paused_etcd_is_stopped_too(tmp_path: Path):
    server = new_server(tmp_path / "etcd")
    with running(server):
        server.pause()
        pid = server.pid
    assert not os.path.exists(f"/proc/{pid}")


def test_a_failed_start_reports_the_log_and_leaves_no_process(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        server = EtcdServer(tmp_path / "etcd", "127.0.0.1", busy.getsockname()[1], free_tcp_port())
        with pytest.raises(RuntimeError, match="etcd exited during start-up"):
            server.start(timeout=5)
    assert server.pid is None
    assert not server.pid_file.exists()


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    """A throwaway network namespace held by a sleeping process (no name in
    /run/netns, nothing in the root namespace changes)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 60"],
    )
    try:
        path = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):
            if os.readlink(path) != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.02)
        yield path
    finally:
        holder.kill()
        holder.wait()


async def test_etcd_in_a_network_namespace(tmp_path: Path, netns: str):
    port = free_tcp_port()
    server = EtcdServer(tmp_path / "etcd", "127.0.0.1", port, free_tcp_port(), netns_path=netns)
    with running(server):
        assert server.healthy()  # etcdctl runs in the namespace too
        put = server.etcdctl("put", "/k", "v")
        assert put.returncode == 0, put.stderr
        # Nothing listens on that port out here.
        async with store_opener([("127.0.0.1", port)])(timeout=0.5) as store:
            with pytest.raises(Unavailable, match="connection refused"):
                await store.get("/k")
