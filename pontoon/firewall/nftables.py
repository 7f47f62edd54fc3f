"""nftables backend: one table, `ip pontoon`, changed through libnftables.

Layout (see docs/architecture.md):

    forward (filter hook)   iifname vmap @egress      -> chain from-<bridge>
                            oifname @internal drop
    from-<bridge>           oifname "<bridge>" accept (same network)
                            [drop, for --internal]
                            ct status dnat accept     (published ports)
                            oifname @bridges drop     (isolation)
    postrouting (nat hook)  ip saddr @nat_subnets oifname != @bridges masquerade

Per-network state lives in set and map elements plus one small chain, so
adding or removing a network is a handful of lines in one transaction and the
cost of a lookup does not grow with the number of networks. Only names we
generate (bridge devices) and parsed addresses are ever written into rules.
"""

from __future__ import annotations

import ipaddress

import nftables

from pontoon.firewall.base import Firewall, NetworkRules

TABLE = "pontoon"
FAMILY = "ip"

SKELETON = f"""
table {FAMILY} {TABLE} {{
    set bridges {{ type ifname; }}
    set internal {{ type ifname; }}
    set nat_subnets {{ type ipv4_addr; flags interval; }}
    map egress {{ type ifname : verdict; }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname vmap @egress
        oifname @internal drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
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
    t = f"{FAMILY} {TABLE}"
    chain = _chain(net.bridge)
    br = _quote(net.bridge)
    cmds = [
        f"add chain {t} {chain}",
        f"flush chain {t} {chain}",
        f"add rule {t} {chain} oifname {br} accept",
    ]
    if net.internal:
        cmds.append(f"add rule {t} {chain} drop")
    cmds += [
        f"add rule {t} {chain} ct status dnat accept",
        f"add rule {t} {chain} oifname @bridges drop",
        f"add element {t} bridges {{ {br} }}",
        f"add element {t} egress {{ {br} : jump {chain} }}",
    ]
    if net.internal:
        cmds.append(f"add element {t} internal {{ {br} }}")
    if net.masquerade and not net.internal:
        subnet = ipaddress.ip_network(net.subnet)
        cmds.append(f"add element {t} nat_subnets {{ {subnet} }}")
    return cmds


def remove_network_commands(net: NetworkRules) -> list[str]:
    t = f"{FAMILY} {TABLE}"
    chain = _chain(net.bridge)
    br = _quote(net.bridge)
    cmds = [
        f"delete element {t} egress {{ {br} }}",
        f"delete element {t} bridges {{ {br} }}",
    ]
    if net.internal:
        cmds.append(f"delete element {t} internal {{ {br} }}")
    if net.masquerade and not net.internal:
        cmds.append(f"delete element {t} nat_subnets {{ {ipaddress.ip_network(net.subnet)} }}")
    cmds.append(f"delete chain {t} {chain}")
    return cmds


class NftablesFirewall(Firewall):
    def __init__(self) -> None:
        self._nft = nftables.Nftables()
        self._nft.set_handle_output(False)

    def run(self, script: str) -> str:
        """Run a script as one transaction: all of it applies or none does."""
        rc, out, err = self._nft.cmd(script)
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with status {rc}")
        return out

    def sync(self, networks: list[NetworkRules]) -> None:
        # "add; delete; define" replaces our table atomically whether or not it
        # existed: packets see either the old ruleset or the new one.
        lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", SKELETON]
        for net in networks:
            lines += network_commands(net)
        self.run("\n".join(lines))

    def add_network(self, net: NetworkRules) -> None:
        self.run("\n".join(network_commands(net)))

    def remove_network(self, net: NetworkRules) -> None:
        self.run("\n".join(remove_network_commands(net)))

    def teardown(self) -> None:
        self.run(f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}")

    def dump(self) -> str:
        return self.run(f"list table {FAMILY} {TABLE}")
