"""IP address management: subnets for networks, addresses for endpoints.

Subnets come from address pools and never overlap another network or a route
the host already has. Addresses are allocated round-robin after the last one
handed out (as Docker does, so a freed address is not reused at once), and
every allocation is a key created with a compare-and-swap in the store:
/ipam/<network id>/<address>. On the etcd store that makes allocation safe
between hosts; on SQLite it makes it survive restarts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from pontoon.errors import Conflict, InvalidArgument, Unavailable
from pontoon.model import NetworkSpec
from pontoon.store import Delete, Store

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True)
class Pool:
    base: IPv4Net
    size: int

    def subnets(self) -> Iterable[IPv4Net]:
        return self.base.subnets(new_prefix=self.size)


# Docker's defaults, so that users moving over keep their mental map.
DEFAULT_BIP = "172.17.0.1/16"
DEFAULT_POOLS = [Pool(IPv4Net(f"172.{n}.0.0/16"), 16) for n in range(17, 32)] + [
    Pool(IPv4Net("192.168.0.0/16"), 20)
]


def parse_network(text: str, what: str = "subnet") -> IPv4Net:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid {what} {text!r}: {exc}") from None
    if not isinstance(net, IPv4Net):
        raise InvalidArgument(f"invalid {what} {text!r}: only IPv4 is supported")
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid {what} {text!r}: a /30 or larger is needed")
    return net


def parse_address(text: str, what: str = "IP address") -> IPv4Addr:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r}") from None
    if not isinstance(addr, IPv4Addr):
        raise InvalidArgument(f"invalid {what} {text!r}: only IPv4 is supported")
    return addr


def parse_pool(text: str) -> Pool:
    """`base=CIDR,size=N`, Docker's --default-address-pool syntax."""
    fields = dict(part.partition("=")[::2] for part in text.split(","))
    if set(fields) != {"base", "size"}:
        raise InvalidArgument(f"invalid address pool {text!r}: expected base=CIDR,size=N")
    base = parse_network(fields["base"], "address pool base")
    try:
        size = int(fields["size"])
    except ValueError:
        raise InvalidArgument(f"invalid address pool size {fields['size']!r}") from None
    if not base.prefixlen <= size <= 30:
        raise InvalidArgument(f"invalid address pool {text!r}: size must be {base.prefixlen}-30")
    return Pool(base, size)


def overlapping(net: IPv4Net, others: Iterable[IPv4Net]) -> IPv4Net | None:
    for other in others:
        if net.overlaps(other):
            return other
    return None


def choose_subnet(pools: Iterable[Pool], taken: list[IPv4Net]) -> IPv4Net:
    for pool in pools:
        for candidate in pool.subnets():
            if overlapping(candidate, taken) is None:
                return candidate
    raise Unavailable("no free subnet left in the address pools; use --subnet")


def check_subnet(net: IPv4Net, networks: list[IPv4Net], routes: list[IPv4Net]) -> None:
    if (other := overlapping(net, networks)) is not None:
        raise Conflict(f"subnet {net} overlaps network subnet {other}")
    if (other := overlapping(net, routes)) is not None:
        raise Conflict(f"subnet {net} overlaps the host route to {other}")


def plan_subnet(
    spec: NetworkSpec, pools: Iterable[Pool], taken: list[IPv4Net], routes: list[IPv4Net]
) -> SubnetPlan:
    """The subnet, gateway and range for a new network: the asked subnet if it
    clashes with nothing, else the first free one of the pools."""
    if spec.subnet:
        chosen = parse_network(spec.subnet)
        check_subnet(chosen, taken, routes)
    else:
        if spec.gateway or spec.ip_range:
            raise InvalidArgument("--gateway and --ip-range need --subnet")
        chosen = choose_subnet(pools, taken + routes)
    return SubnetPlan.build(chosen, spec.gateway, spec.ip_range)


@dataclasses.dataclass
class SubnetPlan:
    """A network's addressing: subnet, gateway and the range containers use."""

    subnet: IPv4Net
    gateway: IPv4Addr
    ip_range: IPv4Net

    @classmethod
    def build(cls, subnet: IPv4Net, gateway: str = "", ip_range: str = "") -> SubnetPlan:
        gw = parse_address(gateway, "gateway") if gateway else next(subnet.hosts())
        if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
            raise InvalidArgument(f"gateway {gw} is not a usable address of subnet {subnet}")
        rng = parse_network(ip_range, "ip-range") if ip_range else subnet
        if not rng.subnet_of(subnet):
            raise InvalidArgument(f"ip-range {rng} is not inside subnet {subnet}")
        return cls(subnet, gw, rng)

    def usable(self, addr: IPv4Addr) -> bool:
        s = self.subnet
        return addr in s and addr not in (s.network_address, s.broadcast_address, self.gateway)


class AddressSpace:
    """In-memory view of one network's allocations; the store is the truth."""

    def __init__(self, plan: SubnetPlan) -> None:
        self.plan = plan
        self.used: set[int] = set()
        self.cursor = int(plan.ip_range.network_address)

    def candidates(self) -> Iterable[IPv4Addr]:
        """Free addresses of the range, starting after the last one handed out."""
        rng = self.plan.ip_range
        first, last = int(rng.network_address), int(rng.broadcast_address)
        span = last - first + 1
        start = self.cursor - first
        for i in range(1, span + 1):
            value = first + (start + i) % span
            addr = IPv4Addr(value)
            if value not in self.used and self.plan.usable(addr):
                yield addr


def key(network_id: str, addr: IPv4Addr | str = "") -> str:
    return f"/ipam/{network_id}/{addr}"


class Ipam:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.spaces: dict[str, AddressSpace] = {}

    async def open(self, network_id: str, plan: SubnetPlan) -> None:
        """Load a network's allocations (startup, or first use on this host)."""
        space = AddressSpace(plan)
        kvs, _ = await self.store.list_prefix(key(network_id))
        for kv in kvs:
            space.used.add(int(IPv4Addr(kv.key.rsplit("/", 1)[1])))
        self.spaces[network_id] = space

    def close(self, network_id: str) -> None:
        self.spaces.pop(network_id, None)

    async def allocate(self, network_id: str, owner: str, requested: str = "") -> IPv4Addr:
        space = self.spaces.get(network_id)
        if space is None:
            raise Unavailable(f"addresses of network {network_id[:12]} are not loaded on this host")
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

    async def release(self, network_id: str, addr: IPv4Addr | str) -> None:
        await self.store.delete(key(network_id, addr))
        if space := self.spaces.get(network_id):
            space.used.discard(int(IPv4Addr(str(addr))))

    async def release_all(self, network_id: str) -> None:
        kvs, _ = await self.store.list_prefix(key(network_id))
        if kvs:
            await self.store.txn([], [Delete(kv.key) for kv in kvs])
        self.close(network_id)
