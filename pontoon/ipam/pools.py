"""Subnets for networks: parsing, address pools, and choosing a free subnet.

A new network's subnet never overlaps another network's or a route the host
already has. Both families are handled alike; what differs (a /30 is the
smallest useful IPv4 subnet, a /126 the smallest IPv6 one) is said here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from pontoon.core.addresses import IPAddress, IPNetwork
from pontoon.errors import Conflict, InvalidArgument, Unavailable

# The longest prefix that still leaves room for a gateway and an endpoint.
MAX_PREFIXLEN = {4: 30, 6: 126}


@dataclasses.dataclass(frozen=True)
class Pool:
    base: IPNetwork
    size: int

    def subnets(self) -> Iterable[IPNetwork]:
        return self.base.subnets(new_prefix=self.size)

    @property
    def family(self) -> int:
        return self.base.version


# Docker's IPv4 defaults, so that users moving over keep their mental map.
DEFAULT_BIP = "172.17.0.1/16"
# IPv6: one fixed unique-local /48 ("Ponto" in ASCII after fd: fd50:6f6e:746f),
# cut into /64s, the smallest prefix SLAAC-minded tools expect. Fixed rather
# than random so that every host of a lab, and every run, gets the same map;
# --default-address-pool base=CIDR,size=N with an IPv6 base replaces it.
DEFAULT_IPV6_POOL = Pool(ipaddress.IPv6Network("fd50:6f6e:746f::/48"), 64)
DEFAULT_POOLS = [Pool(ipaddress.IPv4Network(f"172.{n}.0.0/16"), 16) for n in range(17, 32)] + [
    Pool(ipaddress.IPv4Network("192.168.0.0/16"), 20),
    DEFAULT_IPV6_POOL,
]


def with_default_pools(given: Iterable[Pool]) -> list[Pool]:
    """The daemon's pools: those given, and the defaults of each family none
    was given for (an IPv4 --default-address-pool keeps the IPv6 default)."""
    pools = list(given)
    families = {p.family for p in pools}
    return pools + [p for p in DEFAULT_POOLS if p.family not in families]


def parse_network(text: str, what: str = "subnet") -> IPNetwork:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid {what} {text!r}: {exc}") from None
    longest = MAX_PREFIXLEN[net.version]
    if net.prefixlen > longest:
        raise InvalidArgument(f"invalid {what} {text!r}: a /{longest} or larger is needed")
    return net


def parse_address(text: str, what: str = "IP address") -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r}") from None


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
    longest = MAX_PREFIXLEN[base.version]
    if not base.prefixlen <= size <= longest:
        raise InvalidArgument(
            f"invalid address pool {text!r}: size must be {base.prefixlen}-{longest}"
        )
    return Pool(base, size)


def overlapping(net: IPNetwork, others: Iterable[IPNetwork]) -> IPNetwork | None:
    for other in others:
        if net.version == other.version and net.overlaps(other):
            return other
    return None


def choose_subnet(pools: Iterable[Pool], taken: list[IPNetwork], family: int = 4) -> IPNetwork:
    for pool in pools:
        if pool.family != family:
            continue
        for candidate in pool.subnets():
            if overlapping(candidate, taken) is None:
                return candidate
    raise Unavailable(f"no free subnet left in the IPv{family} address pools; use --subnet")


def match_to_subnets(
    subnets: Iterable[str], gateways: Iterable[str], ranges: Iterable[str]
) -> list[dict[str, str]]:
    """Docker's repeatable --subnet/--gateway/--ip-range: each gateway and
    range belongs to the subnet that holds it, so their order does not matter.
    Returns [{Subnet, Gateway, IPRange}] for the API."""
    out = [{"Subnet": str(parse_network(s)), "Gateway": "", "IPRange": ""} for s in subnets]
    nets = [ipaddress.ip_network(e["Subnet"]) for e in out]
    wanted: list[tuple[str, str, IPAddress | IPNetwork]] = [
        *(("Gateway", g, parse_address(g, "gateway")) for g in gateways),
        *(("IPRange", r, parse_network(r, "ip-range")) for r in ranges),
    ]
    for field, text, value in wanted:
        home = next((i for i, n in enumerate(nets) if _inside(value, n)), None)
        if home is None:
            raise InvalidArgument(f"{_FLAG[field]} {text} is in none of the subnets given")
        if out[home][field]:
            raise InvalidArgument(f"more than one {_FLAG[field]} for subnet {nets[home]}")
        out[home][field] = str(value)
    return out


_FLAG = {"Gateway": "--gateway", "IPRange": "--ip-range"}


def _inside(value: IPAddress | IPNetwork, net: IPNetwork) -> bool:
    if value.version != net.version:
        return False
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value.subnet_of(net)  # type: ignore[arg-type]
    return value in net


def check_subnet(net: IPNetwork, networks: list[IPNetwork], routes: list[IPNetwork]) -> None:
    if (other := overlapping(net, networks)) is not None:
        raise Conflict(f"subnet {net} overlaps network subnet {other}")
    if (other := overlapping(net, routes)) is not None:
        raise Conflict(f"subnet {net} overlaps the host route to {other}")
