"""Multi-host overlay networks over VXLAN with etcd (SPEC §7, §9; issue 4),
on lab hosts: network namespaces on an underlay bridge, a real etcd, a
pontoond per host."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import pytest

from pontoon.lab import cluster
from tests.conftest import new_lab_name
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

_subnets = iter(range(200, 250))


def make_lab(hosts: int = 2, extra: list[str] | None = None) -> cluster.LabState:
    name = new_lab_name()
    return cluster.up(name, hosts, f"10.{next(_subnets)}.0.0/24", extra or [])


class Lab:
    def __init__(self, state: cluster.LabState) -> None:
        self.state = state
        self.h = {h.name: h.sim() for h in state.hosts}

    def cli(self, host: str, *args: str, check: bool = True):
        return self.h[host].cli(*args, check=check)

    def ip(self, host: str, container: str, network: str) -> str:
        info = json.loads(self.cli(host, "inspect", container).stdout)[0]
        return info["NetworkSettings"]["Networks"][network]["IPAddress"]

    def ping(self, host: str, container: str, target: str, count: int = 1) -> bool:
        proc = self.cli(host, "exec", container, "ping", "-c", str(count), "-W1", target,
                        check=False)  # fmt: skip
        return proc.returncode == 0

    def overlay_ns(self, host: str, network: str) -> str:
        info = json.loads(self.cli(host, "network", "inspect", network).stdout)[0]
        return info["Overlay"]["Namespace"]

    def pair(self) -> str:
        """Overlay `ov` made on h1, `a` on h1 and `b` on h2, b programmed on
        h1; returns b's address."""
        self.cli("h1", "network", "create", "-d", "overlay", "ov")
        self.cli("h1", "run", "-d", "--name", "a", "--net", "ov", "--", "sleep", "infinity")
        self.cli("h2", "run", "-d", "--name", "b", "--net", "ov", "--", "sleep", "infinity")
        b_ip = self.ip("h2", "b", "ov")
        wait_for(lambda: b_ip in self.neighbours("h1", "ov"), what="peer programmed")
        return b_ip

    def neighbours(self, host: str, network: str) -> str:
        ns = self.overlay_ns(host, network)
        return self.h[host].sh("nsenter", f"--net={ns}", "ip", "neigh", "show").stdout


@pytest.fixture
def lab2():
    state = make_lab(2)
    try:
        yield Lab(state)
    finally:
        cluster.down(state.name)


@pytest.fixture(scope="module")
def seed_lab():
    """The seed's experiment: net1 made on h1, net2 on h2, one container of
    each network on each host."""
    state = make_lab(2)
    lab = Lab(state)
    try:
        lab.cli("h1", "network", "create", "-d", "overlay", "net1")
        lab.cli("h2", "network", "create", "-d", "overlay", "net2")
        for host, suffix in (("h1", "1"), ("h2", "2")):
            for net in ("net1", "net2"):
                lab.cli(host, "run", "-d", "--name", f"{net}c{suffix}", "--net", net, "--",
                        "sleep", "infinity")  # fmt: skip
        yield lab
    finally:
        cluster.down(state.name)


def test_networks_created_anywhere_are_listed_everywhere(seed_lab):
    for host in ("h1", "h2"):
        names = {n["Name"] for n in json.loads(
            seed_lab.cli(host, "network", "ls", "--format", "json").stdout)}  # fmt: skip
        assert {"net1", "net2"} <= names
    n1 = json.loads(seed_lab.cli("h2", "network", "inspect", "net1").stdout)[0]
    assert n1["Driver"] == "overlay" and n1["Scope"] == "global" and n1["VNI"] >= 256


def test_cross_host_ping_and_isolation(seed_lab):
    lab = seed_lab
    assert lab.ping("h1", "net1c1", lab.ip("h2", "net1c2", "net1"))
    assert lab.ping("h2", "net2c2", lab.ip("h1", "net2c1", "net2"))
    # net1 and net2 are isolated: the seed's 100% packet loss.
    assert not lab.ping("h1", "net1c1", lab.ip("h2", "net2c2", "net2"))


def test_names_resolve_across_hosts(seed_lab):
    lab = seed_lab
    assert lab.ping("h1", "net1c1", "net1c2")  # `ping net1c2` just works
    out = lab.cli("h1", "exec", "net1c1", "getent", "hosts", "net2c2", check=False)
    assert out.returncode != 0


def test_tcp_across_hosts(seed_lab):
    lab = seed_lab
    lab.cli("h2", "run", "-d", "--name", "web", "--net", "net1", "--",
            "python3", "-m", "http.server", "80")  # fmt: skip
    try:
        fetch = ("for i in $(seq 50); do curl -sf http://web/ >/dev/null && echo ok && exit; "
                 "sleep .1; done; exit 1")  # fmt: skip
        assert lab.cli("h1", "exec", "net1c1", "sh", "-c", fetch).stdout.strip() == "ok"
    finally:
        lab.cli("h2", "rm", "-f", "web")


def test_overlay_datapath_is_not_conntracked(seed_lab):
    """Between two containers of an overlay nothing keeps connection state:
    not the VXLAN packets in the host namespaces (notrack between VTEPs), not
    the overlay namespace's bridge (br_netfilter off there), not the
    containers (the resolver's port 53 is a stateless rewrite), so an overlay
    pays no netfilter cost a hand-built VXLAN does not (bench/overlay.py)."""
    lab = seed_lab
    assert lab.ping("h1", "net1c1", "net1c2", count=3)  # by name: DNS is stateless too
    info = json.loads(lab.cli("h1", "network", "inspect", "net1").stdout)[0]["Overlay"]
    for host in ("h1", "h2"):
        sim = lab.h[host]
        ruleset = sim.sh("nft", "list", "table", "inet", "pontoon").stdout
        assert f"udp dport {info['UDPPort']} notrack" in ruleset
        flows = sim.sh("conntrack", "-L", "-p", "udp", "--dport", str(info["UDPPort"]),
                       check=False).stdout  # fmt: skip
        assert flows.strip() == ""
        ns = lab.overlay_ns(host, "net1")
        call = sim.sh(
            "nsenter",
            f"--net={ns}",
            "sh",
            "-c",
            "cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0",
        )
        assert call.stdout.strip() == "0"  # fmt: skip
        sandbox = json.loads(lab.cli(host, "inspect", f"net1c{host[1]}").stdout)[0][
            "NetworkSettings"]["SandboxKey"]  # fmt: skip
        count = sim.sh("nsenter", f"--net={sandbox}", "cat",
                       "/proc/sys/net/netfilter/nf_conntrack_count").stdout  # fmt: skip
        assert count.strip() == "0"


def test_iptables_backend_untracks_vxlan_too():
    state = make_lab(2, ["--firewall-backend", "iptables", "--vxlan-port", "4790"])
    lab = Lab(state)
    try:
        b_ip = lab.pair()
        assert lab.ping("h1", "a", b_ip, count=2)
        vtep = state.hosts[0].address
        raw = lab.h["h1"].sh("iptables-save", "-t", "raw").stdout
        udp = "-p udp -m udp --dport 4790 -j CT --notrack"
        assert f"-A PONTOON-GUARD -d {vtep}/32 {udp}" in raw
        assert f"-A PONTOON-UNTRACK -s {vtep}/32 {udp}" in raw
        assert "-A OUTPUT -j PONTOON-UNTRACK" in raw
        flows = lab.h["h1"].sh("conntrack", "-L", "-p", "udp", "--dport", "4790", check=False)
        assert flows.stdout.strip() == ""
    finally:
        cluster.down(state.name)


def test_layout_mtu_gateway_bridge_and_outbound_nat(seed_lab):
    lab = seed_lab
    addr = lab.cli("h1", "exec", "net1c1", "ip", "-o", "link", "show", "eth0").stdout
    assert " mtu 1450 " in addr
    routes = lab.cli("h1", "exec", "net1c1", "ip", "route").stdout
    assert "default via" in routes and "dev eth1" in routes.split("default", 1)[1].splitlines()[0]
    # Outbound through pontoon_gwbridge and the host's NAT: the switch answers.
    switch_ip = str(next(iter(__import__("ipaddress").IPv4Network(lab.state.subnet).hosts())))
    assert lab.ping("h1", "net1c1", switch_ip)
    # The seed's view: the overlay namespace, br0 with the VTEP and a veth,
    # and the remote peer as a permanent neighbour on the VXLAN device.
    info = json.loads(lab.cli("h1", "network", "inspect", "net1").stdout)[0]["Overlay"]
    assert info["Bridge"] == "br0" and info["VXLAN"] in info["BridgePorts"]
    remote_ip = lab.ip("h2", "net1c2", "net1")
    assert info["Peers"][remote_ip]["VTEP"] == lab.state.hosts[1].address
    assert f"{remote_ip} dev {info['VXLAN']}" in lab.neighbours("h1", "net1")
    assert "PERMANENT" in lab.neighbours("h1", "net1")


def test_peers_are_removed_everywhere(lab2):
    lab = lab2
    b_ip = lab.pair()
    lab.cli("h2", "rm", "-f", "b")
    wait_for(lambda: b_ip not in lab.neighbours("h1", "ov"), what="peer removed")
    # The last container of h2 is gone: h2 drops its overlay namespace.
    info = json.loads(lab.cli("h2", "network", "inspect", "ov").stdout)[0]
    assert not info["Overlay"]
    rm = lab.cli("h2", "network", "rm", "ov", check=False)
    assert rm.returncode == 1 and "active endpoints (a)" in rm.stderr
    lab.cli("h1", "rm", "-f", "a")
    lab.cli("h2", "network", "rm", "ov")
    wait_for(lambda: "ov" not in lab.cli("h1", "network", "ls").stdout, what="network gone")


def test_concurrent_allocation_has_no_duplicates():
    state = make_lab(3)
    lab = Lab(state)
    try:
        # Racing network creation: distinct VNIs and subnets.
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: lab.cli(f"h{i % 3 + 1}", "network", "create", "-d",
                                            "overlay", f"race{i}"), range(6)))  # fmt: skip
        nets = [json.loads(lab.cli("h1", "network", "inspect", f"race{i}").stdout)[0]
                for i in range(6)]  # fmt: skip
        assert len({n["VNI"] for n in nets}) == 6
        assert len({n["IPAM"]["Config"][0]["Subnet"] for n in nets}) == 6

        # Racing address allocation on one network from three hosts.
        def start(i: int) -> None:
            lab.cli(f"h{i % 3 + 1}", "run", "-d", "--name", f"c{i}", "--net", "race0", "--",
                    "sleep", "infinity")  # fmt: skip

        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            list(pool.map(start, range(18)))
        ips = [lab.ip(f"h{i % 3 + 1}", f"c{i}", "race0") for i in range(18)]
        assert len(set(ips)) == 18
    finally:
        cluster.down(state.name)


def test_dead_host_endpoints_expire_everywhere():
    state = make_lab(2, ["--cluster-ttl", "3"])
    lab = Lab(state)
    try:
        b_ip = lab.pair()
        os.kill(state.hosts[1].daemon_pid, signal.SIGKILL)
        wait_for(lambda: b_ip not in lab.neighbours("h1", "ov"), timeout=15,
                 what="the dead host's endpoint to expire")  # fmt: skip
    finally:
        cluster.down(state.name)


def test_etcd_outage_keeps_traffic_and_converges(lab2):
    lab = lab2
    lab.cli("h1", "network", "create", "-d", "overlay", "ov")
    lab.cli("h1", "run", "-d", "--name", "a", "--net", "ov", "--", "sleep", "infinity")
    lab.cli("h2", "run", "-d", "--name", "b", "--net", "ov", "--", "sleep", "infinity")
    lab.cli("h2", "run", "-d", "--name", "b2", "--net", "ov", "--", "sleep", "infinity")
    b_ip, b2_ip = lab.ip("h2", "b", "ov"), lab.ip("h2", "b2", "ov")
    wait_for(lambda: b2_ip in lab.neighbours("h1", "ov"), what="peers programmed")
    os.kill(lab.state.etcd_pid, signal.SIGSTOP)
    try:
        assert lab.ping("h1", "a", b_ip, count=3)  # running containers keep talking
        started = time.monotonic()
        proc = lab.cli("h1", "network", "create", "-d", "overlay", "late", check=False)
        assert proc.returncode == 1 and "cluster store" in proc.stderr
        assert time.monotonic() - started < 10
        lab.cli("h2", "rm", "-f", "b2")  # a deletion the cluster misses for now
    finally:
        os.kill(lab.state.etcd_pid, signal.SIGCONT)
    wait_for(lambda: b2_ip not in lab.neighbours("h1", "ov"), timeout=30,
             what="h1 to converge after etcd returns")  # fmt: skip
    assert lab.ping("h1", "a", b_ip)


def test_daemon_restart_keeps_overlay_traffic(lab2):
    lab = lab2
    lab.cli("h1", "network", "create", "-d", "overlay", "ov")
    lab.cli("h1", "run", "-d", "--name", "a", "--net", "ov", "--", "sleep", "infinity")
    lab.cli("h2", "run", "-d", "--name", "b", "--net", "ov", "--", "sleep", "infinity")
    b_ip = lab.ip("h2", "b", "ov")
    wait_for(lambda: lab.ping("h1", "a", b_ip), what="first ping")
    lab.cli("h1", "run", "-d", "--name", "pinger", "--net", "ov", "--",
            "ping", "-i", "0.05", "-c", "60", b_ip)  # fmt: skip
    h1 = lab.h["h1"]
    os.kill(lab.state.hosts[0].daemon_pid, signal.SIGKILL)
    h1.daemon = None
    store = f"{lab.state.etcd_url}{cluster.CLUSTER_PREFIX}"
    h1.start_daemon("--cluster-store", store, "--cluster-advertise", "eth0")

    def done() -> bool:
        info = json.loads(lab.cli("h1", "inspect", "pinger").stdout)[0]
        return info["State"]["Status"] == "exited"

    wait_for(done, timeout=20, what="pinger")
    assert " 0% packet loss" in lab.cli("h1", "logs", "pinger").stdout
    lab.state.hosts[0].daemon_pid = h1.daemon.pid if h1.daemon else 0
    lab.state.save()


def test_vxlan_port_in_use_is_a_clear_error(make_host):
    host = make_host(start=False)
    host.sh("ip", "link", "add", "squat", "type", "vxlan", "id", "42", "dstport", "4789")
    with pytest.raises(RuntimeError, match="VXLAN port 4789 is already used by device squat"):
        host.start_daemon("--cluster-store", "etcd://127.0.0.1:1/x", "--cluster-advertise", "lo",
                          timeout=5)  # fmt: skip


def test_trace_across_hosts(seed_lab):
    lab = seed_lab
    r = json.loads(lab.cli("h1", "trace", "--json", "--from", "net1c1", "--to", "net1c2").stdout)
    assert r["verdict"] == "delivered"
    vxlan = next(hop for hop in r["path"] if hop["kind"] == "vxlan")
    net1 = json.loads(lab.cli("h1", "network", "inspect", "net1").stdout)[0]
    assert vxlan["vni"] == net1["VNI"] and vxlan["local_vtep"] == lab.state.hosts[0].address
    remote = next(hop for hop in r["path"] if hop["kind"] == "remote host")
    assert remote["vtep"] == lab.state.hosts[1].address
    # The encapsulated packet leaves through the host namespace's output hook.
    outer = [w for w in r["netfilter"]["host"] if w["hook"] == "output"]
    assert outer and outer[0]["packet"].get("dport") == "4789"
    # h2 watched the same flow: the request arriving, the reply leaving.
    far = lab.state.hosts[1].address
    assert r["remote_host"] == {"vtep": far, "reported": True}
    walks = r["netfilter"][f"remote host {far}"]
    assert {w["hook"] for w in walks} == {"prerouting", "output"}
    assert all(w["packet"].get("dport") == "4789" for w in walks)
    text = lab.cli("h1", "trace", "--from", "net1c1", "--to", "net1c2").stdout
    assert f"netfilter in remote host {far} namespace:" in text
    other = json.loads(lab.cli("h1", "trace", "--json", "--from", "net1c1", "--to",
                               "net2c2").stdout)  # fmt: skip
    assert other["verdict"] != "delivered"


def test_live_trace_across_hosts_sees_both_sides(seed_lab):
    lab = seed_lab
    target = lab.ip("h2", "net1c2", "net1")
    lab.cli("h1", "run", "-d", "--name", "pinger", "--net", "net1", "--",
            "ping", "-i", "0.2", "-c", "25", target)  # fmt: skip
    try:
        r = json.loads(lab.cli("h1", "trace", "--json", "--live", "2", "--from", "pinger",
                               "--to", "net1c2").stdout)  # fmt: skip
    finally:
        lab.cli("h1", "rm", "-f", "pinger")
    assert r["probe"]["packets"] > 0  # the encapsulated pings, seen in h1's host namespace
    far = lab.state.hosts[1].address
    assert r["remote_host"] == {"vtep": far, "reported": True}
    assert {w["hook"] for w in r["netfilter"][f"remote host {far}"]} == {"prerouting", "output"}


def test_published_port_of_an_overlay_container(lab2):
    from tests.integration.portmap_helpers import PROBE, SERVER

    lab = lab2
    lab.cli("h1", "network", "create", "-d", "overlay", "ov")
    lab.cli("h1", "run", "-d", "--name", "web", "--net", "ov", "-p", "8080:80", "--",
            "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    h1_addr = lab.state.hosts[0].address
    out = lab.h["h2"].sh("python3", "-c", PROBE, h1_addr, "8080", "tcp", "5").stdout
    # Through pontoon_gwbridge: DNAT to web's eth1, the client's address kept.
    assert out.strip() == f"peer={lab.state.hosts[1].address} from={h1_addr}"


def test_drift_is_repaired_from_the_store(lab2):
    lab = lab2
    b_ip = lab.pair()
    ns = lab.overlay_ns("h1", "ov")
    vx = json.loads(lab.cli("h1", "network", "inspect", "ov").stdout)[0]["Overlay"]["VXLAN"]
    lab.h["h1"].sh("nsenter", f"--net={ns}", "ip", "neigh", "del", b_ip, "dev", vx)
    assert b_ip not in lab.neighbours("h1", "ov")
    wait_for(lambda: b_ip in lab.neighbours("h1", "ov"), timeout=45,
             what="the periodic resync to restore the entry")  # fmt: skip
    assert lab.ping("h1", "a", b_ip)


def test_lab_cli_up_status_down():
    import subprocess

    from pontoon.lab.hosts import bin_path

    name = new_lab_name()
    pontoon = bin_path("pontoon")
    up = subprocess.run([pontoon, "lab", "up", "--hosts", "2", "--name", name, "--subnet",
                         "10.249.0.0/24"], capture_output=True, text=True)  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        assert f"lab://{name}/h2" in up.stdout
        args = [pontoon, "lab", "status", "--name", name, "--format", "json"]
        status = json.loads(subprocess.run(args, capture_output=True, text=True).stdout)
        assert status["etcd"]["healthy"] and [h["daemon"] for h in status["hosts"]] == [
            "running", "running"]  # fmt: skip
        again = subprocess.run([pontoon, "lab", "up", "--name", name], capture_output=True,
                               text=True)  # fmt: skip
        assert again.returncode == 1 and again.stderr.startswith("Error: ")
    finally:
        down = subprocess.run([pontoon, "lab", "down", "--name", name], capture_output=True,
                              text=True)  # fmt: skip
    assert down.returncode == 0
    assert f"ptl-{name}" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                               text=True).stdout  # fmt: skip


def test_trace_goes_on_when_the_far_end_is_silent(lab2):
    lab = lab2
    lab.pair()
    pid = lab.state.hosts[1].daemon_pid
    os.kill(pid, signal.SIGSTOP)  # h2's daemon frozen: its containers still answer
    try:
        started = time.monotonic()
        r = json.loads(lab.cli("h1", "trace", "--json", "--from", "a", "--to", "b").stdout)
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r["verdict"] == "delivered" and took < 10
    assert r["remote_host"] == {"vtep": lab.state.hosts[1].address, "reported": False}
    text = lab.cli("h1", "trace", "--from", "a", "--to", "b").stdout
    assert "did not report" not in text  # h2 is back: it reports again
    # The request h2 saw late was withdrawn: nothing keeps watching there.
    h2 = lab.h["h2"]
    wait_for(lambda: "pontoon_trace" not in h2.sh("nft", "list", "tables").stdout,
             timeout=5, what="h2's trace table gone")  # fmt: skip
