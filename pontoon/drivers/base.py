"""The interface between the daemon and a network driver.

Driver methods run on the daemon's kernel thread and talk netlink
synchronously; they must be idempotent, because restart reconciliation calls
them again on whatever is left from before.
"""

from __future__ import annotations

import abc
import ipaddress
from pathlib import Path

from pontoon.model import Endpoint, Network


def mac_for(ip: str) -> str:
    """02:42 + the IPv4 address, as Docker did: stable across restarts of a
    container keeping its IP, so peers' ARP caches stay right."""
    octets = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in octets)


class NetworkDriver(abc.ABC):
    name: str

    @abc.abstractmethod
    def create_network(self, net: Network) -> None:
        """Make the network's devices exist and be configured (idempotent)."""

    @abc.abstractmethod
    def delete_network(self, net: Network) -> None:
        """Remove the network's devices; missing ones are fine."""

    @abc.abstractmethod
    def join(self, net: Network, ep: Endpoint, sandbox: Path) -> None:
        """Plug `ep` into the sandbox: interface, address, routes."""

    @abc.abstractmethod
    def leave(self, net: Network, ep: Endpoint) -> None:
        """Unplug `ep`; missing devices are fine."""

    @abc.abstractmethod
    def endpoint_present(self, net: Network, ep: Endpoint) -> bool:
        """Whether the endpoint's host side still exists (for reconciliation)."""
