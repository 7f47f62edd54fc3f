"""The interface the daemon uses to program packet filtering and NAT."""

from __future__ import annotations

import abc
import dataclasses
import ipaddress
import logging

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NetworkRules:
    """What the firewall needs to know about one bridge network: its device,
    its subnets (any family, one per family), and how traffic leaves it."""

    bridge: str
    subnets: tuple[str, ...] = ()
    internal: bool = False
    masquerade: bool = True
    icc: bool = True  # False: containers on this bridge cannot reach each other
    # Families whose traffic leaves unNATed (Docker's gateway_mode_ipvN=routed):
    # the next hop must route the subnet back to this host.
    routed: tuple[int, ...] = ()

    def subnets_of(self, family: int) -> list[str]:
        return [s for s in self.subnets if ipaddress.ip_network(s).version == family]

    def nat_subnets(self, family: int) -> list[str]:
        """The subnets of `family` whose outbound traffic is masqueraded."""
        if not self.masquerade or self.internal or family in self.routed:
            return []
        return self.subnets_of(family)


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


def vtep_set(vteps: set[str] | None, tunnel: Tunnel | None) -> set[str]:
    """The VTEP addresses VXLAN is accepted from: the cluster's (from the
    store), and always our own. Parsed, so nothing but an address reaches a
    rule. Only those of our VTEP's family: a VXLAN device carries one
    underlay family, so a VTEP of the other can never be a peer."""
    addrs = {ipaddress.ip_address(a) for a in vteps or ()}
    if tunnel is not None:
        local = ipaddress.ip_address(tunnel.local_ip)
        addrs = {a for a in addrs if a.version == local.version} | {local}
    return {str(a) for a in addrs}


PortKey = tuple[str, str, int]


def port_key(rule: PortRule) -> PortKey:
    """A published port is identified by where it listens."""
    return rule.host_ip, rule.proto, int(rule.host_port)


@dataclasses.dataclass
class DesiredState:
    """What a firewall last applied, kept from the calls that changed it, so
    that check() can tell when something else changed the kernel's copy and
    rebuild it without asking the daemon."""

    networks: dict[str, NetworkRules] = dataclasses.field(default_factory=dict)  # by bridge
    ports: dict[PortKey, PortRule] = dataclasses.field(default_factory=dict)
    # The cluster's VTEP addresses (programmed from the store, never learned);
    # None until the cluster agent first says, when the first sync keeps the
    # set a previous daemon left in the kernel.
    vteps: set[str] | None = None
    applied: bool = False  # a sync() wrote all of it: only then is there a model to check
    version: int = 0  # bumped on every change, so views of it can be cached

    def replace(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        self.networks = {n.bridge: n for n in networks}
        self.ports = {port_key(p): p for p in ports}
        self.applied = True
        self.version += 1

    def clear(self) -> None:
        self.networks, self.ports, self.applied = {}, {}, False
        self.vteps = None
        self.version += 1

    def set_vteps(self, vteps: set[str]) -> None:
        self.vteps = {str(ipaddress.ip_address(a)) for a in vteps}  # a bad one: nothing changes
        self.version += 1

    def add_network(self, net: NetworkRules) -> None:
        self.networks[net.bridge] = net
        self.version += 1

    def remove_network(self, net: NetworkRules) -> None:
        self.networks.pop(net.bridge, None)
        self.version += 1

    def add_ports(self, rules: list[PortRule]) -> None:
        self.ports.update((port_key(p), p) for p in rules)
        self.version += 1

    def remove_ports(self, rules: list[PortRule]) -> None:
        for rule in rules:
            self.ports.pop(port_key(rule), None)
        self.version += 1

    def container_ips(self) -> set[str]:
        return {p.container_ip for p in self.ports.values()}


class Firewall(abc.ABC):
    """`userland_proxy` picks the port-mapping mode (SPEC §6): with the proxy,
    the host's own connections to 127.0.0.1 are left to it; without, every
    path is kernel NAT (route_localnet on bridges, loopback guarded)."""

    def __init__(self, userland_proxy: bool = True) -> None:
        self.userland_proxy = userland_proxy
        # Set before the start-up sync() when this host has overlays.
        self.tunnel: Tunnel | None = None
        self.desired = DesiredState()
        self.repairs = 0  # times check() found our rules changed and re-applied them
        # VTEPs the host's own datapath already uses (peers programmed before
        # a restart or an upgrade), set before the start-up sync: kept, with
        # the previous ruleset's, until the cluster store is read.
        self.known_vteps: set[str] = set()

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
    def set_vteps(self, vteps: set[str]) -> None:
        """The cluster's VTEP addresses (ours is always added): VXLAN from any
        other source is dropped before decapsulation. Applied as one
        transaction when the table is up; otherwise kept for the next sync."""

    def accepted_vteps(self) -> set[str]:
        """The VTEP set as it is (or will be) programmed."""
        return vtep_set(self.desired.vteps, self.tunnel)

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove everything we own (used by tests and `lab down`)."""

    @abc.abstractmethod
    def dump(self) -> str:
        """Our rules in the backend's own syntax, for `inspect` and debugging."""

    def drift(self) -> list[str]:
        """How the kernel's copy of our rules differs from self.desired, in
        words; empty when it does not (or the backend cannot tell)."""
        return []

    def check(self) -> list[str]:
        """Compare the kernel's copy of our rules with what we last applied;
        when something else removed or changed it (`nft flush ruleset`,
        another tool), re-apply all of it atomically, log what was wrong and
        count it. Returns what was wrong. Runs on the kernel thread."""
        if not self.desired.applied:
            return []
        problems = self.drift()
        if problems:
            shown = "; ".join(problems[:5]) + (
                f"; and {len(problems) - 5} more" if problems[5:] else ""
            )
            log.warning(
                "firewall: our rules were changed by something else (%s): re-applying", shown
            )
            # Counted before the re-apply: a port can answer again before
            # sync() returns, and whoever saw it answer must see the count.
            self.repairs += 1
            self.sync(list(self.desired.networks.values()), list(self.desired.ports.values()))
        return problems
