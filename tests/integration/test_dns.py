"""Name resolution between containers (SPEC §1, §4; issue 5), with real queries."""

from __future__ import annotations

import sys
import time

import pytest

from tests.integration.helpers import OUTSIDE_ADDR, add_outside, can_ping, inspect, ip_of

pytestmark = pytest.mark.integration

# Runs inside a container with the venv's interpreter (containers share the
# host's filesystem): one query, prints "RCODE addr addr ..." and the time taken.
QUERY = r"""
import sys, time, dns.message, dns.query, dns.rcode, dns.rdatatype
name, rdtype, proto = sys.argv[1], sys.argv[2], sys.argv[3]
q = dns.message.make_query(name, rdtype, use_edns=0 if proto == "edns" else None)
t = time.monotonic()
try:
    send = dns.query.tcp if proto == "tcp" else dns.query.udp
    r = send(q, "127.0.0.11", timeout=5)
except Exception as exc:
    print("ERROR", type(exc).__name__, f"{time.monotonic() - t:.2f}s"); sys.exit(0)
items = [i.to_text() for rr in r.answer for i in rr]
print(dns.rcode.to_text(r.rcode()), *sorted(items), f"{time.monotonic() - t:.2f}s")
"""

# Garbage, a truncated header, a response, an over-long name, then a flood.
ABUSE = r"""
import socket, struct, dns.message
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
to = ("127.0.0.11", 53)
response = struct.pack(">HHHHHH", 1, 0x8000, 1, 0, 0, 0)
for junk in (b"", b"\x00", b"\x12\x34" + b"\xff" * 40, response):
    s.sendto(junk, to)
long = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
s.sendto(struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + long + b"\x00\x01\x00\x01", to)
q = dns.message.make_query("nobody-here.invalid", "A").to_wire()
for _ in range(3000):
    s.sendto(q, ("127.0.0.11", 53))
print("sent")
"""

# A DNS server of the container's own on 0.0.0.0:53 (Docker allows it), then a
# query to 127.0.0.11 while it is bound: the resolver must still answer it.
OWN_PORT_53 = r"""
import socket, sys, dns.message, dns.query
own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
own.bind(("0.0.0.0", 53))
r = dns.query.udp(dns.message.make_query(sys.argv[1], "A"), "127.0.0.11", timeout=5)
print(*[i.to_text() for rr in r.answer for i in rr])
"""

HOSTS = "203.0.113.7 example.test\n"


def query(host, container, name, rdtype="A", proto="udp"):
    proc = host.cli("exec", container, sys.executable, "-c", QUERY, name, rdtype, proto)
    words = proc.stdout.split()
    return words[:-1], float(words[-1].rstrip("s"))


@pytest.fixture
def cluster(make_host, tmp_path):
    """Host with an upstream resolver (dnsmasq) on the outside machine;
    a,b on net1 (b aliased `web`), c on net2, d on both, e on the default
    bridge, i on an internal network."""
    host = make_host(start=False)
    outside = add_outside(make_host, host)
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(HOSTS)
    dnsmasq = outside.popen(
        "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts_file}",
        "--local=/#/",  # answer NXDOMAIN for the rest, never forward
        f"--listen-address={OUTSIDE_ADDR}", "--bind-interfaces", "--user=root",
        f"--pid-file={tmp_path}/dnsmasq.pid",
    )  # fmt: skip
    host.start_daemon("--dns", OUTSIDE_ADDR)
    host.cli("network", "create", "--subnet", "10.61.0.0/24", "net1")
    host.cli("network", "create", "--subnet", "10.62.0.0/24", "net2")
    host.cli("network", "create", "--internal", "--subnet", "10.63.0.0/24", "priv")
    run = ["run", "-d", "--"]
    for name, nets in {"a": ["net1"], "b": ["net1"], "c": ["net2"], "d": ["net1", "net2"]}.items():
        extra = ["--network-alias", "web"] if name == "b" else []
        net_args = [arg for n in nets for arg in ("--net", n)]
        host.cli(*run[:2], "--name", name, *net_args, *extra, "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "e", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "i", "--net", "priv", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "i2", "--net", "priv", "--", "sleep", "infinity")
    yield host, outside, dnsmasq
    dnsmasq.kill()
    dnsmasq.wait()


def test_peers_resolve_on_shared_networks_only(cluster):
    host, _, _ = cluster
    b1 = ip_of(host, "b", "net1")
    assert query(host, "a", "b")[0] == ["NOERROR", b1]
    assert query(host, "a", "web")[0] == ["NOERROR", b1]  # alias
    assert query(host, "a", inspect(host, "b")["Id"][:12])[0] == ["NOERROR", b1]  # short ID
    assert query(host, "a", "c")[0][0] == "NXDOMAIN"  # not on a shared network
    # d is on both networks and sees both sides, at the right addresses.
    assert query(host, "d", "b")[0] == ["NOERROR", b1]
    assert query(host, "d", "c")[0] == ["NOERROR", ip_of(host, "c", "net2")]
    assert query(host, "c", "d")[0] == ["NOERROR", ip_of(host, "d", "net2")]
    # Through the C library as programs use it, and ping by name.
    assert host.cli("exec", "a", "getent", "hosts", "b").stdout.split()[0] == b1
    assert can_ping(host, "a", "b")


def test_other_types_reverse_and_tcp(cluster):
    host, _, _ = cluster
    b1 = ip_of(host, "b", "net1")
    assert query(host, "a", "b", "AAAA")[0] == ["NOERROR"]  # empty answer, not NXDOMAIN
    rev = ".".join(reversed(b1.split("."))) + ".in-addr.arpa"
    assert query(host, "a", rev, "PTR")[0] == ["NOERROR", "b."]
    assert query(host, "a", "b", "A", "tcp")[0] == ["NOERROR", b1]
    assert query(host, "a", "b", "A", "edns")[0] == ["NOERROR", b1]  # as Go and c-ares ask
    assert query(host, "a", "example.test", "A", "tcp")[0] == ["NOERROR", "203.0.113.7"]


def test_upstream_forwarding_and_failure(cluster):
    host, _, dnsmasq = cluster
    assert query(host, "a", "example.test")[0] == ["NOERROR", "203.0.113.7"]
    assert query(host, "a", "nothing.test")[0][0] == "NXDOMAIN"
    dnsmasq.kill()
    dnsmasq.wait()
    answer, took = query(host, "a", "example.test")
    assert answer == ["SERVFAIL"] and took < 4.0


def test_changes_are_seen_at_once(cluster):
    host, _, _ = cluster
    host.cli("run", "-d", "--name", "late", "--net", "net1", "--", "sleep", "infinity")
    assert query(host, "a", "late")[0] == ["NOERROR", ip_of(host, "late", "net1")]
    host.cli("network", "connect", "--alias", "db", "net1", "c")
    assert query(host, "a", "db")[0] == ["NOERROR", ip_of(host, "c", "net1")]
    host.cli("network", "disconnect", "net1", "c")
    assert query(host, "a", "db")[0][0] == "NXDOMAIN"
    host.cli("rm", "-f", "late")
    started = time.monotonic()
    assert query(host, "a", "late")[0][0] == "NXDOMAIN"
    assert time.monotonic() - started < 1.5


def test_default_bridge_and_internal_networks(cluster):
    host, _, _ = cluster
    resolv = host.cli("exec", "e", "cat", "/etc/resolv.conf").stdout
    assert "127.0.0.11" not in resolv and f"nameserver {OUTSIDE_ADDR}" in resolv
    assert host.cli("exec", "e", "getent", "hosts", "a", check=False).returncode != 0
    assert "127.0.0.11" in host.cli("exec", "a", "cat", "/etc/resolv.conf").stdout
    # Internal: peers resolve, the outside world does not (no DNS tunnel).
    assert query(host, "i", "i2")[0] == ["NOERROR", ip_of(host, "i2", "priv")]
    assert query(host, "i", "example.test")[0] == ["REFUSED"]


def test_bad_input_never_stops_the_resolver(cluster):
    host, _, _ = cluster
    out = host.cli("exec", "a", sys.executable, "-c", ABUSE).stdout
    assert "sent" in out
    # Others, and the abuser itself, are still served.
    assert query(host, "d", "b")[0][0] == "NOERROR"
    assert query(host, "a", "b")[0][0] == "NOERROR"


def test_resolver_comes_back_after_restart(cluster):
    import signal

    host, _, _ = cluster
    host.stop_daemon(signal.SIGKILL)
    host.start_daemon("--dns", OUTSIDE_ADDR)
    assert query(host, "a", "b")[0] == ["NOERROR", ip_of(host, "b", "net1")]


def test_port_53_stays_free_and_nothing_is_conntracked(cluster):
    host, _, _ = cluster
    out = host.cli("exec", "a", sys.executable, "-c", OWN_PORT_53, "b").stdout
    assert out.split() == [ip_of(host, "b", "net1")]
    # 127.0.0.11:53 is a stateless port rewrite, not a DNAT: the container's
    # own traffic (DNS, TCP, ICMP) leaves no connection-tracking entry.
    assert query(host, "a", "b", "A", "tcp")[0][0] == "NOERROR"
    assert can_ping(host, "a", "b")
    sandbox = inspect(host, "a")["NetworkSettings"]["SandboxKey"]
    count = host.sh("nsenter", f"--net={sandbox}", "cat",
                    "/proc/sys/net/netfilter/nf_conntrack_count").stdout  # fmt: skip
    assert count.strip() == "0"
