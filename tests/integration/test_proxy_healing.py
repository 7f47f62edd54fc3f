"""The userland proxy heals (issue 14): a killed worker is replaced by the
supervisor, a killed proxy is brought back by the running daemon with every
published port, and /metrics counts both."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pontoon.lab import SimHost
from tests.integration.portmap_helpers import PROBE, SERVER

pytestmark = pytest.mark.integration

TCP_PORTS = [7000, 7001, 7002]


def _start(make_host) -> SimHost:
    host = make_host("--userland-proxy=true", "--userland-proxy-workers", "2")
    publish = [arg for port in TCP_PORTS for arg in ("-p", f"{port}:{port}")]
    servers = [f"{port}/tcp" for port in TCP_PORTS]
    host.cli("run", "-d", "--name", "web", *publish, "-p", "5353:53/udp",
             "--", "python3", "-c", SERVER, *servers, "53/udp")  # fmt: skip
    return host


def _probes(host: SimHost, timeout: float) -> list[str]:
    """Every published port from the host to 127.0.0.1, all at once, each
    retrying until `timeout`; the answers."""
    targets = [(port, "tcp") for port in TCP_PORTS] + [(5353, "udp")]
    procs = [
        host.popen(
            "python3",
            "-c",
            PROBE,
            "127.0.0.1",
            str(port),
            proto,
            str(timeout),
            stdout=subprocess.PIPE,
        )
        for port, proto in targets
    ]
    return [proc.communicate(timeout=timeout + 10)[0].strip() for proc in procs]


def _proxy_pid(host: SimHost) -> int:
    out = host.sh("pgrep", "-f", f"pontoon.proxy --control {host.exec_root}/").stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def _metric(host: SimHost, kind: str) -> float:
    text = host.sh("curl", "-sf", "http://127.0.0.1:9323/metrics").stdout
    prefix = f'pontoon_proxy_restarts_total{{kind="{kind}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :])


def _workers(pid: int) -> list[int]:
    children = f"/proc/{pid}/task/{pid}/children"
    return [int(p) for p in Path(children).read_text().split()]


def test_killed_proxy_comes_back_without_a_daemon_restart(make_host):
    host = _start(make_host)
    assert all(answer.startswith("peer=") for answer in _probes(host, 10))
    daemon = host.daemon
    proxy = _proxy_pid(host)
    os.kill(proxy, signal.SIGKILL)
    killed = time.monotonic()
    answers = _probes(host, 2.0)
    took = time.monotonic() - killed
    assert all(answer.startswith("peer=") for answer in answers), answers
    assert took < 2.5, f"ports answered again only after {took:.2f}s"  # probes' own start-up
    assert host.daemon is daemon and daemon.poll() is None  # no daemon restart
    assert _proxy_pid(host) != proxy
    assert _metric(host, "proxy") == 1


def test_killed_worker_is_replaced(make_host):
    host = _start(make_host)
    assert all(answer.startswith("peer=") for answer in _probes(host, 10))
    proxy = _proxy_pid(host)
    workers = _workers(proxy)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    assert all(answer.startswith("peer=") for answer in _probes(host, 1.0))
    deadline = time.monotonic() + 2
    while len(set(_workers(proxy)) - {workers[0]}) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_workers(proxy)) == 2 and workers[0] not in _workers(proxy)
    assert _proxy_pid(host) == proxy
    assert _metric(host, "worker") == 1
    assert _metric(host, "proxy") == 0
