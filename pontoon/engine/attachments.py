"""Attachments: a network namespace joined to a network, for an owner.

This is the unit of work every front end uses: pontoon's own container
runtime, the HTTP API's /attachments, and the CNI and Docker front ends. The
namespace is given by path or by an open descriptor; a namespace pontoon did
not make is pinned under <exec-root>/netns for the attachment's life, so the
daemon can reach it again after a restart whatever the owner's mount
namespace looks like.

attach: validate, allocate addresses (the driver's allocator: this host's
store or the cluster's), write the record ("creating"), first endpoint on
this host -> driver hook, join, publish ports, start the resolver, mark ready.
Any failure undoes it all in reverse. detach is idempotent and succeeds when
the namespace is already gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pontoon import ipam
from pontoon.core import addresses, model
from pontoon.core.model import Attachment, Network, Owner
from pontoon.dns.server import LISTEN_ADDR, Resolver
from pontoon.drivers.base import CLUSTER_ALLOCATOR, NetworkDriver, Peer
from pontoon.drivers.registry import DriverRegistry
from pontoon.engine.kernel import Kernel
from pontoon.engine.networks import Networks
from pontoon.engine.ports import Ports
from pontoon.engine.state import State
from pontoon.errors import Conflict, InvalidArgument, Unavailable
from pontoon.portmap.spec import PortRequest
from pontoon.sandbox import netns

if TYPE_CHECKING:
    from pontoon.cluster.agent import ClusterAgent

log = logging.getLogger(__name__)

IFNAME_MAX = 15  # IFNAMSIZ - 1
# Where a handed-over interface is born: this daemon's own network namespace.
OWN_NETNS = Path("/proc/self/ns/net")


@dataclasses.dataclass
class AttachRequest:
    network: str  # name or ID
    netns: str | int  # a namespace file, or an open descriptor of one
    ifname: str
    owner: Owner
    ips: list[str] = dataclasses.field(default_factory=list)  # wanted addresses, any family
    mac: str = ""
    aliases: list[str] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)  # resolved besides owner.name
    ports: list[PortRequest] = dataclasses.field(default_factory=list)
    primary: bool = True  # may take the namespace's default route
    gateway: bool = True  # add the gateway bridge when the network has no way out
    dns: bool = True  # serve 127.0.0.11 in the namespace on user-defined networks
    upstreams: list[str] = dataclasses.field(default_factory=list)  # for names not ours
    # Leave the interface, named `ifname` and unconfigured, in this daemon's
    # namespace for the owner's runtime to move into `netns` (Docker).
    handover: bool = False
    # `ips` were allocated beforehand under this holder (reserve_address):
    # the attachment takes them over instead of allocating.
    reserved_by: str = ""
    # Address families to take of the network (empty: all it has). The gateway
    # bridge's attachment takes only those of the network it serves.
    families: tuple[int, ...] = ()


@dataclasses.dataclass
class AttachResult:
    """What the namespace got: every attachment made for the request (the
    asked one first, then a gateway-bridge one if it was added)."""

    attachments: list[Attachment]
    nameservers: list[str]
    # Host-side devices in the host's namespace (the drivers' `host_interface`),
    # listed after the sandbox ones without `sandbox`, as CNI results do.
    host_interfaces: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        interfaces: list[dict[str, str]] = []
        ips, routes = [], []
        for index, att in enumerate(self.attachments):
            interfaces.append({"name": att.ifname, "mac": att.mac, "sandbox": att.netns})
            gateways = {addresses.family_of(g): g for g in att.gateways}
            for interface in att.addresses:
                family = addresses.family_of(interface)
                entry = {"address": interface, "interface": index}
                if family in gateways:
                    entry["gateway"] = gateways[family]
                ips.append(entry)
                if att.default_route and family in gateways:
                    routes.append({"dst": addresses.default_route(family), "gw": gateways[family]})
        interfaces += [{"name": name} for name in self.host_interfaces]
        return {
            "Id": self.attachments[0].id,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {"nameservers": self.nameservers},
        }


def pin_name(owner: Owner) -> str:
    return f"{owner.kind}-{hashlib.sha256(owner.key.encode()).hexdigest()[:12]}"


class Attachments:
    def __init__(
        self,
        state: State,
        drivers: DriverRegistry,
        kernel: Kernel,
        ipam_: ipam.Ipam,
        networks: Networks,
        ports: Ports,
        resolver: Resolver,
        netns_dir: Path,
    ) -> None:
        self.state = state
        self.drivers = drivers
        self.kernel = kernel
        self.ipam = ipam_
        self.networks = networks
        self.ports = ports
        self.resolver = resolver
        self.netns_dir = netns_dir
        self.cluster: ClusterAgent | None = None

    # -- attach ------------------------------------------------------------------

    def validate(self, req: AttachRequest, net: Network) -> None:
        if req.owner.kind not in model.OWNER_KINDS:
            raise InvalidArgument(f"unknown owner kind {req.owner.kind!r}")
        if not req.owner.id:
            raise InvalidArgument("an attachment needs an owner ID")
        if not req.ifname or len(req.ifname) > IFNAME_MAX or "/" in req.ifname:
            raise InvalidArgument(f"invalid interface name {req.ifname!r}")
        if net.status != model.READY:
            raise Conflict(f"network {net.name} is not ready")
        for alias in req.aliases:
            model.check_name("alias", alias)
        if net.default and req.aliases:
            raise InvalidArgument("network-scoped aliases need a user-defined network")
        if net.default and req.ips:
            raise InvalidArgument("a fixed --ip needs a user-defined network")
        for server in req.upstreams:
            ipam.parse_address(server, "DNS server")
        for ip in req.ips:
            addr = ipam.parse_address(ip)
            sub = net.subnet_for(addr.version)
            if sub is None or not ipam.SubnetPlan.of(sub).usable(addr):
                raise InvalidArgument(f"IP address {ip} is not usable in network {net.name}")
        self.ports.check(net, req.ports)
        for att in self.state.of_owner(req.owner.key):
            if att.network_id == net.id:
                # Docker's rule, and what keeps names and routes unambiguous.
                raise Conflict(
                    f"{req.owner.name or req.owner.id} is already attached to {net.name} "
                    f"as {att.ifname}: one interface per network"
                )
            if att.ifname == req.ifname:
                raise Conflict(f"interface {req.ifname} already exists for {req.owner.key}")

    async def attach(self, req: AttachRequest) -> AttachResult:
        """Join a namespace to a network (the caller holds the engine lock)."""
        net = self.state.find_network(req.network)
        self.validate(req, net)
        path, pinned = await self._namespace(req)
        try:
            att = await self._attach_one(req, net, path, pinned)
        except BaseException:
            if pinned and not self.state.in_netns(str(path)):
                netns.remove(path)
            raise
        made = [att]
        try:
            if req.gateway and self._needs_gateway(att, net):
                made.append(await self._attach_gateway(att))
            await self.ports.publish(att)
            if att.resolver:
                await self.resolver.start(att.owner.key, path)
        except BaseException:
            for each in reversed(made):
                await self.detach(each)
            raise
        return self.result(made)

    def result(self, made: list[Attachment]) -> AttachResult:
        hosts = []
        for att in made:
            net = self.state.networks.get(att.network_id)
            if net is not None and (name := self.drivers.of(net).host_interface(net, att)):
                hosts.append(name)
        return AttachResult(made, self.nameservers(made[0].owner.key), hosts)

    async def publish(self, att: Attachment, requests: list[PortRequest]) -> None:
        """Publish ports of an attachment made without them (Docker publishes
        on the endpoint it gives external connectivity, after the join)."""
        net = self.state.find_network(att.network_id)
        self.ports.check(net, requests)
        await self.unpublish(att)
        if not requests:
            return
        self.ports.reserve(att, requests)
        try:
            await self.state.save_attachment(att)
            await self.ports.publish(att)
        except BaseException:
            await self.unpublish(att)
            raise

    async def unpublish(self, att: Attachment) -> None:
        if att.ports:
            await self.ports.unpublish(att)
            att.ports = []
            await self.state.save_attachment(att)

    async def learned(
        self, att: Attachment, aliases: list[str], ifname: str = "", name: str = ""
    ) -> None:
        """What the owner's runtime tells after the attach (Docker: a
        container's aliases once it runs, the name it gave a handed-over
        interface, and the container's name, which the join does not wait
        for); peers on other hosts learn them too. The owner stays the same
        one: only a name it lacked is filled in."""
        for alias in aliases:
            model.check_name("alias", alias)
        named = bool(name) and not att.owner.name
        new = [a for a in dict.fromkeys(aliases) if a not in att.dns_names and a != name]
        renamed = bool(ifname) and att.handover and ifname != att.ifname
        if not new and not renamed and not named:
            return
        att.aliases = list(dict.fromkeys([*att.aliases, *new]))
        if named:
            att.owner = dataclasses.replace(att.owner, name=name)
            att.dns_names = [name, *(n for n in att.dns_names if n != name)]
        att.dns_names = [*att.dns_names, *new]
        if renamed:
            att.ifname = ifname
        await self.state.save_attachment(att)
        net = self.state.networks.get(att.network_id)
        if net is not None and self.drivers.of(net).capabilities.scope == "global":
            assert self.cluster is not None
            await self.cluster.publish(att)

    def nameservers(self, owner_key: str) -> list[str]:
        return [LISTEN_ADDR] if owner_key in self.resolver.listeners else []

    async def _namespace(self, req: AttachRequest) -> tuple[Path, bool]:
        """The namespace file the attachment keeps: the one given when it is
        ours (under netns_dir), else a pin of it made here. A handed-over
        interface needs none: its runtime moves it, into a namespace that
        may not exist yet (Docker's runc makes it after the join)."""
        if req.handover:
            return Path(str(req.netns)), False
        if isinstance(req.netns, str):
            given = Path(req.netns)
            if given.parent == self.netns_dir and netns.is_mounted(given):
                return given, False
            source = req.netns
        else:
            source = f"/proc/self/fd/{req.netns}"
        pin = self.netns_dir / pin_name(req.owner)
        if netns.is_mounted(pin):
            return pin, True
        try:
            await self.kernel.call(netns.pin, source, pin)
        except OSError as exc:
            raise InvalidArgument(
                f"cannot open network namespace {req.netns!r}: {exc.strerror}"
            ) from None
        return pin, True

    async def _attach_one(
        self, req: AttachRequest, net: Network, path: Path, pinned: bool
    ) -> Attachment:
        driver = self.drivers.of(net)
        names = [n for n in [req.owner.name, *req.names] if n]
        subnets = [s for s in net.subnets if not req.families or s.family in req.families]
        att = Attachment(
            id=model.new_id(),
            network_id=net.id,
            owner=req.owner,
            netns=str(path),
            ifname=req.ifname,
            gateways=[s.gateway for s in subnets if s.gateway],
            aliases=list(req.aliases),
            dns_names=list(dict.fromkeys(names + req.aliases)),
            default_route=(
                req.primary and not net.internal and driver.capabilities.default_route
                and not any(a.default_route for a in self.state.of_owner(req.owner.key))
            ),
            dns_servers=list(req.upstreams),
            pinned=pinned,
            handover=req.handover,
            resolver=req.dns and not net.default,
        )  # fmt: skip
        if req.ports:
            self.ports.reserve(att, req.ports)  # before any rule exists: a taken port fails here
        try:
            await self._allocate(att, net, subnets, req.ips, req.reserved_by)
            att.mac = req.mac or addresses.mac_for(addresses.primary_address(att.addresses))
            await self.state.save_attachment(
                att
            )  # before the kernel: a crash leaves a findable record
            first = None if self._others_on(net, att) else await self._first_endpoint(net, driver)
            where = OWN_NETNS if att.handover else path
            await self.kernel.call(_plug, driver, net, att, first, where)
            att.status = model.READY
            await self.state.save_attachment(att)
            if driver.capabilities.scope == "global":
                assert self.cluster is not None
                await self.cluster.publish(att)
        except BaseException:
            await self.detach(att)
            raise
        return att

    def _others_on(self, net: Network, att: Attachment) -> bool:
        return any(a.id != att.id for a in self.state.on_network(net.id))

    async def _allocate(
        self,
        att: Attachment,
        net: Network,
        subnets: list[model.Subnet],
        wanted: list[str],
        reserved_by: str = "",
    ) -> None:
        asked: dict[int, str] = {ipam.parse_address(ip).version: ip for ip in wanted}
        allocator = await self._open_allocator(net)
        for sub in subnets:
            family = sub.family
            if reserved_by and family in asked:
                if not await allocator.hand_over(net.id, asked[family], reserved_by, att.id):
                    raise Conflict(f"IP address {asked[family]} is not reserved for this endpoint")
                addr = asked[family]
            else:
                addr = str(await allocator.allocate(net.id, att.id, family, asked.get(family, "")))
            att.addresses.append(f"{addr}/{addresses.prefixlen_of(sub.subnet)}")

    async def _open_allocator(self, net: Network) -> ipam.Ipam:
        allocator = self._allocator(net)
        if not allocator.loaded(net.id):
            await allocator.open(net.id, [ipam.SubnetPlan.of(s) for s in net.subnets])
        return allocator

    async def reserve(self, net: Network, holder: str, family: int, ip: str = "") -> str:
        """An address of the network held for a later attach (address/prefix)."""
        sub = net.subnet_for(family)
        if sub is None:
            raise InvalidArgument(f"network {net.name} has no IPv{family} subnet")
        allocator = await self._open_allocator(net)
        addr = await allocator.allocate(net.id, holder, family, ip)
        return f"{addr}/{addresses.prefixlen_of(sub.subnet)}"

    async def release_reserved(self, net: Network, holder: str, ip: str) -> None:
        allocator = await self._open_allocator(net)
        await allocator.release_held(net.id, ip, holder)

    def _allocator(self, net: Network) -> ipam.Ipam:
        if self.drivers.of(net).capabilities.allocator == CLUSTER_ALLOCATOR:
            if self.cluster is None:
                raise Unavailable(f"network {net.name} needs the cluster store on this host")
            return self.cluster.ipam
        return self.ipam

    async def _first_endpoint(self, net: Network, driver: NetworkDriver) -> list[Peer]:
        """Before the network's first local endpoint: its record, and the
        peers the driver's first_endpoint gets (on the join's kernel call)."""
        if driver.capabilities.scope == "global":
            # Kept locally so a restart with the cluster store away still knows it.
            await self.state.remember_global(net)
        return [_peer(p) for p in self.state.remote_on(net.id)]

    def _needs_gateway(self, att: Attachment, net: Network) -> bool:
        caps = self.drivers.of(net).capabilities
        if not caps.needs_gateway_bridge or net.internal:
            return False
        return not any(a.default_route for a in self.state.of_owner(att.owner.key))

    async def _attach_gateway(self, att: Attachment) -> Attachment:
        """The way out of a network that has none: an attachment on the
        gateway bridge with the families `att` has (a dual-stack overlay
        endpoint gets an IPv6 address and default route there too)."""
        families = tuple(sorted({addresses.family_of(a) for a in att.addresses}))
        gw = await self.networks.gateway_network(families)
        ifname = await self.kernel.call(
            _free_ifname, Path(att.netns), self.state.in_netns(att.netns)
        )
        req = AttachRequest(
            gw.name, att.netns, ifname, att.owner, gateway=False, dns=False, families=families
        )
        return await self._attach_one(req, gw, Path(att.netns), att.pinned)

    # -- detach ------------------------------------------------------------------

    async def detach(self, att: Attachment) -> None:
        """Undo an attachment; safe on a half-made one, and when its namespace
        is already gone (the owner's runtime deleted it first)."""
        net = self.state.networks.get(att.network_id)
        await self.ports.unpublish(att)
        if net is not None:
            driver = self.drivers.of(net)
            await self.kernel.call(driver.leave, net, att)
            await self._release(att, net)
        await self.state.forget_attachment(att)
        if net is not None and not self.state.participating(net.id):
            await self._last_endpoint_gone(net)
        rest = self.state.of_owner(att.owner.key)
        if rest and all(self._is_gateway(a) for a in rest):
            for each in rest:  # the gateway attachment served the one just gone
                await self.detach(each)
            return
        if not rest:
            await self.resolver.stop(att.owner.key)
        if att.pinned and not self.state.in_netns(att.netns):
            await self.kernel.call(netns.remove, Path(att.netns))

    def _is_gateway(self, att: Attachment) -> bool:
        net = self.state.networks.get(att.network_id)
        return net is not None and net.gateway_bridge

    async def _release(self, att: Attachment, net: Network) -> None:
        global_ = self.drivers.of(net).capabilities.scope == "global"
        try:
            if global_ and self.cluster is not None:
                await self.cluster.withdraw(att)
            for ip in att.ips:
                await self._allocator(net).release(net.id, ip)
        except Unavailable as exc:
            # With the cluster store away the local teardown goes on; the next
            # resync deletes what is left under our name.
            log.warning("attachment %s: cluster cleanup deferred: %s", att.id[:12], exc)

    async def _last_endpoint_gone(self, net: Network) -> None:
        driver = self.drivers.of(net)
        await self.kernel.call(driver.last_endpoint_gone, net)
        if driver.capabilities.scope == "global":
            await self.state.forget_global(net)

    async def detach_owner(self, owner_key: str, network_id: str = "", ifname: str = "") -> None:
        for att in reversed(self.state.of_owner(owner_key)):
            if (network_id and att.network_id != network_id) or (ifname and att.ifname != ifname):
                continue
            if att.id in self.state.attachments:
                await self.detach(att)

    # -- restart -----------------------------------------------------------------

    async def replug(self, att: Attachment) -> None:
        """Re-create an attachment's devices if they vanished while we were down."""
        net = self.state.networks.get(att.network_id)
        if net is None or not netns.is_mounted(Path(att.netns)):
            return
        if att.handover:
            # Its runtime moved and configured the interface: only it can plug
            # it again. A lost host side took the container side with it.
            return
        driver = self.drivers.of(net)
        await self.kernel.call(driver.first_endpoint, net, [])  # idempotent
        if not await self.kernel.call(driver.endpoint_present, net, att):
            log.info("%s: re-plugging %s on %s", att.owner.name or att.owner.id[:12], att.ifname,
                     net.name)  # fmt: skip
            await self.kernel.call(driver.join, net, att, Path(att.netns))
            if att.ports:
                found = self.ports.target(att)
                if found is not None:
                    await self.kernel.call(driver.prepare_publish, net, found[0])
            await self.state.save_attachment(att)


def _plug(
    driver: NetworkDriver, net: Network, att: Attachment, first: list[Peer] | None, where: Path
) -> None:
    """On the kernel thread, in one hop (each hop is a thread wake-up, some
    milliseconds on a busy host): the network's first local endpoint's
    devices when `first` has its peers, then the join."""
    if first is not None:
        driver.first_endpoint(net, first)
    driver.join(net, att, where)


def _peer(p: model.Peer) -> Peer:
    return Peer(p.ips, p.mac, p.vtep)


def _free_ifname(path: Path, attachments: list[Attachment]) -> str:
    """eth<N> for an interface pontoon adds on its own: the first N neither
    the namespace nor its attachments use."""
    used = {a.ifname for a in attachments}
    try:
        with netns.iproute(path) as ipr:
            used |= {link.get("ifname") for link in ipr.link("dump")}
    except OSError:
        pass
    return next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
