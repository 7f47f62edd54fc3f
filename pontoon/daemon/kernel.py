"""The kernel thread: every netlink and nftables call of the daemon runs here.

pyroute2's synchronous IPRoute drives its own event loop, which cannot run in
the thread of the daemon's asyncio loop; one dedicated thread also serializes
kernel changes, so drivers can be plain synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute

from pontoon.drivers.bridge import BridgeDriver
from pontoon.drivers.overlay import OverlayDriver
from pontoon.firewall import Firewall, Tunnel, create_firewall

T = TypeVar("T")

OUR_VETH = re.compile(r"^veth[0-9a-f]{11}$")
OUR_BRIDGE = re.compile(r"^pt-[0-9a-f]{12}$")


def _sysctl(name: str, value: str, missing_ok: bool = False) -> None:
    path = Path("/proc/sys") / name
    if missing_ok and not path.exists():
        return
    path.write_text(value + "\n")


class Kernel:
    def __init__(self, firewall_backend: str, userland_proxy: bool = True) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pontoon-kernel")
        self._firewall_backend = firewall_backend
        self.userland_proxy = userland_proxy
        self.overlay: OverlayDriver | None = None
        # Created on the kernel thread by setup(); used only there.
        self.ipr: IPRoute
        self.bridge: BridgeDriver
        self.firewall: Firewall

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def setup(self) -> None:
        self.ipr = IPRoute()
        # Without the proxy, the host's connections to 127.0.0.1 are NATed to
        # containers, which the kernel allows only with route_localnet.
        self.bridge = BridgeDriver(self.ipr, route_localnet=not self.userland_proxy)
        self.firewall = create_firewall(self._firewall_backend, self.userland_proxy)
        # All of these are per network namespace: they change this host only.
        # Containers reach the outside only if the host forwards; bridged
        # frames pass netfilter so a hairpin reply is un-NATed (as Docker
        # relies on br_netfilter too).
        _sysctl("net/ipv4/ip_forward", "1")
        # A trace cut short by a killed daemon may have left its marking table.
        from pontoon.trace.monitor import remove_rules

        remove_rules()
        _sysctl("net/bridge/bridge-nf-call-iptables", "1", missing_ok=True)

    def setup_overlay(self, netns_dir: Path, advertise: str, vxlan_port: int) -> tuple[str, int]:
        """Find our VTEP address (an interface name or an address of ours), check
        the VXLAN port is free, and make the overlay driver. Returns the VTEP
        address and the underlay MTU."""
        vtep, mtu = self.underlay(advertise)
        for link in self.ipr.link("dump"):
            kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            if kind != "vxlan":
                continue
            port = link.get(("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_PORT"))
            if port == vxlan_port:
                raise ValueError(
                    f"VXLAN port {vxlan_port} is already used by device {link.get('ifname')} "
                    "on this host: pick another with --vxlan-port"
                )
        self.overlay = OverlayDriver(self.ipr, netns_dir, vtep, vxlan_port)
        # Applied by the start-up sync(), which follows.
        self.firewall.tunnel = Tunnel(vtep, vxlan_port)
        return vtep, mtu

    def underlay(self, advertise: str) -> tuple[str, int]:
        links = {link["index"]: link for link in self.ipr.link("dump")}
        for addr in self.ipr.addr("dump", family=2):
            link = links.get(addr["index"])
            if link is None:
                continue
            if advertise in (link.get("ifname"), addr.get("address")):
                return addr.get("address"), link.get("IFLA_MTU") or 1500
        raise ValueError(
            f"--cluster-advertise {advertise!r} is no interface or address of this host"
        )

    def close(self) -> None:
        def work() -> None:
            if hasattr(self, "ipr"):
                self.ipr.close()

        self._executor.submit(work).result()
        self._executor.shutdown(wait=True)

    # Host queries used by IPAM and reconciliation ------------------------

    def host_routes(self, exclude_ifnames: set[str]) -> list[ipaddress.IPv4Network]:
        """Prefixes the host already routes (except the default route and our
        own bridges): a new network must not shadow them."""
        names = {link["index"]: link.get("ifname") for link in self.ipr.link("dump")}
        routes = []
        for route in self.ipr.route("dump", family=2, table=254):
            dst = route.get("dst")
            if dst is None or route["dst_len"] == 0:
                continue
            if names.get(route.get("oif")) in exclude_ifnames:
                continue
            routes.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
        return routes

    def link_names(self) -> dict[str, dict[str, Any]]:
        out = {}
        for link in self.ipr.link("dump"):
            info = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            out[link.get("ifname")] = {"index": link["index"], "kind": info}
        return out

    def link_exists(self, ifname: str) -> bool:
        return bool(self.ipr.link_lookup(ifname=ifname))

    def delete_link(self, ifname: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        with contextlib.suppress(NetlinkError):
            self.ipr.link("del", ifname=ifname)
