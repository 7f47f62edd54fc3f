"""macvlan networks: containers sit on the parent's link and reach the other
machines there directly, with their own MACs, no bridge and no NAT."""

from __future__ import annotations

import pytest

from pontoon.lab import connect_hosts
from tests.integration.helpers import can_ping, inspect, snapshot

pytestmark = pytest.mark.integration

LAN = "203.0.113"  # TEST-NET-3: only ever inside our namespaces


@pytest.fixture
def lan(make_host):
    """A host whose eth0 is on a LAN with one neighbour (the LAN's router)."""
    host = make_host()
    neighbour = make_host(start=False)
    connect_hosts(host, neighbour, f"{LAN}.1/24", f"{LAN}.2/24")
    return host, neighbour


def create_lan_network(host, *extra: str) -> None:
    host.cli("network", "create", "-d", "macvlan", "-o", "parent=eth0",
             "--subnet", f"{LAN}.0/24", "--gateway", f"{LAN}.2",
             "--ip-range", f"{LAN}.128/25", *extra, "lan")  # fmt: skip


def test_macvlan_containers_reach_the_parents_link_directly(lan):
    host, neighbour = lan
    create_lan_network(host)
    host.cli("run", "-d", "--name", "m1", "--net", "lan", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "m2", "--net", "lan", "--", "sleep", "infinity")
    m1, m2 = inspect(host, "m1"), inspect(host, "m2")
    ip1 = m1["NetworkSettings"]["Networks"]["lan"]["IPAddress"]
    ip2 = m2["NetworkSettings"]["Networks"]["lan"]["IPAddress"]
    assert ip1.startswith(f"{LAN}.") and int(ip1.rsplit(".", 1)[1]) >= 128
    # The neighbour (another machine on the link) and the container see each
    # other at layer 2: the neighbour learns the container's own MAC.
    assert can_ping(host, "m1", f"{LAN}.2")
    neighbour.sh("ping", "-c1", "-W1", ip2)
    mac = m2["NetworkSettings"]["Networks"]["lan"]["MacAddress"]
    assert mac in neighbour.sh("ip", "neigh", "show", ip2).stdout
    # Bridge mode: two endpoints of one parent reach each other, by name too.
    assert can_ping(host, "m1", "m2")
    route = host.cli("exec", "m1", "ip", "route").stdout
    assert f"default via {LAN}.2 dev eth0" in route
    # No host device, no veth: the interface is a macvlan of eth0.
    assert "macvlan" in host.cli("exec", "m1", "ip", "-d", "link", "show", "eth0").stdout
    assert "veth" not in host.sh("ip", "-o", "link").stdout
    info = host.cli_json("network", "inspect", "lan")[0]
    assert (info["Driver"], info["Parent"], info["Mode"]) == ("macvlan", "eth0", "bridge")


def test_removing_macvlan_containers_and_network_leaves_nothing(lan):
    host, _ = lan
    clean = snapshot(host)
    create_lan_network(host)
    host.cli("run", "-d", "--name", "m1", "--net", "lan", "--", "sleep", "infinity")
    host.cli("rm", "-f", "m1")
    host.cli("network", "rm", "lan")
    assert snapshot(host) == clean


@pytest.mark.parametrize(
    "args, message",
    [
        (["-d", "macvlan", "lan2"], "macvlan networks need a parent interface"),
        (["-d", "macvlan", "-o", "parent=nope0", "lan2"], "parent interface 'nope0' does not"),
        (["-d", "macvlan", "-o", "parent=eth0", "-o", "macvlan_mode=weird", "lan2"],
         "invalid macvlan_mode 'weird'"),
        (["-d", "macvlan", "-o", "parent=eth0", "-o", "colour=red", "lan2"],
         "unknown macvlan network option 'colour'"),
    ],
)  # fmt: skip
def test_bad_macvlan_networks_are_refused(lan, args, message):
    host, _ = lan
    clean = snapshot(host)
    proc = host.cli("network", "create", *args, check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(host) == clean


def test_macvlan_refuses_published_ports(lan):
    host, _ = lan
    create_lan_network(host)
    clean = snapshot(host)
    proc = host.cli("run", "-d", "--name", "p", "--net", "lan", "-p", "8080:80", "--",
                    "sleep", "infinity", check=False)  # fmt: skip
    assert proc.returncode == 1 and "does not publish ports" in proc.stderr
    assert snapshot(host) == clean
