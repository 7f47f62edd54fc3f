"""Networks: create, remove, restore. Every step asks the network's driver;
nothing here knows a driver by name.

The shape of every change: validate (nothing exists yet), write an intent
record (status "creating"), change the kernel, mark the record ready; on
failure undo in reverse. Restart reconciliation rolls back what a killed
daemon left in "creating".
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pontoon import ipam
from pontoon.core import model
from pontoon.core.model import Network, NetworkSpec, Subnet
from pontoon.drivers.base import CLUSTER_ALLOCATOR, NetworkDriver
from pontoon.drivers.registry import DriverRegistry
from pontoon.engine.kernel import Kernel
from pontoon.engine.state import State
from pontoon.errors import Conflict, InvalidArgument
from pontoon.firewall import NetworkRules

if TYPE_CHECKING:
    from pontoon.cluster.agent import ClusterAgent

log = logging.getLogger(__name__)

DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "pontoon0"
# docker_gwbridge's counterpart. The device name is shorter than the network
# name because Linux caps interface names at 15 characters.
GW_NETWORK = "pontoon_gwbridge"
GW_BRIDGE = "pontoon_gwbr"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


class Networks:
    def __init__(
        self,
        state: State,
        drivers: DriverRegistry,
        kernel: Kernel,
        ipam_: ipam.Ipam,
        pools: list[ipam.Pool],
    ) -> None:
        self.state = state
        self.drivers = drivers
        self.kernel = kernel
        self.ipam = ipam_
        self.pools = pools
        self.cluster: ClusterAgent | None = None

    # -- creating ---------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> NetworkDriver:
        model.check_name("network", spec.name)
        driver = self.drivers.get(spec.driver)
        if driver.capabilities.needs_cluster and self.cluster is None:
            raise InvalidArgument(
                f"{spec.driver} networks need a cluster store: start pontoond with "
                "--cluster-store etcd://HOST:PORT"
            )
        for family in ipam.requested_families(spec):
            if family not in driver.capabilities.families:
                raise InvalidArgument(f"{spec.driver} networks do not support IPv{family} yet")
        if any(n.name == spec.name for n in self.state.networks.values()):
            raise Conflict(f"network with name {spec.name} already exists")
        return driver

    async def create(
        self,
        spec: NetworkSpec,
        default: bool = False,
        icc: bool = True,
        gateway_bridge: bool = False,
    ) -> Network:
        """Make a network (the caller holds the engine lock)."""
        driver = self.validate(spec)
        # Drivers may look at the host's devices (a macvlan parent): kernel thread.
        await self.kernel.call(driver.validate, spec)
        mtu = await self.kernel.call(driver.default_mtu, spec)
        if driver.capabilities.allocator == CLUSTER_ALLOCATOR:
            assert self.cluster is not None
            pools = driver.address_pools(self.pools)
            net = await self.cluster.create_network(spec, mtu, pools, self._taken())
            self.state.networks[net.id] = net
            log.info("%s network %s (%s) created: %s", net.driver, net.name, net.id[:12],
                     _subnets(net))  # fmt: skip
            return net
        return await self._create_local(driver, spec, mtu, default, icc, gateway_bridge)

    async def check(self, spec: NetworkSpec, also_taken: list[str]) -> list[ipam.SubnetPlan]:
        """Refuse what create() would refuse (name, driver, options, subnets
        clashing here), making nothing, and say which subnets it would take:
        for front ends that must answer before they can create (Docker tells
        a network's name only afterwards). `also_taken`: subnets promised."""
        driver = self.validate(spec)
        await self.kernel.call(driver.validate, spec)
        ours = {n.bridge for n in self.state.networks.values() if n.bridge}
        routes = driver.routes_to_avoid(await self.kernel.call(self.kernel.host_routes, ours))
        taken = self._taken() + [ipaddress.ip_network(s) for s in also_taken]
        return ipam.plan_subnets(
            spec.subnets,
            driver.address_pools(self.pools),
            taken,
            routes,
            ipam.requested_families(spec),
        )

    def _taken(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [
            ipaddress.ip_network(s.subnet) for n in self.state.networks.values() for s in n.subnets
        ]

    async def _create_local(
        self,
        driver: NetworkDriver,
        spec: NetworkSpec,
        mtu: int,
        default: bool,
        icc: bool,
        gateway_bridge: bool,
    ) -> Network:
        net_id = model.new_id()
        device = driver.device_name(spec, net_id)
        if device:
            if any(n.bridge == device for n in self.state.networks.values()):
                raise Conflict(f"bridge {device} is already used by another network")
            if not default:
                await self.kernel.call(driver.check_device_free, device)
        ours = {n.bridge for n in self.state.networks.values() if n.bridge}
        routes = driver.routes_to_avoid(await self.kernel.call(self.kernel.host_routes, ours))
        plans = ipam.plan_subnets(
            spec.subnets,
            driver.address_pools(self.pools),
            self._taken(),
            routes,
            ipam.requested_families(spec),
        )
        asked_range = {ipaddress.ip_network(s.subnet).version for s in spec.subnets if s.ip_range}
        net = Network(
            id=net_id,
            name=spec.name,
            driver=driver.name,
            subnets=[p.record(p.family in asked_range) for p in plans],
            internal=spec.internal,
            options=dict(spec.options),
            bridge=device,
            mtu=mtu,
            default=default,
            icc=icc,
            gateway_bridge=gateway_bridge,
        )
        await self.state.save_network(net)  # intent: status "creating"
        try:
            await self.kernel.call(driver.create_network, net)
            await self._firewall_add(driver, net)
            await self.ipam.open(net.id, plans)
            net.status = model.READY
            await self.state.save_network(net)
        except BaseException:
            await self.destroy(net)
            raise
        log.info("network %s (%s) created: %s on %s", net.name, net.id[:12], _subnets(net),
                 device or driver.name)  # fmt: skip
        return net

    async def _firewall_add(self, driver: NetworkDriver, net: Network) -> None:
        rules = driver.firewall_rules(net)
        if rules is not None:
            await self.kernel.call(self.kernel.firewall.add_network, rules)

    async def ensure_default(self, bip: str, ipv6: bool = False, fixed_cidr_v6: str = "") -> None:
        """The built-in `bridge` network, as the daemon's --bip, --ipv6 and
        --fixed-cidr-v6 say. One left by a start with other IPv6 flags is made
        again when nobody uses it (dockerd rebuilds it on every start)."""
        iface = ipaddress.ip_interface(bip)
        subnets = [Subnet(str(iface.network), str(iface.ip))]
        if fixed_cidr_v6:
            subnets.append(Subnet(fixed_cidr_v6))
        existing = self.state.default_network()
        if existing is not None:
            moved = bip == ipam.DEFAULT_BIP and existing.subnet_for(4) is not None
            # A default bridge moved off the usual subnet (dockerd's docker0
            # had it) stays where it is: only the IPv6 flags are compared.
            asked = subnets[1:] if moved else subnets
            if _same_addressing(existing, asked, ipv6):
                return
            if self.state.on_network(existing.id):
                log.warning("the bridge network keeps its subnets (%s): it is in use; restart "
                            "with no containers on it to apply --bip/--ipv6/--fixed-cidr-v6",
                            _subnets(existing))  # fmt: skip
                return
            await self.destroy(existing)
        if bip == ipam.DEFAULT_BIP:
            subnets[0] = await self._around_host_routes(subnets[0])
        spec = NetworkSpec(
            DEFAULT_NETWORK,
            subnets=tuple(subnets),
            options={BRIDGE_NAME_OPTION: DEFAULT_BRIDGE},
            ipv6=ipv6,
        )
        await self.create(spec, default=True)

    async def _around_host_routes(self, wanted: Subnet) -> Subnet:
        """The default bridge's usual subnet, or, when the host already routes
        it (dockerd's docker0 wants the same 172.17.0.0/16 and may have
        started first), the first free one of the pools."""
        routes = await self.kernel.call(self.kernel.host_routes, {DEFAULT_BRIDGE})
        if ipam.overlapping(ipaddress.ip_network(wanted.subnet), routes) is None:
            return wanted
        plan = ipam.plan_subnets([], self.pools, self._taken(), routes)[0]
        log.info("default bridge: %s is taken on this host, using %s", wanted.subnet, plan.subnet)
        return plan.record(False)

    async def gateway_network(self, families: Iterable[int] = (4,)) -> Network:
        """pontoon_gwbridge, made on first need: the default route and outbound
        NAT of endpoints whose own network has no way out (docker_gwbridge in
        the seed). Endpoints on it cannot reach each other through it (icc off).
        It always has IPv4; an IPv6 subnet (from the pools, as any network's)
        comes with the first endpoint that wants IPv6 out, added in place when
        the bridge is already in use."""
        wanted = set(families)
        existing = self.state.gateway_network()
        if existing is None:
            spec = NetworkSpec(
                GW_NETWORK, options={BRIDGE_NAME_OPTION: GW_BRIDGE}, ipv6=6 in wanted
            )
            return await self.create(spec, icc=False, gateway_bridge=True)
        for family in sorted(wanted - {s.family for s in existing.subnets}):
            await self._add_subnet(existing, family)
        return existing

    async def _add_subnet(self, net: Network, family: int) -> None:
        """A subnet of one more family for a ready network, from the pools:
        record, device, firewall (the rules are given whole; both backends
        add what is missing) and addresses. A pool used up fails before any
        change; a later failure restores the record, rules and addresses
        (the bridge keeps the extra gateway address until it goes)."""
        driver = self.drivers.of(net)
        await self.kernel.call(driver.validate, NetworkSpec(net.name, options=net.options,
                                                            ipv6=family == 6))  # fmt: skip
        ours = {n.bridge for n in self.state.networks.values() if n.bridge}
        routes = driver.routes_to_avoid(await self.kernel.call(self.kernel.host_routes, ours))
        pools = driver.address_pools(self.pools)
        plan = ipam.plan_subnets([], pools, self._taken(), routes, (family,))[0]
        before = list(net.subnets)
        old_rules = driver.firewall_rules(net)
        net.subnets = sorted([*before, plan.record(False)], key=lambda s: s.family)
        try:
            await self.state.save_network(net)
            await self.kernel.call(driver.create_network, net)  # idempotent: adds the address
            await self._firewall_add(driver, net)
            await self.ipam.open(net.id, [ipam.SubnetPlan.of(s) for s in net.subnets])
        except BaseException:
            new_rules = driver.firewall_rules(net)
            net.subnets = before
            with contextlib.suppress(Exception):
                if new_rules is not None and old_rules is not None:
                    await self.kernel.call(self.kernel.firewall.remove_network, new_rules)
                    await self.kernel.call(self.kernel.firewall.add_network, old_rules)
            await self.ipam.open(net.id, [ipam.SubnetPlan.of(s) for s in net.subnets])
            await self.state.save_network(net)
            raise
        log.info("network %s (%s): added %s", net.name, net.id[:12], plan.subnet)

    # -- removing -----------------------------------------------------------------

    async def remove(self, net: Network) -> None:
        """Remove a network nobody uses (the caller holds the engine lock)."""
        if net.default:
            raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
        users = sorted(a.owner.name or a.owner.id[:12] for a in self.state.on_network(net.id))
        users += sorted(p.name or p.owner_id[:12] for p in self.state.remote_on(net.id))
        if users:
            raise Conflict(f"network {net.name} has active endpoints ({', '.join(users)})")
        driver = self.drivers.of(net)
        if driver.capabilities.scope == "global":
            assert self.cluster is not None
            await self.cluster.remove_network(net)
            await self.drop_global(net)
        else:
            await self.destroy(net)
        log.info("network %s (%s) removed", net.name, net.id[:12])

    async def destroy(self, net: Network) -> None:
        """Remove every trace of a local network; safe on a half-made one."""
        driver = self.drivers.of(net)
        rules = driver.firewall_rules(net)
        if rules is not None:
            with contextlib.suppress(Exception):
                await self.kernel.call(self.kernel.firewall.remove_network, rules)
        await self.kernel.call(driver.delete_network, net)
        await self.ipam.release_all(net.id)
        await self.state.forget_network(net)

    async def drop_global(self, net: Network) -> None:
        """This host leaves a global network: its devices here go."""
        await self.kernel.call(self.drivers.of(net).last_endpoint_gone, net)
        await self.state.forget_global(net)
        self.state.networks.pop(net.id, None)

    # -- restart -------------------------------------------------------------------

    async def restore(self, net: Network) -> None:
        driver = self.drivers.of(net)
        await self.kernel.call(driver.create_network, net)
        await self.ipam.open(net.id, [ipam.SubnetPlan.of(s) for s in net.subnets])

    def firewall_state(self) -> list[NetworkRules]:
        """Every local network's firewall rules (start-up sync)."""
        out = []
        for net in self.state.networks.values():
            rules = self.drivers.of(net).firewall_rules(net)
            if rules is not None and net.status == model.READY:
                out.append(rules)
        return out


def _same_addressing(net: Network, asked: list[Subnet], ipv6: bool) -> bool:
    """Whether the default network has what the flags ask: the given subnets,
    and an IPv6 one exactly when --ipv6 is on (any, when none is given)."""
    have = {s.subnet for s in net.subnets}
    if not all(s.subnet in have for s in asked):
        return False
    return (net.subnet_for(6) is not None) == ipv6


def _subnets(net: Network) -> str:
    return ", ".join(s.subnet for s in net.subnets)
