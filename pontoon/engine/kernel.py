"""The kernel thread: every netlink and nftables call of the daemon runs here.

pyroute2's synchronous IPRoute drives its own event loop, which cannot run in
the thread of the daemon's asyncio loop; one dedicated thread also serializes
kernel changes, so drivers can be plain synchronous code.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute

from pontoon.core import addresses
from pontoon.core.addresses import IPNetwork
from pontoon.firewall import Firewall, create_firewall

T = TypeVar("T")


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
        # Created on the kernel thread by setup(); used only there.
        self.ipr: IPRoute
        self.firewall: Firewall

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def setup(self) -> None:
        self.ipr = IPRoute()
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

    def close(self) -> None:
        def work() -> None:
            if hasattr(self, "ipr"):
                self.ipr.close()

        self._executor.submit(work).result()
        self._executor.shutdown(wait=True)

    # Host queries used by IPAM and reconciliation ------------------------

    def host_routes(self, exclude_ifnames: set[str]) -> list[IPNetwork]:
        """Prefixes the host already routes, in both families (except default
        routes, link-local and multicast ones, and our own bridges'): a new
        network must not shadow them."""
        names = {link["index"]: link.get("ifname") for link in self.ipr.link("dump")}
        routes: list[IPNetwork] = []
        for family in addresses.FAMILIES:
            for route in self.ipr.route("dump", family=addresses.socket_family(family), table=254):
                dst = route.get("dst")
                if dst is None or route["dst_len"] == 0:
                    continue
                if names.get(route.get("oif")) in exclude_ifnames:
                    continue
                prefix = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
                if not (prefix.is_link_local or prefix.is_multicast):
                    routes.append(prefix)
        return routes
