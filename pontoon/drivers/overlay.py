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

import errno
import ipaddress
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pontoon.drivers.base import NetworkDriver
from pontoon.drivers.bridge import add_veth, configure_container_side, host_ifname
from pontoon.model import Endpoint, Network
from pontoon.sandbox import netns

BRIDGE = "br0"
NUD_PERMANENT = 0x80
NTF_SELF = 0x02  # the VXLAN device's own FDB, not its master bridge's
VXLAN_OVERHEAD = 50


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


def _missing_ok(exc: NetlinkError) -> None:
    if exc.code not in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        raise exc


class OverlayDriver(NetworkDriver):
    name = "overlay"

    def __init__(self, ipr: IPRoute, netns_dir: Path, vtep: str, vxlan_port: int) -> None:
        self.ipr = ipr  # the host namespace
        self.netns_dir = netns_dir
        self.vtep = vtep
        self.vxlan_port = vxlan_port
        self._sockets: dict[str, IPRoute] = {}  # network id -> netlink in its namespace
        self._tuned: set[str] = set()  # network ids whose namespace has its sysctls

    # namespaces --------------------------------------------------------------

    def namespace(self, net: Network) -> Path:
        return self.netns_dir / namespace_name(net)

    def _nl(self, net: Network) -> IPRoute:
        nl = self._sockets.get(net.id)
        if nl is None:
            nl = netns.iproute(self.namespace(net))
            self._sockets[net.id] = nl
        return nl

    def present(self, net: Network) -> bool:
        return netns.is_mounted(self.namespace(net))

    def create_network(self, net: Network) -> None:
        """The overlay namespace with br0 and the VTEP (idempotent)."""
        path = self.namespace(net)
        if not netns.is_mounted(path):
            path.unlink(missing_ok=True)
            netns.create(path)
        if net.id not in self._tuned:
            # Once per daemon and network, so namespaces made before also get it.
            netns.run_in(path, _bridge_frames_skip_netfilter)
            self._tuned.add(net.id)
        nl = self._nl(net)
        subnet = ipaddress.IPv4Network(net.subnet)
        if not nl.link_lookup(ifname=BRIDGE):
            nl.link("add", ifname=BRIDGE, kind="bridge", mtu=net.mtu)
        br = nl.link_lookup(ifname=BRIDGE)[0]
        have = {(a.get("address"), a["prefixlen"]) for a in nl.addr("dump", index=br, family=2)}
        if (net.gateway, subnet.prefixlen) not in have:
            nl.addr("add", index=br, address=net.gateway, prefixlen=subnet.prefixlen)
        nl.link("set", index=br, state="up")
        vx = vxlan_name(net)
        if not nl.link_lookup(ifname=vx):
            fd = os.open(path, os.O_RDONLY)
            try:
                # Created by the host's socket: the VXLAN UDP socket stays in the
                # host namespace while the device is born in the overlay one.
                self.ipr.link(
                    "add",
                    ifname=vx,
                    kind="vxlan",
                    vxlan_id=net.vni,
                    vxlan_local=self.vtep,
                    vxlan_port=self.vxlan_port,
                    vxlan_learning=0,
                    vxlan_proxy=1,
                    mtu=net.mtu,
                    net_ns_fd=fd,
                )
            finally:
                os.close(fd)
        idx = nl.link_lookup(ifname=vx)[0]
        nl.link("set", index=idx, master=br, state="up")

    def delete_network(self, net: Network) -> None:
        """Drop the namespace: its bridge, VTEP and veth ends go with it."""
        nl = self._sockets.pop(net.id, None)
        if nl is not None:
            nl.close()
        self._tuned.discard(net.id)
        netns.remove(self.namespace(net))

    # endpoints ---------------------------------------------------------------

    def join(self, net: Network, ep: Endpoint, sandbox: Path) -> None:
        ep.host_ifname = host_ifname(ep.id)
        nl = self._nl(net)
        # The host side is born in the overlay namespace, next to br0.
        add_veth(self.ipr, ep, net.mtu, sandbox, host_ns=self.namespace(net))
        try:
            br = nl.link_lookup(ifname=BRIDGE)[0]
            nl.link("set", ifname=ep.host_ifname, master=br, state="up")
            configure_container_side(sandbox, ep)
        except BaseException:
            self.leave(net, ep)
            raise

    def leave(self, net: Network, ep: Endpoint) -> None:
        if not ep.host_ifname or not self.present(net):
            return
        try:
            self._nl(net).link("del", ifname=ep.host_ifname)
        except NetlinkError as exc:
            _missing_ok(exc)

    def endpoint_present(self, net: Network, ep: Endpoint) -> bool:
        return (
            bool(ep.host_ifname)
            and self.present(net)
            and bool(self._nl(net).link_lookup(ifname=ep.host_ifname))
        )

    # peers -------------------------------------------------------------------

    def add_peer(self, net: Network, ip: str, mac: str, vtep: str) -> None:
        nl = self._nl(net)
        vx = nl.link_lookup(ifname=vxlan_name(net))[0]
        nl.neigh("replace", dst=ip, lladdr=mac, ifindex=vx, state=NUD_PERMANENT)
        nl.fdb("replace", ifindex=vx, lladdr=mac, dst=vtep, state=NUD_PERMANENT, flags=NTF_SELF)

    def remove_peer(self, net: Network, ip: str, mac: str) -> None:
        if not self.present(net):
            return
        nl = self._nl(net)
        found = nl.link_lookup(ifname=vxlan_name(net))
        if not found:
            return
        for call in (
            lambda: nl.neigh("del", dst=ip, lladdr=mac, ifindex=found[0]),
            lambda: nl.fdb("del", ifindex=found[0], lladdr=mac),
        ):
            try:
                call()
            except NetlinkError as exc:
                _missing_ok(exc)

    def peers(self, net: Network) -> dict[str, tuple[str, str]]:
        """Programmed peers: IP -> (MAC, VTEP), from the kernel's tables."""
        nl = self._nl(net)
        found = nl.link_lookup(ifname=vxlan_name(net))
        if not found:
            return {}
        vx = found[0]
        vteps = {}
        for entry in nl.fdb("dump", ifindex=vx):
            mac, dst = entry.get("NDA_LLADDR"), entry.get("NDA_DST")
            if mac and dst and entry.get("ifindex") == vx:
                vteps[mac] = dst
        out = {}
        for entry in nl.neigh("dump", ifindex=vx, family=2):
            ip, mac = entry.get("NDA_DST"), entry.get("NDA_LLADDR")
            if ip and mac and entry["state"] & NUD_PERMANENT:
                out[ip] = (mac, vteps.get(mac, ""))
        return out

    def describe(self, net: Network) -> dict[str, object]:
        """What `inspect` shows of the overlay on this host (the seed's digging)."""
        if not self.present(net):
            return {}
        nl = self._nl(net)
        ports = [
            link.get("ifname")
            for link in nl.link("dump")
            if link.get("IFLA_MASTER") == nl.link_lookup(ifname=BRIDGE)[0]
        ]
        return {
            "Namespace": str(self.namespace(net)),
            "Bridge": BRIDGE,
            "VXLAN": vxlan_name(net),
            "VNI": net.vni,
            "LocalVTEP": self.vtep,
            "UDPPort": self.vxlan_port,
            "BridgePorts": sorted(p for p in ports if p),
            "Peers": {ip: {"MAC": m, "VTEP": v} for ip, (m, v) in sorted(self.peers(net).items())},
        }
