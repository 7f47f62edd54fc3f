"""The bridge driver: one Linux bridge per network, one veth pair per endpoint.

    container netns                 host netns
    eth0 (IP/prefix, default route) ── vethXXXXXXXXXXX ── <bridge> (gateway IPs)

The veth is created with its peer already inside the sandbox and already named
as asked (one netlink request instead of create + move + rename), then the
sandbox side gets its addresses and routes through a netlink socket opened in
that namespace.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pontoon.core import addresses
from pontoon.core.model import Attachment, Network, NetworkSpec
from pontoon.drivers import links
from pontoon.drivers.base import Capabilities, NetworkDriver
from pontoon.errors import Conflict, InvalidArgument
from pontoon.firewall import NetworkRules

BRIDGE_NAME_OPTIONS = ("com.docker.network.bridge.name", "bridge.name")
# Docker's per-family gateway modes: "nat" (the default: masquerade outbound)
# or "routed" (no NAT; the next hop routes the subnet back to this host).
GATEWAY_MODE_OPTIONS = {
    4: "com.docker.network.bridge.gateway_mode_ipv4",
    6: "com.docker.network.bridge.gateway_mode_ipv6",
}
GATEWAY_MODES = ("nat", "routed")
BRIDGE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ, ASCII only
OUR_BRIDGE = re.compile(r"^pt-[0-9a-f]{12}$")
OUR_VETH = re.compile(r"^veth[0-9a-f]{11}$")


def bridge_name_option(options: dict[str, str]) -> str:
    for key in BRIDGE_NAME_OPTIONS:
        if key in options:
            name = options[key]
            if not BRIDGE_NAME_RE.fullmatch(name) or name in (".", ".."):
                raise InvalidArgument(f"invalid bridge name {name!r}: 1-15 of [A-Za-z0-9_.-]")
            return name
    return ""


def routed_families(options: dict[str, str]) -> tuple[int, ...]:
    """The families whose gateway mode is "routed" (validated at create)."""
    return tuple(f for f, key in GATEWAY_MODE_OPTIONS.items() if options.get(key) == "routed")


def check_gateway_modes(options: dict[str, str]) -> None:
    for key in GATEWAY_MODE_OPTIONS.values():
        if key in options and options[key] not in GATEWAY_MODES:
            raise InvalidArgument(
                f"invalid {key} {options[key]!r}: use {' or '.join(GATEWAY_MODES)}"
            )


class BridgeDriver(NetworkDriver):
    name = "bridge"
    capabilities = Capabilities(
        options=(*BRIDGE_NAME_OPTIONS, *links.MTU_OPTIONS, *GATEWAY_MODE_OPTIONS.values())
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridge_index: dict[str, int] = {}

    @property
    def ipr(self) -> Any:
        return self.ctx.ipr

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

    # -- network ---------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> None:
        super().validate(spec)
        links.mtu_option(spec, 1500)
        bridge_name_option(spec.options)
        check_gateway_modes(spec.options)
        if spec.ipv6 and not links.ipv6_enabled():
            raise InvalidArgument(
                "IPv6 is disabled on this host (ipv6.disable=1 or "
                "net.ipv6.conf.default.disable_ipv6=1): no --ipv6 network"
            )

    def default_mtu(self, spec: NetworkSpec) -> int:
        return links.mtu_option(spec, 1500)

    def device_name(self, spec: NetworkSpec, net_id: str) -> str:
        return bridge_name_option(spec.options) or f"pt-{net_id[:12]}"

    def check_device_free(self, name: str) -> None:
        if self._lookup(name) is not None:
            raise Conflict(f"a device named {name} already exists on this host")

    def create_network(self, net: Network) -> None:
        idx = self._lookup(net.bridge)
        if idx is None:
            self.ipr.link("add", ifname=net.bridge, kind="bridge", mtu=net.mtu)
            idx = self._lookup(net.bridge)
            assert idx is not None
        self._bridge_index[net.bridge] = idx
        links.pin_bridge_address(self.ipr, idx)  # also a bridge an older release made
        links.refuse_router_advertisements(net.bridge)
        wanted = [(s.gateway, addresses.prefixlen_of(s.subnet)) for s in net.subnets]
        links.ensure_addresses(self.ipr, idx, wanted)
        self.ipr.link("set", index=idx, state="up")
        links.enable_forwarding({s.family for s in net.subnets})
        if not self.ctx.userland_proxy:
            # Without the proxy, the host's connections to 127.0.0.1 are NATed to
            # containers, which the kernel allows only with route_localnet. Read
            # by the kernel thread's namespace: this host's bridge only.
            Path(f"/proc/sys/net/ipv4/conf/{net.bridge}/route_localnet").write_text("1\n")

    def delete_network(self, net: Network) -> None:
        self._bridge_index.pop(net.bridge, None)
        links.delete_link(self.ipr, net.bridge)

    def firewall_rules(self, net: Network) -> NetworkRules:
        return NetworkRules(
            bridge=net.bridge,
            subnets=tuple(s.subnet for s in net.subnets),
            internal=net.internal,
            icc=net.icc,
            routed=routed_families(net.options),
        )

    # -- endpoints -------------------------------------------------------------

    def join(self, net: Network, att: Attachment, netns: Path) -> None:
        att.host_ifname = links.host_ifname(att.id)
        master = self.bridge_index(net.bridge)
        links.add_veth(self.ipr, att, net.mtu, netns, master=master)
        try:
            links.configure_container_side(netns, att)
        except BaseException:
            self.leave(net, att)
            raise

    def leave(self, net: Network, att: Attachment) -> None:
        if att.host_ifname:
            links.delete_link(self.ipr, att.host_ifname)  # takes the peer with it

    def endpoint_present(self, net: Network, att: Attachment) -> bool:
        return bool(att.host_ifname) and self._lookup(att.host_ifname) is not None

    def prepare_publish(self, net: Network, att: Attachment) -> None:
        """Let the bridge send a frame back out the port it came in on. A
        container reaching its own published port needs it: br_netfilter
        DNATs that frame back to the container and bridges it, not routes it."""
        idx = self._lookup(att.host_ifname)
        if idx is not None:
            self.ipr.brport("set", index=idx, mode=1)

    def sweep(self, networks: list[Network], attachments: list[Attachment]) -> list[str]:
        veths = {a.host_ifname for a in attachments}
        bridges = {n.bridge for n in networks}
        gone = []
        for link in self.ipr.link("dump"):
            name = link.get("ifname")
            kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            stray_veth = kind == "veth" and OUR_VETH.match(name) and name not in veths
            stray_bridge = kind == "bridge" and OUR_BRIDGE.match(name) and name not in bridges
            if stray_veth or stray_bridge:
                links.delete_link(self.ipr, name)
                gone.append(name)
        return gone

    # -- describing --------------------------------------------------------------

    def describe_network(self, net: Network) -> dict[str, Any]:
        return {"BridgePorts": links.bridge_ports(self.ipr, net.bridge)}

    def trace_devices(self, net: Network, att: Attachment) -> list[dict[str, Any]]:
        return [
            {"kind": "veth", "device": att.host_ifname, "namespace": "host"},
            {"kind": "bridge", "device": net.bridge, "namespace": "host", "network": net.name},
        ]
