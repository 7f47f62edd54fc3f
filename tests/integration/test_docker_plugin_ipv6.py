"""IPv6 and --aux-address in pontoon's Docker plugin, with a real dockerd
20.10 in lab hosts: `docker network create --ipv6`, containers with
GlobalIPv6Address and an IPv6 default route, `--ip6`, AAAA names, `-p` over
IPv6 (the host's `[::1]` and its LAN address, from another namespace) in both
proxy modes, addresses Docker's `--aux-address` keeps from containers, and a
dual-stack overlay between two Docker hosts."""

from __future__ import annotations

import time

import pytest

from tests.integration.helpers import HOST_ADDR
from tests.integration.test_docker_plugin import (
    HTTPD,
    _hostname,
    create_network,
    docker_attachments,
    docker_host,
    docker_json,
    docker_lab,  # noqa: F401 (a fixture)
    docker_networks,
    fetch,
    pings,
    run,
    wait_until,
)
from tests.integration.test_portmap_ipv6 import HOST6, add_outside6

pytestmark = pytest.mark.integration

SUBNET4, SUBNET6 = "10.78.0.0/24", "fd00:78::/64"


def on(engines, container: str, network: str) -> dict:
    return docker_json(engines, "inspect", container)["NetworkSettings"]["Networks"][network]


def on_networks(engines, container: str) -> set[str]:
    return set(docker_json(engines, "inspect", container)["NetworkSettings"]["Networks"])


def refused(engines, *args: str) -> str:
    """A `docker run` that must fail: its error (pontoon's reason, or Docker's)."""
    proc = engines.docker("run", "--network", *args, "pontoon/busybox", "true", check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


@pytest.mark.parametrize("userland_proxy", ["true", "false"])
def test_dual_stack_bridge(make_engine_host, make_host, userland_proxy):
    proxy = userland_proxy == "true"
    engines = docker_host(make_engine_host, f"--userland-proxy={userland_proxy}")
    host = engines.host
    outside = add_outside6(make_host, host)
    create_network(engines, "web", "--ipv6", "--subnet", SUBNET4, "--subnet", SUBNET6)
    subnets = [c["Subnet"] for c in host.cli_json("network", "inspect", "web")[0]["IPAM"]["Config"]]
    assert subnets == [SUBNET4, SUBNET6]
    assert docker_json(engines, "network", "inspect", "web")["EnableIPv6"] is True

    # -p without a host IP: both families; [::1] only where a proxy serves it.
    loopback6 = ["-p", "[::1]:8081:80"] if proxy else []
    run(engines, "c1", "web", "--ip6", "fd00:78::10", "-p", "8080:80", *loopback6,
        "-p", "[::]:8082:80", cmd=HTTPD)  # fmt: skip
    run(engines, "c2", "web")
    c1 = on(engines, "c1", "web")
    assert c1["GlobalIPv6Address"] == "fd00:78::10" and c1["GlobalIPv6PrefixLen"] == 64
    assert c1["IPv6Gateway"] == "fd00:78::1"
    route6 = engines.docker("exec", "c1", "ip", "-6", "route").stdout
    assert "default via fd00:78::1 dev eth0" in route6, route6
    c2_v6 = on(engines, "c2", "web")["GlobalIPv6Address"]
    assert c2_v6.startswith("fd00:78::")

    # Names resolve to AAAA; IPv6 packets between containers and to the host.
    engines.docker("exec", "c2", "ping", "-6", "-c1", "-W2", "c1")
    engines.docker("exec", "c1", "ping", "-6", "-c1", "-W2", c2_v6)
    aaaa = engines.docker("exec", "c2", "nslookup", "-type=AAAA", "c1").stdout
    assert "fd00:78::10" in aaaa, aaaa
    engines.docker("exec", "c1", "ping", "-6", "-c1", "-W2", HOST6)

    # Published ports over IPv6 from another namespace, and on the host's [::1].
    name = _hostname(engines, "c1")
    assert fetch(outside, f"http://[{HOST6}]:8080/") == name
    assert fetch(outside, f"http://{HOST_ADDR}:8080/") == name
    assert fetch(outside, f"http://[{HOST6}]:8082/") == name
    assert fetch(outside, f"http://{HOST_ADDR}:8082/", retries=0) == ""  # [::] is IPv6 only
    shown = sorted(host.cli("port", "c1").stdout.splitlines())
    expected = ["80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080", "80/tcp -> [::]:8082"]
    if proxy:
        assert fetch(host, "http://[::1]:8081/") == name
        assert fetch(outside, f"http://[{HOST6}]:8081/", retries=0) == ""  # loopback only
        expected.append("80/tcp -> [::1]:8081")
    else:
        # The kernel does not NAT IPv6 loopback: refused, in one line, nothing left.
        error = refused(engines, "web", "-p", "[::1]:8081:80")
        assert "pontoon: cannot publish on ::1" in error.splitlines()[0], error
    assert shown == sorted(expected), shown

    # Bad input: pontoon's reason where pontoon decides, and nothing is left.
    for ip6 in ("fd00:78::1", "fd00:78::10"):  # the gateway, an address taken
        error = refused(engines, "web", "--ip6", ip6)
        assert f"pontoon: IP address {ip6}" in error, error
    # Outside the subnet: Docker refuses before asking pontoon.
    assert "does not belong" in refused(engines, "web", "--ip6", "fd00:79::5")
    clash = engines.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
                           "--ipv6", "--subnet", "fd00:78:0:0:1::/80", "clash",
                           check=False)  # fmt: skip
    assert clash.returncode != 0 and "pontoon: subnet fd00:78:0:0:1::/80 overlaps" in clash.stderr
    assert "clash" not in docker_networks(engines)
    assert "clash" not in host.cli("network", "ls").stdout
    assert len(docker_attachments(engines)) == 2

    # A network without an IPv6 subnet takes one from pontoon's ULA pool.
    create_network(engines, "auto", "--ipv6")
    config = docker_json(engines, "network", "inspect", "auto")["IPAM"]["Config"]
    assert config[1]["Subnet"].startswith("fd50:6f6e:746f:"), config
    run(engines, "c3", "auto")
    assert on(engines, "c3", "auto")["GlobalIPv6Address"].startswith("fd50:6f6e:746f:")

    engines.docker("rm", "-f", "c1", "c2", "c3")
    engines.docker("network", "rm", "web", "auto")
    assert docker_attachments(engines) == []
    assert "web" not in host.cli("network", "ls").stdout
    links = host.sh("ip", "-o", "link").stdout
    assert "vpt" not in links and "veth" not in links and "pt-" not in links, links
    assert fetch(outside, f"http://[{HOST6}]:8080/", retries=0) == ""


def test_aux_addresses_are_never_handed_out(make_engine_host):
    engines = docker_host(make_engine_host)
    # A /29: .1 the gateway, .2 and .3 kept aside, .4 to .6 for containers.
    create_network(engines, "small", "--ipv6", "--subnet", "10.79.0.0/29",
                   "--subnet", "fd00:79::/125", "--aux-address", "router=10.79.0.2",
                   "--aux-address", "switch=10.79.0.3", "--aux-address", "r6=fd00:79::2",
                   "--aux-address", "s6=fd00:79::3")  # fmt: skip
    config = docker_json(engines, "network", "inspect", "small")["IPAM"]["Config"]
    assert config[0]["AuxiliaryAddresses"] == {"router": "10.79.0.2", "switch": "10.79.0.3"}
    for name in ("a1", "a2", "a3"):
        run(engines, name, "small")
    got = {on(engines, n, "small")["IPAddress"] for n in ("a1", "a2", "a3")}
    assert got == {"10.79.0.4", "10.79.0.5", "10.79.0.6"}, got
    got6 = {on(engines, n, "small")["GlobalIPv6Address"] for n in ("a1", "a2", "a3")}
    assert not got6 & {"fd00:79::2", "fd00:79::3"}, got6
    assert "no free IP address" in refused(engines, "small")
    for ip in ("10.79.0.2", "10.79.0.3"):
        assert f"pontoon: IP address {ip} is already in use" in refused(
            engines, "small", "--ip", ip
        )

    # Docker keeps the IPv4 address of an endpoint whose IPv6 one it refuses
    # itself: pontoon gives it back once no endpoint took it.
    engines.docker("rm", "-f", "a3")
    assert "does not belong" in refused(engines, "small", "--ip6", "fd00:80::5")
    deadline = time.monotonic() + 40
    while engines.docker("run", "-d", "--name", "a4", "--network", "small", "pontoon/busybox",
                         "sleep", "3600", check=False).returncode != 0:  # fmt: skip
        engines.docker("rm", "-f", "a4", check=False)
        assert time.monotonic() < deadline, "the address Docker forgot was never released"
        time.sleep(1)
    assert on(engines, "a4", "small")["IPAddress"] == "10.79.0.6"

    # Bad --aux-address: pontoon's reason (Docker checks only that it is in the subnet).
    bad = engines.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
                         "--subnet", "10.81.0.0/24", "--aux-address", "x=10.81.0.0", "bad",
                         check=False)  # fmt: skip
    assert bad.returncode != 0 and "pontoon: auxiliary address 10.81.0.0" in bad.stderr
    assert "bad" not in docker_networks(engines)

    # Removed, the network leaves nothing: made again, its aux addresses are free.
    engines.docker("rm", "-f", "a1", "a2", "a4")
    engines.docker("network", "rm", "small")
    create_network(engines, "small", "--subnet", "10.79.0.0/29")
    run(engines, "b1", "small", "--ip", "10.79.0.2")
    engines.docker("rm", "-f", "b1")
    engines.docker("network", "rm", "small")
    assert docker_attachments(engines) == []


def test_dual_stack_overlay_on_two_hosts(docker_lab):  # noqa: F811 (the fixture)
    state, engines = docker_lab
    h1, h2 = engines["h1"], engines["h2"]
    h1.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
              "-o", "pontoon.driver=overlay", "--ipv6", "--subnet", "10.202.1.0/24",
              "--subnet", "fd00:202:1::/64", "ov6")  # fmt: skip
    wait_until(lambda: "ov6" in docker_networks(h2), what="the overlay in h2's dockerd")
    assert docker_json(h2, "network", "inspect", "ov6")["EnableIPv6"] is True
    run(h1, "c1", "ov6")
    run(h2, "c2", "ov6", "--ip6", "fd00:202:1::22")
    c1_v6 = on(h1, "c1", "ov6")["GlobalIPv6Address"]
    assert c1_v6.startswith("fd00:202:1::") and c1_v6 != "fd00:202:1::22"
    assert on(h2, "c2", "ov6")["GlobalIPv6Address"] == "fd00:202:1::22"
    # IPv6 inside VXLAN, by name across hosts (AAAA from pontoon's resolver).
    wait_until(lambda: pings(h1, "c1", "fd00:202:1::22"), what="c1 -> c2 over IPv6")
    ping = h1.docker("exec", "c1", "ping", "-6", "-c1", "-W2", "c2", check=False)
    assert ping.returncode == 0 and "fd00:202:1::22" in ping.stdout, ping.stdout + ping.stderr
    ping = h2.docker("exec", "c2", "ping", "-6", "-c1", "-W2", "c1", check=False)
    assert ping.returncode == 0 and c1_v6 in ping.stdout, ping.stdout + ping.stderr
    assert pings(h2, "c2", "c1")  # and IPv4

    # The default route (pontoon_gwbridge) from the first moment the container
    # runs: pontoon connects a created container before it starts, and every
    # later start joins both networks before the process runs. (`docker run`
    # starts at once: pontoon may be late, docs/docker.md says why.)
    log_routes = "while true; do ip route >> /routes; echo --- >> /routes; sleep 0.05; done"
    cmd = ("sh", "-c", f"echo start >> /routes; {log_routes}")

    def first_routes(container: str) -> str:
        starts = h1.docker("exec", container, "cat", "/routes").stdout.split("start\n")
        return starts[-1].split("---")[0]

    h1.docker("create", "--stop-timeout", "1", "--name", "r1", "--network", "ov6",
              "pontoon/busybox", *cmd)  # fmt: skip
    wait_until(lambda: "pontoon_gwbridge" in on_networks(h1, "r1"), what="connected before start")
    h1.docker("start", "r1")
    assert "default via" in first_routes("r1"), first_routes("r1")
    h1.docker("restart", "-t", "0", "r1")
    assert "default via" in first_routes("r1"), first_routes("r1")
    assert pings(h1, "r1", state.host("h2").address)  # the way out

    h1.docker("rm", "-f", "c1", "r1")
    h2.docker("rm", "-f", "c2")
    h1.docker("network", "rm", "ov6")
    for each in (h1, h2):
        wait_until(lambda e=each: "ov6" not in docker_networks(e), what="removal")
        assert docker_attachments(each) == []
