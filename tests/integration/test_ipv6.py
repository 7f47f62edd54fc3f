"""IPv6 and dual stack with real IPv6 packets (issue 13: networks, inspect,
firewall on both backends, DNS, bad input)."""

from __future__ import annotations

import pytest

from pontoon.lab import SimHost
from tests.integration.helpers import inspect

pytestmark = pytest.mark.integration

V6 = "fd00:50::/64"  # the dual-stack test network
V6_GW = "fd00:50::1"
UPLINK_HOST = "2001:db8:77::1"  # documentation prefix: only inside our namespaces
UPLINK_PEER = "2001:db8:77::2"

# Answers every TCP connection (both families) with the address the client came from.
ECHO6 = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('::', 7000)); s.listen(16)\n"
    "while True:\n"
    "    c, a = s.accept(); c.sendall(a[0].encode() + b'\\n'); c.close()\n"
)
# A TCP fetch of [ADDR]:PORT from inside a container, retried until the server is up.
TCP6_FETCH = (
    "import socket, sys, time\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
    "        print(s.recv(200).decode().strip()); break\n"
    "    except OSError:\n"
    "        time.sleep(0.1)\n"
    "else:\n"
    "    sys.exit(1)\n"
)


def ping6(host: SimHost, container: str, addr: str) -> bool:
    proc = host.cli("exec", container, "ping", "-6", "-c1", "-W1", addr, check=False)
    return proc.returncode == 0


def tcp6(host: SimHost, container: str, addr: str, port: int = 7000, check: bool = True) -> str:
    proc = host.cli(
        "exec", container, "python3", "-c", TCP6_FETCH, addr, str(port), check=check
    )  # fmt: skip
    return proc.stdout.strip() if proc.returncode == 0 else ""


def v6_of(host: SimHost, container: str, network: str) -> str:
    return inspect(host, container)["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]


def sleeper(host: SimHost, name: str, *flags: str) -> None:
    host.cli("run", "-d", "--name", name, *flags, "--", "sleep", "infinity")


def echo_server(host: SimHost, name: str, *flags: str) -> None:
    host.cli("run", "-d", "--name", name, *flags, "--", "python3", "-c", ECHO6)


# -- networks and inspect --------------------------------------------------------------


def test_dual_stack_network_ping_tcp_and_inspect(make_host):
    host = make_host()
    host.cli(
        "network", "create", "--ipv6", "--subnet", "10.60.0.0/24", "--subnet", V6,
        "--gateway", V6_GW, "--gateway", "10.60.0.1", "dual",
    )  # fmt: skip
    net = host.cli_json("network", "inspect", "dual")[0]
    assert net["EnableIPv6"] is True and net["EnableIPv4"] is True
    assert net["IPAM"]["Config"] == [
        {"Subnet": "10.60.0.0/24", "Gateway": "10.60.0.1"},
        {"Subnet": V6, "Gateway": V6_GW},
    ]
    echo_server(host, "srv", "--net", "dual", "--ip6", "fd00:50::99")
    sleeper(host, "cli", "--net", "dual")
    settings = inspect(host, "srv")["NetworkSettings"]
    dual = settings["Networks"]["dual"]
    assert (dual["GlobalIPv6Address"], dual["GlobalIPv6PrefixLen"], dual["IPv6Gateway"]) == (
        "fd00:50::99", 64, V6_GW,
    )  # fmt: skip
    assert dual["IPAddress"].startswith("10.60.0.")
    assert settings["GlobalIPv6Address"] == ""  # Docker's top-level fields: `bridge` only
    assert any(r.startswith(f"default via {V6_GW} dev eth0") for r in settings["Routes"])
    # Usable at once: no DAD wait (nodad), so the first ping already answers.
    assert ping6(host, "cli", "fd00:50::99")
    assert ping6(host, "cli", V6_GW)
    cli6 = v6_of(host, "cli", "dual")
    assert tcp6(host, "cli", "fd00:50::99") == cli6
    members = {m["Name"]: m for m in net_members(host, "dual")}
    assert members["srv"]["IPv6Address"] == "fd00:50::99/64"


def net_members(host: SimHost, name: str) -> list[dict]:
    return list(host.cli_json("network", "inspect", name)[0]["Containers"].values())


def test_ipv6_only_network_from_the_default_pool(make_host):
    host = make_host()
    host.cli("network", "create", "--ipv6", "--ipv4=false", "only6")
    net = host.cli_json("network", "inspect", "only6")[0]
    (config,) = net["IPAM"]["Config"]
    assert config["Subnet"].startswith("fd50:6f6e:746f:") and config["Subnet"].endswith("::/64")
    assert net["EnableIPv4"] is False
    sleeper(host, "a", "--net", "only6")
    sleeper(host, "b", "--net", "only6")
    settings = inspect(host, "a")["NetworkSettings"]["Networks"]["only6"]
    assert settings["IPAddress"] == "" and settings["GlobalIPv6Address"]
    assert ping6(host, "a", v6_of(host, "b", "only6"))
    assert ping6(host, "b", config["Gateway"])
    # The next network takes the next /64 of the pool.
    host.cli("network", "create", "--ipv6", "second")
    second = host.cli_json("network", "inspect", "second")[0]["IPAM"]["Config"]
    assert second[0]["Subnet"].startswith("172.")
    assert second[1]["Subnet"] != config["Subnet"]


def test_default_bridge_with_fixed_cidr_v6_and_forwarding(make_host):
    host = make_host(start=False)
    # An interface that takes router advertisements: turning IPv6 forwarding
    # on must not make the host drop them (accept_ra 1 -> 2).
    host.sh("ip", "link", "add", "uplink0", "type", "dummy")
    host.sh("sysctl", "-qw", "net.ipv6.conf.uplink0.accept_ra=1")
    host.start_daemon("--ipv6", "--fixed-cidr-v6", "fd00:17::/64")
    net = host.cli_json("network", "inspect", "bridge")[0]
    assert net["EnableIPv6"] is True
    assert {"Subnet": "fd00:17::/64", "Gateway": "fd00:17::1"} in net["IPAM"]["Config"]
    sleeper(host, "c1")
    assert inspect(host, "c1")["NetworkSettings"]["GlobalIPv6Address"].startswith("fd00:17::")
    assert ping6(host, "c1", "fd00:17::1")
    knobs = ("all.forwarding", "uplink0.accept_ra", "pontoon0.accept_ra")
    sysctl = host.sh("sysctl", "-n", *(f"net.ipv6.conf.{k}" for k in knobs)).stdout.split()
    assert sysctl == ["1", "2", "0"]
