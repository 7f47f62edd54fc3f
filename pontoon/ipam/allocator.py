"""Addresses for attachments.

Addresses are allocated round-robin after the last one handed out (as Docker
does, so a freed address is not reused at once), and every allocation is a key
created with a compare-and-swap in the store: /ipam/<network id>/<address>. On
the etcd store that makes allocation safe between hosts; on SQLite it makes it
survive restarts. Nothing here walks a whole range: finding a free address
costs at most one step per address already taken, so a /64 costs what a /24
does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from pontoon.core.addresses import IPAddress, IPNetwork
from pontoon.core.model import NetworkSpec, Subnet
from pontoon.errors import Conflict, InvalidArgument, Unavailable
from pontoon.ipam.pools import Pool, check_subnet, choose_subnet, parse_address, parse_network
from pontoon.store import Compare, Delete, Put, Store


@dataclasses.dataclass
class SubnetPlan:
    """A network's addressing in one family: subnet, gateway and the range
    endpoints use."""

    subnet: IPNetwork
    gateway: IPAddress
    ip_range: IPNetwork

    @classmethod
    def build(cls, subnet: IPNetwork, gateway: str = "", ip_range: str = "") -> SubnetPlan:
        gw: IPAddress = (
            parse_address(gateway, "gateway") if gateway else next(iter(subnet.hosts()))  # type: ignore[assignment]
        )
        if gw.version != subnet.version or not _host_address(subnet, gw):
            raise InvalidArgument(f"gateway {gw} is not a usable address of subnet {subnet}")
        rng = parse_network(ip_range, "ip-range") if ip_range else subnet
        if rng.version != subnet.version or not rng.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidArgument(f"ip-range {rng} is not inside subnet {subnet}")
        return cls(subnet, gw, rng)

    @classmethod
    def of(cls, subnet: Subnet) -> SubnetPlan:
        return cls.build(parse_network(subnet.subnet), subnet.gateway, subnet.ip_range)

    def record(self, ip_range_asked: bool) -> Subnet:
        return Subnet(
            str(self.subnet), str(self.gateway), str(self.ip_range) if ip_range_asked else ""
        )

    @property
    def family(self) -> int:
        return self.subnet.version

    def usable(self, addr: IPAddress) -> bool:
        return _host_address(self.subnet, addr) and addr != self.gateway


def _host_address(subnet: IPNetwork, addr: IPAddress) -> bool:
    """In the subnet and neither its network address nor (IPv4) its broadcast
    address. IPv6 has no broadcast; its first address is the subnet-router
    anycast address."""
    if addr.version != subnet.version or addr not in subnet:
        return False
    if addr == subnet.network_address:
        return False
    return subnet.version == 6 or addr != subnet.broadcast_address


def plan_subnets(
    asked: Iterable[Subnet],
    pools: Iterable[Pool],
    taken: list[IPNetwork],
    routes: list[IPNetwork],
    families: Iterable[int] = (4,),
) -> list[SubnetPlan]:
    """Subnet, gateway and range per family for a new network: each asked
    subnet if it clashes with nothing, and for each family wanted but not
    asked for, the first free subnet of that family's pools."""
    pools = list(pools)
    plans = []
    seen: set[int] = set()
    for sub in asked:
        if not sub.subnet:
            if sub.gateway or sub.ip_range:
                raise InvalidArgument("--gateway and --ip-range need --subnet")
            continue
        chosen = parse_network(sub.subnet)
        if chosen.version in seen:
            raise InvalidArgument(f"more than one IPv{chosen.version} subnet given")
        seen.add(chosen.version)
        check_subnet(chosen, taken, routes)
        plans.append(SubnetPlan.build(chosen, sub.gateway, sub.ip_range))
    for family in families:
        if family not in seen:
            chosen = choose_subnet(pools, taken + routes, family)
            plans.append(SubnetPlan.build(chosen))
    return sorted(plans, key=lambda p: p.family)  # IPv4 first, as Docker lists them


def requested_families(spec: NetworkSpec) -> tuple[int, ...]:
    """The address families a network create asks for (Docker's --ipv4 and
    --ipv6); a subnet given of a family not asked for is refused, not guessed."""
    if not spec.ipv4 and not spec.ipv6:
        raise InvalidArgument("a network needs IPv4 or IPv6: --ipv4=false needs --ipv6")
    families = tuple(f for f, on in ((4, spec.ipv4), (6, spec.ipv6)) if on)
    for sub in spec.subnets:
        if sub.subnet and (version := parse_network(sub.subnet).version) not in families:
            hint = "add --ipv6" if version == 6 else "it needs --ipv4 (not --ipv4=false)"
            raise InvalidArgument(f"subnet {sub.subnet} is an IPv{version} subnet: {hint}")
    return families


class AddressSpace:
    """In-memory view of one network's allocations in one family; the store is
    the truth."""

    def __init__(self, plan: SubnetPlan) -> None:
        self.plan = plan
        self.used: set[int] = set()
        self.cursor = int(plan.ip_range.network_address)

    def candidates(self) -> Iterator[IPAddress]:
        """Free addresses of the range, starting after the last one handed out.
        Every step either yields or skips an address in `used` (or one of the
        three reserved ones), so the walk is bounded by len(used), not the range."""
        rng = self.plan.ip_range
        first = int(rng.network_address)
        span = rng.num_addresses
        if sum(1 for v in self.used if first <= v < first + span) >= span:
            return
        start = self.cursor - first
        make = type(rng.network_address)
        for i in range(1, span + 1):
            value = first + (start + i) % span
            if value in self.used:
                continue
            addr = make(value)
            if self.plan.usable(addr):
                yield addr


def key(network_id: str, addr: IPAddress | str = "") -> str:
    return f"/ipam/{network_id}/{addr}"


class Ipam:
    """Allocations of every network this store holds addresses for, per family."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.spaces: dict[str, dict[int, AddressSpace]] = {}

    def loaded(self, network_id: str) -> bool:
        return network_id in self.spaces

    async def open(self, network_id: str, plans: list[SubnetPlan]) -> None:
        """Load a network's allocations (start-up, or first use on this host)."""
        spaces = {plan.family: AddressSpace(plan) for plan in plans}
        kvs, _ = await self.store.list_prefix(key(network_id))
        for kv in kvs:
            addr = parse_address(kv.key.rsplit("/", 1)[1])
            if (space := spaces.get(addr.version)) is not None:
                space.used.add(int(addr))
        self.spaces[network_id] = spaces

    def close(self, network_id: str) -> None:
        self.spaces.pop(network_id, None)

    def _space(self, network_id: str, family: int) -> AddressSpace:
        spaces = self.spaces.get(network_id)
        if spaces is None:
            raise Unavailable(f"addresses of network {network_id[:12]} are not loaded on this host")
        space = spaces.get(family)
        if space is None:
            raise InvalidArgument(f"network {network_id[:12]} has no IPv{family} subnet")
        return space

    def families(self, network_id: str) -> list[int]:
        return sorted(self.spaces.get(network_id, {}))

    async def allocate(
        self, network_id: str, owner: str, family: int, requested: str = ""
    ) -> IPAddress:
        space = self._space(network_id, family)
        if requested:
            addr = parse_address(requested)
            if not space.plan.usable(addr):
                raise InvalidArgument(
                    f"IP address {addr} is not usable in subnet {space.plan.subnet}"
                )
            if not await self.store.create(key(network_id, addr), owner):
                raise Conflict(f"IP address {addr} is already in use")
            space.used.add(int(addr))
            return addr
        for addr in space.candidates():
            # Another host may have taken it since we last looked: on conflict,
            # remember it and move on.
            space.used.add(int(addr))
            if await self.store.create(key(network_id, addr), owner):
                space.cursor = int(addr)
                return addr
        raise Unavailable(f"no free IP address left in {space.plan.ip_range}")

    async def release(self, network_id: str, addr: IPAddress | str) -> None:
        await self.store.delete(key(network_id, addr))
        value = parse_address(str(addr))
        if space := self.spaces.get(network_id, {}).get(value.version):
            space.used.discard(int(value))

    async def hand_over(self, network_id: str, addr: str, holder: str, owner: str) -> bool:
        """Give an address allocated under `holder` to `owner`, if `holder`
        still has it (a front end whose protocol allocates before it attaches)."""
        kv = await self.store.get(key(network_id, addr))
        if kv is None or kv.value != holder:
            return False
        return await self.store.txn([Compare(kv.key, kv.mod_revision)], [Put(kv.key, owner)])

    async def release_held(self, network_id: str, addr: str, holder: str) -> None:
        """Release an address only while `holder` has it: a late release never
        takes an address someone else was given since."""
        kv = await self.store.get(key(network_id, addr))
        if kv is None or kv.value != holder:
            return
        if await self.store.txn([Compare(kv.key, kv.mod_revision)], [Delete(kv.key)]):
            value = parse_address(addr)
            if space := self.spaces.get(network_id, {}).get(value.version):
                space.used.discard(int(value))

    async def release_all(self, network_id: str) -> None:
        kvs, _ = await self.store.list_prefix(key(network_id))
        if kvs:
            await self.store.txn([], [Delete(kv.key) for kv in kvs])
        self.close(network_id)
