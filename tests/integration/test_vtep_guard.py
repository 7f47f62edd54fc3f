"""A fail-closed overlay (issue 15, items 1 and 4), in a lab on both firewall
backends: VXLAN is decapsulated only from the cluster's VTEPs, a host that
leaves is dropped from every other host's set, and `-o encrypted` is refused
on a kernel that cannot encrypt.

The attacker is a namespace on the underlay switch that is no cluster member:
it sends a hand-made VXLAN frame (the overlay's VNI, an ICMP echo to a
container's MAC and IP) to a host's VTEP. Whether the container got it is read
from its own ICMP counter (Icmp InEchos in /proc/net/snmp)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from pontoon.lab import cluster
from pontoon.lab.hosts import run
from pontoon.sandbox import netns
from tests.integration.helpers import wait_for
from tests.integration.test_overlay import Lab, make_lab

pytestmark = pytest.mark.integration

VXLAN_PORT = 4789
TTL = 3  # --cluster-ttl: a silent host leaves quickly


# -- the forged frame ---------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vxlan_frame(vni: int, dst_mac: str, src_ip: str, dst_ip: str) -> bytes:
    """VXLAN header + Ethernet + IPv4 + ICMP echo request, as RFC 7348 and
    the kernel's own encapsulation lay them out."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"pontoon-vtep-guard"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("02aabbccddee") + b"\x08\x00"
    vxlan = struct.pack("!II", 0x08 << 24, vni << 8)  # flags: VNI valid; VNI; reserved
    return vxlan + eth + ip + icmp


def send_from(namespace: str, src: str, dst: str, frame: bytes, count: int = 5) -> None:
    """UDP from `src` (an address of that namespace) to dst:4789."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((src, 0))
            for _ in range(count):
                sock.sendto(frame, (dst, VXLAN_PORT))

    netns.run_in(namespace, send)


# -- the lab ------------------------------------------------------------------------


class GuardLab(Lab):
    def __init__(self, state: cluster.LabState, backend: str) -> None:
        super().__init__(state)
        self.backend = backend
        self.outsider = f"ptl-{state.name}-x"

    def address(self, host: str) -> str:
        return self.state.host(host).address

    def add_outsider(self) -> str:
        """A namespace on the underlay switch that is not a cluster member."""
        net = ipaddress.IPv4Network(self.state.subnet)
        addr = str(list(net.hosts())[-2])
        run("ip", "netns", "add", self.outsider)
        run("ip", "link", "add", "eth0", "netns", self.outsider, "type", "veth", "peer", "name",
            "px", "netns", self.state.switch)  # fmt: skip
        run("ip", "-n", self.state.switch, "link", "set", "px", "master", "br0", "up")
        run("ip", "-n", self.outsider, "addr", "add", f"{addr}/{net.prefixlen}", "dev", "eth0")
        run("ip", "-n", self.outsider, "link", "set", "eth0", "up")
        run("ip", "-n", self.outsider, "link", "set", "lo", "up")
        return addr

    def remove_outsider(self) -> None:
        run("ip", "netns", "del", self.outsider, check=False)

    def in_echos(self, host: str, container: str) -> int:
        snmp = self.cli(host, "exec", container, "cat", "/proc/net/snmp").stdout.splitlines()
        names, values = [line.split() for line in snmp if line.startswith("Icmp:")][:2]
        return int(values[names.index("InEchos")])

    def vteps(self, host: str) -> set[str]:
        """The host's VTEP set, as its firewall backend programmed it."""
        sim = self.h[host]
        if self.backend == "nftables":
            out = sim.sh("nft", "-j", "list", "set", "inet", "pontoon", "vteps").stdout
            sets = [o["set"] for o in json.loads(out)["nftables"] if "set" in o]
            return {e for e in sets[0].get("elem", []) if isinstance(e, str)}
        out = sim.sh("iptables-save", "-t", "raw").stdout
        return {
            line.split()[3].removesuffix("/32")
            for line in out.splitlines()
            if line.startswith("-A PONTOON-VTEPS -s ") and line.endswith("-j RETURN")
        }

    def dropped(self, host: str) -> int:
        """Packets the VTEP guard dropped on `host`."""
        sim = self.h[host]
        if self.backend == "nftables":
            guard = sim.sh("nft", "-j", "list", "chain", "inet", "pontoon", "guard").stdout
            for obj in json.loads(guard)["nftables"]:
                for expr in obj.get("rule", {}).get("expr", []):
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
            raise AssertionError("no counter in the guard chain")
        out = sim.sh("iptables", "-t", "raw", "-L", "PONTOON-VTEPS", "-v", "-n", "-x").stdout
        drops = [line.split() for line in out.splitlines() if " DROP " in f" {line} "]
        return int(drops[0][0])


@pytest.fixture(params=["nftables", "iptables"])
def lab(request) -> Iterator[GuardLab]:
    backend = request.param
    state = make_lab(2, ["--firewall-backend", backend, "--cluster-ttl", str(TTL)])
    guard = GuardLab(state, backend)
    try:
        yield guard
    finally:
        guard.remove_outsider()
        cluster.down(state.name)


def test_vxlan_from_outside_the_cluster_is_never_decapsulated(lab):
    lab.pair()  # `ov`, `a` on h1, `b` on h2
    h1, h2 = lab.address("h1"), lab.address("h2")
    wait_for(lambda: lab.vteps("h1") == {h1, h2}, what="h1's VTEP set has both hosts")
    wait_for(lambda: lab.vteps("h2") == {h1, h2}, what="h2's VTEP set has both hosts")
    info = json.loads(lab.cli("h1", "inspect", "a").stdout)[0]["NetworkSettings"]
    a = info["Networks"]["ov"]
    vni = json.loads(lab.cli("h1", "network", "inspect", "ov").stdout)[0]["VNI"]
    forged_src = str(ipaddress.IPv4Address(a["IPAddress"]) + 100)
    frame = vxlan_frame(vni, a["MacAddress"], forged_src, a["IPAddress"])
    outsider = lab.add_outsider()

    before, dropped = lab.in_echos("h1", "a"), lab.dropped("h1")
    send_from(f"/run/netns/{lab.outsider}", outsider, h1, frame)
    wait_for(lambda: lab.dropped("h1") >= dropped + 5, what="the guard dropped the frames")
    # The positive control: the same frame from a member's VTEP is delivered
    # (what any host could do before the guard), so had the outsider's got
    # through, it would have been counted too.
    send_from(str(lab.h["h2"].netns), h2, h1, frame)
    wait_for(lambda: lab.in_echos("h1", "a") >= before + 5, what="the member's frames delivered")
    assert lab.in_echos("h1", "a") == before + 5  # none of the outsider's


def test_a_host_that_leaves_is_dropped_from_every_set(lab):
    lab.pair()
    h1, h2 = lab.address("h1"), lab.address("h2")
    wait_for(lambda: lab.vteps("h1") == {h1, h2}, what="h1's VTEP set has both hosts")
    # h2 goes silent: its lease expires and etcd deletes its registration.
    os.kill(lab.state.host("h2").daemon_pid, signal.SIGKILL)
    wait_for(lambda: lab.vteps("h1") == {h1}, timeout=TTL + 15, what="h2 dropped from h1's set")
    # Its VXLAN is no longer decapsulated on h1, containers or not.
    info = json.loads(lab.cli("h1", "inspect", "a").stdout)[0]["NetworkSettings"]
    a = info["Networks"]["ov"]
    vni = json.loads(lab.cli("h1", "network", "inspect", "ov").stdout)[0]["VNI"]
    frame = vxlan_frame(vni, a["MacAddress"], str(ipaddress.IPv4Address(a["IPAddress"]) + 100),
                        a["IPAddress"])  # fmt: skip
    before, dropped = lab.in_echos("h1", "a"), lab.dropped("h1")
    send_from(str(lab.h["h2"].netns), h2, h1, frame)
    wait_for(lambda: lab.dropped("h1") >= dropped + 5, what="the guard dropped the frames")
    assert lab.in_echos("h1", "a") == before
    # Its daemon back: it registers again and is accepted again.
    cluster.restart_daemon(lab.state, "h2", sig=signal.SIGKILL)
    wait_for(lambda: lab.vteps("h1") == {h1, h2}, what="h2 back in h1's set")


def test_the_vtep_set_is_repaired_when_something_else_changes_it(lab):
    h1, h2 = lab.address("h1"), lab.address("h2")
    wait_for(lambda: lab.vteps("h1") == {h1, h2}, what="h1's VTEP set has both hosts")
    sim = lab.h["h1"]
    if lab.backend == "nftables":
        sim.sh("nft", "delete", "element", "inet", "pontoon", "vteps", f"{{ {h2} }}")
    else:
        sim.sh("iptables", "-t", "raw", "-D", "PONTOON-VTEPS", "-s", f"{h2}/32", "-j", "RETURN")
    assert lab.vteps("h1") == {h1}
    # The firewall check (every 10 s by default) puts it back from the model.
    wait_for(lambda: lab.vteps("h1") == {h1, h2}, timeout=25, what="the set repaired")


def test_encrypted_overlay_is_refused_and_nothing_is_made(lab):
    def etcd_keys() -> list[str]:
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{lab.state.switch}", "--", "etcdctl",
             f"--endpoints={lab.state.etcd_client_url}", "get", "--prefix", "--keys-only",
             cluster.CLUSTER_PREFIX],
            capture_output=True, text=True, check=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        return sorted(k for k in proc.stdout.splitlines() if k and "/overlay/hosts/" not in k)

    networks = lab.cli("h1", "network", "ls").stdout
    keys = etcd_keys()
    proc = lab.cli("h1", "network", "create", "-d", "overlay", "-o", "encrypted", "sec",
                   check=False)  # fmt: skip
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "encrypted" in err and "WireGuard" in err and "ESP" in err
    assert lab.cli("h1", "network", "ls").stdout == networks
    assert etcd_keys() == keys
