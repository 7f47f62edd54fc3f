"""nftables backend: one table, `ip pontoon`, changed through libnftables.

Layout (docs/architecture.md has the packet walk):

    guard (raw prerouting)   iifname != "lo" ip daddr 127.0.0.0/8 drop
                             [overlays: ip daddr VTEP udp dport VXLAN notrack]
    untrack (raw output)     [overlays: ip saddr VTEP udp dport VXLAN notrack]
    prerouting (dstnat)      fib daddr type local jump portmap
    output (dstnat)          [proxy mode: ip daddr 127.0.0.0/8 return]
                             fib daddr type local jump portmap
    portmap                  dnat to daddr . proto . port via @portmap_ip
                             dnat to proto . port via @portmap_any
    forward (filter)         iifname vmap @egress  -> chain from-<bridge>
                             oifname @internal drop
    from-<bridge>            oifname "<bridge>" accept (same network)
                             [drop, for --internal]
                             ct status dnat accept     (published ports)
                             oifname @bridges drop     (isolation)
    postrouting (srcnat)     ct status dnat saddr . daddr @self_hairpin masquerade
                             [kernel mode: ip saddr 127.0.0.0/8 oifname @bridges masquerade]
                             ip saddr @nat_subnets oifname != @bridges masquerade

Per-network and per-port state lives in set and map elements (hash lookups,
so the cost of a packet does not grow with the number of networks or
published ports), and every change is one transaction. Only names we generate
(bridge devices) and parsed addresses and numbers are written into rules.
"""

from __future__ import annotations

import contextlib
import ipaddress

import nftables

from pontoon.firewall.base import Firewall, NetworkRules, PortRule, Tunnel
from pontoon.portmap.spec import ANY

TABLE = "pontoon"
FAMILY = "ip"
T = f"{FAMILY} {TABLE}"


def tunnel_rules(tunnel: Tunnel | None) -> tuple[str, str]:
    """(guard rule, output chain) that leave VXLAN between VTEPs untracked;
    nothing without overlays, so other hosts pay for no extra hook."""
    if tunnel is None:
        return "", ""
    vtep, port = ipaddress.IPv4Address(tunnel.local_ip), int(tunnel.udp_port)
    chain = f"""chain untrack {{
        type filter hook output priority raw; policy accept;
        ip saddr {vtep} udp dport {port} notrack
    }}"""
    return f"ip daddr {vtep} udp dport {port} notrack", chain


def skeleton(userland_proxy: bool, tunnel: Tunnel | None = None) -> str:
    # With the proxy, the host's own connections to 127.0.0.1 reach it; without,
    # they are NATed too, which needs route_localnet on bridges and a masquerade
    # of the loopback source. The guard keeps other hosts from abusing that
    # (the 2020 route_localnet class of bugs) in both modes.
    loopback_output = "ip daddr 127.0.0.0/8 return" if userland_proxy else ""
    loopback_masq = "" if userland_proxy else "ip saddr 127.0.0.0/8 oifname @bridges masquerade"
    guard_untrack, untrack_chain = tunnel_rules(tunnel)
    return f"""
table {T} {{
    set bridges {{ type ifname; }}
    set internal {{ type ifname; }}
    set nat_subnets {{ type ipv4_addr; flags interval; }}
    map egress {{ type ifname : verdict; }}
    map portmap_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
    map portmap_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
    set self_hairpin {{ type ipv4_addr . ipv4_addr; }}
    chain guard {{
        type filter hook prerouting priority raw; policy accept;
        iifname != "lo" ip daddr 127.0.0.0/8 drop
        {guard_untrack}
    }}
    {untrack_chain}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local jump portmap
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        {loopback_output}
        fib daddr type local jump portmap
    }}
    chain portmap {{
        dnat ip to ip daddr . meta l4proto . th dport map @portmap_ip
        dnat ip to meta l4proto . th dport map @portmap_any
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname vmap @egress
        oifname @internal drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat ip saddr . ip daddr @self_hairpin masquerade
        {loopback_masq}
        ip saddr @nat_subnets oifname != @bridges masquerade
    }}
}}
"""


class NftError(RuntimeError):
    pass


def _chain(bridge: str) -> str:
    return f"from-{bridge}"


def _quote(ifname: str) -> str:
    # Device names are generated or validated to [A-Za-z0-9_.-]; quoting keeps
    # names such as "br-1" from being read as expressions.
    return f'"{ifname}"'


def network_commands(net: NetworkRules) -> list[str]:
    chain = _chain(net.bridge)
    br = _quote(net.bridge)
    cmds = [f"add chain {T} {chain}", f"flush chain {T} {chain}"]
    if net.icc:
        cmds.append(f"add rule {T} {chain} oifname {br} accept")
    if net.internal:
        cmds.append(f"add rule {T} {chain} drop")
    cmds += [
        f"add rule {T} {chain} ct status dnat accept",
        f"add rule {T} {chain} oifname @bridges drop",
        f"add element {T} bridges {{ {br} }}",
        f"add element {T} egress {{ {br} : jump {chain} }}",
    ]
    if net.internal:
        cmds.append(f"add element {T} internal {{ {br} }}")
    if net.masquerade and not net.internal:
        subnet = ipaddress.ip_network(net.subnet)
        cmds.append(f"add element {T} nat_subnets {{ {subnet} }}")
    return cmds


def remove_network_commands(net: NetworkRules) -> list[str]:
    chain = _chain(net.bridge)
    br = _quote(net.bridge)
    cmds = [
        f"delete element {T} egress {{ {br} }}",
        f"delete element {T} bridges {{ {br} }}",
    ]
    if net.internal:
        cmds.append(f"delete element {T} internal {{ {br} }}")
    if net.masquerade and not net.internal:
        cmds.append(f"delete element {T} nat_subnets {{ {ipaddress.ip_network(net.subnet)} }}")
    cmds.append(f"delete chain {T} {chain}")
    return cmds


def _port_elements(rule: PortRule) -> tuple[str, str]:
    """(map name, element key) for one published port."""
    proto, port = rule.proto, int(rule.host_port)
    if rule.host_ip == ANY:
        return "portmap_any", f"{proto} . {port}"
    return "portmap_ip", f"{ipaddress.IPv4Address(rule.host_ip)} . {proto} . {port}"


def port_commands(rules: list[PortRule]) -> list[str]:
    cmds = []
    for rule in rules:
        name, key = _port_elements(rule)
        target = f"{ipaddress.IPv4Address(rule.container_ip)} . {int(rule.container_port)}"
        cmds.append(f"add element {T} {name} {{ {key} : {target} }}")
    for cip in sorted({r.container_ip for r in rules}):
        addr = ipaddress.IPv4Address(cip)
        cmds.append(f"add element {T} self_hairpin {{ {addr} . {addr} }}")
    return cmds


def remove_port_commands(rules: list[PortRule]) -> list[str]:
    cmds = []
    for rule in rules:
        name, key = _port_elements(rule)
        cmds.append(f"delete element {T} {name} {{ {key} }}")
    for cip in sorted({r.container_ip for r in rules}):
        addr = ipaddress.IPv4Address(cip)
        cmds.append(f"delete element {T} self_hairpin {{ {addr} . {addr} }}")
    return cmds


class NftablesFirewall(Firewall):
    def __init__(self, userland_proxy: bool = True) -> None:
        super().__init__(userland_proxy)
        self._nft = nftables.Nftables()
        self._nft.set_handle_output(False)

    def run(self, script: str) -> str:
        """Run a script as one transaction: all of it applies or none does."""
        rc, out, err = self._nft.cmd(script)
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with status {rc}")
        return out

    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        # "add; delete; define" replaces our table atomically whether or not it
        # existed: packets see either the old ruleset or the new one.
        lines = [f"add table {T}", f"delete table {T}", skeleton(self.userland_proxy, self.tunnel)]
        for net in networks:
            lines += network_commands(net)
        lines += port_commands(ports)
        self.run("\n".join(lines))

    def add_network(self, net: NetworkRules) -> None:
        self.run("\n".join(network_commands(net)))

    def remove_network(self, net: NetworkRules) -> None:
        self.run("\n".join(remove_network_commands(net)))

    def add_ports(self, rules: list[PortRule]) -> None:
        if rules:
            self.run("\n".join(port_commands(rules)))

    def remove_ports(self, rules: list[PortRule]) -> None:
        if not rules:
            return
        cmds = remove_port_commands(rules)
        try:
            self.run("\n".join(cmds))
        except NftError:
            # Some element was already gone: remove the rest one by one.
            for cmd in cmds:
                with contextlib.suppress(NftError):
                    self.run(cmd)

    def teardown(self) -> None:
        self.run(f"add table {T}\ndelete table {T}")

    def dump(self) -> str:
        return self.run(f"list table {T}")
