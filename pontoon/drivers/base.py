"""The contract between the engine and a network driver.

A driver says what it is (`Capabilities`) and does the kernel work of its
networks through hooks. The engine decides *when* (validation before anything
exists, the network made once, its first and last endpoint on this host,
joins and leaves); the driver decides *how*. Hooks run on the daemon's kernel
thread and talk netlink synchronously; they must be idempotent, because
restart reconciliation calls them again on whatever is left from before.

Nothing outside drivers/ asks which kind a driver is: it asks its
capabilities or calls a hook.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pontoon.core.model import Attachment, Network, NetworkSpec
from pontoon.errors import InvalidArgument
from pontoon.ipam.pools import Pool

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from pontoon.firewall import NetworkRules

# Where a driver's endpoints get addresses from.
LOCAL_ALLOCATOR = "local"  # this host's store
CLUSTER_ALLOCATOR = "cluster"  # the cluster store, shared by every host


@dataclasses.dataclass(frozen=True)
class Capabilities:
    scope: str = "local"  # "global": the network exists on every host of the cluster
    allocator: str = LOCAL_ALLOCATOR
    # Endpoints reach the outside (and published ports reach them) through an
    # extra endpoint on pontoon_gwbridge, as the seed's overlay containers do.
    needs_gateway_bridge: bool = False
    # The host routes to endpoints itself: a published port may DNAT to them.
    host_reachable: bool = True
    # Endpoints on this network may publish ports at all.
    publishes_ports: bool = True
    # Endpoints get a default route through the network's gateway (when primary).
    default_route: bool = True
    # The network needs pontoon's cluster store (refused on a host without one).
    needs_cluster: bool = False
    options: tuple[str, ...] = ()
    # The address families its networks may have subnets of.
    families: tuple[int, ...] = (4, 6)


@dataclasses.dataclass
class DriverContext:
    """What drivers may use of the host: its netlink socket (on the kernel
    thread), where namespaces are pinned, and the daemon's settings (the
    underlay's are filled in when the host joins a cluster)."""

    ipr: IPRoute
    netns_dir: Path
    userland_proxy: bool = True
    underlay_mtu: int = 1500
    vtep: str = ""
    vxlan_port: int = 4789


@dataclasses.dataclass
class Peer:
    """An endpoint on another host, as a driver programs it."""

    ips: list[str]
    mac: str
    vtep: str


class NetworkDriver(abc.ABC):
    name: str
    capabilities: Capabilities = Capabilities()

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    # -- network -------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> None:
        """Refuse options this driver does not know or cannot honour (no kernel
        change). Runs before anything is allocated."""
        for key in spec.options:
            if key not in self.capabilities.options:
                raise InvalidArgument(f"unknown {self.name} network option {key!r}")

    def default_mtu(self, spec: NetworkSpec) -> int:
        return 1500

    def address_pools(self, host_pools: list[Pool]) -> list[Pool]:
        """Where subnets come from when none is asked for."""
        return host_pools

    def routes_to_avoid(self, routes: list[Any]) -> list[Any]:
        """Of the host's routes, those a new subnet must not overlap (a
        network on a link the host is on may share that link's prefix)."""
        return routes

    def check_device_free(self, name: str) -> None:
        """Refuse a device name another network or program already uses."""
        return None

    def device_name(self, spec: NetworkSpec, net_id: str) -> str:
        """The host device the host firewall knows the network by ("" if none)."""
        return ""

    @abc.abstractmethod
    def create_network(self, net: Network) -> None:
        """Make the network's host-wide devices exist and be configured (idempotent)."""

    @abc.abstractmethod
    def delete_network(self, net: Network) -> None:
        """Remove the network's devices; missing ones are fine."""

    def first_endpoint(self, net: Network, peers: list[Peer]) -> None:
        """The first local endpoint is about to join: make what only endpoints
        need (idempotent; also called again after a restart)."""
        return None

    def last_endpoint_gone(self, net: Network) -> None:
        """No local endpoint is left on the network."""
        return None

    def firewall_rules(self, net: Network) -> NetworkRules | None:
        """What the host firewall filters for this network (None: nothing)."""
        return None

    # -- endpoints -----------------------------------------------------------

    @abc.abstractmethod
    def join(self, net: Network, att: Attachment, netns: Path) -> None:
        """Plug `att` into the namespace: interface, addresses, routes. Sets
        att.host_ifname when the driver has a host side."""

    @abc.abstractmethod
    def leave(self, net: Network, att: Attachment) -> None:
        """Unplug `att`; missing devices (or a namespace already gone) are fine."""

    @abc.abstractmethod
    def endpoint_present(self, net: Network, att: Attachment) -> bool:
        """Whether the endpoint's devices still exist (for reconciliation)."""

    def prepare_publish(self, net: Network, att: Attachment) -> None:
        """A port is published to this endpoint (e.g. hairpin on its bridge port)."""
        return None

    # -- peers on other hosts (global networks) -------------------------------

    def programmed_peers(self, net: Network) -> list[Peer]:
        """The remote endpoints the kernel has for the network now (restart)."""
        return []

    def set_peers(self, net: Network, peers: list[Peer]) -> None:
        """Program exactly these remote endpoints (global networks only)."""
        return None

    def add_peer(self, net: Network, peer: Peer) -> None:
        """Program one remote endpoint."""
        return None

    def remove_peer(self, net: Network, peer: Peer) -> None:
        """Unprogram one remote endpoint; missing entries are fine."""
        return None

    def sweep(self, networks: list[Network], attachments: list[Attachment]) -> list[str]:
        """Remove host devices this driver made that no record knows (restart);
        returns their names."""
        return []

    # -- what the rest of pontoon may know -------------------------------------

    def owned_namespaces(self, net: Network) -> list[Path]:
        """Namespace files this driver keeps for the network on this host."""
        return []

    def describe_network(self, net: Network) -> dict[str, Any]:
        """Devices and state shown by `network inspect`, topology and trace."""
        return {}

    def endpoint_netlink(self, net: Network) -> IPRoute:
        """A netlink socket in the namespace holding endpoints' host sides."""
        return self.ctx.ipr

    def host_namespace(self, net: Network) -> str:
        """Where endpoints' host sides live: "host" or a namespace path."""
        return "host"

    def host_interface(self, net: Network, att: Attachment) -> str:
        """The endpoint's device in the host's own namespace, if it has one
        (CNI results list it so that `bandwidth` can shape it)."""
        return att.host_ifname if self.host_namespace(net) == "host" else ""

    def trace_devices(self, net: Network, att: Attachment) -> list[dict[str, Any]]:
        """The devices a packet from this endpoint crosses, in order, after the
        endpoint's own interface."""
        return []
