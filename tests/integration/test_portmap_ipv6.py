"""Port mapping over IPv6 (issue 13, requirement 4), with real packets: the
IPv4 matrix of test_portmap.py again over IPv6, both proxy modes x both
firewall backends x TCP and UDP, plus what only IPv6 has (`::1`, the `::`
binding of an IPv4-only container, bracketed host IPs)."""

from __future__ import annotations

import time

import pytest

from pontoon.lab import SimHost
from tests.integration.helpers import (
    HOST_ADDR,
    OUTSIDE_ADDR,
    add_outside,
    inspect,
    snapshot,
)
from tests.integration.portmap_helpers import probe, probe_from

pytestmark = pytest.mark.integration

MODES = ["--userland-proxy=true", "--userland-proxy=false"]
BACKENDS = ["nftables", "iptables"]
SETUPS = [(mode, backend) for backend in BACKENDS for mode in MODES]

HOST6 = "fd00:77::1"  # the host's LAN address (only inside our namespaces)
OUTSIDE6 = "fd00:77::2"

# Inside a container: TCP and UDP on the given ports over both families (one
# dual-stack socket each), answering "peer=<client address>".
SERVER = r"""
import socket, sys, threading
def bound(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); return s
def name(a):
    return a[0].removeprefix("::ffff:")
def tcp(port):
    s = bound(socket.SOCK_STREAM, port); s.listen(64)
    while True:
        c, a = s.accept()
        try:
            c.recv(100); c.sendall(f"peer={name(a)}\n".encode())
        finally:
            c.close()
def udp(port):
    s = bound(socket.SOCK_DGRAM, port)
    while True:
        d, a = s.recvfrom(100); s.sendto(f"peer={name(a)}\n".encode(), a)
for arg in sys.argv[1:]:
    port, proto = arg.split("/")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),)).start()
"""


def v6_of(host: SimHost, container: str, network: str) -> str:
    return inspect(host, container)["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]


def add_outside6(make_host, host: SimHost) -> SimHost:
    """An outside machine on the host's LAN, over IPv4 and IPv6."""
    outside = add_outside(make_host, host)
    host.sh("ip", "-6", "addr", "add", f"{HOST6}/64", "dev", "eth0", "nodad")
    outside.sh("ip", "-6", "addr", "add", f"{OUTSIDE6}/64", "dev", "eth0", "nodad")
    return outside


def dual_stack(host: SimHost, name: str, n: int) -> None:
    host.cli("network", "create", "--ipv6", "--subnet", f"10.{n}.0.0/24",
             "--subnet", f"fd00:{n}::/64", name)  # fmt: skip


@pytest.fixture(params=SETUPS, ids=lambda s: f"{s[1]}-{s[0].rsplit('-', 1)[1]}")
def published(request, make_host):
    """`web` on dual-stack `front` publishing 12580->80/tcp, 5353->53/udp and
    [::1]:8080->80 (proxy mode only); `web4` on IPv4-only `old` publishing
    12680->80/tcp and 5453->53/udp; `peer` beside web; `stranger` on `back`."""
    mode, backend = request.param
    proxy = mode.endswith("true")
    host = make_host(mode, "--firewall-backend", backend)
    outside = add_outside6(make_host, host)
    dual_stack(host, "front", 50)
    dual_stack(host, "back", 60)
    host.cli("network", "create", "--subnet", "10.70.0.0/24", "old")
    loopback = ["-p", "[::1]:8080:80"] if proxy else []
    host.cli("run", "-d", "--name", "web", "--net", "front", "-p", "12580:80",
             "-p", "5353:53/udp", *loopback, "--", "python3", "-c", SERVER, "80/tcp",
             "53/udp")  # fmt: skip
    host.cli("run", "-d", "--name", "web4", "--net", "old", "-p", "12680:80",
             "-p", "5453:53/udp", "--", "python3", "-c", SERVER, "80/tcp", "53/udp")  # fmt: skip
    host.cli("run", "-d", "--name", "peer", "--net", "front", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "stranger", "--net", "back", "--", "sleep", "infinity")
    return host, outside, proxy


def test_matrix_over_ipv6_tcp_and_udp(published):
    host, outside, proxy = published
    # 1. another host, to the host's IPv6 address: its address is kept (kernel
    #    DNAT in both modes), and UDP replies come from the address it used.
    assert probe(outside, HOST6, 12580) == f"peer={OUTSIDE6} from={HOST6}"
    assert probe(outside, HOST6, 5353, "udp") == f"peer={OUTSIDE6} from={HOST6}"
    # IPv4 still works beside it.
    assert probe(outside, HOST_ADDR, 12580) == f"peer={OUTSIDE_ADDR} from={HOST_ADDR}"
    # 2. the host itself, to its own IPv6 address and to ::1.
    assert probe(host, HOST6, 12580).startswith("peer=")
    assert probe(host, HOST6, 5353, "udp").endswith(f"from={HOST6}")
    if proxy:  # ::1 is the proxy's (netavark and CNI portmap cannot serve it)
        assert probe(host, "::1", 12580).startswith("peer=")
        assert probe(host, "::1", 8080).startswith("peer=")
        assert probe(host, "::1", 5353, "udp").endswith("from=::1")
    else:  # kernel mode: IPv6 loopback is not NATed; refused at once, as Docker
        assert "refused" in probe(host, "::1", 12580, timeout=1)
    # 3. a container on the same bridge (hairpin): its address is kept.
    peer6 = v6_of(host, "peer", "front")
    assert probe_from(host, "peer", HOST6, 12580) == f"peer={peer6} from={HOST6}"
    assert probe_from(host, "peer", HOST6, 5353, "udp") == f"peer={peer6} from={HOST6}"
    # ... and the container itself through its own published port.
    assert probe_from(host, "web", HOST6, 12580).startswith("peer=")
    # 4. a container on another network.
    assert probe_from(host, "stranger", HOST6, 12580).startswith("peer=")
    assert probe_from(host, "stranger", HOST6, 5353, "udp").endswith(f"from={HOST6}")
    # Isolation holds otherwise.
    assert "error" in probe_from(host, "stranger", v6_of(host, "web", "front"), 80)


def test_ipv6_clients_of_an_ipv4_only_container(published):
    host, outside, proxy = published
    assert probe(outside, HOST_ADDR, 12680) == f"peer={OUTSIDE_ADDR} from={HOST_ADDR}"
    ports = host.cli("port", "web4").stdout.splitlines()
    if proxy:
        # The proxy's `::` socket carries them to the container's IPv4 address.
        assert "80/tcp -> [::]:12680" in ports
        assert probe(outside, HOST6, 12680) == f"peer=10.70.0.1 from={HOST6}"
        assert probe(outside, HOST6, 5453, "udp") == f"peer=10.70.0.1 from={HOST6}"
        assert probe(host, "::1", 12680).startswith("peer=")
    else:
        # Kernel mode: no NAT between families, so no `::` binding (Docker
        # does the same); nothing answers.
        assert ports == ["53/udp -> 0.0.0.0:5453", "80/tcp -> 0.0.0.0:12680"]
        assert "error" in probe(outside, HOST6, 12680, timeout=1)


def test_loopback_ipv6_ports_stay_local(published):
    host, outside, proxy = published
    if not proxy:
        pytest.skip("[::1] is published in proxy mode only")
    assert probe(host, "::1", 8080).startswith("peer=")
    assert "error" in probe(outside, HOST6, 8080, timeout=1)
    assert "error" in probe_from(host, "peer", HOST6, 8080)


def test_port_inspect_and_topology_show_ipv6_bindings(published):
    host, _, proxy = published
    lines = host.cli("port", "web").stdout.splitlines()
    assert lines == [
        "53/udp -> 0.0.0.0:5353",
        "53/udp -> [::]:5353",
        "80/tcp -> 0.0.0.0:12580",
        "80/tcp -> [::]:12580",
        *(["80/tcp -> [::1]:8080"] if proxy else []),
    ]
    ports = inspect(host, "web")["NetworkSettings"]["Ports"]
    assert {"HostIp": "::", "HostPort": "12580"} in ports["80/tcp"]
    topo = host.cli_json("topology", "--format", "json")["host"]
    (web,) = [c for c in topo["containers"] if c["name"] == "web"]
    six = [p for p in web["ports"] if p["host"] == "[::]:12580"]
    assert six and six[0]["container_ip"] == v6_of(host, "web", "front")
    assert "[::]:12580" in host.cli("topology").stdout


def test_unpublish_flushes_conntrack_of_both_families(published):
    host, outside, _ = published
    assert probe(outside, HOST6, 5353, "udp").startswith("peer=")
    assert probe(outside, HOST_ADDR, 5353, "udp").startswith("peer=")
    assert "dport=5353" in host.sh("conntrack", "-L", "-f", "ipv6", "-p", "udp").stdout
    host.cli("rm", "-f", "web")
    assert "refused" in probe(outside, HOST6, 12580, timeout=1)
    for family in ("ipv4", "ipv6"):
        listed = host.sh("conntrack", "-L", "-f", family, "-p", "udp", check=False).stdout
        assert "dport=5353" not in listed, family
    rules = host.sh("nft", "list", "ruleset").stdout
    rules += host.sh("ip6tables-save", check=False).stdout
    assert "12580" not in rules and "5353" not in rules


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranges_and_ephemeral_ports_over_ipv6(make_host, backend):
    host = make_host("--userland-proxy=false", "--firewall-backend", backend)
    outside = add_outside6(make_host, host)
    dual_stack(host, "front", 50)
    servers = ["7000/tcp", "7001/tcp", "7002/tcp", "7100/tcp", "7200/udp"]
    host.cli("run", "-d", "--name", "r", "--net", "front", "-p", "9000-9002:7000-7002",
             "-p", "7100", "-p", "7200/udp", "-p", "[::]::7000",
             "--", "python3", "-c", SERVER, *servers)  # fmt: skip
    for port in (9000, 9001, 9002):
        assert probe(outside, HOST6, port) == f"peer={OUTSIDE6} from={HOST6}"
    lines = host.cli("port", "r").stdout.splitlines()
    for cport, proto in (("7100", "tcp"), ("7200", "udp")):
        mine = [ln.rsplit(" ", 1)[1] for ln in lines if ln.startswith(f"{cport}/")]
        # One host port number for both families, as Docker picks.
        ports = {int(binding.rsplit(":", 1)[1]) for binding in mine}
        assert len(mine) == 2 and len(ports) == 1, mine
        (port,) = ports
        assert 32768 <= port <= 60999
        assert probe(outside, HOST6, port, proto) == f"peer={OUTSIDE6} from={HOST6}"
        assert probe(outside, HOST_ADDR, port, proto).startswith("peer=")
    # `[::]::7000`: an ephemeral port on IPv6 only, beside 9000 of the range.
    (only6,) = [ln for ln in lines if ln.startswith("7000/") and "[::]" in ln and "9000" not in ln]
    assert probe(outside, HOST6, int(only6.rsplit(":", 1)[1])).startswith("peer=")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_on_one_address_only(make_host, backend):
    """`-p [HOST6]:…` answers there and not on the host's IPv4 address;
    `-p 0.0.0.0:…` stays IPv4 only."""
    host = make_host("--userland-proxy=true", "--firewall-backend", backend)
    outside = add_outside6(make_host, host)
    dual_stack(host, "front", 50)
    host.cli("run", "-d", "--name", "w", "--net", "front", "-p", f"[{HOST6}]:8443:80",
             "-p", "0.0.0.0:8444:80", "--", "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    assert probe(outside, HOST6, 8443) == f"peer={OUTSIDE6} from={HOST6}"
    assert "error" in probe(outside, HOST_ADDR, 8443, timeout=1)
    assert probe(outside, HOST_ADDR, 8444).startswith("peer=")
    assert "error" in probe(outside, HOST6, 8444, timeout=1)
    assert host.cli("port", "w").stdout.splitlines() == [
        f"80/tcp -> [{HOST6}]:8443",
        "80/tcp -> 0.0.0.0:8444",
    ]


@pytest.mark.parametrize("mode", MODES)
def test_bad_ipv6_port_input_is_one_error_and_leaves_nothing(make_host, mode):
    host = make_host(mode)
    add_outside6(make_host, host)
    dual_stack(host, "front", 50)
    host.cli("network", "create", "--subnet", "10.70.0.0/24", "old")
    host.cli("run", "-d", "--name", "a", "--net", "front", "-p", "12580:80", "--",
             "sleep", "infinity")  # fmt: skip
    before = snapshot(host)
    cases = {
        ("-p", "[::1:8080:80"): "invalid port specification",
        ("-p", "[::1]8080:80"): "invalid port specification",
        ("-p", "[]:8080:80"): "invalid port specification",
        ("-p", "[fe80::1%eth0]:8080:80"): "invalid host IP",
        ("-p", "[::ffff:10.0.0.1]:8080:80"): "use the IPv4 address",
        ("-p", "[2001:db8:dead::9]:8080:80"): "not an address of this host",
        ("-p", "[::]:12580:80"): "already in use",
        ("-p", f"[{HOST6}]:12580:80"): "already in use",
        ("-p", "8000:80", "-p", "[::]:8000:81"): "published twice",
    }
    if mode.endswith("false"):
        cases[("-p", "[::1]:8080:80")] = "userland proxy off"
        cases[("--net", "old", "-p", f"[{HOST6}]:8080:80")] = "network has no IPv6"
    for args, message in cases.items():
        net = () if "--net" in args else ("--net", "front")
        proc = host.cli("run", "-d", "--name", "b", *net, *args, "--", "sleep", "1",
                        check=False)  # fmt: skip
        assert proc.returncode == 1, (args, proc.stderr)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and message in errors[0], (args, proc.stderr)
        assert snapshot(host) == before, args


def test_trace_follows_ipv6_published_ports(published):
    host, outside, proxy = published
    web6 = v6_of(host, "web", "front")

    def trace(*args: str) -> dict:
        return host.cli_json("trace", "--json", *args)

    assert probe(outside, HOST6, 12580).startswith("peer=")  # the server is up
    r = trace("--from", f"netns:{outside.name}", "--to", f"[{HOST6}]:12580/tcp")
    assert r["verdict"] == "delivered", r
    assert r["probe"]["source"] == OUTSIDE6  # the client's address is kept
    assert r["nat"][0]["to"] == f"[{web6}]:80", r["nat"]
    steps = [s["step"] for s in r["nat"] if s["step"] != "conntrack"]
    assert steps == ["DNAT", "un-DNAT (reply)"]  # no SNAT on the kernel path
    if "inet pontoon" in host.sh("nft", "list", "tables").stdout:  # the nftables backend
        rules = [c["rule"] for w in r["netfilter"]["host"] for c in w["chains"]]
        assert "dnat ip6 to meta l4proto . th dport map @portmap6_any" in rules, rules
    assert r["path"][-1]["name"] == "web"
    if proxy:  # ::1 is the proxy's
        lo = trace("--from", "host", "--to", "[::1]:12580/tcp")
        assert lo["verdict"] == "delivered" and lo["proxy"] is not None, lo


@pytest.mark.parametrize("backend", BACKENDS)
def test_firewall_check_knows_ipv6_ports(make_host, backend):
    """The periodic check reads the IPv6 port rules back as its own (no
    repair for our own changes) and puts them back after a flush."""
    from tests.integration.test_firewall_repair import repairs

    host = make_host("--userland-proxy=false", "--firewall-backend", backend,
                     "--firewall-check-interval", "0.5")  # fmt: skip
    outside = add_outside6(make_host, host)
    dual_stack(host, "front", 50)
    host.cli("run", "-d", "--name", "web", "--net", "front", "-p", "12580:80",
             "-p", f"[{HOST6}]:5353:53/udp", "--", "python3", "-c", SERVER, "80/tcp",
             "53/udp")  # fmt: skip
    assert probe(outside, HOST6, 12580).startswith("peer=")
    host.cli("run", "-d", "--name", "other", "--net", "front", "-p", "12581:80",
             "--", "sleep", "infinity")  # fmt: skip
    host.cli("rm", "-f", "other")
    time.sleep(2)
    assert repairs(host) == 0
    flush = (
        ["nft", "flush", "ruleset"]
        if backend == "nftables"
        else ["ip6tables", "-t", "nat", "-F", "PONTOON"]
    )
    host.sh(*flush)
    assert probe(outside, HOST6, 12580, timeout=10) == f"peer={OUTSIDE6} from={HOST6}"
    assert probe(outside, HOST6, 5353, "udp") == f"peer={OUTSIDE6} from={HOST6}"
    assert repairs(host) >= 1


def test_a_long_range_flushes_conntrack_of_both_families(make_host):
    """More than 16 ports: the flush reads the tables through netlink, one
    dump per family, instead of running `conntrack -D` per port."""
    host = make_host("--userland-proxy=false")
    outside = add_outside6(make_host, host)
    dual_stack(host, "front", 50)
    host.cli("run", "-d", "--name", "r", "--net", "front", "-p", "6000-6019:6000-6019/udp",
             "--", "python3", "-c", SERVER, "6000/udp")  # fmt: skip
    assert probe(outside, HOST6, 6000, "udp") == f"peer={OUTSIDE6} from={HOST6}"
    assert probe(outside, HOST_ADDR, 6000, "udp").startswith("peer=")
    host.cli("rm", "-f", "r")
    for family in ("ipv4", "ipv6"):
        listed = host.sh("conntrack", "-L", "-f", family, "-p", "udp", check=False).stdout
        assert "dport=6000" not in listed, family
