"""Daemon restarts: containers keep running and talking (SPEC §2, §10)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.helpers import can_ping, inspect, ip_of, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("via", ["nsenter", "ip-netns-exec"])
def test_sigkill_restart_keeps_traffic_flowing(make_host, via):
    host = make_host(via=via)
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    target = ip_of(host, "c1", "web")
    # 60 pings at 50 ms: about three seconds of traffic across the restart.
    host.cli("run", "-d", "--name", "pinger", "--net", "web", "--",
             "ping", "-i", "0.05", "-c", "60", target)  # fmt: skip
    host.stop_daemon(signal.SIGKILL)
    host.start_daemon(via=via)

    def pinger_done() -> bool:
        return inspect(host, "pinger")["State"]["Status"] == "exited"

    wait_for(pinger_done, timeout=20, what="pinger to finish")
    logs = host.cli("logs", "pinger").stdout
    assert " 0% packet loss" in logs, logs
    # The sandbox is still pinned where everyone can see it, and the allocation
    # survived: the next container does not get c1's address.
    sandbox = inspect(host, "c1")["NetworkSettings"]["SandboxKey"]
    assert os.stat(sandbox).st_dev != os.stat(os.path.dirname(sandbox)).st_dev
    host.cli("run", "-d", "--name", "c3", "--net", "web", "--", "sleep", "infinity")
    assert ip_of(host, "c3", "web") not in (target, ip_of(host, "pinger", "web") or "-")
    assert can_ping(host, "c3", target)


def test_restart_replugs_lost_interfaces_and_finishes_exited_containers(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "a", "--net", "web", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "b", "--net", "web", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "brief", "--net", "web", "--", "sleep", "infinity")
    a_veth = inspect(host, "a")["NetworkSettings"]["Networks"]["web"]["HostInterface"]
    brief = inspect(host, "brief")
    brief_veth = brief["NetworkSettings"]["Networks"]["web"]["HostInterface"]
    host.stop_daemon(signal.SIGKILL)

    host.sh("ip", "link", "del", a_veth)  # drift while the daemon is down
    os.kill(brief["State"]["Pid"], signal.SIGKILL)  # a container ends meanwhile
    wait_for(lambda: not os.path.exists(f"/proc/{brief['State']['Pid']}"))
    host.start_daemon()

    assert can_ping(host, "a", ip_of(host, "b", "web"))
    info = inspect(host, "brief")
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
    assert host.sh("ip", "link", "show", brief_veth, check=False).returncode != 0


def test_restart_removes_strays_it_owns(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.stop_daemon()
    # Leftovers as a daemon killed mid-way would leave them.
    host.sh("ip", "link", "add", "vethdeadbeef012", "type", "veth", "peer", "name", "tmpx")
    host.sh("ip", "link", "add", "pt-0123456789ab", "type", "bridge")
    host.start_daemon()
    links = host.sh("ip", "-o", "link").stdout
    assert "vethdeadbeef012" not in links and "pt-0123456789ab" not in links
    assert "web" in host.cli("network", "ls").stdout
