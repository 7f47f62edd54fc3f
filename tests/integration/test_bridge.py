"""Single-host bridge networks with real packets (SPEC §1, §5)."""

from __future__ import annotations

import os

import pytest

from tests.integration.helpers import (
    ECHO_PEER,
    HOST_ADDR,
    OUTSIDE_ADDR,
    add_outside,
    can_ping,
    fetch,
    inspect,
    ip_of,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_containers_on_one_network_talk(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli(
        "run", "-d", "--name", "c1", "--net", "web", "--", "python3", "-m", "http.server", "80"
    )
    assert ip_of(host, "c1", "web") == "10.50.0.2"
    proc = host.cli(
        "run", "--rm", "--name", "c2", "--net", "web", "--",
        "sh", "-c", 'for i in $(seq 100); do curl -sf http://10.50.0.2/ && exit; sleep .1; done',
    )  # fmt: skip
    assert "Directory listing" in proc.stdout
    assert host.cli("ps", "-a", "--format", "json").stdout.count('"c2"') == 0  # --rm
    host.cli("run", "-d", "--name", "c3", "--net", "web", "--", "sleep", "infinity")
    assert can_ping(host, "c3", "10.50.0.2")


def test_run_passes_output_and_exit_status(make_host):
    host = make_host()
    proc = host.cli(
        "run", "--rm", "--name", "x", "--", "sh", "-c", "echo out; echo err >&2; exit 7",
        check=False,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")


def test_commands_that_end_at_once_start_and_exit(make_host):
    """`true` may be gone before its PID 1 is seen: still a run that
    started and ended with its status, never "failed to start"."""
    host = make_host()
    for i in range(15):
        assert host.cli("run", "--rm", "--name", f"t{i}", "--", "true").returncode == 0
    proc = host.cli("run", "--name", "f", "--", "false", check=False)
    assert proc.returncode == 1, proc.stderr
    assert host.cli_json("inspect", "f")[0]["State"]["ExitCode"] == 1


def test_container_path_is_the_commands_not_the_shims(make_host):
    """A container's PATH reaches its command only: the shim still finds the
    host's nsenter, unshare and mount (a PATH without them used to break the
    start), and none of the shim's own variables reach the command."""
    host = make_host()
    proc = host.cli(
        "run", "--rm", "--name", "p", "-e", "PATH=/nowhere", "--",
        "/bin/sh", "-c", 'echo "$PATH"; /usr/bin/env | /bin/grep -c "^PONTOON_" || true',
    )  # fmt: skip
    assert proc.stdout.split() == ["/nowhere", "0"]


def test_exec_status_and_namespaces(make_host):
    host = make_host()
    host.cli("run", "-d", "--name", "c1", "--hostname", "box1", "--", "sleep", "infinity")
    assert host.cli("exec", "c1", "sh", "-c", "exit 5", check=False).returncode == 5
    assert host.cli("exec", "c1", "hostname").stdout.strip() == "box1"
    assert host.cli("exec", "c1", "cat", "/etc/hostname").stdout.strip() == "box1"
    hosts = host.cli("exec", "c1", "cat", "/etc/hosts").stdout
    assert f"{ip_of(host, 'c1', 'bridge')}\tbox1 c1" in hosts
    # PID namespace: the command is PID 1 and sees only its own processes.
    ps = host.cli("exec", "c1", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '").stdout
    assert ps.strip() == "sleep infinity"


def test_outbound_nat_and_default_bridge(make_host):
    host = make_host()
    outside = add_outside(make_host, host)
    server = outside.popen("python3", "-c", ECHO_PEER)
    try:
        host.cli("run", "-d", "--name", "c1", "--", "sleep", "infinity")
        assert ip_of(host, "c1", "bridge").startswith("172.17.")
        seen = fetch(host, "c1", f"telnet://{OUTSIDE_ADDR}:7000")
        # MASQUERADE: the outside sees the host's address, not 172.17.x.
        assert seen.strip() == HOST_ADDR
    finally:
        server.kill()
        server.wait()


def test_internal_network_has_no_way_out(make_host):
    host = make_host()
    add_outside(make_host, host)
    host.cli("network", "create", "--internal", "--subnet", "10.60.0.0/24", "priv")
    host.cli("run", "-d", "--name", "a", "--net", "priv", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "b", "--net", "priv", "--", "sleep", "infinity")
    assert can_ping(host, "a", ip_of(host, "b", "priv"))
    assert not can_ping(host, "a", OUTSIDE_ADDR)
    routes = host.cli("exec", "a", "ip", "route").stdout
    assert "default" not in routes


def test_networks_are_isolated(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.51.0.0/24", "neta")
    host.cli("network", "create", "--subnet", "10.52.0.0/24", "netb")
    host.cli("run", "-d", "--name", "a", "--net", "neta", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "b", "--net", "netb", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "a2", "--net", "neta", "--", "sleep", "infinity")
    assert can_ping(host, "a", ip_of(host, "a2", "neta"))
    assert not can_ping(host, "a", ip_of(host, "b", "netb"))
    assert not can_ping(host, "b", ip_of(host, "a", "neta"))


def test_hot_plug_connect_and_disconnect(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.51.0.0/24", "neta")
    host.cli("network", "create", "--subnet", "10.52.0.0/24", "netb")
    host.cli("run", "-d", "--name", "a", "--net", "neta", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "b", "--net", "netb", "--", "sleep", "infinity")
    b_ip = ip_of(host, "b", "netb")
    assert not can_ping(host, "a", b_ip)

    host.cli("network", "connect", "--ip", "10.52.0.50", "netb", "a")
    addrs = host.cli("exec", "a", "ip", "-o", "-4", "addr", "show", "eth1").stdout
    assert "10.52.0.50/24" in addrs
    assert can_ping(host, "a", b_ip)
    assert "10.52.0.50\t" in host.cli("exec", "a", "cat", "/etc/hosts").stdout
    net = host.cli_json("network", "inspect", "netb")[0]
    assert {c["Name"] for c in net["Containers"].values()} == {"a", "b"}

    host.cli("network", "disconnect", "netb", "a")
    assert host.cli("exec", "a", "ip", "link", "show", "eth1", check=False).returncode != 0
    assert not can_ping(host, "a", b_ip)
    assert "10.52.0.50" not in host.cli("exec", "a", "cat", "/etc/hosts").stdout


def test_inspect_shows_both_veth_ends(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    info = inspect(host, "c1")
    ns = info["NetworkSettings"]
    assert os.path.exists(ns["SandboxKey"])
    ep = ns["Networks"]["web"]
    assert ep["IPAddress"] == "10.50.0.2" and ep["Gateway"] == "10.50.0.1"
    assert ep["MacAddress"] == "02:42:0a:32:00:02"
    assert ep["Interface"] == "eth0"
    host_link = host.sh("ip", "-o", "link", "show", ep["HostInterface"]).stdout
    assert host_link.startswith(f"{ep['HostIfindex']}:")
    assert ep["PeerIfindex"] == ep["HostIfindex"]  # what the seed found with ethtool -S
    assert info["State"]["Running"] and info["State"]["Pid"] > 0
    # The bridge port is the host-side veth.
    assert "master pt-" in host_link


def test_static_ip_and_ip_range(make_host):
    host = make_host()
    host.cli(
        "network", "create", "--subnet", "10.70.0.0/24", "--ip-range", "10.70.0.128/25", "r"
    )  # fmt: skip
    host.cli("run", "-d", "--name", "a", "--net", "r", "--", "sleep", "infinity")
    assert ip_of(host, "a", "r") == "10.70.0.129"
    host.cli("run", "-d", "--name", "b", "--net", "r", "--ip", "10.70.0.5", "--", "sleep", "inf")
    assert ip_of(host, "b", "r") == "10.70.0.5"
    dup = host.cli("run", "-d", "--name", "c", "--net", "r", "--ip", "10.70.0.5", "--", "true",
                   check=False)  # fmt: skip
    assert dup.returncode == 1 and "already in use" in dup.stderr


def test_subnets_avoid_host_routes_and_each_other(make_host):
    host = make_host("--default-address-pool", "base=10.80.0.0/16,size=24")
    add_outside(make_host, host)
    host.sh("ip", "route", "add", "10.80.0.0/24", "via", OUTSIDE_ADDR)
    first = host.cli_json("network", "inspect", host.cli("network", "create", "n1").stdout.strip())
    assert first[0]["IPAM"]["Config"][0]["Subnet"] == "10.80.1.0/24"
    host.cli("network", "create", "n2")
    assert host.cli_json("network", "inspect", "n2")[0]["IPAM"]["Config"][0]["Subnet"] == (
        "10.80.2.0/24"
    )


def test_container_exit_releases_network(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "short", "--net", "web", "--", "sh", "-c", "sleep 0.5; exit 3")
    veth = inspect(host, "short")["NetworkSettings"]["Networks"]["web"]["HostInterface"]

    def exited() -> bool:
        return inspect(host, "short")["State"]["Status"] == "exited"

    wait_for(exited, what="container exit")
    info = inspect(host, "short")
    assert info["State"]["ExitCode"] == 3
    assert host.sh("ip", "link", "show", veth, check=False).returncode != 0
    assert not list((host.exec_root / "netns").iterdir())
    # The address is free again: a fixed --ip on it succeeds.
    host.cli("run", "-d", "--name", "again", "--net", "web", "--ip", "10.50.0.2", "--", "true")


def test_rm_needs_force_for_running_and_kills_everything(make_host):
    host = make_host()
    host.cli("run", "-d", "--name", "c1", "--", "sh", "-c", "sleep 1000 & sleep 1000")
    pid = inspect(host, "c1")["State"]["Pid"]
    proc = host.cli("rm", "c1", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ")
    host.cli("rm", "-f", "c1")
    assert not os.path.exists(f"/proc/{pid}")
    assert host.cli("ps", "-a", "--format", "json").stdout.strip() == "[]"
    assert host.sh("ip", "-o", "link").stdout.count("veth") == 0


def mac_of(host, device: str) -> str:
    return host.sh("ip", "-br", "link", "show", "dev", device).stdout.split()[2]


def test_the_gateway_mac_stays_while_containers_come_and_go(make_host):
    """A bridge whose MAC is not set follows its lowest port's MAC: a container
    with a low veth MAC arriving and leaving would strand the others' neighbour
    entry for the gateway (no replies through it for tens of seconds)."""
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    bridge = host.cli_json("network", "inspect", "web")[0]["Bridge"]
    gateway_mac = mac_of(host, bridge)
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    host.cli("exec", "c1", "ping", "-c1", "-W1", "10.50.0.1")
    host.cli("run", "-d", "--name", "low", "--net", "web", "--", "sleep", "infinity")
    veth = inspect(host, "low")["NetworkSettings"]["Networks"]["web"]["HostInterface"]
    host.sh("ip", "link", "set", veth, "address", "02:00:00:00:00:01")  # lower than any
    assert mac_of(host, bridge) == gateway_mac
    host.cli("rm", "-f", "low")
    assert mac_of(host, bridge) == gateway_mac
    neigh = host.cli("exec", "c1", "ip", "neigh", "show", "10.50.0.1").stdout
    assert gateway_mac in neigh
    host.cli("exec", "c1", "ping", "-c1", "-W1", "10.50.0.1")
