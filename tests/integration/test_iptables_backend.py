"""The iptables backend against the real iptables-restore (SPEC §5, §6).

Everything happens in throwaway named network namespaces (ptt-<run>*): the
firewall code runs under `nsenter --net`, so the host's own rules are never
touched. The last tests send real packets through the chains."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pontoon.firewall.base import NetworkRules, PortRule
from pontoon.firewall.iptables import add_network_script, parse_save
from tests.conftest import new_host_name

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

NET_A = NetworkRules(bridge="br-a", subnets=("10.71.0.0/24",))
NET_B = NetworkRules(bridge="br-b", subnets=("10.72.0.0/24",))
NET_I = NetworkRules(bridge="br-i", subnets=("10.73.0.0/24",), internal=True)
UPLINK = "198.51.100"  # TEST-NET-2, only inside our namespaces
HOST_IP, OUTSIDE_IP = f"{UPLINK}.1", f"{UPLINK}.2"
WEB = PortRule("0.0.0.0", "tcp", 8080, "10.71.0.2", 80, "br-a")
DNS = PortRule(HOST_IP, "udp", 5353, "10.72.0.2", 53, "br-b")
SCTP = PortRule("0.0.0.0", "sctp", 9000, "10.72.0.2", 9000, "br-b")

# Calls IptablesFirewall methods given as JSON; prints what the last returned.
RUNNER = """
import json, sys
from pontoon.firewall.base import NetworkRules, PortRule
from pontoon.firewall.iptables import IptablesFirewall

def arg(a):
    if isinstance(a, list):
        return [arg(x) for x in a]
    if "subnets" in a:
        return NetworkRules(**{**a, "subnets": tuple(a["subnets"]), "routed": tuple(a["routed"])})
    return PortRule(**a)

proxy, calls = json.loads(sys.argv[1])
fw = IptablesFirewall(userland_proxy=proxy)
out = None
for method, args in calls:
    out = getattr(fw, method)(*[arg(a) for a in args])
sys.stdout.write(out if isinstance(out, str) else "")
"""

# Answers each TCP connection with the address it came from.
ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, a = s.accept(); c.sendall(a[0].encode()); c.close()
"""

CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.settimeout(float(sys.argv[3])); print(s.recv(100).decode())
except OSError as exc:
    print("ERR", exc); sys.exit(1)
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed: {proc.stderr}{proc.stdout}")
    return proc


def in_ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def _encode(a):
    return [_encode(x) for x in a] if isinstance(a, list) else dataclasses.asdict(a)


def firewall(ns: str, *calls: tuple, proxy: bool = True, check: bool = True):
    """Run IptablesFirewall(proxy).<method>(*args) for each call, inside `ns`."""
    payload = json.dumps([proxy, [[m, [_encode(a) for a in args]] for m, *args in calls]])
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", RUNNER, payload],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{calls} failed: {proc.stderr}")
    return proc


def save(ns: str) -> str:
    return in_ns(ns, "iptables-save").stdout


def chain(ns: str, table: str, name: str) -> list[str]:
    return [spec for c, spec in parse_save(save(ns)).rules.get(table, []) if c == name]


@pytest.fixture
def make_ns() -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = new_host_name()
        sh("ip", "netns", "add", name)
        made.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(made):
        sh("ip", "netns", "delete", name, check=False)


@pytest.fixture
def host(make_ns) -> str:
    """A namespace with three bridges (one for an internal network)."""
    ns = make_ns()
    for net, addr in ((NET_A, "10.71.0.1/24"), (NET_B, "10.72.0.1/24"), (NET_I, "10.73.0.1/24")):
        in_ns(ns, "ip", "link", "add", net.bridge, "type", "bridge")
        in_ns(ns, "ip", "addr", "add", addr, "dev", net.bridge)
        in_ns(ns, "ip", "link", "set", net.bridge, "up")
    return ns


# -- the rules as iptables-save shows them ----------------------------------------


@pytest.mark.parametrize("proxy", [True, False])
def test_sync_writes_docker_like_chains(host, proxy):
    firewall(host, ("sync", [NET_A, NET_I], [WEB, DNS]), proxy=proxy)
    text = save(host)
    output_jump = (
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PONTOON"
        if proxy
        else "-A OUTPUT -m addrtype --dst-type LOCAL -j PONTOON"
    )
    for line in [
        "-A PREROUTING -j PONTOON-GUARD",
        "-A PONTOON-GUARD -d 127.0.0.0/8 ! -i lo -j DROP",
        "-A FORWARD -j PONTOON-FORWARD",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j PONTOON",
        output_jump,
        "-A POSTROUTING -j PONTOON-POSTROUTING",
        "-A PONTOON -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.71.0.2:80",
        f"-A PONTOON -d {HOST_IP}/32 -p udp -m udp --dport 5353 "
        "-j DNAT --to-destination 10.72.0.2:53",
        "-A PONTOON -d 10.71.0.2/32 ! -i br-a -o br-a -p tcp -m tcp --dport 80 -j ACCEPT",
        "-A PONTOON-POSTROUTING -s 10.71.0.0/24 ! -o br-a -j MASQUERADE",
        "-A PONTOON-POSTROUTING -s 10.71.0.2/32 -d 10.71.0.2/32 -p tcp -m tcp --dport 80 "
        "-j MASQUERADE",
    ]:
        assert line in text.splitlines(), line
    assert chain(host, "filter", "PONTOON-FORWARD") == [
        "-j PONTOON-ISOLATION-STAGE-1",
        "-i br-a -j ACCEPT",
        "-i br-i -j ACCEPT",
        "-o br-a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-o br-a -j PONTOON",
        "-o br-i -j DROP",
    ]
    assert chain(host, "filter", "PONTOON-ISOLATION-STAGE-1") == [
        "-i br-a ! -o br-a -j PONTOON-ISOLATION-STAGE-2",
        "-i br-i ! -o br-i -j DROP",
    ]
    assert chain(host, "filter", "PONTOON-ISOLATION-STAGE-2") == [
        "-m conntrack --ctstate DNAT -j RETURN",
        "-o br-a -j DROP",
        "-o br-i -j DROP",
    ]
    loopback = [] if proxy else ["-s 127.0.0.0/8 -o br-a -j MASQUERADE"]
    loopback += [] if proxy else ["-s 127.0.0.0/8 -o br-i -j MASQUERADE"]
    assert chain(host, "nat", "PONTOON-POSTROUTING")[: len(loopback) + 2] == [
        *loopback,
        "! -s 10.71.0.0/24 -o br-a -j RETURN",
        "! -s 10.73.0.0/24 -o br-i -j RETURN",
    ]
    # What we write is what iptables-save prints: adding again finds it all.
    for net in (NET_A, NET_I):
        assert add_network_script(net, proxy, parse_save(text)) == ""
    dump = firewall(host, ("dump",), proxy=proxy).stdout
    assert dump.splitlines()[0] == "*raw" and "-A FORWARD -j PONTOON-FORWARD" in dump
    assert ":INPUT" not in dump and ":FORWARD" not in dump


def test_sync_again_is_a_fixpoint_and_switches_mode(host):
    firewall(host, ("sync", [NET_A, NET_B], [WEB]), proxy=True)
    first = save(host)
    firewall(host, ("sync", [NET_A, NET_B], [WEB]), proxy=True)
    assert _rules(save(host)) == _rules(first)
    firewall(host, ("sync", [NET_A], []), proxy=False)
    jumps = [line for line in save(host).splitlines() if line.startswith("-A OUTPUT")]
    assert jumps == ["-A OUTPUT -m addrtype --dst-type LOCAL -j PONTOON"]
    assert "br-b" not in save(host)
    assert "8080" not in save(host)


def _rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def _tables(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in _rules(text):
        if line.startswith("*"):
            table = out.setdefault(line[1:], [])
        elif line != "COMMIT":
            table.append(line)
    return out


def test_add_and_remove_ports_and_networks(host):
    firewall(host, ("sync", [NET_A], []))
    firewall(host, ("add_network", NET_B), ("add_network", NET_I))
    assert chain(host, "filter", "PONTOON-FORWARD")[:4] == [
        "-j PONTOON-ISOLATION-STAGE-1",
        "-i br-i -j ACCEPT",
        "-i br-b -j ACCEPT",
        "-i br-a -j ACCEPT",
    ]
    assert chain(host, "filter", "PONTOON-FORWARD")[-1] == "-o br-i -j DROP"
    firewall(host, ("add_network", NET_B))  # again: no change
    assert sum("br-b" in line for line in save(host).splitlines()) == 7

    firewall(host, ("add_ports", [WEB, DNS, SCTP]))
    nat = chain(host, "nat", "PONTOON")
    assert nat[0].startswith(f"-d {HOST_IP}/32 -p udp")  # a given address goes first
    assert "-p sctp -m sctp --dport 9000 -j DNAT --to-destination 10.72.0.2:9000" in nat
    assert len(chain(host, "filter", "PONTOON")) == 3
    firewall(host, ("add_ports", [WEB]))  # already published: no change
    assert len(chain(host, "filter", "PONTOON")) == 3

    firewall(host, ("remove_ports", [WEB, SCTP]))
    assert [s.split()[-1] for s in chain(host, "nat", "PONTOON")] == ["10.72.0.2:53"]
    assert chain(host, "filter", "PONTOON") == [
        "-d 10.72.0.2/32 ! -i br-b -o br-b -p udp -m udp --dport 53 -j ACCEPT"
    ]
    firewall(host, ("remove_ports", [WEB, SCTP, DNS]))  # missing ones are fine
    assert chain(host, "nat", "PONTOON") == chain(host, "filter", "PONTOON") == []
    assert not [s for s in chain(host, "nat", "PONTOON-POSTROUTING") if "/32" in s]

    firewall(host, ("remove_network", NET_B), ("remove_network", NET_I))
    firewall(host, ("remove_network", NET_B))  # already gone: fine
    text = save(host)
    assert "br-b" not in text and "br-i" not in text and "-i br-a -j ACCEPT" in text


def test_teardown_leaves_nothing_of_ours_and_everything_else(host):
    in_ns(host, "iptables", "-P", "FORWARD", "DROP")
    in_ns(host, "iptables", "-N", "SOMEONE-ELSE")
    in_ns(host, "iptables", "-A", "SOMEONE-ELSE", "-j", "RETURN")
    in_ns(host, "iptables", "-A", "FORWARD", "-j", "SOMEONE-ELSE")
    in_ns(host, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "up0", "-j", "MASQUERADE")
    before = _tables(save(host))
    firewall(host, ("sync", [NET_A, NET_B, NET_I], [WEB, DNS]), proxy=False)
    assert ":FORWARD DROP [0:0]" in save(host)  # policy untouched
    firewall(host, ("teardown",))
    after = _tables(save(host))
    assert "PONTOON" not in save(host)
    # Tables the sync created stay (empty, policy ACCEPT): compare what was there.
    assert {t: after[t] for t in before} == before
    firewall(host, ("teardown",))  # nothing left to remove: fine
    assert firewall(host, ("dump",)).stdout == ""


# -- packets ------------------------------------------------------------------------


@pytest.fixture
def topology(make_ns, host) -> Iterator[dict]:
    """`host` with an uplink to `outside` and one container per bridge."""
    procs: list[subprocess.Popen] = []
    ns = {"host": host, "outside": make_ns()}
    in_ns(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh(
        "ip",
        "-n",
        host,
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "eth0",
        "netns",
        ns["outside"],
    )
    in_ns(host, "ip", "addr", "add", f"{HOST_IP}/24", "dev", "up0")
    in_ns(host, "ip", "link", "set", "up0", "up")
    in_ns(ns["outside"], "ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
    in_ns(ns["outside"], "ip", "link", "set", "eth0", "up")
    for key, net, ip in (
        ("a", NET_A, "10.71.0.2"),
        ("b", NET_B, "10.72.0.2"),
        ("i", NET_I, "10.73.0.2"),
    ):
        c = ns[key] = make_ns()
        gw = net.subnets[0].replace(".0/24", ".1")
        sh("ip", "-n", host, "link", "add", f"v{key}", "type", "veth", "peer", "eth0", "netns", c)
        in_ns(host, "ip", "link", "set", f"v{key}", "master", net.bridge, "up")
        # As the daemon does: with br_netfilter, a hairpin goes back out this port.
        in_ns(host, "ip", "link", "set", f"v{key}", "type", "bridge_slave", "hairpin", "on")
        in_ns(c, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        in_ns(c, "ip", "link", "set", "eth0", "up")
        in_ns(c, "ip", "route", "add", "default", "via", gw)
    for where, port in (("a", 80), ("b", 80), ("outside", 7000)):
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns[where], sys.executable, "-c", ECHO_SERVER, str(port)]
            )
        )
    try:
        yield ns
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def connect(ns: str, addr: str, port: int, expect_ok: bool = True) -> str | None:
    """The address the server saw us come from; None if we could not connect."""
    deadline = time.monotonic() + (10 if expect_ok else 0)
    while True:
        proc = in_ns(ns, sys.executable, "-c", CLIENT, addr, str(port), "1", check=False)
        if proc.returncode == 0:
            return proc.stdout.strip()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


@pytest.mark.parametrize("proxy", [True, False])
def test_packets_take_the_same_paths_as_with_nftables(topology, proxy):
    ns = topology
    host = ns["host"]
    in_ns(host, "sysctl", "-qw", "net.ipv4.conf.br-a.route_localnet=1")  # the driver's job
    # Built up step by step, so the order incremental changes keep is what is tested.
    firewall(host, ("sync", [NET_A], []), proxy=proxy)
    firewall(host, ("add_network", NET_B), ("add_network", NET_I), proxy=proxy)
    firewall(host, ("add_ports", [WEB]), proxy=proxy)

    # 1. Another host, to the host's address: the client's source is kept.
    assert connect(ns["outside"], HOST_IP, 8080) == OUTSIDE_IP
    # Egress is masqueraded; same network reaches its own published port (self hairpin).
    assert connect(ns["a"], OUTSIDE_IP, 7000) == HOST_IP
    assert connect(ns["a"], HOST_IP, 8080) == "10.71.0.1"
    # 4. Another network, through the published port: allowed, not masqueraded.
    assert connect(ns["b"], HOST_IP, 8080) == "10.72.0.2"
    # ... but not directly: networks are isolated.
    assert connect(ns["b"], "10.71.0.2", 80, expect_ok=False) is None
    assert connect(ns["a"], "10.72.0.2", 80, expect_ok=False) is None
    # The internal network reaches neither the outside nor published ports.
    assert connect(ns["i"], OUTSIDE_IP, 7000, expect_ok=False) is None
    assert connect(ns["i"], HOST_IP, 8080, expect_ok=False) is None
    # 2. The host itself, to its own address; to 127.0.0.1 only in kernel mode
    # (with the proxy, the proxy serves that).
    assert connect(host, HOST_IP, 8080) is not None
    if proxy:
        assert connect(host, "127.0.0.1", 8080, expect_ok=False) is None
    else:
        assert connect(host, "127.0.0.1", 8080) == "10.71.0.1"

    firewall(host, ("remove_ports", [WEB]), proxy=proxy)
    assert connect(ns["outside"], HOST_IP, 8080, expect_ok=False) is None
    firewall(host, ("remove_network", NET_A), proxy=proxy)
    assert connect(ns["a"], OUTSIDE_IP, 7000, expect_ok=False) is None  # no more NAT
    firewall(host, ("teardown",), proxy=proxy)
    assert "PONTOON" not in save(host)
