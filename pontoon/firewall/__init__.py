"""Firewall backends: what pontoon programs into netfilter.

Each backend owns its own tables or chains and changes them in one atomic
transaction per change. `create_firewall` picks the backend from the daemon's
--firewall-backend flag.
"""

from __future__ import annotations

from pontoon.firewall.base import Firewall, NetworkRules


def create_firewall(backend: str) -> Firewall:
    if backend == "nftables":
        from pontoon.firewall.nftables import NftablesFirewall

        return NftablesFirewall()
    raise ValueError(f"unknown firewall backend {backend!r}")


__all__ = ["Firewall", "NetworkRules", "create_firewall"]
