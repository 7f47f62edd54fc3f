"""The overlay driver: VXLAN networks spanning hosts (the seed's first article).

Per host and per overlay network with local containers, a namespace
`1-<network id[:10]>` (under <exec-root>/netns, like Docker's) holds:

    br0        the network's bridge, with the gateway address, MTU underlay-50
    vxlan<VNI> the VTEP: created from the host namespace so its UDP socket
               lives there (encapsulated packets use the host's routes), then
               born directly inside the overlay namespace and enslaved to br0.
               Learning off; `proxy` on, so ARP requests are answered from the
               neighbour table instead of flooding.
    vethXXXX   one per local container, enslaved to br0; its peer is the
               container's eth0.

Peers are programmed, never learned: for every endpoint on another host, a
permanent neighbour entry (IP -> MAC) and a permanent FDB entry (MAC -> remote
VTEP) on the VXLAN device, exactly what the seed found with `arp -a`
("PERM on vxlan1") and `bridge fdb`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pontoon.core import addresses
from pontoon.core.model import Attachment, Network, NetworkSpec
from pontoon.drivers import encryption, links
from pontoon.drivers.base import CLUSTER_ALLOCATOR, Capabilities, NetworkDriver, Peer
from pontoon.errors import InvalidArgument
from pontoon.ipam.pools import Pool
from pontoon.sandbox import netns

log = logging.getLogger(__name__)

BRIDGE = "br0"
ENCRYPTED = "encrypted"  # Docker's option name: `-o encrypted`
NUD_PERMANENT = 0x80
NTF_SELF = 0x02  # the VXLAN device's own FDB, not its master bridge's
# Outer Ethernet + IP + UDP + VXLAN headers, by the underlay's family.
VXLAN_OVERHEAD = {4: 50, 6: 70}
# The cluster's overlay subnets, when none is given: Docker's overlay default
# for IPv4; for IPv6 the upper half of pontoon's ULA /48 (bridges on every
# host take /64s from its bottom up, so the two meet only after 32,768 each).
OVERLAY_POOLS = (
    Pool(ipaddress.IPv4Network("10.0.0.0/8"), 24),
    Pool(ipaddress.IPv6Network("fd50:6f6e:746f:8000::/49"), 64),
)


def namespace_name(net: Network) -> str:
    return f"1-{net.id[:10]}"


def vxlan_name(net: Network) -> str:
    return f"vxlan{net.vni}"


def _bridge_frames_skip_netfilter() -> None:
    """In the overlay namespace (which has no rules): br_netfilter's per-namespace
    switches default to on once the module is loaded, and would send every
    bridged frame through the IP hooks for nothing."""
    for family in ("iptables", "ip6tables", "arptables"):
        path = Path(f"/proc/sys/net/bridge/bridge-nf-call-{family}")
        if path.exists():
            path.write_text("0\n")


class OverlayDriver(NetworkDriver):
    name = "overlay"
    capabilities = Capabilities(
        scope="global",
        allocator=CLUSTER_ALLOCATOR,
        needs_gateway_bridge=True,
        host_reachable=False,
        default_route=False,
        needs_cluster=True,
        families=(4, 6),
        options=(*links.MTU_OPTIONS, ENCRYPTED),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sockets: dict[str, IPRoute] = {}  # network id -> netlink in its namespace
        self._tuned: set[str] = set()  # network ids whose namespace has its sysctls

    @property
    def ipr(self) -> Any:
        return self.ctx.ipr  # the host namespace

    def validate(self, spec: NetworkSpec) -> None:
        super().validate(spec)
        if ENCRYPTED in spec.options:
            # Fail closed: never carry an "encrypted" network in the clear.
            lacking = encryption.missing()
            if lacking:
                raise InvalidArgument(
                    "encrypted overlay networks need IPsec ESP with AES-GCM or WireGuard, and "
                    f"this kernel has no {', no '.join(lacking)}: create the network without "
                    "-o encrypted"
                )
            raise InvalidArgument(
                "encrypted overlay networks are not implemented yet (the kernel could: "
                "see docs/security.md): create the network without -o encrypted"
            )

    def default_mtu(self, spec: NetworkSpec) -> int:
        overhead = VXLAN_OVERHEAD[addresses.family_of(self.ctx.vtep) if self.ctx.vtep else 4]
        return links.mtu_option(spec, self.ctx.underlay_mtu - overhead)

    def address_pools(self, host_pools: list[Pool]) -> list[Pool]:
        # Cluster-wide subnets: the host's pools say nothing about other hosts.
        return list(OVERLAY_POOLS)

    # namespaces --------------------------------------------------------------

    def namespace(self, net: Network) -> Path:
        return self.ctx.netns_dir / namespace_name(net)

    def _nl(self, net: Network) -> IPRoute:
        nl = self._sockets.get(net.id)
        if nl is None:
            nl = netns.iproute(self.namespace(net))
            self._sockets[net.id] = nl
        return nl

    def present(self, net: Network) -> bool:
        return netns.is_mounted(self.namespace(net))

    def create_network(self, net: Network) -> None:
        """Nothing host-wide: the namespace comes with the first local endpoint."""

    def delete_network(self, net: Network) -> None:
        self.last_endpoint_gone(net)

    def first_endpoint(self, net: Network, peers: list[Peer]) -> None:
        """The overlay namespace with br0 and the VTEP (idempotent), and every
        known peer programmed."""
        fresh = not self.present(net)
        self._ensure_namespace(net)
        if fresh:
            for peer in peers:
                self.add_peer(net, peer)

    def _ensure_namespace(self, net: Network) -> None:
        path = self.namespace(net)
        if not netns.is_mounted(path):
            path.unlink(missing_ok=True)
            netns.create(path)
        if net.id not in self._tuned:
            # Once per daemon and network, so namespaces made before also get it.
            netns.run_in(path, _bridge_frames_skip_netfilter)
            self._tuned.add(net.id)
        nl = self._nl(net)
        if not nl.link_lookup(ifname=BRIDGE):
            nl.link("add", ifname=BRIDGE, kind="bridge", mtu=net.mtu)
        br = nl.link_lookup(ifname=BRIDGE)[0]
        links.pin_bridge_address(nl, br)
        wanted = [(s.gateway, addresses.prefixlen_of(s.subnet)) for s in net.subnets]
        links.ensure_addresses(nl, br, wanted)
        nl.link("set", index=br, state="up")
        vx = vxlan_name(net)
        if not nl.link_lookup(ifname=vx):
            self._add_vtep(net, path, vx)
        idx = nl.link_lookup(ifname=vx)[0]
        nl.link("set", index=idx, master=br, state="up")

    def _add_vtep(self, net: Network, path: Path, vx: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            # Created by the host's socket: the VXLAN UDP socket stays in the
            # host namespace while the device is born in the overlay one.
            # An IPv6 underlay: the same device with an IPv6 local address.
            local = "vxlan_local6" if addresses.family_of(self.ctx.vtep) == 6 else "vxlan_local"
            self.ipr.link(
                "add",
                ifname=vx,
                kind="vxlan",
                vxlan_id=net.vni,
                vxlan_port=self.ctx.vxlan_port,
                **{local: self.ctx.vtep},
                vxlan_learning=0,
                vxlan_proxy=1,
                mtu=net.mtu,
                net_ns_fd=fd,
            )
        finally:
            os.close(fd)

    def last_endpoint_gone(self, net: Network) -> None:
        """Drop the namespace: its bridge, VTEP and veth ends go with it."""
        nl = self._sockets.pop(net.id, None)
        if nl is not None:
            nl.close()
        self._tuned.discard(net.id)
        netns.remove(self.namespace(net))

    def owned_namespaces(self, net: Network) -> list[Path]:
        return [self.namespace(net)] if self.present(net) else []

    # endpoints ---------------------------------------------------------------

    def join(self, net: Network, att: Attachment, sandbox: Path) -> None:
        att.host_ifname = links.host_ifname(att.id)
        nl = self._nl(net)
        # The host side is born in the overlay namespace, next to br0.
        links.add_veth(self.ipr, att, net.mtu, sandbox, host_ns=self.namespace(net))
        try:
            br = nl.link_lookup(ifname=BRIDGE)[0]
            nl.link("set", ifname=att.host_ifname, master=br, state="up")
            links.configure_container_side(sandbox, att)
        except BaseException:
            self.leave(net, att)
            raise

    def leave(self, net: Network, att: Attachment) -> None:
        if att.host_ifname and self.present(net):
            links.delete_link(self._nl(net), att.host_ifname)

    def endpoint_present(self, net: Network, att: Attachment) -> bool:
        return (
            bool(att.host_ifname)
            and self.present(net)
            and bool(self._nl(net).link_lookup(ifname=att.host_ifname))
        )

    # peers -------------------------------------------------------------------

    def _vtep_index(self, net: Network) -> int | None:
        if not self.present(net):
            return None
        found = self._nl(net).link_lookup(ifname=vxlan_name(net))
        return found[0] if found else None

    def add_peer(self, net: Network, peer: Peer) -> None:
        vx = self._vtep_index(net)
        if vx is None:
            return
        if addresses.family_of(peer.vtep) != addresses.family_of(self.ctx.vtep):
            # One VXLAN device carries one underlay family: every host of a
            # cluster must advertise an address of the same family.
            log.warning("peer %s has VTEP %s, which our VTEP %s cannot reach: not programmed",
                        ",".join(peer.ips), peer.vtep, self.ctx.vtep)  # fmt: skip
            return
        nl = self._nl(net)
        for ip in peer.ips:
            nl.neigh("replace", dst=ip, lladdr=peer.mac, ifindex=vx, state=NUD_PERMANENT)
        nl.fdb(
            "replace", ifindex=vx, lladdr=peer.mac, dst=peer.vtep, state=NUD_PERMANENT,
            flags=NTF_SELF,
        )  # fmt: skip

    def remove_peer(self, net: Network, peer: Peer) -> None:
        vx = self._vtep_index(net)
        if vx is None:
            return
        nl = self._nl(net)
        calls: list[tuple[str, dict[str, Any]]] = [
            ("neigh", {"dst": ip, "lladdr": peer.mac, "ifindex": vx}) for ip in peer.ips
        ]
        calls.append(("fdb", {"ifindex": vx, "lladdr": peer.mac}))
        for table, args in calls:
            try:
                getattr(nl, table)("del", **args)
            except NetlinkError as exc:
                links.ignore_missing(exc)

    def set_peers(self, net: Network, peers: list[Peer]) -> None:
        """Kernel peers = exactly `peers`: add what is missing or different,
        remove what is not wanted."""
        if self._vtep_index(net) is None:
            return
        want = {ip: (p.mac, p.vtep) for p in peers for ip in p.ips}
        have = self.peers(net)
        for peer in peers:
            if any(have.get(ip) != (peer.mac, peer.vtep) for ip in peer.ips):
                self.add_peer(net, peer)
        for ip, (mac, vtep) in have.items():
            if ip not in want:
                self.remove_peer(net, Peer([ip], mac, vtep))

    def programmed_peers(self, net: Network) -> list[Peer]:
        return [Peer([ip], mac, vtep) for ip, (mac, vtep) in self.peers(net).items() if vtep]

    def peers(self, net: Network) -> dict[str, tuple[str, str]]:
        """Programmed peers: IP -> (MAC, VTEP), from the kernel's tables."""
        vx = self._vtep_index(net)
        if vx is None:
            return {}
        nl = self._nl(net)
        vteps = {}
        for entry in nl.fdb("dump", ifindex=vx):
            mac, dst = entry.get("NDA_LLADDR"), entry.get("NDA_DST")
            if mac and dst and entry.get("ifindex") == vx:
                vteps[mac] = dst
        out = {}
        for entry in nl.neigh("dump", ifindex=vx):
            ip, mac = entry.get("NDA_DST"), entry.get("NDA_LLADDR")
            if ip and mac and entry["state"] & NUD_PERMANENT:
                out[ip] = (mac, vteps.get(mac, ""))
        return out

    # describing --------------------------------------------------------------

    def describe_network(self, net: Network) -> dict[str, Any]:
        """What `inspect` shows of the overlay on this host (the seed's digging)."""
        out: dict[str, Any] = {"VNI": net.vni}
        if not self.present(net):
            return {**out, "Overlay": {}}
        nl = self._nl(net)
        br = nl.link_lookup(ifname=BRIDGE)
        ports = [
            link.get("ifname")
            for link in nl.link("dump")
            if br and link.get("IFLA_MASTER") == br[0]
        ]
        out["Overlay"] = {
            "Namespace": str(self.namespace(net)),
            "Bridge": BRIDGE,
            "VXLAN": vxlan_name(net),
            "VNI": net.vni,
            "LocalVTEP": self.ctx.vtep,
            "UDPPort": self.ctx.vxlan_port,
            "BridgePorts": sorted(p for p in ports if p),
            "Peers": {ip: {"MAC": m, "VTEP": v} for ip, (m, v) in sorted(self.peers(net).items())},
        }
        return out

    def endpoint_netlink(self, net: Network) -> IPRoute:
        return self._nl(net)

    def host_namespace(self, net: Network) -> str:
        return str(self.namespace(net))

    def trace_devices(self, net: Network, att: Attachment) -> list[dict[str, Any]]:
        ns = str(self.namespace(net))
        return [
            {"kind": "veth", "device": att.host_ifname, "namespace": ns},
            {"kind": "bridge", "device": BRIDGE, "namespace": ns},
            {"kind": "vxlan", "device": vxlan_name(net), "vni": net.vni, "namespace": ns,
             "local_vtep": self.ctx.vtep, "udp_port": self.ctx.vxlan_port},
            {"kind": "underlay", "note": "the VXLAN socket lives in the host namespace"},
        ]  # fmt: skip


def prepare_underlay(ipr: IPRoute, advertise: str, vxlan_port: int) -> tuple[str, int]:
    """This host's VTEP address (from an interface name or an address of
    ours) and the underlay MTU, after checking the VXLAN port is free."""
    links_by_index = {link["index"]: link for link in ipr.link("dump")}
    for link in links_by_index.values():
        kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
        port = link.get(("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_PORT"))
        if kind == "vxlan" and port == vxlan_port:
            raise ValueError(
                f"VXLAN port {vxlan_port} is already used by device {link.get('ifname')} "
                "on this host: pick another with --vxlan-port"
            )
    # An interface's IPv4 address first (as before), else its IPv6 one: an
    # IPv6 underlay is chosen by naming an IPv6 address or an IPv6-only link.
    for family in (socket.AF_INET, socket.AF_INET6):
        for addr in ipr.addr("dump", family=family):
            link = links_by_index.get(addr["index"])
            address = addr.get("address")
            if link is None or advertise not in (link.get("ifname"), address):
                continue
            if family == socket.AF_INET6 and ipaddress.ip_address(address).is_link_local:
                continue  # a VTEP must be routable, not valid on one link only
            return address, link.get("IFLA_MTU") or 1500
    raise ValueError(f"--cluster-advertise {advertise!r} is no interface or address of this host")
