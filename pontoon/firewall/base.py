"""The interface the daemon uses to program packet filtering and NAT."""

from __future__ import annotations

import abc
import dataclasses


@dataclasses.dataclass(frozen=True)
class NetworkRules:
    """What the firewall needs to know about one bridge network."""

    bridge: str
    subnet: str
    internal: bool = False
    masquerade: bool = True
    icc: bool = True  # False: containers on this bridge cannot reach each other


@dataclasses.dataclass(frozen=True)
class PortRule:
    """One published port: host (ip, proto, port) -> container (ip, port).

    host_ip "0.0.0.0" means every local address of the host. `bridge` is the
    device the container sits behind (for hairpin NAT)."""

    host_ip: str
    proto: str
    host_port: int
    container_ip: str
    container_port: int
    bridge: str


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """This host's VXLAN endpoint. Encapsulated traffic between VTEPs is
    exempt from connection tracking: it needs no NAT or state, and tracking
    every overlay packet in the host namespace costs a fifth of an overlay's
    throughput on a small machine (docs/benchmarks.md)."""

    local_ip: str
    udp_port: int


class Firewall(abc.ABC):
    """`userland_proxy` picks the port-mapping mode (SPEC §6): with the proxy,
    the host's own connections to 127.0.0.1 are left to it; without, every
    path is kernel NAT (route_localnet on bridges, loopback guarded)."""

    def __init__(self, userland_proxy: bool = True) -> None:
        self.userland_proxy = userland_proxy
        # Set before the start-up sync() when this host has overlays.
        self.tunnel: Tunnel | None = None

    @abc.abstractmethod
    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        """Replace everything we own with exactly this state, atomically.
        Used at start-up: established flows keep their conntrack entries."""

    @abc.abstractmethod
    def add_ports(self, rules: list[PortRule]) -> None:
        """Publish ports, all in one transaction."""

    @abc.abstractmethod
    def remove_ports(self, rules: list[PortRule]) -> None:
        """Unpublish ports, all in one transaction; missing ones are fine."""

    @abc.abstractmethod
    def add_network(self, net: NetworkRules) -> None: ...

    @abc.abstractmethod
    def remove_network(self, net: NetworkRules) -> None: ...

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove everything we own (used by tests and `lab down`)."""

    @abc.abstractmethod
    def dump(self) -> str:
        """Our rules in the backend's own syntax, for `inspect` and debugging."""
