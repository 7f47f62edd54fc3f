"""IPv6 out of overlays (issue 13): an overlay endpoint's way out is its
attachment on pontoon_gwbridge, which gets an IPv6 subnet (from the default
IPv6 pool) once a dual-stack or IPv6-only overlay endpoint needs it; outbound
IPv6 is masqueraded, as Docker 27+ does for bridge networks. In a two-host
lab, on both firewall backends, with an "outside" namespace wired to h2."""

from __future__ import annotations

import ipaddress

import pytest

from pontoon.lab import SimHost, cluster, connect_hosts
from tests.conftest import new_lab_name
from tests.integration.portmap_helpers import PROBE
from tests.integration.test_ipv6 import ECHO6, tcp6
from tests.integration.test_overlay_ipv6 import Lab6

pytestmark = pytest.mark.integration

UPLINK_HOST = "2001:db8:78::1"  # documentation prefix: only inside our namespaces
UPLINK_PEER = "2001:db8:78::2"
_subnets = iter(range(170, 180))


def add_outside(make_host, host: SimHost) -> SimHost:
    """A namespace wired to `host` over IPv6 only (its own link `up0`),
    answering TCP [::]:7000 with the address each client came from."""
    peer = make_host(start=False)
    connect_hosts(host, peer, f"{UPLINK_HOST}/64", f"{UPLINK_PEER}/64", a_if="up0")
    peer.popen("python3", "-c", ECHO6)  # killed with the peer's namespace at teardown
    return peer


def gw_addresses(lab: Lab6, host: str, container: str, family: int) -> list[str]:
    """The global addresses of a family on the container's gateway-bridge
    interface (eth1: inspect lists only the networks asked for, as Docker's)."""
    out = lab.cli(host, "exec", container, "ip", "-o", f"-{family}", "addr", "show", "dev",
                  "eth1", "scope", "global").stdout  # fmt: skip
    return [line.split()[3] for line in out.splitlines()]


def default_route6(lab: Lab6, host: str, container: str) -> str:
    return lab.cli(host, "exec", container, "ip", "-6", "route", "show", "default").stdout.strip()


@pytest.fixture(params=["nftables", "iptables"])
def lab(request):
    state = cluster.up(new_lab_name(), 2, f"10.{next(_subnets)}.0.0/24",
                       ["--firewall-backend", request.param])  # fmt: skip
    try:
        yield Lab6(state)
    finally:
        cluster.down(state.name)


def test_dual_stack_overlay_reaches_ipv6_outside_masqueraded(lab, make_host):
    h2 = lab.h["h2"]
    add_outside(make_host, h2)
    # An IPv4-only overlay endpoint first: pontoon_gwbridge is made IPv4-only.
    lab.cli("h1", "network", "create", "-d", "overlay", "ov4")
    lab.cli("h1", "network", "create", "-d", "overlay", "--ipv6", "ov6")
    lab.cli("h2", "run", "-d", "--name", "c4", "--net", "ov4", "--", "sleep", "infinity")
    gw = h2.cli_json("network", "inspect", "pontoon_gwbridge")[0]
    assert [c["Subnet"] for c in gw["IPAM"]["Config"]] and not gw["EnableIPv6"]
    assert tcp6(h2, "c4", UPLINK_PEER, tries=3) == ""  # no IPv6 way out for it
    # The dual-stack endpoint: the bridge in use gets its IPv6 subnet in place.
    lab.cli("h2", "run", "-d", "--name", "d", "--net", "ov6", "--", "sleep", "infinity")
    gw = h2.cli_json("network", "inspect", "pontoon_gwbridge")[0]
    assert gw["EnableIPv6"]
    v6 = next(c for c in gw["IPAM"]["Config"] if ":" in c["Subnet"])
    subnet6 = ipaddress.IPv6Network(v6["Subnet"])
    assert subnet6.prefixlen == 64 and subnet6.subnet_of(
        ipaddress.IPv6Network("fd50:6f6e:746f::/48")
    )
    assert [ipaddress.IPv6Interface(a).ip in subnet6 for a in gw_addresses(lab, "h2", "d", 6)] == [
        True
    ]
    default6 = default_route6(lab, "h2", "d")
    assert f"default via {v6['Gateway']} dev eth1" in default6
    # Real packets: ICMPv6 and TCP to the outside, which sees h2's own address.
    assert lab.ping6("h2", "d", UPLINK_PEER, count=2)
    assert tcp6(h2, "d", UPLINK_PEER) == UPLINK_HOST
    # trace follows it through eth1 and the gateway bridge, from eth1's address.
    (eth1_6,) = gw_addresses(lab, "h2", "d", 6)
    out = lab.cli("h2", "trace", "--from", "d", "--to", f"[{UPLINK_PEER}]:7000/tcp").stdout
    assert out.startswith(f"trace tcp from d ({eth1_6.split('/')[0]}) to {UPLINK_PEER}")
    assert "bridge pontoon_gwbr" in out and "verdict: delivered" in out
    # IPv4 out still works for both, and the IPv4-only endpoint got no IPv6.
    switch = str(next(ipaddress.IPv4Network(lab.state.subnet).hosts()))
    assert lab.ping("h2", "d", switch) and lab.ping("h2", "c4", switch)
    assert not gw_addresses(lab, "h2", "c4", 6) and not default_route6(lab, "h2", "c4")
    # Inside the overlay, IPv6 goes on without NAT between hosts.
    lab.cli("h1", "run", "-d", "--name", "e", "--net", "ov6", "--", "python3", "-c", ECHO6)
    assert tcp6(h2, "d", lab.ip6("h1", "e", "ov6")) == lab.ip6("h2", "d", "ov6")
    # A restart keeps the grown bridge, its rules and the way out.
    cluster.restart_daemon(lab.state, "h2")
    assert h2.cli_json("network", "inspect", "pontoon_gwbridge")[0]["EnableIPv6"]
    lab.cli("h2", "run", "-d", "--name", "d2", "--net", "ov6", "--", "sleep", "infinity")
    assert tcp6(h2, "d", UPLINK_PEER) == UPLINK_HOST == tcp6(h2, "d2", UPLINK_PEER)


@pytest.mark.parametrize("proxy", ["true", "false"], ids=["proxy", "kernel"])
@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_ipv6_only_overlay_and_published_ipv6_port(make_host, backend, proxy):
    state = cluster.up(new_lab_name(), 2, f"10.{next(_subnets)}.0.0/24",
                       ["--firewall-backend", backend, f"--userland-proxy={proxy}"])  # fmt: skip
    try:
        lab = Lab6(state)
        h2 = lab.h["h2"]
        outside = add_outside(make_host, h2)
        lab.cli("h1", "network", "create", "-d", "overlay", "--ipv6", "--ipv4=false", "only6")
        lab.cli("h2", "run", "-d", "--name", "o", "--net", "only6", "-p", "8080:7000", "--",
                "python3", "-c", ECHO6)  # fmt: skip
        # Its gateway-bridge attachment has the overlay's family only.
        gw6 = gw_addresses(lab, "h2", "o", 6)
        assert gw6 and not gw_addresses(lab, "h2", "o", 4)
        assert tcp6(h2, "o", UPLINK_PEER) == UPLINK_HOST
        # Published through the gateway bridge over IPv6: the outside reaches
        # it by DNAT to the gateway-bridge address, its own address kept.
        probe = ("python3", "-c", PROBE, UPLINK_HOST, "8080", "tcp", "10")
        seen, came_from = outside.sh(*probe).stdout.split()
        assert came_from == f"from={UPLINK_HOST}"
        assert seen == UPLINK_PEER
        # The host itself, to its own address: the proxy's (or kernel's) path.
        assert h2.sh(*probe).stdout.split()[1] == f"from={UPLINK_HOST}"
    finally:
        cluster.down(state.name)
