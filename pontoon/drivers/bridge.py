"""The bridge driver: one Linux bridge per network, one veth pair per endpoint.

    container netns                 host netns
    eth0 (IP/prefix, default route) ── vethXXXXXXXXXXX ── <bridge> (gateway IP)

The veth is created with its peer already inside the sandbox and already named
`eth0` (one netlink request instead of create + move + rename), then the
sandbox side gets its address and routes through a netlink socket opened in
that namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pontoon.drivers.base import NetworkDriver
from pontoon.model import Endpoint, Network
from pontoon.sandbox import netns


def host_ifname(endpoint_id: str) -> str:
    return "veth" + endpoint_id[:11]


def _ignore_missing(exc: NetlinkError) -> None:
    if exc.code not in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        raise exc


class BridgeDriver(NetworkDriver):
    name = "bridge"

    def __init__(self, ipr: IPRoute, route_localnet: bool = False) -> None:
        self.ipr = ipr  # bound to the daemon's (host) namespace
        self.route_localnet = route_localnet
        self._bridge_index: dict[str, int] = {}

    def _lookup(self, ifname: str) -> int | None:
        found = self.ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def bridge_index(self, bridge: str) -> int:
        idx = self._bridge_index.get(bridge)
        if idx is None:
            idx = self._lookup(bridge)
            if idx is None:
                raise RuntimeError(f"bridge {bridge} does not exist")
            self._bridge_index[bridge] = idx
        return idx

    def create_network(self, net: Network) -> None:
        ipr = self.ipr
        idx = self._lookup(net.bridge)
        if idx is None:
            ipr.link("add", ifname=net.bridge, kind="bridge", mtu=net.mtu)
            idx = self._lookup(net.bridge)
            assert idx is not None
        self._bridge_index[net.bridge] = idx
        subnet = ipaddress.IPv4Network(net.subnet)
        have = {(a.get("address"), a["prefixlen"]) for a in ipr.addr("dump", index=idx, family=2)}
        if (net.gateway, subnet.prefixlen) not in have:
            ipr.addr("add", index=idx, address=net.gateway, prefixlen=subnet.prefixlen)
        ipr.link("set", index=idx, state="up")
        if self.route_localnet:
            # Read by the kernel thread's namespace: this host's bridge only.
            Path(f"/proc/sys/net/ipv4/conf/{net.bridge}/route_localnet").write_text("1\n")

    def delete_network(self, net: Network) -> None:
        self._bridge_index.pop(net.bridge, None)
        try:
            self.ipr.link("del", ifname=net.bridge)
        except NetlinkError as exc:
            _ignore_missing(exc)

    def join(self, net: Network, ep: Endpoint, sandbox: Path) -> None:
        ep.host_ifname = host_ifname(ep.id)
        master = self.bridge_index(net.bridge)
        add_veth(self.ipr, ep, net.mtu, sandbox)
        try:
            self.ipr.link("set", ifname=ep.host_ifname, master=master, state="up")
            configure_container_side(sandbox, ep)
        except BaseException:
            self.leave(net, ep)
            raise

    def leave(self, net: Network, ep: Endpoint) -> None:
        if not ep.host_ifname:
            return
        try:
            self.ipr.link("del", ifname=ep.host_ifname)  # takes the peer with it
        except NetlinkError as exc:
            _ignore_missing(exc)

    def set_hairpin(self, ep: Endpoint) -> None:
        """Let the bridge send a frame back out the port it came in on. A
        container reaching its own published port needs it: br_netfilter
        DNATs that frame back to the container and bridges it, not routes it."""
        self.ipr.brport("set", index=self.ipr.link_lookup(ifname=ep.host_ifname)[0], mode=1)

    def endpoint_present(self, net: Network, ep: Endpoint) -> bool:
        return bool(ep.host_ifname) and self._lookup(ep.host_ifname) is not None


def add_veth(
    ipr: IPRoute, ep: Endpoint, mtu: int, sandbox: Path, host_ns: Path | None = None
) -> None:
    """One netlink request makes the pair with both ends where they belong:
    the host side in `host_ns` (ipr's namespace when None), the container side
    already in the sandbox, named eth<N>, with its MAC."""
    fds = [os.open(sandbox, os.O_RDONLY)]
    extra: dict[str, object] = {}
    try:
        if host_ns is not None:
            fds.append(os.open(host_ns, os.O_RDONLY))
            extra["net_ns_fd"] = fds[1]
        ipr.link(
            "add",
            ifname=ep.host_ifname,
            kind="veth",
            mtu=mtu,
            peer={"ifname": ep.ifname, "net_ns_fd": fds[0], "address": ep.mac, "mtu": mtu},
            **extra,
        )
    finally:
        for fd in fds:
            os.close(fd)


def configure_container_side(sandbox: Path, ep: Endpoint) -> None:
    """Address, link up and (for the default-route network) the default route;
    `lo` too, on the socket we have open anyway (sandboxes are made without it)."""
    with netns.iproute(sandbox) as ipr:
        ipr.link("set", index=1, state="up")  # lo is always ifindex 1
        idx = ipr.link_lookup(ifname=ep.ifname)[0]
        ipr.addr("add", index=idx, address=ep.ip, prefixlen=ep.prefixlen)
        ipr.link("set", index=idx, state="up")
        if ep.default_route and ep.gateway:
            ipr.route("add", dst="0.0.0.0/0", gateway=ep.gateway, oif=idx)


def describe_endpoint(ipr: IPRoute, sandbox: Path, ep: Endpoint) -> dict[str, object]:
    """What the seed found with `ethtool -S` and `ip link`: both ends of the
    veth with their ifindexes, and the container side's MTU. `ipr` is bound
    to the namespace holding the host side (the host's, or an overlay's)."""
    info: dict[str, object] = {"HostInterface": ep.host_ifname}
    found = ipr.link_lookup(ifname=ep.host_ifname) if ep.host_ifname else []
    info["HostIfindex"] = found[0] if found else None
    try:
        with netns.iproute(sandbox) as nipr:
            links = nipr.link("get", ifname=ep.ifname)
            link = links[0]
            info["Ifindex"] = link["index"]
            info["PeerIfindex"] = link.get("IFLA_LINK")
            info["MTU"] = link.get("IFLA_MTU")
    except (OSError, NetlinkError, IndexError):
        info["Ifindex"] = None
    return info


def sandbox_routes(sandbox: Path) -> list[str]:
    """The container's routing table, as `ip route` prints it (the seed's first look).
    Empty when the sandbox is gone (the container is exiting right now)."""
    try:
        return _routes(sandbox)
    except (OSError, NetlinkError):
        return []


def _routes(sandbox: Path) -> list[str]:
    out = []
    with netns.iproute(sandbox) as nipr:
        names = {link["index"]: link.get("ifname") for link in nipr.link("dump")}
        for route in nipr.route("dump", family=2, table=254):
            dst = route.get("dst")
            dest = f"{dst}/{route['dst_len']}" if dst else "default"
            parts = [dest]
            if route.get("gateway"):
                parts.append(f"via {route.get('gateway')}")
            parts.append(f"dev {names.get(route.get('oif'), '?')}")
            if route.get("prefsrc"):
                parts.append(f"src {route.get('prefsrc')}")
            out.append(" ".join(parts))
    return out


def bridge_ports(ipr: IPRoute, bridge: str) -> list[str]:
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        return []
    return sorted(
        link.get("ifname") for link in ipr.link("dump") if link.get("IFLA_MASTER") == found[0]
    )
