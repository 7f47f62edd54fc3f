"""Firewall backends: what pontoon programs into netfilter.

Each backend owns its own tables or chains and changes them in one atomic
transaction per change. `create_firewall` picks the backend from the daemon's
--firewall-backend flag.
"""

from __future__ import annotations

from pontoon.firewall.base import Firewall, NetworkRules, PortRule, Tunnel


def create_firewall(backend: str, userland_proxy: bool = True) -> Firewall:
    if backend == "nftables":
        from pontoon.firewall.nft.host import NftablesFirewall

        return NftablesFirewall(userland_proxy)
    if backend == "iptables":
        from pontoon.firewall.iptables import IptablesFirewall

        return IptablesFirewall(userland_proxy)
    raise ValueError(f"unknown firewall backend {backend!r}")


__all__ = ["Firewall", "NetworkRules", "PortRule", "Tunnel", "create_firewall"]
