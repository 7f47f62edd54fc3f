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


# Docker's defaults, so that users moving over keep their mental map.
DEFAULT_BIP = "172.17.0.1/16"
DEFAULT_POOLS = [Pool(ipaddress.IPv4Network(f"172.{n}.0.0/16"), 16) for n in range(17, 32)] + [
    Pool(ipaddress.IPv4Network("192.168.0.0/16"), 20)
]


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


def check_subnet(net: IPNetwork, networks: list[IPNetwork], routes: list[IPNetwork]) -> None:
    if (other := overlapping(net, networks)) is not None:
        raise Conflict(f"subnet {net} overlaps network subnet {other}")
    if (other := overlapping(net, routes)) is not None:
        raise Conflict(f"subnet {net} overlaps the host route to {other}")
