"""IPv6 and dual stack with real IPv6 packets (issue 13): networks and
inspect, the firewall on both backends, DNS, bad input with leak checks,
trace/topology/metrics, restart, macvlan, and the CNI plugin."""

from __future__ import annotations

import ipaddress
import re
import sys

import pytest

from pontoon.lab import SimHost, connect_hosts
from tests.integration.helpers import inspect, snapshot, wait_for
from tests.integration.test_cni_plugin import cni, plugin_conf

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
    "for _ in range(int(sys.argv[3])):\n"
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


def tcp6(host: SimHost, container: str, addr: str, port: int = 7000, tries: int = 100) -> str:
    """What the server at [addr]:port answered (the client's address as it
    saw it), or "" when no connection was made."""
    proc = host.cli(
        "exec", container, "python3", "-c", TCP6_FETCH, addr, str(port), str(tries), check=False
    )  # fmt: skip
    return proc.stdout.strip() if proc.returncode == 0 else ""


def add_uplink6(make_host, host: SimHost) -> SimHost:
    """A peer namespace wired to `host` over IPv6 (and IPv4), with an echo
    server on [::]:7000 telling each client its source address."""
    peer = make_host(start=False)
    connect_hosts(host, peer, "198.51.100.1/24", "198.51.100.2/24")
    # nodad: usable at once, as pontoon makes container addresses.
    host.sh("ip", "-6", "addr", "add", f"{UPLINK_HOST}/64", "dev", "eth0", "nodad")
    peer.sh("ip", "-6", "addr", "add", f"{UPLINK_PEER}/64", "dev", "eth0", "nodad")
    peer.popen("python3", "-c", ECHO6)  # killed with the peer's namespace at teardown
    return peer


BACKENDS = ["nftables", "iptables"]


def v6_of(host: SimHost, container: str, network: str) -> str:
    return inspect(host, container)["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]


def dual_stack(host: SimHost, name: str, v4: str, v6: str) -> None:
    """A network with an IPv4 and an IPv6 subnet."""
    host.cli("network", "create", "--ipv6", "--subnet", v4, "--subnet", v6, name)


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
    host.sh("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
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


# -- firewall, both backends --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolation_between_networks_over_ipv6(make_host, backend):
    host = make_host("--firewall-backend", backend)
    host.cli("network", "create", "--ipv6", "--subnet", "fd00:61::/64", "a")
    host.cli("network", "create", "--ipv6", "--ipv4=false", "--subnet", "fd00:62::/64", "b")
    sleeper(host, "a1", "--net", "a")
    sleeper(host, "a2", "--net", "a")
    echo_server(host, "a3", "--net", "a")
    echo_server(host, "b1", "--net", "b")
    assert ping6(host, "a1", v6_of(host, "a2", "a"))
    assert tcp6(host, "a1", v6_of(host, "a3", "a")) == v6_of(host, "a1", "a")
    # The host routes between its bridges (forwarding is on): only the rules stop it.
    b1 = v6_of(host, "b1", "b")
    assert not ping6(host, "a1", b1)
    assert tcp6(host, "a1", b1, tries=2) == ""
    assert not ping6(host, "b1", v6_of(host, "a2", "a"))
    # Each network's own gateway still answers.
    assert ping6(host, "b1", "fd00:62::1")


@pytest.mark.parametrize("backend", BACKENDS)
def test_internal_network_over_ipv6(make_host, backend):
    host = make_host("--firewall-backend", backend)
    add_uplink6(make_host, host)
    host.cli("network", "create", "--ipv6", "--subnet", "fd00:66::/64", "open")
    host.cli("network", "create", "--ipv6", "--ipv4=false", "--internal",
             "--subnet", "fd00:63::/64", "int6")  # fmt: skip
    sleeper(host, "o1", "--net", "open")
    sleeper(host, "i1", "--net", "int6")
    sleeper(host, "i2", "--net", "int6")
    assert tcp6(host, "o1", UPLINK_PEER) == UPLINK_HOST  # the way out works...
    assert ping6(host, "i1", v6_of(host, "i2", "int6"))
    assert tcp6(host, "i1", UPLINK_PEER, tries=2) == ""  # ...but not from int6
    assert not ping6(host, "i1", v6_of(host, "o1", "open"))
    assert not ping6(host, "o1", v6_of(host, "i1", "int6"))
    routes = inspect(host, "i1")["NetworkSettings"]["Routes"]
    assert not any(r.startswith("default") for r in routes)


@pytest.mark.parametrize("proxy", ["true", "false"], ids=["proxy", "kernel"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_masquerade_by_default_and_routed_on_request(make_host, backend, proxy):
    host = make_host("--firewall-backend", backend, f"--userland-proxy={proxy}")
    peer = add_uplink6(make_host, host)
    host.cli("network", "create", "--ipv6", "--subnet", "fd00:64::/64", "natted")
    host.cli("network", "create", "--ipv6", "--subnet", "fd00:65::/64",
             "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed", "routed")  # fmt: skip
    # Routed: the next hop routes the subnet back to the host.
    peer.sh("ip", "-6", "route", "add", "fd00:65::/64", "via", UPLINK_HOST)
    sleeper(host, "n1", "--net", "natted")
    sleeper(host, "r1", "--net", "routed")
    assert tcp6(host, "n1", UPLINK_PEER) == UPLINK_HOST  # masqueraded, as Docker 27+
    assert tcp6(host, "r1", UPLINK_PEER) == v6_of(host, "r1", "routed")  # no NAT
    dump = host.cli_json("network", "inspect", "routed")[0]["Options"]
    assert dump == {"com.docker.network.bridge.gateway_mode_ipv6": "routed"}


# -- DNS ----------------------------------------------------------------------------

# Asks 127.0.0.11 (the container's resolv.conf server) one question; prints the answers.
DIG = (
    "import sys, dns.message, dns.query\n"
    "q = dns.message.make_query(sys.argv[1], sys.argv[2])\n"
    "r = dns.query.udp(q, '127.0.0.11', timeout=2)\n"
    "print(' '.join(i.to_text() for rr in r.answer for i in rr))\n"
)
# A one-name upstream DNS server on [ADDR]:53: outside.test AAAA 2001:db8::99.
UPSTREAM6 = (
    "import socket, sys, dns.message, dns.rrset\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind((sys.argv[1], 53))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(4096); q = dns.message.from_wire(data)\n"
    "    r = dns.message.make_response(q)\n"
    "    name = q.question[0].name.to_text()\n"
    "    if name == 'outside.test.':\n"
    "        r.answer.append(dns.rrset.from_text(name, 60, 'IN', 'AAAA', '2001:db8::99'))\n"
    "    s.sendto(r.to_wire(), peer)\n"
)


def dig(host: SimHost, container: str, name: str, rdtype: str) -> list[str]:
    proc = host.cli("exec", container, sys.executable, "-c", DIG, name, rdtype)
    return proc.stdout.split()


def test_dns_aaaa_ptr_and_ipv6_upstream_for_an_ipv6_only_container(make_host):
    host = make_host(start=False)
    peer = add_uplink6(make_host, host)
    peer.popen(sys.executable, "-c", UPSTREAM6, UPLINK_PEER)
    host.start_daemon("--dns", UPLINK_PEER)  # an IPv6 upstream, reached from the host
    host.cli("network", "create", "--ipv6", "--ipv4=false", "--subnet", "fd00:67::/64", "dns6")
    sleeper(host, "s1", "--net", "dns6", "--network-alias", "web")
    sleeper(host, "s2", "--net", "dns6")
    s1 = v6_of(host, "s1", "dns6")
    assert dig(host, "s2", "s1", "AAAA") == [s1]
    assert dig(host, "s2", "web", "AAAA") == [s1]
    assert dig(host, "s2", "s1", "A") == []  # no IPv4 address: an empty answer
    reverse = ipaddress.ip_address(s1).reverse_pointer
    assert dig(host, "s2", reverse, "PTR") == ["s1."]
    # The C library's resolver, as programs use it: /etc/resolv.conf's
    # 127.0.0.11 is on the container's own loopback, which every container
    # has, IPv6-only ones too.
    assert host.cli("exec", "s2", "getent", "ahostsv6", "web").stdout.split()[0] == s1
    wait_for(lambda: dig(host, "s2", "outside.test", "AAAA") == ["2001:db8::99"],
             what="the IPv6 upstream's answer")  # fmt: skip


def test_dns_a_and_aaaa_on_a_dual_stack_network(make_host):
    host = make_host()
    dual_stack(host, "dual", "10.68.0.0/24", "fd00:68::/64")
    sleeper(host, "d1", "--net", "dual")
    sleeper(host, "d2", "--net", "dual")
    settings = inspect(host, "d1")["NetworkSettings"]["Networks"]["dual"]
    assert dig(host, "d2", "d1", "A") == [settings["IPAddress"]]
    assert dig(host, "d2", "d1", "AAAA") == [settings["GlobalIPv6Address"]]
    v4_ptr = ipaddress.ip_address(settings["IPAddress"]).reverse_pointer
    assert dig(host, "d2", v4_ptr, "PTR") == ["d1."]
    # A name on a name's own network: ping6 by name goes over IPv6.
    assert host.cli("exec", "d2", "ping", "-6", "-c1", "-W1", "d1", check=False).returncode == 0


# -- bad input ------------------------------------------------------------------------

BAD_COMMANDS = [
    ("run", "-d", "--name", "x", "--net", "dual", "--ip6", "fd00:99::5", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "dual", "--ip6", "fd00:50::1", "--", "true"),  # gw
    ("run", "-d", "--name", "x", "--net", "dual", "--ip6", "fd00:50::", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "dual", "--ip6", "10.60.0.9", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "dual", "--ip", "fd00:50::9", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "dual", "--ip6", "fd00:50::zz", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "v4only", "--ip6", "fd00:50::9", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "dual", "--ip6", "fd00:50::2", "--", "true"),  # taken
    ("network", "connect", "--ip6", "fd00:99::5", "dual", "c4"),
    ("network", "create", "--ipv6", "--subnet", "fd00:50::/48", "n"),  # overlaps dual
    ("network", "create", "--ipv6", "--subnet", "fd00:50::8000:0:0/66", "n"),  # inside dual
    ("network", "create", "--ipv6", "--subnet", "fd00:aa::1/64", "n"),  # host bits
    ("network", "create", "--ipv6", "--subnet", "fd00:aa::/127", "n"),  # too small
    ("network", "create", "--ipv6", "--subnet", "fd00:aa::/64", "--subnet", "fd00:ab::/64", "n"),
    ("network", "create", "--subnet", "fd00:aa::/64", "n"),  # IPv6 without --ipv6
    ("network", "create", "--ipv4=false", "n"),  # no family at all
    ("network", "create", "--ipv6", "--ipv4=false", "--subnet", "10.70.0.0/24", "n"),
    ("network", "create", "--ipv6", "--subnet", "fd00:aa::/64", "--gateway", "fd00:ab::1", "n"),
    ("network", "create", "--ipv6", "--subnet", "fd00:aa::/64", "--gateway", "fd00:aa::", "n"),
    ("network", "create", "--ipv6", "--subnet", "fd00:aa::/64", "--ip-range", "fd00:ab::/80", "n"),
    ("network", "create", "--ipv6", "--ipv4=maybe", "n"),
    ("network", "create", "--ipv6", "-o", "com.docker.network.bridge.gateway_mode_ipv6=x", "n"),
    ("network", "create", "--ipv6", "n1"),  # the IPv6 pool (two /64s) is used up
]


def test_ipv6_bad_input_is_one_error_line_and_leaves_nothing(make_host):
    # A small IPv6 pool: two /64s, both taken below.
    host = make_host("--default-address-pool", "base=fd00:ee::/63,size=64")
    dual_stack(host, "dual", "10.60.0.0/24", V6)
    host.cli("network", "create", "--subnet", "10.61.0.0/24", "v4only")
    host.cli("network", "create", "--ipv6", "--ipv4=false", "p1")
    host.cli("network", "create", "--ipv6", "--ipv4=false", "p2")
    sleeper(host, "c1", "--net", "dual", "--ip6", "fd00:50::2")
    sleeper(host, "c4", "--net", "v4only")
    before = snapshot(host)
    failures = []
    for args in BAD_COMMANDS:
        proc = host.cli(*args, check=False)
        lines = proc.stderr.splitlines()
        ok = proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: ")
        if not ok or proc.stdout:
            failures.append(f"{args}: rc={proc.returncode} out={proc.stdout!r} err={proc.stderr!r}")
        after = snapshot(host)
        if after != before:
            failures.append(f"{args} changed {[k for k in before if before[k] != after[k]]}")
            before = after
    assert not failures, "\n".join(failures)
    assert "IPv6 address pools" in host.cli("network", "create", "--ipv6", "n1",
                                             check=False).stderr  # fmt: skip


def test_daemon_refuses_bad_ipv6_flags(make_host):
    host = make_host(start=False)
    for flags in (["--fixed-cidr-v6", "fd00:17::/64"],  # without --ipv6
                  ["--ipv6", "--fixed-cidr-v6", "10.0.0.0/24"],
                  ["--ipv6", "--fixed-cidr-v6", "fd00:17::1/64"],
                  ["--default-address-pool", "base=fd00::/64,size=48"]):  # fmt: skip
        with pytest.raises(RuntimeError):
            host.start_daemon(*flags, timeout=5)


# -- trace, topology, metrics ---------------------------------------------------------


def trace(host: SimHost, *args: str) -> dict:
    return host.cli_json("trace", "--json", *args)


def test_trace_topology_and_metrics_show_ipv6_paths(make_host):
    host = make_host("--metrics-addr", "127.0.0.1:9399")
    host.cli("network", "create", "--ipv6", "--ipv4=false", "--subnet", "fd00:71::/64", "a6")
    host.cli("network", "create", "--ipv6", "--ipv4=false", "--subnet", "fd00:72::/64", "b6")
    dual_stack(host, "d", "10.73.0.0/24", "fd00:73::/64")
    sleeper(host, "a1", "--net", "a6")
    echo_server(host, "a2", "--net", "a6")
    sleeper(host, "b1", "--net", "b6")
    sleeper(host, "d1", "--net", "d")
    echo_server(host, "d2", "--net", "d")
    a2 = v6_of(host, "a2", "a6")
    assert tcp6(host, "a1", a2)  # the server is up
    # An IPv6-only network: its containers are traced at their IPv6 address.
    ping = trace(host, "--from", "a1", "--to", "a2")
    assert ping["verdict"] == "delivered" and ping["to"]["ip"] == a2
    tcp = trace(host, "--from", "a1", "--to", f"[{a2}]:7000/tcp")
    assert tcp["verdict"] == "delivered"
    assert tcp["probe"]["source"] == v6_of(host, "a1", "a6")
    kinds = [hop["kind"] for hop in tcp["path"]]
    assert kinds[0] == "container" and "bridge" in kinds
    # Isolation over IPv6, found in the inet table's per-bridge chain.
    dropped = trace(host, "--from", "a1", "--to", "b1")
    assert dropped["verdict"].startswith("dropped")
    assert dropped["dropped"]["table"] == "inet pontoon"
    assert dropped["dropped"]["rule"] == "oifname @bridges drop"
    # Dual stack: IPv4 unless -6 is asked.
    d2 = inspect(host, "d2")["NetworkSettings"]["Networks"]["d"]
    assert trace(host, "--from", "d1", "--to", "d2:7000")["to"]["ip"] == d2["IPAddress"]
    six = trace(host, "-6", "--from", "d1", "--to", "d2:7000")
    assert six["to"]["ip"] == d2["GlobalIPv6Address"] and six["verdict"] == "delivered"
    assert "pontoon_trace" not in host.sh("nft", "list", "tables").stdout
    # topology: subnets, gateways and endpoint addresses of both families.
    topo = host.cli_json("topology", "--format", "json")["host"]
    nets = {n["name"]: n for n in topo["networks"]}
    assert nets["d"]["subnet"] == "10.73.0.0/24, fd00:73::/64"
    endpoint = next(e for e in nets["d"]["endpoints"] if e["container"] == "d2")
    assert endpoint["ip"] == f"{d2['IPAddress']}, {d2['GlobalIPv6Address']}"
    bridge_link = next(x for x in topo["host"]["links"] if x["name"] == nets["d"]["bridge"])
    assert "fd00:73::1/64" in bridge_link["addresses"]
    # /metrics: addresses held, by family.
    metrics = host.sh("curl", "-s", "http://127.0.0.1:9399/metrics").stdout
    assert 'pontoon_endpoint_addresses{family="ipv6"} 5' in metrics
    assert 'pontoon_endpoint_addresses{family="ipv4"} 2' in metrics


# -- restart, macvlan ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_networks_survive_a_daemon_restart(make_host, backend):
    host = make_host("--firewall-backend", backend)
    peer = add_uplink6(make_host, host)
    host.cli("network", "create", "--ipv6", "--subnet", "fd00:81::/64", "a")
    host.cli("network", "create", "--ipv6", "--ipv4=false", "--subnet", "fd00:82::/64", "b")
    sleeper(host, "a1", "--net", "a")
    echo_server(host, "b1", "--net", "b")
    before = snapshot(host)
    host.stop_daemon()
    host.start_daemon("--firewall-backend", backend)
    after = snapshot(host)
    assert (after["addresses6"], after["routes6"]) == (before["addresses6"], before["routes6"])
    # The rules as the kernel lists them, without iptables-nft's packet counters.
    changed = set(map(_uncounted, before["nft"])) ^ set(map(_uncounted, after["nft"]))
    assert not changed, changed
    assert tcp6(host, "a1", UPLINK_PEER) == UPLINK_HOST  # still masqueraded
    assert not ping6(host, "a1", v6_of(host, "b1", "b"))  # still isolated
    assert peer.sh("ping", "-6", "-c1", "-W1", UPLINK_HOST, check=False).returncode == 0


def _uncounted(rule: str) -> str:
    return re.sub(r'\{"counter": \{[^}]*\}\}, ', "", rule)


def test_default_bridge_gets_ipv6_when_restarted_with_it(make_host):
    host = make_host()
    assert host.cli_json("network", "inspect", "bridge")[0]["EnableIPv6"] is False
    host.stop_daemon()
    host.start_daemon("--ipv6")
    config = host.cli_json("network", "inspect", "bridge")[0]["IPAM"]["Config"]
    assert config[0]["Subnet"] == "172.17.0.0/16"
    assert config[1]["Subnet"].startswith("fd50:6f6e:746f:")
    sleeper(host, "c1")
    assert ping6(host, "c1", config[1]["Gateway"])
    # In use: a restart without --ipv6 keeps it (and says so in the log).
    host.stop_daemon()
    host.start_daemon()
    assert host.cli_json("network", "inspect", "bridge")[0]["EnableIPv6"] is True
    assert "keeps its subnets" in host.log_tail(40)


def test_macvlan_ipv6_only_network_on_the_parents_lan(make_host):
    host = make_host()
    router = make_host(start=False)
    connect_hosts(host, router, "203.0.113.1/24", "203.0.113.2/24")
    router.sh("ip", "-6", "addr", "add", "2001:db8:55::2/64", "dev", "eth0", "nodad")
    host.cli("network", "create", "-d", "macvlan", "-o", "parent=eth0", "--ipv6", "--ipv4=false",
             "--subnet", "2001:db8:55::/64", "--gateway", "2001:db8:55::2", "lan6")  # fmt: skip
    sleeper(host, "m1", "--net", "lan6", "--ip6", "2001:db8:55::10")
    sleeper(host, "m2", "--net", "lan6")
    assert ping6(host, "m1", "2001:db8:55::2")  # the LAN's router, directly
    assert ping6(host, "m1", v6_of(host, "m2", "lan6"))
    assert router.sh("ping", "-6", "-c1", "-W1", "2001:db8:55::10", check=False).returncode == 0
    routes = inspect(host, "m1")["NetworkSettings"]["Routes"]
    assert any(r.startswith("default via 2001:db8:55::2 dev eth0") for r in routes)


# -- the CNI front end ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.0", "0.4.0"])
def test_cni_plugin_attaches_a_namespace_dual_stack(make_host, foreign_ns, version):
    host = make_host()
    dual_stack(host, "web", "10.69.0.0/24", "fd00:69::/64")
    echo_server(host, "srv", "--net", "web")
    ns = foreign_ns(host, "pod")
    conf = plugin_conf(host, "web", version)
    rc, result = cni(host, "ADD", conf, "pod1", ns)
    assert rc == 0, result
    ips = {ipaddress.ip_interface(ip["address"]).version: ip for ip in result["ips"]}
    assert ips[6]["address"].startswith("fd00:69::") and ips[6]["gateway"] == "fd00:69::1"
    assert ips[4]["address"].startswith("10.69.0.")
    if version == "0.4.0":
        assert (ips[4]["version"], ips[6]["version"]) == ("4", "6")
    assert {"dst": "::/0", "gw": "fd00:69::1"} in result["routes"]
    srv = v6_of(host, "srv", "web")
    reply = host.sh("nsenter", f"--net={ns}", "--", "python3", "-c", TCP6_FETCH, srv, "7000",
                    "100").stdout.strip()  # fmt: skip
    assert reply == ips[6]["address"].split("/")[0]
    rc, _ = cni(host, "DEL", conf, "pod1", ns)
    assert rc == 0


def test_ipv6_network_on_a_host_with_ipv6_off_is_one_clear_error(make_host):
    host = make_host(start=False)
    host.sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    host.start_daemon()
    before = snapshot(host)
    proc = host.cli("network", "create", "--ipv6", "n", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: IPv6 is disabled on this host")
    assert len(proc.stderr.splitlines()) == 1
    assert snapshot(host) == before
    host.cli("network", "create", "v4")  # IPv4 networks are unaffected
