"""IPv6 out of Docker overlay containers (issues 12 and 13), with real
dockerds on etcd: `docker run --network OVERLAY` on a dual-stack pontoon
overlay reaches an IPv6 namespace beyond the host through pontoon_gwbridge,
masqueraded behind the host's address. The Docker network for
pontoon_gwbridge is made dual-stack from the start; one an earlier release
made IPv4-only is made again once no container names it."""

from __future__ import annotations

import ipaddress

import pytest

from pontoon.lab import cluster
from pontoon.lab.cluster import docker_dns
from tests.integration.test_docker_plugin import (
    HTTPD,
    _hostname,
    docker_attachments,
    docker_json,
    docker_lab,  # noqa: F401 (a fixture)
    fetch,
    pings,
    run,
    wait_until,
)
from tests.integration.test_overlay_egress6 import UPLINK_HOST, UPLINK_PEER, add_outside

pytestmark = pytest.mark.integration

GW = "pontoon_gwbridge"


def overlay(engines, name: str, *args: str) -> None:
    engines.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
                   "-o", "pontoon.driver=overlay", *args, name)  # fmt: skip


def gw_endpoint(engines, container: str) -> dict:
    """The container's endpoint on pontoon_gwbridge, once pontoon connected it."""

    def connected() -> bool:
        networks = docker_json(engines, "inspect", container)["NetworkSettings"]["Networks"]
        return GW in networks

    wait_until(connected, what=f"{container} on {GW}")
    return docker_json(engines, "inspect", container)["NetworkSettings"]["Networks"][GW]


def tcp6(engines, container: str, addr: str = UPLINK_PEER) -> str:
    """What the outside's echo server told the container: the source address
    it saw ("" when no connection was made)."""
    proc = engines.docker("exec", container, "sh", "-c",
                          f"for i in 1 2 3 4 5; do nc -w 2 {addr} 7000 </dev/null && "
                          "break; sleep 0.5; done", check=False)  # fmt: skip
    return proc.stdout.strip()


def default6(engines, container: str) -> str:
    return engines.docker("exec", container, "ip", "-6", "route", "show", "default").stdout


def subnet6_of(info: dict) -> dict:
    return next(c for c in info["IPAM"]["Config"] if ":" in c["Subnet"])


def test_docker_overlay_container_reaches_ipv6_outside(docker_lab, make_host):  # noqa: F811
    state, engines = docker_lab
    h1 = engines["h1"]
    outside = add_outside(make_host, h1.host)
    overlay(h1, "ov4", "--subnet", "10.203.1.0/24")
    overlay(h1, "ov6", "--ipv6", "--subnet", "10.203.2.0/24", "--subnet", "fd00:203:2::/64")

    # An IPv4-only overlay container first: the Docker network for
    # pontoon_gwbridge is made with both families all the same.
    run(h1, "c4", "ov4")
    gw_endpoint(h1, "c4")
    info = docker_json(h1, "network", "inspect", GW)
    assert info["EnableIPv6"] is True
    v6 = subnet6_of(info)
    subnet6 = ipaddress.IPv6Network(v6["Subnet"])
    assert subnet6.subnet_of(ipaddress.IPv6Network("fd50:6f6e:746f::/48"))
    shown = h1.host.cli_json("network", "inspect", GW)[0]
    assert {c["Subnet"] for c in shown["IPAM"]["Config"]} == {
        c["Subnet"] for c in info["IPAM"]["Config"]
    }

    # A dual-stack overlay container, with plain `docker run --network`.
    run(h1, "d6", "ov6")
    ep = gw_endpoint(h1, "d6")
    assert ipaddress.IPv6Address(ep["GlobalIPv6Address"]) in subnet6
    assert ep["GlobalIPv6PrefixLen"] == 64 and ep["IPv6Gateway"] == v6["Gateway"]
    wait_until(lambda: v6["Gateway"] in default6(h1, "d6"), what="d6's IPv6 default route")
    assert f"default via {v6['Gateway']}" in default6(h1, "d6")
    # Real packets out: ICMPv6, and TCP whose source the outside sees as the host's.
    ping = h1.docker("exec", "d6", "ping", "-6", "-c2", "-W2", UPLINK_PEER, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert tcp6(h1, "d6") == UPLINK_HOST
    # Inside the overlay IPv6 goes on as before (no NAT), and IPv4 out still works.
    ov6 = docker_json(h1, "inspect", "d6")["NetworkSettings"]["Networks"]["ov6"]
    assert ov6["GlobalIPv6Address"].startswith("fd00:203:2::")
    h2_address = state.host("h2").address
    assert pings(h1, "d6", h2_address) and pings(h1, "c4", h2_address)
    # The IPv4-only overlay's container has IPv6 out too (the bridge is dual-stack).
    assert gw_endpoint(h1, "c4")["GlobalIPv6Address"]
    wait_until(lambda: tcp6(h1, "c4") == UPLINK_HOST, what="c4's IPv6 way out")

    # A port published by an overlay container answers over IPv6 too (its
    # pontoon_gwbridge endpoint has an IPv6 address).
    run(h1, "web6", "ov6", "-p", "8090:80", cmd=HTTPD)
    gw_endpoint(h1, "web6")
    assert fetch(outside, f"http://[{UPLINK_HOST}]:8090/") == _hostname(h1, "web6")

    # Restarts keep the way out: pontoond's, then dockerd's (d6 joins both
    # networks again at its start, IPv6 default route included).
    cluster.restart_daemon(state, "h1")
    assert tcp6(h1, "d6") == UPLINK_HOST
    run(h1, "d7", "ov6")
    assert gw_endpoint(h1, "d7")["GlobalIPv6Address"]
    wait_until(lambda: tcp6(h1, "d7") == UPLINK_HOST, what="d7's IPv6 way out")
    h1.stop_dockerd()
    h1.start_dockerd(*docker_dns(h1.host))
    h1.docker("start", "d6")
    assert docker_json(h1, "network", "inspect", GW)["Id"] == info["Id"]
    wait_until(
        lambda: tcp6(h1, "d6") == UPLINK_HOST, what="d6's IPv6 way out after dockerd's restart"
    )

    h1.docker("rm", "-f", "c4", "d6", "d7", "web6")
    h1.docker("network", "rm", "ov4", "ov6")
    wait_until(lambda: docker_attachments(h1) == [], what="nothing left")


def test_ipv4_only_docker_gateway_network_is_made_again(docker_lab, make_host):  # noqa: F811
    state, engines = docker_lab
    h1 = engines["h1"]
    host = h1.host
    add_outside(make_host, host)
    # As an earlier release left things: pontoon_gwbridge IPv4-only (a
    # pontoon container on an IPv4 overlay made it) and its Docker network too.
    host.cli("network", "create", "-d", "overlay", "--subnet", "10.204.1.0/24", "nat4")
    host.cli("run", "-d", "--name", "n4", "--net", "nat4", "--", "sleep", "infinity")
    gw = host.cli_json("network", "inspect", GW)[0]
    (v4,) = [c["Subnet"] for c in gw["IPAM"]["Config"]]
    h1.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
              "--ipam-opt", f"pontoon.network={gw['Id']}", "-o", f"pontoon.network={gw['Id']}",
              "--subnet", v4, GW)  # fmt: skip
    old = docker_json(h1, "network", "inspect", GW)
    assert old["EnableIPv6"] is False
    # A created container names it: it is kept (a new ID would break its start).
    h1.docker("create", "--name", "hold", "--network", GW, "pontoon/busybox", "sleep", "60")
    overlay(h1, "ov6", "--ipv6", "--subnet", "10.204.2.0/24", "--subnet", "fd00:204:2::/64")
    run(h1, "d1", "ov6")
    ep = gw_endpoint(h1, "d1")
    assert ep["NetworkID"] == old["Id"] and ep["IPAddress"] and not ep["GlobalIPv6Address"]
    assert pings(h1, "d1", state.host("h2").address)  # IPv4 out, as before
    # Once nothing names it, the next overlay container gets it made again, dual-stack.
    h1.docker("rm", "-f", "d1", "hold")
    run(h1, "d2", "ov6")
    ep = gw_endpoint(h1, "d2")
    new = docker_json(h1, "network", "inspect", GW)
    assert new["Id"] != old["Id"] and new["EnableIPv6"] is True
    assert ep["NetworkID"] == new["Id"] and ep["GlobalIPv6Address"]
    assert tcp6(h1, "d2") == UPLINK_HOST
    # The same pontoon network (grown in place): its pontoon container never noticed.
    after = host.cli_json("network", "inspect", GW)[0]
    assert after["Id"] == gw["Id"] and after["EnableIPv6"]
    assert pings_native(host, "n4", state.host("h2").address)

    h1.docker("rm", "-f", "d2")
    host.cli("rm", "-f", "n4")
    h1.docker("network", "rm", "ov6")
    wait_until(lambda: docker_attachments(h1) == [], what="nothing left")


def pings_native(host, container: str, target: str) -> bool:
    proc = host.cli("exec", container, "ping", "-c1", "-W2", target, check=False)
    return proc.returncode == 0
