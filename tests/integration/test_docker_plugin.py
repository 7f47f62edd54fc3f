"""pontoon as Docker's network and IPAM driver, with a real dockerd 20.10 in
a lab host: `docker network create -d pontoon --ipam-driver pontoon`,
containers from a busybox-static image, names, published ports seen from
another namespace, connect/disconnect, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from pontoon.client import Client
from pontoon.lab.cluster import docker_dns
from pontoon.lab.engines import EngineHost
from tests.integration.helpers import HOST_ADDR, add_outside

pytestmark = pytest.mark.integration

SUBNET = "10.77.0.0/24"
# Serves its hostname on ports 80 (in the foreground), 81 and 82.
HTTPD = ("sh", "-c", "hostname > /var/www/index.html && httpd -p 81 -h /var/www && "
         "httpd -p 82 -h /var/www && exec httpd -f -p 80 -h /var/www")  # fmt: skip
UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(512); s.sendto(b'pong ' + data, peer)\n"
)
UDP_ASK = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)\n"
    "for _ in range(20):\n"
    "    s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))\n"
    "    try:\n"
    "        print(s.recv(512).decode()); break\n"
    "    except OSError:\n"
    "        pass\n"
)


def docker_host(make_engine_host, *daemon_args: str) -> EngineHost:
    """A lab host with pontoond in plugin mode, then dockerd (pontoond first:
    dockerd picks its docker0 subnet around pontoon's default bridge)."""
    engines = make_engine_host(start=False)
    engines.host.start_daemon(
        "--docker-plugin", "--docker-host", engines.docker_host, "--log-level", "debug",
        *daemon_args,
    )  # fmt: skip
    engines.start_dockerd(*docker_dns(engines.host))
    engines.import_image("docker")
    return engines


def create_network(engines: EngineHost, name: str, *args: str) -> None:
    engines.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon", *args, name)
    deadline = time.monotonic() + 10  # pontoon makes it once dockerd tells the name
    while name not in engines.host.cli("network", "ls").stdout:
        assert time.monotonic() < deadline, f"pontoon never made network {name}"
        time.sleep(0.1)


def run(engines: EngineHost, name: str, network: str, *args: str, cmd=("sleep", "3600")) -> None:
    # A short stop timeout: `sleep` as PID 1 ignores SIGTERM, and dockerd stops
    # its containers when it stops.
    engines.docker("run", "-d", "--stop-timeout", "1", "--name", name, "--network", network, *args,
                   "pontoon/busybox", *cmd)  # fmt: skip


def docker_json(engines: EngineHost, *args: str) -> dict:
    return json.loads(engines.docker(*args).stdout)[0]


def docker_attachments(engines: EngineHost) -> list[dict]:
    return Client(engines.host.host_url).get("/attachments", owner_kind="docker")


def ports_of(engines: EngineHost, container: str) -> dict[str, int]:
    """container port/proto -> host port, as pontoon published them (Docker's
    `docker port` cannot show a remote driver's ports)."""
    name = docker_json(engines, "inspect", container)["Name"].lstrip("/")
    found = {}
    for att in docker_attachments(engines):
        if att["Owner"]["Name"] == name:
            for p in att["Ports"]:
                found[f"{p['container_port']}/{p['proto']}"] = p["host_port"]
    return found


def fetch(where, url: str, retries: int = 20) -> str:
    out = where.sh("curl", "-s", "--max-time", "1", "--retry", str(retries), "--retry-delay", "0",
                   "--retry-connrefused", url, check=False)  # fmt: skip
    return out.stdout.strip()


@pytest.mark.parametrize("userland_proxy", ["true", "false"])
def test_one_host_bridge_network(make_engine_host, make_host, userland_proxy):
    engines = docker_host(make_engine_host, f"--userland-proxy={userland_proxy}")
    host = engines.host
    outside = add_outside(make_host, host)
    create_network(engines, "web", "--subnet", SUBNET)
    net = host.cli_json("network", "inspect", "web")[0]
    assert net["IPAM"]["Config"][0]["Subnet"] == SUBNET
    docker_net = docker_json(engines, "network", "inspect", "web")
    assert docker_net["Driver"] == "pontoon" and docker_net["IPAM"]["Driver"] == "pontoon"

    # Fixed address and derived MAC; a given MAC; an alias.
    run(engines, "c1", "web", "--ip", "10.77.0.10", "--network-alias", "db",
        "-p", "8080:80", "-p", "127.0.0.1:8081:80", "-P", "--expose", "82",
        "-p", "9000-9001:80-81", cmd=HTTPD)  # fmt: skip
    run(engines, "c2", "web", "--mac-address", "02:00:00:00:00:22", "-p", "5353:53/udp")
    c1 = docker_json(engines, "inspect", "c1")["NetworkSettings"]["Networks"]["web"]
    assert c1["IPAddress"] == "10.77.0.10" and c1["Gateway"] == "10.77.0.1"
    assert c1["MacAddress"] == "02:42:0a:4d:00:0a"
    link = engines.docker("exec", "c2", "ip", "-o", "link", "show", "eth0").stdout
    assert "02:00:00:00:00:22" in link
    route = engines.docker("exec", "c1", "ip", "route").stdout
    assert "default via 10.77.0.1 dev eth0" in route

    # Names: Docker's own resolver answers for this engine's containers.
    engines.docker("exec", "c2", "ping", "-c1", "-W2", "c1")
    engines.docker("exec", "c2", "ping", "-c1", "-W2", "db")
    engines.docker("exec", "c1", "ping", "-c1", "-W2", "c2")
    # And the containers reach the outside through pontoon's NAT.
    engines.docker("exec", "c1", "ping", "-c1", "-W2", "198.51.100.2")

    # Published ports, through pontoon (Docker's FORWARD policy is DROP).
    name = _hostname(engines, "c1")
    assert fetch(outside, f"http://{HOST_ADDR}:8080/") == name
    ephemeral = ports_of(engines, "c1")["82/tcp"]  # -P: a host port of pontoon's choice
    assert fetch(outside, f"http://{HOST_ADDR}:{ephemeral}/") == name
    assert fetch(outside, f"http://{HOST_ADDR}:9001/") == name  # a range, one to one
    # `docker port` cannot show a remote driver's ports; `pontoon port` can.
    shown = host.cli("port", "c1").stdout.splitlines()
    unset = ["80/tcp -> {}:8080", "80/tcp -> {}:9000", "81/tcp -> {}:9001",
             f"82/tcp -> {{}}:{ephemeral}"]  # fmt: skip
    # No host IP: both families, as pontoon's own -p; the IPv6 twin only where
    # something serves it (the proxy: the network here is IPv4 only).
    families = ["0.0.0.0", "[::]"] if userland_proxy == "true" else ["0.0.0.0"]
    expected = [line.format(ip) for line in unset for ip in families]
    assert sorted(shown) == sorted([*expected, "80/tcp -> 127.0.0.1:8081"]), shown
    assert fetch(host, "http://127.0.0.1:8081/") == name
    assert fetch(outside, f"http://{HOST_ADDR}:8081/", retries=0) == ""  # loopback only
    pid = docker_json(engines, "inspect", "c2")["State"]["Pid"]
    echo = engines.popen("nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c", UDP_ECHO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        answer = outside.sh("python3", "-c", UDP_ASK, HOST_ADDR, "5353").stdout.strip()
        assert answer == "pong ping"
    finally:
        echo.kill()
        echo.wait()

    # connect / disconnect a second network.
    create_network(engines, "back")
    engines.docker("network", "connect", "back", "c2")
    addrs = engines.docker("exec", "c2", "ip", "-o", "-4", "addr").stdout
    assert "eth1" in addrs

    def c2_attachments() -> list[dict]:
        return [a for a in docker_attachments(engines) if a["Owner"]["Name"] == "c2"]

    # One owner, the container; its interfaces under the names Docker gave them.
    wait_until(lambda: sorted(a["Interface"] for a in c2_attachments()) == ["eth0", "eth1"],
               what="interface names")  # fmt: skip
    assert len({a["Owner"]["Id"] for a in c2_attachments()}) == 1
    engines.docker("network", "disconnect", "back", "c2")
    assert "eth1" not in engines.docker("exec", "c2", "ip", "-o", "-4", "addr").stdout
    engines.docker("network", "rm", "back")

    # Bad input: Docker shows pontoon's reason, nothing is left.
    for ip in ("10.77.0.1", "10.77.0.10"):  # the gateway, an address taken
        bad = engines.docker("run", "--network", "web", "--ip", ip, "pontoon/busybox", "true",
                             check=False)  # fmt: skip
        assert bad.returncode != 0 and f"pontoon: IP address {ip}" in bad.stderr, bad.stderr
    taken = engines.docker("run", "--network", "web", "-p", "8080:80", "pontoon/busybox",
                           "true", check=False)  # fmt: skip
    assert taken.returncode != 0 and "8080" in taken.stderr, taken.stderr
    overlap = engines.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
                             "--subnet", "10.77.0.0/16", "clash", check=False)  # fmt: skip
    assert overlap.returncode != 0 and "overlap" in overlap.stderr, overlap.stderr
    unknown = engines.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
                             "-o", "color=red", "odd", check=False)  # fmt: skip
    assert unknown.returncode != 0 and "color" in unknown.stderr, unknown.stderr
    assert len(docker_attachments(engines)) == 2

    # Removal: nothing left in pontoon or the kernel.
    engines.docker("rm", "-f", "c1", "c2")
    assert docker_attachments(engines) == []
    engines.docker("network", "rm", "web")
    assert "web" not in host.cli("network", "ls").stdout
    links = host.sh("ip", "-o", "link").stdout
    assert "vpt" not in links and "veth" not in links and "pt-" not in links, links
    assert fetch(outside, f"http://{HOST_ADDR}:8080/", retries=0) == ""


def _hostname(engines: EngineHost, container: str) -> str:
    return docker_json(engines, "inspect", container)["Config"]["Hostname"]


# -- the seed's overlay, on two hosts with etcd ------------------------------------------------

_subnets = iter(range(150, 170))


@pytest.fixture
def docker_lab():
    """Two lab hosts on etcd, each with pontoond (plugin mode) and a dockerd."""
    from pontoon.lab import cluster
    from tests.conftest import new_lab_name

    state = cluster.up(new_lab_name(), 2, f"10.{next(_subnets)}.0.0/24",
                       ["--log-level", "debug"], docker=True)  # fmt: skip
    try:
        yield state, {h.name: h.engines() for h in state.hosts}
    finally:
        cluster.down(state.name)


def wait_until(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def docker_networks(engines: EngineHost) -> set[str]:
    return set(engines.docker("network", "ls", "--format", "{{.Name}}").stdout.split())


def ip_on(engines: EngineHost, container: str, network: str) -> str:
    info = docker_json(engines, "inspect", container)
    return info["NetworkSettings"]["Networks"][network]["IPAddress"]


def pings(engines: EngineHost, container: str, target: str) -> bool:
    proc = engines.docker("exec", container, "ping", "-c1", "-W1", target, check=False)
    return proc.returncode == 0


def test_seed_overlay_on_two_hosts(docker_lab):
    from pontoon.lab import cluster

    state, engines = docker_lab
    h1, h2 = engines["h1"], engines["h2"]
    # net1 made with docker on h1, net2 with pontoon on h2: both appear in both dockerds.
    h1.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
              "-o", "pontoon.driver=overlay", "--subnet", "10.201.1.0/24", "net1")  # fmt: skip
    h2.host.cli("network", "create", "-d", "overlay", "--subnet", "10.201.2.0/24", "net2")
    for engines in (h1, h2):
        wait_until(lambda e=engines: {"net1", "net2"} <= docker_networks(e), what="networks")
    run(h1, "c1", "net1")
    run(h1, "c3", "net2", "--network-alias", "db")
    run(h2, "c2", "net1")
    run(h2, "c4", "net2")
    c2, c4 = ip_on(h2, "c2", "net1"), ip_on(h2, "c4", "net2")
    # Cluster-wide IPAM: no address twice.
    addresses = {ip_on(h1, "c1", "net1"), c2, ip_on(h1, "c3", "net2"), c4}
    assert len(addresses) == 4, addresses
    wait_until(lambda: pings(h1, "c1", c2), what="c1 -> c2 across hosts")
    assert pings(h1, "c3", c4)
    assert not pings(h1, "c1", c4)  # net1 does not reach net2
    # Names across hosts: Docker's resolver asks pontoon's for what it does not know.
    assert pings(h1, "c1", "c2")
    assert pings(h2, "c4", "c3")
    wait_until(lambda: pings(h2, "c4", "db"), what="an alias across hosts")
    assert not pings(h1, "c1", "c4")
    # The outside, through pontoon's gateway bridge (docker_gwbridge in the seed),
    # and published ports of an overlay container, through pontoon's port mapping.
    assert pings(h1, "c1", state.host("h2").address)
    assert "pontoon_gwbridge" in docker_networks(h1)
    run(h1, "web1", "net1", "-p", "8088:80", cmd=HTTPD)
    assert fetch(h2.host, f"http://{state.host('h1').address}:8088/") == _hostname(h1, "web1")
    assert "8088" in h1.host.cli("port", "web1").stdout

    # Restarts with traffic flowing: each pontoond (one killed), then h2's dockerd.
    ping = h1.popen("/usr/bin/docker", "-H", h1.docker_host, "exec", "c1", "ping", "-i", "0.2",
                    "-w", "8", "c2", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    text=True)  # fmt: skip
    cluster.restart_daemon(state, "h2", sig=signal.SIGKILL)
    cluster.restart_daemon(state, "h1")
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    run(h2, "c5", "net1")
    wait_until(lambda: pings(h1, "c1", "c5"), what="a container made after the restarts")
    h2.stop_dockerd()
    h2.start_dockerd(*docker_dns(h2.host))
    h2.docker("start", "c2")
    wait_until(lambda: pings(h1, "c1", "c2"), what="c2 back after dockerd's restart")

    # Removal: the networks leave both dockerds, nothing is left.
    for each, names in ((h1, ("c1", "c3", "web1")), (h2, ("c2", "c4", "c5"))):
        each.docker("rm", "-f", *names)
    h1.docker("network", "rm", "net1")
    h2.host.cli("network", "rm", "net2")
    for each in (h1, h2):
        wait_until(lambda e=each: not {"net1", "net2"} & docker_networks(e), what="removal")
        assert docker_attachments(each) == []


# -- restarts ----------------------------------------------------------------------------------


def restart_pontoond(engines: EngineHost, sig: int = signal.SIGTERM) -> None:
    host = engines.host
    host.stop_daemon(sig)
    host.start_daemon("--docker-plugin", "--docker-host", engines.docker_host,
                      "--log-level", "debug")  # fmt: skip


def test_restarts_in_any_order(make_engine_host, make_host):
    engines = docker_host(make_engine_host)
    host = engines.host
    outside = add_outside(make_host, host)
    create_network(engines, "web", "--subnet", SUBNET)
    run(engines, "c1", "web", "-p", "8080:80", cmd=HTTPD)
    run(engines, "c2", "web")
    name = _hostname(engines, "c1")
    assert fetch(outside, f"http://{HOST_ADDR}:8080/") == name

    def still_working(new: str) -> None:
        assert pings(engines, "c2", "c1")
        assert fetch(outside, f"http://{HOST_ADDR}:8080/") == name
        run(engines, new, "web")  # the plugin answers again
        assert pings(engines, new, "c1")
        engines.docker("rm", "-f", new)

    # pontoond restarts, politely and not, while containers run.
    ping = engines.popen("/usr/bin/docker", "-H", engines.docker_host, "exec", "c2",
                         "ping", "-i", "0.2", "-w", "8", "c1",
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    restart_pontoond(engines)
    restart_pontoond(engines, signal.SIGKILL)
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    still_working("c3")

    # dockerd restarts: its containers stop; started again, they join again.
    engines.stop_dockerd()
    engines.start_dockerd(*docker_dns(host))
    engines.docker("start", "c1", "c2")
    still_working("c4")

    # A container removed while pontoond is down leaves nothing once it is back.
    run(engines, "c6", "web", "--ip", "10.77.0.66")
    host.stop_daemon()
    engines.docker("rm", "-f", "c6")
    restart_pontoond(engines)
    assert all("10.77.0.66/24" not in a["Addresses"] for a in docker_attachments(engines))
    run(engines, "c6", "web", "--ip", "10.77.0.66")  # its address is free again
    engines.docker("rm", "-f", "c6")

    # dockerd starts while pontoond is down: it recovers once pontoond is up.
    dns = docker_dns(host)
    engines.stop_dockerd()
    host.stop_daemon()
    engines.start_dockerd(*dns)
    restart_pontoond(engines)
    engines.docker("start", "c1", "c2")
    still_working("c5")

    engines.docker("rm", "-f", "c1", "c2")
    engines.docker("network", "rm", "web")
    assert docker_attachments(engines) == []
    links = host.sh("ip", "-o", "link").stdout
    assert "vpt" not in links and "veth" not in links and "pt-" not in links, links


# -- docker-compose ----------------------------------------------------------------------------

COMPOSE = """\
version: "3.7"
services:
  web:
    image: pontoon/busybox
    command: ["sh", "-c", "hostname > /var/www/index.html && exec httpd -f -p 80 -h /var/www"]
    ports: ["8090:80"]
    stop_grace_period: 1s
  client:
    image: pontoon/busybox
    command: ["sleep", "3600"]
    stop_grace_period: 1s
networks:
  default:
    driver: pontoon
"""


def test_compose_default_network_on_pontoon(make_engine_host, make_host):
    engines = docker_host(make_engine_host)
    outside = add_outside(make_host, engines.host)
    project = engines.dir / "compose"
    project.mkdir()
    (project / "docker-compose.yml").write_text(COMPOSE)
    env = dict(os.environ, DOCKER_HOST=engines.docker_host)

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return engines.exec("docker-compose", "--project-directory", str(project), "-f",
                            str(project / "docker-compose.yml"), "-p", "demo", *args,
                            env=env)  # fmt: skip

    compose("up", "-d")
    net = docker_json(engines, "network", "inspect", "demo_default")
    assert net["Driver"] == "pontoon"
    wait_until(lambda: "demo_default" in engines.host.cli("network", "ls").stdout, what="network")
    assert pings(engines, "demo_client_1", "web")  # the service name, by Docker's resolver
    web = _hostname(engines, "demo_web_1")
    assert fetch(outside, f"http://{HOST_ADDR}:8090/") == web
    compose("down")
    assert "demo_default" not in engines.host.cli("network", "ls").stdout
    assert docker_attachments(engines) == []


def test_dockerd_first_then_pontoond(make_engine_host):
    """docker0 and pontoon0 both want 172.17.0.0/16: whichever starts second
    picks around the first (dockerd does, and so does pontoon)."""
    engines = make_engine_host(start=False)
    engines.start_dockerd()
    engines.import_image("docker")
    engines.host.start_daemon("--docker-plugin", "--docker-host", engines.docker_host)
    bridge = engines.host.cli_json("network", "inspect", "bridge")[0]
    docker0 = docker_json(engines, "network", "inspect", "bridge")
    ours, theirs = bridge["IPAM"]["Config"][0]["Subnet"], docker0["IPAM"]["Config"][0]["Subnet"]
    assert ours != theirs, (ours, theirs)
    create_network(engines, "web", "--subnet", SUBNET)
    run(engines, "c1", "web")
    run(engines, "c2", "web")
    assert pings(engines, "c2", "c1")
    engines.docker("rm", "-f", "c1", "c2")
    engines.docker("network", "rm", "web")
