"""The engine: networks and attachments over drivers, IPAM, firewall and store.

Front ends (the HTTP API, pontoon's own container runtime, the CNI and Docker
front ends) call the public methods here. Each takes the one engine lock, so
a change from a front end and a change from the cluster store never
interleave.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pontoon import ipam
from pontoon.core.model import Attachment, Network, NetworkSpec, Owner, Peer
from pontoon.daemon.config import DaemonConfig
from pontoon.dns.server import Resolver
from pontoon.dns.views import DnsViews
from pontoon.drivers.base import DriverContext
from pontoon.drivers.base import Peer as DriverPeer
from pontoon.drivers.registry import DriverRegistry
from pontoon.engine.attachments import Attachments, AttachRequest, AttachResult
from pontoon.engine.kernel import Kernel
from pontoon.engine.networks import Networks
from pontoon.engine.ports import Ports
from pontoon.engine.state import State, find
from pontoon.errors import NotFound
from pontoon.portmap.spec import PortRequest
from pontoon.store import Store

if TYPE_CHECKING:
    from pontoon.cluster.agent import ClusterAgent

log = logging.getLogger(__name__)

# Whether an owner of a kind still exists (a front end's judgement, used by
# restart reconciliation). Kinds without a judge are never taken for stray.
OwnerJudge = Callable[[Owner], bool]


class Engine:
    def __init__(self, config: DaemonConfig, store: Store, kernel: Kernel) -> None:
        self.config = config
        self.store = store
        self.kernel = kernel
        self.lock = asyncio.Lock()
        self.state = State(store)
        self.ipam = ipam.Ipam(store)
        self.dns_views = DnsViews(self.state, lambda: list(config.dns))
        self.resolver = Resolver(self.dns_views)
        # kernel.ipr exists once kernel.setup() ran on the kernel thread.
        self.drivers = DriverRegistry(
            DriverContext(kernel.ipr, config.netns_dir, userland_proxy=config.userland_proxy)
        )
        self.networks = Networks(self.state, self.drivers, kernel, self.ipam, config.pools)
        self.ports = Ports(self.state, self.drivers, kernel)
        self.attachments = Attachments(
            self.state, self.drivers, kernel, self.ipam, self.networks, self.ports,
            self.resolver, config.netns_dir,
        )  # fmt: skip
        self.cluster: ClusterAgent | None = None
        self.judges: dict[str, OwnerJudge] = {}

    def join_cluster(self, agent: ClusterAgent, vtep: str, vxlan_port: int, mtu: int) -> None:
        self.cluster = agent
        self.networks.cluster = agent
        self.attachments.cluster = agent
        ctx = self.drivers.ctx
        ctx.vtep, ctx.vxlan_port, ctx.underlay_mtu = vtep, vxlan_port, mtu

    # -- networks ---------------------------------------------------------------

    async def create_network(self, spec: NetworkSpec) -> Network:
        async with self.lock:
            return await self.networks.create(spec)

    async def gateway_network(self, families: Iterable[int] = (4,)) -> Network:
        """pontoon_gwbridge, made on first need, with a subnet of each family
        asked (added in place): for a front end whose runtime plugs the
        gateway attachment itself (dockerd)."""
        async with self.lock:
            return await self.networks.gateway_network(families)

    async def check_network(
        self, spec: NetworkSpec, also_taken: list[str] | None = None
    ) -> list[ipam.SubnetPlan]:
        """What create_network would refuse, with nothing made; the subnets it
        would take (avoiding `also_taken` too)."""
        async with self.lock:
            return await self.networks.check(spec, also_taken or [])

    async def remove_network(self, ref: str) -> None:
        async with self.lock:
            await self.networks.remove(self.state.find_network(ref))

    def find_network(self, ref: str) -> Network:
        return self.state.find_network(ref)

    def network_attachments(self, net: Network) -> list[Attachment | Peer]:
        """Every attachment of a network, here and (global networks) on other hosts."""
        return [*self.state.on_network(net.id), *self.state.remote_on(net.id)]

    # -- attachments ------------------------------------------------------------

    async def attach(self, req: AttachRequest) -> AttachResult:
        async with self.lock:
            return await self.attachments.attach(req)

    async def detach(self, att_ref: str) -> None:
        async with self.lock:
            att = self.state.attachments.get(att_ref) or self.find_attachment(att_ref)
            await self.attachments.detach(att)

    async def detach_owner(self, owner_key: str, network: str = "", ifname: str = "") -> None:
        """Every attachment of an owner, or those on `network` and/or named
        `ifname` (a CNI DEL); nothing to do is fine, a network gone too."""
        async with self.lock:
            network_id = ""
            if network:
                try:
                    network_id = self.state.find_network(network).id
                except NotFound:
                    return
            await self.attachments.detach_owner(owner_key, network_id, ifname)

    async def reserve_address(self, network: str, holder: str, family: int, ip: str = "") -> str:
        """Allocate an address (`ip`, or any free one) for a later attach with
        `reserved_by=holder`: for front ends whose protocol asks for addresses
        before the endpoint exists (Docker's IPAM driver)."""
        async with self.lock:
            net = self.state.find_network(network)
            return await self.attachments.reserve(net, holder, family, ip)

    async def release_reserved(self, network: str, holder: str, ip: str) -> None:
        """Release an address `holder` still holds; one an attachment took
        over (and releases itself) is left alone."""
        async with self.lock:
            try:
                net = self.state.find_network(network)
            except NotFound:
                return
            await self.attachments.release_reserved(net, holder, ip)

    async def publish_ports(self, att_ref: str, requests: list[PortRequest]) -> Attachment:
        """Publish exactly these ports on an existing attachment."""
        async with self.lock:
            att = self.find_attachment(att_ref)
            await self.attachments.publish(att, requests)
            return att

    async def unpublish_ports(self, att_ref: str) -> None:
        async with self.lock:
            try:
                att = self.find_attachment(att_ref)
            except NotFound:
                return
            await self.attachments.unpublish(att)

    async def learned(
        self, att_ref: str, aliases: list[str], ifname: str = "", name: str = ""
    ) -> None:
        """Aliases (and a handed-over interface's final name, and the owner's
        name when the attach did not know it) the owner's runtime tells after
        the attach."""
        async with self.lock:
            try:
                att = self.find_attachment(att_ref)
            except NotFound:
                return  # detached meanwhile
            await self.attachments.learned(att, aliases, ifname, name)

    def find_attachment(self, ref: str) -> Attachment:
        return find(self.state.attachments.values(), ref, "attachment", lambda a: ("", a.id))

    def result_of(self, owner_key: str) -> AttachResult:
        atts = self.state.of_owner(owner_key)
        if not atts:
            return AttachResult(atts, self.attachments.nameservers(owner_key))
        return self.attachments.result(atts)

    # -- the cluster listener ------------------------------------------------------
    # Called by the cluster agent from its watch and resync tasks; each takes
    # the engine lock like an API call.

    def local_global_attachments(self) -> list[Attachment]:
        return [
            a
            for a in self.state.attachments.values()
            if (net := self.state.networks.get(a.network_id)) is not None
            and self.drivers.of(net).capabilities.scope == "global"
        ]

    async def global_networks_seen(self, nets: list[Network], complete: bool) -> None:
        """Networks in the cluster store; with `complete`, every global network
        not among them is gone."""
        async with self.lock:
            for net in nets:
                self.state.networks[net.id] = net
            if complete:
                ids = {n.id for n in nets}
                for net in list(self.state.networks.values()):
                    scope = self.drivers.of(net).capabilities.scope
                    if scope == "global" and net.id not in ids:
                        await self._global_network_gone(net)

    async def global_network_gone(self, net_id: str) -> None:
        async with self.lock:
            net = self.state.networks.get(net_id)
            if net is not None:
                await self._global_network_gone(net)

    async def _global_network_gone(self, net: Network) -> None:
        if self.state.participating(net.id):
            log.warning("network %s vanished from the cluster store while in use here", net.name)
            return
        await self.networks.drop_global(net)

    async def peers_replaced(self, peers: dict[str, Peer]) -> None:
        """The cluster's full view of remote attachments: the kernel follows."""
        async with self.lock:
            self.state.remote.clear()
            self.state.remote.update(peers)
            self.state.changed()
            for net_id in {a.network_id for a in self.local_global_attachments()}:
                net = self.state.networks[net_id]
                want = [_driver_peer(p) for p in self.state.remote_on(net_id)]
                await self.kernel.call(self.drivers.of(net).set_peers, net, want)

    async def peer_added(self, peer: Peer) -> None:
        async with self.lock:
            self.state.remote[peer.id] = peer
            self.state.changed()
            net = self.state.networks.get(peer.network_id)
            if net is not None and self.state.participating(net.id):
                await self.kernel.call(self.drivers.of(net).add_peer, net, _driver_peer(peer))

    async def peer_removed(self, peer_id: str) -> None:
        async with self.lock:
            peer = self.state.remote.pop(peer_id, None)
            if peer is None:
                return
            self.state.changed()
            net = self.state.networks.get(peer.network_id)
            if net is not None and self.state.participating(net.id):
                await self.kernel.call(self.drivers.of(net).remove_peer, net, _driver_peer(peer))

    async def vteps_replaced(self, vteps: set[str]) -> None:
        """The cluster's VTEP addresses: VXLAN from any other source is
        dropped before decapsulation (the firewall's VTEP set)."""
        async with self.lock:
            await self.kernel.call(self.kernel.firewall.set_vteps, set(vteps))
            log.debug("VTEP set: %s", ", ".join(sorted(vteps)))

    async def restore_proxy(self) -> None:
        """The proxy died and a new, empty one runs: hand it every published
        port again (DaemonProxy's `on_restart`)."""
        async with self.lock:
            await self.ports.restore()

    # -- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.close()
        await self.resolver.close()


def _driver_peer(p: Peer) -> DriverPeer:
    return DriverPeer(p.ips, p.mac, p.vtep)
