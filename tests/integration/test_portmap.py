"""Port mapping: the reachability matrix of SPEC §6, with real packets."""

from __future__ import annotations

import pytest

from tests.integration.helpers import HOST_ADDR, OUTSIDE_ADDR, add_outside, inspect, ip_of
from tests.integration.portmap_helpers import SERVER, probe, probe_from

pytestmark = pytest.mark.integration

MODES = ["--userland-proxy=true", "--userland-proxy=false"]
BACKENDS = ["nftables", "iptables"]
SETUPS = [(mode, backend) for backend in BACKENDS for mode in MODES]


@pytest.fixture(params=SETUPS, ids=lambda s: f"{s[1]}-{s[0].rsplit('-', 1)[1]}")
def published(request, make_host):
    """A host with `web` publishing 12580->80/tcp, 5353->53/udp and
    127.0.0.1:8080->80/tcp; an outside machine; a second network."""
    mode, backend = request.param
    host = make_host(mode, "--firewall-backend", backend)
    outside = add_outside(make_host, host)
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "front")
    host.cli("network", "create", "--subnet", "10.60.0.0/24", "back")
    host.cli(
        "run", "-d", "--name", "web", "--net", "front",
        "-p", "12580:80", "-p", "5353:53/udp", "-p", "127.0.0.1:8080:80",
        "--", "python3", "-c", SERVER, "80/tcp", "53/udp",
    )  # fmt: skip
    host.cli("run", "-d", "--name", "peer", "--net", "front", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "stranger", "--net", "back", "--", "sleep", "infinity")
    return host, outside


def test_matrix_tcp_and_udp(published):
    host, outside = published
    peer_ip = ip_of(host, "peer", "front")
    stranger_ip = ip_of(host, "stranger", "back")
    # 1. another host, to the host's address: the client's address is kept.
    assert probe(outside, HOST_ADDR, 12580) == f"peer={OUTSIDE_ADDR} from={HOST_ADDR}"
    # UDP replies come from the address the client sent to.
    assert probe(outside, HOST_ADDR, 5353, "udp") == f"peer={OUTSIDE_ADDR} from={HOST_ADDR}"
    # 2. the host itself, to its own address and to 127.0.0.1.
    assert probe(host, HOST_ADDR, 12580).startswith("peer=")
    assert probe(host, "127.0.0.1", 12580).startswith("peer=")
    assert probe(host, "127.0.0.1", 8080).startswith("peer=")
    assert probe(host, HOST_ADDR, 5353, "udp").endswith(f"from={HOST_ADDR}")
    # 3. a container on the same bridge (hairpin): its address is kept.
    assert probe_from(host, "peer", HOST_ADDR, 12580) == f"peer={peer_ip} from={HOST_ADDR}"
    assert probe_from(host, "peer", HOST_ADDR, 5353, "udp").endswith(f"from={HOST_ADDR}")
    # ... and the container itself through its own published port.
    assert probe_from(host, "web", HOST_ADDR, 12580).startswith("peer=")
    # 4. a container on another network.
    assert probe_from(host, "stranger", HOST_ADDR, 12580).startswith("peer=")
    assert stranger_ip  # isolation is intact otherwise:
    assert "error" in probe_from(host, "stranger", ip_of(host, "web", "front"), 80)


def test_loopback_ports_stay_local(published):
    _, outside = published
    assert "error" in probe(outside, HOST_ADDR, 8080, timeout=1)
    # Even an outside machine that routes 127.0.0.0/8 to us gets nothing
    # (the route_localnet class of bugs, CVE-2020-8558).
    outside.sh("ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
    outside.sh("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
    outside.sh("ip", "route", "add", "127.0.0.1/32", "via", HOST_ADDR)
    assert "error" in probe(outside, "127.0.0.1", 8080, timeout=1)


def test_port_command_and_inspect(published):
    host, _ = published
    # Without a host IP a port is published on 0.0.0.0 and :: (Docker 27+);
    # in kernel mode the :: one only where the network has IPv6 (not here).
    proxy = host.cli_json("topology", "--format", "json")["host"]["host"]["userland_proxy"]
    lines = host.cli("port", "web").stdout.splitlines()
    assert lines == [
        "53/udp -> 0.0.0.0:5353",
        *(["53/udp -> [::]:5353"] if proxy else []),
        "80/tcp -> 0.0.0.0:12580",
        *(["80/tcp -> [::]:12580"] if proxy else []),
        "80/tcp -> 127.0.0.1:8080",
    ]
    ports = inspect(host, "web")["NetworkSettings"]["Ports"]
    assert ports["80/tcp"] == [
        {"HostIp": "0.0.0.0", "HostPort": "12580"},
        *([{"HostIp": "::", "HostPort": "12580"}] if proxy else []),
        {"HostIp": "127.0.0.1", "HostPort": "8080"},
    ]


def test_removal_refuses_and_forgets(published):
    host, outside = published
    assert probe(outside, HOST_ADDR, 5353, "udp").startswith("peer=")
    assert "dport=5353" in host.sh("conntrack", "-L", "-p", "udp").stdout
    host.cli("rm", "-f", "web")
    assert "refused" in probe(outside, HOST_ADDR, 12580, timeout=1)
    assert "dport=5353" not in host.sh("conntrack", "-L", "-p", "udp", check=False).stdout
    ruleset = host.sh("nft", "list", "ruleset").stdout
    assert "12580" not in ruleset and "5353" not in ruleset


def test_ranges_and_ephemeral_ports(make_host):
    host = make_host("--userland-proxy=false")
    add_outside(make_host, host)
    servers = ["7000/tcp", "7001/tcp", "7002/tcp", "7100/tcp"]
    host.cli("run", "-d", "--name", "r", "-p", "9000-9002:7000-7002", "-p", "7100",
             "--", "python3", "-c", SERVER, *servers)  # fmt: skip
    for port in (9000, 9001, 9002):
        assert probe(host, HOST_ADDR, port).startswith("peer=")
    ephemeral = [ln for ln in host.cli("port", "r").stdout.splitlines() if ln.startswith("7100")]
    port = int(ephemeral[0].rsplit(":", 1)[1])
    assert 32768 <= port <= 60999
    assert probe(host, HOST_ADDR, port).startswith("peer=")


def test_conflicts_are_clear_and_leave_nothing(make_host):
    from tests.integration.helpers import snapshot

    host = make_host("--userland-proxy=false")
    add_outside(make_host, host)
    host.cli("run", "-d", "--name", "a", "-p", "12580:80", "--", "sleep", "infinity")
    squatter = host.popen("python3", "-c", SERVER, "7777/tcp")
    try:
        probe(host, "127.0.0.1", 7777)  # wait until it listens
        before = snapshot(host)
        cases = {
            ("-p", "12580:80"): "already in use",
            ("-p", "7777:80"): "already in use",
            ("-p", "192.0.2.7:80:80"): "not an address of this host",
            ("-p", "0:80"): "1-65535",
            ("-p", "70000:80"): "1-65535",
            ("-p", "9000-9001:80-82"): "differ in length",
            ("-p", "80/icmp"): "protocol",
            ("-p", "8000:80", "-p", "8000:81"): "published twice",
            ("-p", "8000:80/sctp"): "sctp",
        }
        for args, message in cases.items():
            proc = host.cli("run", "-d", "--name", "b", *args, "--", "sleep", "1", check=False)
            assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
            assert snapshot(host) == before, args
    finally:
        squatter.kill()
        squatter.wait()


def test_published_ports_survive_a_daemon_restart(make_host):
    import signal

    host = make_host("--userland-proxy=false")
    outside = add_outside(make_host, host)
    host.cli("run", "-d", "--name", "web", "-p", "12580:80", "--",
             "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    assert probe(outside, HOST_ADDR, 12580).startswith("peer=")
    host.stop_daemon(signal.SIGKILL)
    assert probe(outside, HOST_ADDR, 12580).startswith("peer=")  # the kernel keeps serving
    host.start_daemon("--userland-proxy=false")
    assert probe(outside, HOST_ADDR, 12580).startswith("peer=")
    clash = host.cli("run", "-d", "--name", "b", "-p", "12580:80", "--", "true", check=False)
    assert clash.returncode == 1 and "already in use" in clash.stderr


ECHO = r"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(64)
def serve(c):
    while data := c.recv(100):
        c.sendall(data)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],)).start()
"""

# One connection through the proxy, used before and after a daemon restart.
LONG_CLIENT = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"before"); print(s.recv(100).decode(), flush=True)
time.sleep(float(sys.argv[2]))
s.sendall(b"after"); print(s.recv(100).decode(), flush=True)
"""


def test_one_proxy_for_every_port_survives_daemon_restarts(make_host):
    import signal
    import subprocess

    host = make_host("--userland-proxy=true")
    host.cli("run", "-d", "--name", "echo", "-p", "7000:7000", "-p", "9000-9049:9000-9049",
             "--", "python3", "-c", ECHO)  # fmt: skip
    ours = f"pontoon.proxy --control {host.exec_root}"
    proxies = host.sh("pgrep", "-f", ours).stdout.split()
    assert len(proxies) == 1  # one process for 51 ports (Docker: 51 docker-proxy)
    probe(host, "127.0.0.1", 7000)  # wait until the server listens
    client = host.popen("python3", "-c", LONG_CLIENT, "7000", "3", stdout=subprocess.PIPE)
    try:
        assert client.stdout.readline().strip() == "before"
        host.stop_daemon(signal.SIGKILL)
        host.start_daemon("--userland-proxy=true")
        assert client.stdout.readline().strip() == "after"  # the connection was not cut
    finally:
        client.kill()
        client.wait()
    assert host.sh("pgrep", "-f", ours).stdout.split() == proxies
    # The restarted daemon found the proxy's mappings intact: new connections work.
    out = host.sh("python3", "-c", LONG_CLIENT, "7000", "0").stdout.split()
    assert out == ["before", "after"]
    assert "9049" in host.sh("ss", "-ltn").stdout
