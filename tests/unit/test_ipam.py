"""IPAM: parsing, subnet choice, addressing plans and address allocation."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path

import pytest

from pontoon import ipam
from pontoon.errors import Conflict, InvalidArgument, Unavailable
from pontoon.store.sqlite import SQLiteStore

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address


# ------------------------------------------------------------------ parsing


def test_parse_network_accepts_ipv4_cidr():
    assert ipam.parse_network("10.1.0.0/16") == Net("10.1.0.0/16")


def test_parse_network_accepts_a_slash_30():
    assert ipam.parse_network("10.1.0.0/30").num_addresses == 4


@pytest.mark.parametrize("prefix", ["31", "32"])
def test_parse_network_rejects_networks_smaller_than_slash_30(prefix):
    with pytest.raises(InvalidArgument, match="a /30 or larger is needed"):
        ipam.parse_network(f"10.1.0.0/{prefix}")


def test_parse_network_rejects_host_bits():
    with pytest.raises(InvalidArgument, match=re.escape("invalid subnet '10.1.0.1/16'")):
        ipam.parse_network("10.1.0.1/16")


def test_parse_network_rejects_garbage():
    with pytest.raises(InvalidArgument, match="invalid subnet 'banana'"):
        ipam.parse_network("banana")


def test_parse_network_accepts_ipv6():
    assert ipam.parse_network("fd00::/64") == ipaddress.IPv6Network("fd00::/64")


def test_parse_network_rejects_ipv6_smaller_than_slash_126():
    with pytest.raises(InvalidArgument, match="a /126 or larger is needed"):
        ipam.parse_network("fd00::/127")


def test_parse_network_names_what_was_parsed():
    with pytest.raises(InvalidArgument, match="invalid ip-range"):
        ipam.parse_network("nope", "ip-range")


def test_parse_address_accepts_ipv4():
    assert ipam.parse_address("10.1.2.3") == Addr("10.1.2.3")


@pytest.mark.parametrize("text", ["", "10.1.2", "10.1.2.3/24", "10.1.2.256"])
def test_parse_address_rejects_malformed(text):
    with pytest.raises(InvalidArgument, match="invalid IP address"):
        ipam.parse_address(text)


def test_parse_address_accepts_ipv6():
    assert ipam.parse_address("fd00::1") == ipaddress.IPv6Address("fd00::1")


def test_parse_address_names_what_was_parsed():
    with pytest.raises(InvalidArgument, match="invalid gateway 'x'"):
        ipam.parse_address("x", "gateway")


def test_parse_pool_accepts_docker_syntax():
    assert ipam.parse_pool("base=10.10.0.0/16,size=24") == ipam.Pool(Net("10.10.0.0/16"), 24)


def test_parse_pool_size_may_equal_base_prefix():
    assert ipam.parse_pool("base=10.10.0.0/16,size=16").size == 16


@pytest.mark.parametrize(
    "text",
    ["base=10.10.0.0/16", "size=24", "", "base=10.10.0.0/16,size=24,extra=1"],
)
def test_parse_pool_requires_exactly_base_and_size(text):
    with pytest.raises(InvalidArgument, match="expected base=CIDR,size=N"):
        ipam.parse_pool(text)


def test_parse_pool_rejects_non_integer_size():
    with pytest.raises(InvalidArgument, match="invalid address pool size 'big'"):
        ipam.parse_pool("base=10.10.0.0/16,size=big")


@pytest.mark.parametrize("size", ["8", "15", "31"])
def test_parse_pool_rejects_size_outside_base_prefix_to_30(size):
    with pytest.raises(InvalidArgument, match="size must be 16-30"):
        ipam.parse_pool(f"base=10.10.0.0/16,size={size}")


def test_parse_pool_rejects_invalid_base():
    with pytest.raises(InvalidArgument, match="invalid address pool base"):
        ipam.parse_pool("base=10.10.0.1/16,size=24")


def test_pool_subnets_split_the_base():
    subnets = list(ipam.Pool(Net("10.0.0.0/22"), 24).subnets())
    assert subnets == [Net(f"10.0.{i}.0/24") for i in range(4)]


def test_default_pools_start_after_the_default_bridge():
    assert ipam.DEFAULT_POOLS[0].base == Net("172.17.0.0/16")
    assert ipam.DEFAULT_POOLS[-2] == ipam.Pool(Net("192.168.0.0/16"), 20)
    assert ipam.DEFAULT_POOLS[-1] == ipam.DEFAULT_IPV6_POOL


# ------------------------------------------------------------ choose_subnet

POOL = ipam.Pool(Net("10.0.0.0/22"), 24)
POOL2 = ipam.Pool(Net("10.9.0.0/23"), 24)


def test_choose_subnet_takes_the_first_free_subnet():
    assert ipam.choose_subnet([POOL], []) == Net("10.0.0.0/24")


def test_choose_subnet_skips_taken_subnets():
    taken = [Net("10.0.0.0/24"), Net("10.0.1.0/24")]
    assert ipam.choose_subnet([POOL], taken) == Net("10.0.2.0/24")


def test_choose_subnet_skips_subnets_inside_a_larger_route():
    assert ipam.choose_subnet([POOL], [Net("10.0.0.0/23")]) == Net("10.0.2.0/24")


def test_choose_subnet_skips_subnets_containing_a_smaller_route():
    assert ipam.choose_subnet([POOL], [Net("10.0.0.128/25")]) == Net("10.0.1.0/24")


def test_choose_subnet_moves_to_the_next_pool():
    assert ipam.choose_subnet([POOL, POOL2], [Net("10.0.0.0/22")]) == Net("10.9.0.0/24")


def test_choose_subnet_raises_unavailable_when_pools_are_exhausted():
    with pytest.raises(Unavailable, match="no free subnet"):
        ipam.choose_subnet([POOL, POOL2], [Net("10.0.0.0/8")])


def test_choose_subnet_with_default_pools_skips_the_default_bridge():
    assert ipam.choose_subnet(ipam.DEFAULT_POOLS, [Net("172.17.0.0/16")]) == Net("172.18.0.0/16")


# ------------------------------------------------------------- check_subnet


def test_check_subnet_accepts_a_free_subnet():
    ipam.check_subnet(Net("10.0.1.0/24"), [Net("10.0.0.0/24")], [Net("10.0.2.0/24")])


def test_check_subnet_rejects_overlap_with_a_network():
    with pytest.raises(Conflict, match=re.escape("overlaps network subnet 10.0.0.0/16")):
        ipam.check_subnet(Net("10.0.1.0/24"), [Net("10.0.0.0/16")], [])


def test_check_subnet_rejects_overlap_with_a_host_route():
    with pytest.raises(Conflict, match=re.escape("overlaps the host route to 10.0.1.128/25")):
        ipam.check_subnet(Net("10.0.1.0/24"), [], [Net("10.0.1.128/25")])


# --------------------------------------------------------------- SubnetPlan

SUBNET = Net("10.0.0.0/24")


def test_plan_defaults_gateway_to_first_host_and_range_to_subnet():
    plan = ipam.SubnetPlan.build(SUBNET)
    assert plan == ipam.SubnetPlan(SUBNET, Addr("10.0.0.1"), SUBNET)


def test_plan_uses_explicit_gateway():
    assert ipam.SubnetPlan.build(SUBNET, "10.0.0.254").gateway == Addr("10.0.0.254")


@pytest.mark.parametrize("gateway", ["10.0.1.1", "10.0.0.0", "10.0.0.255"])
def test_plan_rejects_gateway_that_is_not_a_usable_subnet_address(gateway):
    with pytest.raises(InvalidArgument, match="is not a usable address of subnet"):
        ipam.SubnetPlan.build(SUBNET, gateway)


def test_plan_rejects_malformed_gateway():
    with pytest.raises(InvalidArgument, match="invalid gateway"):
        ipam.SubnetPlan.build(SUBNET, "10.0.0")


def test_plan_accepts_ip_range_inside_subnet():
    plan = ipam.SubnetPlan.build(SUBNET, "", "10.0.0.128/25")
    assert plan.ip_range == Net("10.0.0.128/25")


@pytest.mark.parametrize("ip_range", ["10.0.1.0/25", "10.0.0.0/23"])
def test_plan_rejects_ip_range_not_inside_subnet(ip_range):
    with pytest.raises(InvalidArgument, match="is not inside subnet"):
        ipam.SubnetPlan.build(SUBNET, "", ip_range)


def test_plan_usable_excludes_network_broadcast_gateway_and_outsiders():
    plan = ipam.SubnetPlan.build(SUBNET)
    assert plan.usable(Addr("10.0.0.2"))
    for addr in ("10.0.0.0", "10.0.0.255", "10.0.0.1", "10.0.1.2"):
        assert not plan.usable(Addr(addr))


# ------------------------------------------------------------- AddressSpace


def test_candidates_skip_network_broadcast_and_gateway():
    got = list(ipam.AddressSpace(ipam.SubnetPlan.build(SUBNET)).candidates())
    assert got[:2] == [Addr("10.0.0.2"), Addr("10.0.0.3")]
    assert got[-1] == Addr("10.0.0.254")
    assert len(got) == 253


def test_candidates_start_after_the_cursor_and_wrap_around():
    space = ipam.AddressSpace(ipam.SubnetPlan.build(SUBNET))
    space.cursor = int(Addr("10.0.0.10"))
    got = list(space.candidates())
    assert got[0] == Addr("10.0.0.11")
    assert got[-1] == Addr("10.0.0.10")
    assert got.index(Addr("10.0.0.2")) == got.index(Addr("10.0.0.254")) + 1


def test_candidates_skip_used_addresses():
    space = ipam.AddressSpace(ipam.SubnetPlan.build(SUBNET))
    space.used.update({int(Addr("10.0.0.2")), int(Addr("10.0.0.4"))})
    got = list(space.candidates())
    assert got[:2] == [Addr("10.0.0.3"), Addr("10.0.0.5")]
    assert Addr("10.0.0.4") not in got


def test_candidates_stay_inside_the_ip_range():
    plan = ipam.SubnetPlan.build(SUBNET, "", "10.0.0.16/28")
    got = list(ipam.AddressSpace(plan).candidates())
    # The range's own first and last addresses are ordinary hosts of the subnet.
    assert sorted(got) == [Addr(f"10.0.0.{i}") for i in range(16, 32)]


def test_candidates_in_range_still_skip_subnet_network_and_gateway():
    plan = ipam.SubnetPlan.build(SUBNET, "", "10.0.0.0/28")
    got = list(ipam.AddressSpace(plan).candidates())
    assert got == [Addr(f"10.0.0.{i}") for i in range(2, 16)]


# --------------------------------------------------------------------- Ipam

NET_ID = "n1"


def make_ipam(db: Path, plan: ipam.SubnetPlan, network_id: str = NET_ID) -> ipam.Ipam:
    async def build() -> ipam.Ipam:
        alloc = ipam.Ipam(SQLiteStore(db))
        await alloc.open(network_id, [plan])
        return alloc

    return asyncio.run(build())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "pontoon.db"


@pytest.fixture
def alloc(db: Path) -> ipam.Ipam:
    return make_ipam(db, ipam.SubnetPlan.build(SUBNET))


def allocate(alloc: ipam.Ipam, requested: str = "", owner: str = "ep") -> Addr:
    return asyncio.run(alloc.allocate(NET_ID, owner, 4, requested))


def test_allocate_hands_out_the_first_usable_address(alloc):
    assert allocate(alloc) == Addr("10.0.0.2")


def test_allocate_records_owner_in_the_store(alloc):
    addr = allocate(alloc, owner="endpoint-1")
    kv = asyncio.run(alloc.store.get(ipam.key(NET_ID, addr)))
    assert kv is not None and kv.value == "endpoint-1"


def test_allocate_does_not_reuse_a_just_released_address(alloc):
    first = allocate(alloc)
    allocate(alloc)
    asyncio.run(alloc.release(NET_ID, first))
    assert allocate(alloc) == Addr("10.0.0.4")


def test_allocate_requested_address(alloc):
    assert allocate(alloc, "10.0.0.77") == Addr("10.0.0.77")


def test_allocate_requested_address_already_taken_is_a_conflict(alloc):
    allocate(alloc, "10.0.0.77")
    with pytest.raises(Conflict, match=re.escape("10.0.0.77 is already in use")):
        allocate(alloc, "10.0.0.77")


@pytest.mark.parametrize("requested", ["10.0.0.1", "10.0.0.0", "10.0.0.255", "10.0.1.5"])
def test_allocate_requested_address_must_be_usable(alloc, requested):
    with pytest.raises(InvalidArgument, match="is not usable in subnet"):
        allocate(alloc, requested)


def test_allocate_requested_address_must_parse(alloc):
    with pytest.raises(InvalidArgument, match="invalid IP address"):
        allocate(alloc, "10.0.0")


def test_round_robin_skips_a_requested_address(alloc):
    allocate(alloc, "10.0.0.2")
    assert allocate(alloc) == Addr("10.0.0.3")


def test_allocate_skips_addresses_another_host_created_in_the_store(alloc):
    asyncio.run(alloc.store.create(ipam.key(NET_ID, "10.0.0.2"), "elsewhere"))
    assert allocate(alloc) == Addr("10.0.0.3")


def test_allocate_raises_unavailable_when_the_range_is_full(db):
    alloc = make_ipam(db, ipam.SubnetPlan.build(Net("10.0.0.0/30")))
    assert allocate(alloc) == Addr("10.0.0.2")
    with pytest.raises(Unavailable, match=re.escape("no free IP address left in 10.0.0.0/30")):
        allocate(alloc)


def test_released_address_can_be_requested_again(alloc):
    allocate(alloc, "10.0.0.9")
    asyncio.run(alloc.release(NET_ID, "10.0.0.9"))
    assert allocate(alloc, "10.0.0.9") == Addr("10.0.0.9")


def test_release_all_removes_only_this_networks_allocations(db):
    plan = ipam.SubnetPlan.build(SUBNET)
    alloc = make_ipam(db, plan)
    asyncio.run(alloc.open("n10", [plan]))  # "n1" is a string prefix of "n10"
    allocate(alloc)
    asyncio.run(alloc.allocate("n10", "ep", 4))
    asyncio.run(alloc.release_all(NET_ID))
    kvs, _ = asyncio.run(alloc.store.list_prefix("/ipam/"))
    assert [kv.key for kv in kvs] == ["/ipam/n10/10.0.0.2"]
    assert NET_ID not in alloc.spaces


def test_allocations_persist_in_the_database_file(db):
    plan = ipam.SubnetPlan.build(SUBNET)
    allocate(make_ipam(db, plan), "10.0.0.2")
    again = make_ipam(db, plan)
    assert allocate(again) == Addr("10.0.0.3")
    with pytest.raises(Conflict):
        allocate(again, "10.0.0.2")


# ------------------------------------------------------------------- IPv6

V6 = ipaddress.IPv6Network("fd00:1:2:3::/64")


def test_ipv6_plan_has_no_broadcast_and_gateway_is_the_first_host():
    plan = ipam.SubnetPlan.build(V6)
    assert str(plan.gateway) == "fd00:1:2:3::1"
    assert plan.usable(ipaddress.IPv6Address("fd00:1:2:3:ffff:ffff:ffff:ffff"))
    assert not plan.usable(ipaddress.IPv6Address("fd00:1:2:3::"))  # subnet-router anycast


def test_ipv6_allocation_on_a_slash_64_is_round_robin_and_cheap(db):
    alloc = make_ipam(db, ipam.SubnetPlan.build(V6))
    got = [asyncio.run(alloc.allocate(NET_ID, f"e{i}", 6)) for i in range(3)]
    assert [str(a) for a in got] == ["fd00:1:2:3::2", "fd00:1:2:3::3", "fd00:1:2:3::4"]


def test_ipv6_candidates_walk_only_as_far_as_the_used_addresses():
    space = ipam.AddressSpace(ipam.SubnetPlan.build(V6))
    base = int(V6.network_address)
    space.used |= {base + i for i in range(2, 10_002)}
    first = next(space.candidates())
    assert int(first) == base + 10_002


def test_two_families_on_one_network_allocate_independently(db):
    alloc = ipam.Ipam(SQLiteStore(db))
    plans = [ipam.SubnetPlan.build(SUBNET), ipam.SubnetPlan.build(V6)]
    asyncio.run(alloc.open(NET_ID, plans))
    assert alloc.families(NET_ID) == [4, 6]
    v4 = asyncio.run(alloc.allocate(NET_ID, "e", 4))
    v6 = asyncio.run(alloc.allocate(NET_ID, "e", 6))
    assert (str(v4), str(v6)) == ("10.0.0.2", "fd00:1:2:3::2")
    asyncio.run(alloc.release(NET_ID, v6))
    assert asyncio.run(alloc.allocate(NET_ID, "e", 6, "fd00:1:2:3::2")) == v6


def test_a_family_the_network_lacks_is_invalid(alloc):
    with pytest.raises(InvalidArgument, match="has no IPv6 subnet"):
        asyncio.run(alloc.allocate(NET_ID, "e", 6))


def test_plan_subnets_takes_asked_subnets_and_pools_for_the_rest():
    from pontoon.core.model import Subnet

    pools = [ipam.Pool(Net("10.9.0.0/16"), 24)]
    plans = ipam.plan_subnets([Subnet("fd00:9::/64")], pools, [], [], families=(4, 6))
    assert sorted(str(p.subnet) for p in plans) == ["10.9.0.0/24", "fd00:9::/64"]


def test_plan_subnets_refuses_two_subnets_of_one_family():
    from pontoon.core.model import Subnet

    with pytest.raises(InvalidArgument, match="more than one IPv4 subnet"):
        ipam.plan_subnets([Subnet("10.1.0.0/24"), Subnet("10.2.0.0/24")], [], [], [])
