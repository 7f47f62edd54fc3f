"""IPv6 and overlays (issue 13, requirement 6), on lab hosts: a dual-stack
overlay (IPv6 inside VXLAN) over the IPv4 underlay, and the same overlay over
an IPv6 underlay (`lab up --ipv6-underlay`)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import signal
import socket

import pytest

from pontoon.lab import cluster
from pontoon.lab.hosts import run
from pontoon.sandbox import netns
from tests.conftest import new_lab_name
from tests.integration.helpers import wait_for
from tests.integration.test_overlay import Lab
from tests.integration.test_vtep_guard import VXLAN_PORT, GuardLab, vxlan_frame

pytestmark = pytest.mark.integration

_subnets = iter(range(150, 170))


def make_lab(
    hosts: int = 2, extra: list[str] | None = None, ipv6_underlay: bool = False
) -> cluster.LabState:
    return cluster.up(new_lab_name(), hosts, f"10.{next(_subnets)}.0.0/24", extra or [],
                      ipv6_underlay=ipv6_underlay)  # fmt: skip


class Lab6(Lab):
    def ip6(self, host: str, container: str, network: str) -> str:
        info = json.loads(self.cli(host, "inspect", container).stdout)[0]
        return info["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]

    def ping6(self, host: str, container: str, target: str, count: int = 1) -> bool:
        proc = self.cli(host, "exec", container, "ping", "-6", "-c", str(count), "-W1", target,
                        check=False)  # fmt: skip
        return proc.returncode == 0

    def neighbours6(self, host: str, network: str) -> str:
        ns = self.overlay_ns(host, network)
        return self.h[host].sh("nsenter", f"--net={ns}", "ip", "-6", "neigh", "show").stdout

    def fdb(self, host: str, network: str) -> str:
        ns = self.overlay_ns(host, network)
        return self.h[host].sh("nsenter", f"--net={ns}", "bridge", "fdb", "show").stdout

    def dual_pair(self) -> tuple[str, str]:
        """Dual-stack overlay `ov6`, `a` on h1 and `b` on h2; returns b's
        IPv6 address once h1 has it programmed, and b's VTEP."""
        self.cli("h1", "network", "create", "-d", "overlay", "--ipv6", "ov6")
        self.cli("h1", "run", "-d", "--name", "a", "--net", "ov6", "--", "sleep", "infinity")
        self.cli("h2", "run", "-d", "--name", "b", "--net", "ov6", "--", "sleep", "infinity")
        b6 = self.ip6("h2", "b", "ov6")
        wait_for(lambda: b6 in self.neighbours6("h1", "ov6"), what="IPv6 peer programmed")
        return b6, self.state.hosts[1].vtep


def _lab(extra: list[str]) -> Lab6:
    return Lab6(make_lab(2, extra))


@pytest.fixture(params=["ipv4-underlay", "ipv6-underlay"])
def lab(request):
    state = make_lab(2, ["--cluster-ttl", "3"], ipv6_underlay=request.param == "ipv6-underlay")
    try:
        yield Lab6(state)
    finally:
        cluster.down(state.name)


def test_dual_stack_overlay_across_hosts(lab):
    b6, b_vtep = lab.dual_pair()
    # ping6 by name: the resolver has the remote peer's AAAA.
    assert lab.ping6("h1", "a", "b", count=2)
    assert lab.ping6("h2", "b", lab.ip6("h1", "a", "ov6"))
    assert lab.ping("h1", "a", lab.ip("h2", "b", "ov6"))  # IPv4 inside as well
    # Programmed, never learned: permanent neighbour, permanent FDB entry.
    neigh = [line for line in lab.neighbours6("h1", "ov6").splitlines() if b6 in line]
    assert neigh and "PERMANENT" in neigh[0]
    mac = neigh[0].split("lladdr ")[1].split()[0]
    fdb = [line for line in lab.fdb("h1", "ov6").splitlines() if f"{mac} dev vxlan" in line]
    assert any(f"dst {b_vtep} " in line and "self permanent" in line for line in fdb)
    info = json.loads(lab.cli("h1", "network", "inspect", "ov6").stdout)[0]
    assert info["EnableIPv6"] and info["Overlay"]["Peers"][b6]["VTEP"] == b_vtep
    # trace follows the IPv6 flow inside VXLAN on both hosts; topology names the peer.
    trace = lab.cli("h1", "trace", "-6", "--from", "a", "--to", "b").stdout
    assert "verdict: delivered" in trace and f"netfilter in remote host {b_vtep}" in trace
    topology = lab.cli("h1", "topology").stdout
    assert f"peer b {lab.ip('h2', 'b', 'ov6')}, {b6} at VTEP {b_vtep}" in topology
    # The host leaves: its IPv6 entries go everywhere.
    os.kill(lab.state.hosts[1].daemon_pid, signal.SIGKILL)
    wait_for(lambda: b6 not in lab.neighbours6("h1", "ov6"), timeout=15,
             what="the dead host's IPv6 endpoint to expire")  # fmt: skip
    # (br0's own learned entry for the MAC ages out by itself: not ours.)
    assert not [line for line in lab.fdb("h1", "ov6").splitlines()
                if f"{mac} dev vxlan" in line and " self " in line]  # fmt: skip


def test_ipv6_addresses_are_unique_cluster_wide():
    lab = _lab([])
    try:
        lab.cli("h1", "network", "create", "-d", "overlay", "--ipv6",
                "--subnet", "fd00:77::/120", "race6")  # fmt: skip

        def start(i: int) -> None:
            lab.cli(f"h{i % 2 + 1}", "run", "-d", "--name", f"c{i}", "--net", "race6", "--",
                    "sleep", "infinity")  # fmt: skip

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(start, range(12)))
        ips = [lab.ip6(f"h{i % 2 + 1}", f"c{i}", "race6") for i in range(12)]
        assert len(set(ips)) == 12 and all(ip.startswith("fd00:77::") for ip in ips)
    finally:
        cluster.down(lab.state.name)


# -- the VTEP guard over an IPv6 underlay ----------------------------------------------


class GuardLab6(GuardLab):
    """test_vtep_guard's lab, its VTEPs and outsider on the IPv6 underlay."""

    def address(self, host: str) -> str:
        return self.state.host(host).address6

    def add_outsider(self) -> str:
        super().add_outsider()
        addr = cluster.address6(self.state, 250)
        run("ip", "-n", self.outsider, "addr", "add", addr, "dev", "eth0", "nodad")
        return addr.split("/")[0]

    def vteps(self, host: str) -> set[str]:
        if self.backend == "nftables":
            return super().vteps(host)
        out = self.h[host].sh("ip6tables-save", "-t", "raw").stdout
        return {
            line.split()[3].removesuffix("/128")
            for line in out.splitlines()
            if line.startswith("-A PONTOON-VTEPS -s ") and line.endswith("-j RETURN")
        }

    def dropped(self, host: str) -> int:
        if self.backend == "nftables":
            return super().dropped(host)
        out = self.h[host].sh("ip6tables", "-t", "raw", "-L", "PONTOON-VTEPS", "-v", "-n",
                              "-x").stdout  # fmt: skip
        drops = [line.split() for line in out.splitlines() if " DROP " in f" {line} "]
        return int(drops[0][0])


def send6_from(namespace: str, src: str, dst: str, frame: bytes, count: int = 5) -> None:
    def send() -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind((src, 0))
            for _ in range(count):
                sock.sendto(frame, (dst, VXLAN_PORT))

    netns.run_in(namespace, send)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_vxlan_over_ipv6_only_from_the_cluster_vteps(backend):
    state = make_lab(2, ["--firewall-backend", backend], ipv6_underlay=True)
    lab = GuardLab6(state, backend)
    try:
        lab.pair()  # `ov`, `a` on h1, `b` on h2
        h1, h2 = lab.address("h1"), lab.address("h2")
        wait_for(lambda: lab.vteps("h1") == {h1, h2}, what="h1's IPv6 VTEP set has both hosts")
        ns = lab.overlay_ns("h1", "ov")
        vx = lab.h["h1"].sh("nsenter", f"--net={ns}", "ip", "-d", "link", "show").stdout
        assert f"local {h1} " in vx and " mtu 1430 " in vx  # VXLAN over IPv6: 70 bytes less
        info = json.loads(lab.cli("h1", "inspect", "a").stdout)[0]["NetworkSettings"]
        a = info["Networks"]["ov"]
        vni = json.loads(lab.cli("h1", "network", "inspect", "ov").stdout)[0]["VNI"]
        forged_src = str(ipaddress.IPv4Address(a["IPAddress"]) + 100)
        frame = vxlan_frame(vni, a["MacAddress"], forged_src, a["IPAddress"])
        outsider = lab.add_outsider()

        before, dropped = lab.in_echos("h1", "a"), lab.dropped("h1")
        send6_from(f"/run/netns/{lab.outsider}", outsider, h1, frame)
        wait_for(lambda: lab.dropped("h1") >= dropped + 5, what="the guard dropped the frames")
        # The positive control: the same frame from a member's IPv6 VTEP arrives.
        send6_from(str(lab.h["h2"].netns), h2, h1, frame)
        wait_for(lambda: lab.in_echos("h1", "a") >= before + 5,
                 what="the member's frames delivered")  # fmt: skip
        assert lab.in_echos("h1", "a") == before + 5  # none of the outsider's
    finally:
        lab.remove_outsider()
        cluster.down(state.name)
