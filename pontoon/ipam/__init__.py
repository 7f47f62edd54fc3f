"""IP address management: subnets for networks (pools), addresses for
attachments (the allocator), in either family."""

from pontoon.ipam.allocator import AddressSpace, Ipam, SubnetPlan, key, plan_subnets
from pontoon.ipam.pools import (
    DEFAULT_BIP,
    DEFAULT_POOLS,
    Pool,
    check_subnet,
    choose_subnet,
    overlapping,
    parse_address,
    parse_network,
    parse_pool,
)

__all__ = [
    "DEFAULT_BIP",
    "DEFAULT_POOLS",
    "AddressSpace",
    "Ipam",
    "Pool",
    "SubnetPlan",
    "check_subnet",
    "choose_subnet",
    "key",
    "overlapping",
    "parse_address",
    "parse_network",
    "parse_pool",
    "plan_subnets",
]
