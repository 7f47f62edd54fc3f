"""The macvlan driver: endpoints sit directly on a host interface's link.

    container netns                    host netns
    eth0 (macvlan, own MAC) ── parent (e.g. eth0) ── the physical LAN

Each endpoint is a macvlan device on the parent, born inside the sandbox with
its own MAC, in bridge mode by default: endpoints of one parent reach each
other inside the kernel, and everything else on the parent's link (other
hosts, the LAN's router as gateway) directly, with no NAT and no bridge. As
with Docker's macvlan driver the host itself cannot reach its own macvlan
endpoints through the parent, so ports are not published: the endpoints have
addresses of the LAN already.

Options (Docker's names): parent=IFACE (required), macvlan_mode=bridge|private|
vepa|passthru, com.docker.network.driver.mtu.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from pontoon.core.model import Attachment, Network, NetworkSpec
from pontoon.drivers import links
from pontoon.drivers.base import Capabilities, NetworkDriver
from pontoon.errors import InvalidArgument
from pontoon.sandbox import netns

PARENT = "parent"
MODE = "macvlan_mode"
# IFLA_MACVLAN_MODE values (linux/if_link.h).
MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}


class MacvlanDriver(NetworkDriver):
    name = "macvlan"
    capabilities = Capabilities(
        host_reachable=False,
        publishes_ports=False,
        options=(PARENT, MODE, *links.MTU_OPTIONS),
    )

    def _parent_index(self, parent: str) -> int:
        found = self.ctx.ipr.link_lookup(ifname=parent)
        if not found:
            raise InvalidArgument(f"parent interface {parent!r} does not exist on this host")
        return int(found[0])

    def validate(self, spec: NetworkSpec) -> None:
        super().validate(spec)
        parent = spec.options.get(PARENT, "")
        if not parent:
            raise InvalidArgument("macvlan networks need a parent interface: -o parent=IFACE")
        mode = spec.options.get(MODE, "bridge")
        if mode not in MODES:
            raise InvalidArgument(f"invalid {MODE} {mode!r}: use one of {', '.join(MODES)}")
        self._parent_index(parent)
        links.mtu_option(spec, 1500)

    def routes_to_avoid(self, routes: list[Any]) -> list[Any]:
        # The subnet is the parent's LAN: the host routes it already, rightly.
        return []

    def default_mtu(self, spec: NetworkSpec) -> int:
        parent = self.ctx.ipr.link("get", index=self._parent_index(spec.options[PARENT]))[0]
        return links.mtu_option(spec, parent.get("IFLA_MTU") or 1500)

    def create_network(self, net: Network) -> None:
        """Nothing to make: the parent is the user's, the gateway the LAN's."""

    def delete_network(self, net: Network) -> None:
        """Nothing was made."""

    def join(self, net: Network, att: Attachment, sandbox: Path) -> None:
        parent = self._parent_index(net.options[PARENT])
        fd = os.open(sandbox, os.O_RDONLY)
        try:
            # Born inside the sandbox under its final name: no rename, no move.
            self.ctx.ipr.link(
                "add",
                ifname=att.ifname,
                kind="macvlan",
                link=parent,
                macvlan_mode=MODES[net.options.get(MODE, "bridge")],
                address=att.mac,
                mtu=net.mtu,
                net_ns_fd=fd,
            )
        finally:
            os.close(fd)
        try:
            links.configure_container_side(sandbox, att)
        except BaseException:
            self.leave(net, att)
            raise

    def leave(self, net: Network, att: Attachment) -> None:
        if not netns.is_mounted(Path(att.netns)):
            return  # the namespace and the device with it are gone
        try:
            with netns.iproute(att.netns) as ipr:
                links.delete_link(ipr, att.ifname)
        except OSError:
            pass  # the namespace went away under us

    def endpoint_present(self, net: Network, att: Attachment) -> bool:
        try:
            with netns.iproute(att.netns) as ipr:
                return bool(ipr.link_lookup(ifname=att.ifname))
        except (OSError, NetlinkError):
            return False

    def describe_network(self, net: Network) -> dict[str, Any]:
        return {"Parent": net.options.get(PARENT, ""), "Mode": net.options.get(MODE, "bridge")}

    def trace_devices(self, net: Network, att: Attachment) -> list[dict[str, Any]]:
        return [
            {"kind": "macvlan", "device": att.ifname, "parent": net.options.get(PARENT, ""),
             "mode": net.options.get(MODE, "bridge"), "namespace": "host"},
        ]  # fmt: skip
