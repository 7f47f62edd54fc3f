"""IP address management: subnets for networks (pools), addresses for
attachments (the allocator), in either family."""

from pontoon.ipam.allocator import (
    AddressSpace,
    Ipam,
    SubnetPlan,
    key,
    plan_subnets,
    requested_families,
)
from pontoon.ipam.pools import (
    DEFAULT_BIP,
    DEFAULT_IPV6_POOL,
    DEFAULT_POOLS,
    Pool,
    check_subnet,
    choose_subnet,
    match_to_subnets,
    overlapping,
    parse_address,
    parse_network,
    parse_pool,
    with_default_pools,
)

__all__ = [
    "DEFAULT_BIP",
    "DEFAULT_IPV6_POOL",
    "DEFAULT_POOLS",
    "AddressSpace",
    "Ipam",
    "Pool",
    "SubnetPlan",
    "check_subnet",
    "choose_subnet",
    "key",
    "match_to_subnets",
    "overlapping",
    "parse_address",
    "parse_network",
    "parse_pool",
    "plan_subnets",
    "requested_families",
    "with_default_pools",
]
