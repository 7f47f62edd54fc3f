"""IPv6 and dual stack: the pure logic (flags matched to subnets, families a
network asks for, pools, RA-keeping forwarding, firewall rendering per family,
DNS records)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from pontoon import ipam
from pontoon.core.model import NetworkSpec, Subnet
from pontoon.dns.server import View, _ptr_address, build_reply, fast_answer
from pontoon.drivers import links
from pontoon.drivers.bridge import check_gateway_modes, routed_families
from pontoon.errors import InvalidArgument
from pontoon.firewall import iptables as ipt
from pontoon.firewall.base import NetworkRules
from pontoon.firewall.nft import host as nft
from pontoon.runtime.containers import fixed_addresses
from pontoon.sandbox.files import resolv_text

Net = ipaddress.ip_network
DUAL = NetworkRules("pt-dual", ("10.5.0.0/24", "fd00:5::/64"))
ROUTED6 = NetworkRules("pt-r", ("10.6.0.0/24", "fd00:6::/64"), routed=(6,))
ONLY6 = NetworkRules("pt-6", ("fd00:7::/64",))

# -- flags and families ------------------------------------------------------------------


def test_gateways_and_ranges_go_to_the_subnet_that_holds_them_in_any_order():
    out = ipam.match_to_subnets(
        ["fd00:1::/64", "10.1.0.0/24"], ["10.1.0.254", "fd00:1::1"], ["fd00:1::100/120"]
    )
    assert out == [
        {"Subnet": "fd00:1::/64", "Gateway": "fd00:1::1", "IPRange": "fd00:1::100/120"},
        {"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.254", "IPRange": ""},
    ]


@pytest.mark.parametrize(
    "subnets, gateways, ranges",
    [
        (["10.1.0.0/24"], ["fd00:1::1"], []),  # a gateway of no subnet given
        (["fd00:1::/64"], ["fd00:1::1", "fd00:1::2"], []),  # two for one subnet
        (["fd00:1::/64"], [], ["fd00:2::/120"]),
        (["fd00:1::1/64"], [], []),  # host bits
        (["fd00:1::/64"], ["nonsense"], []),
    ],
)
def test_unmatched_or_bad_flags_are_refused(subnets, gateways, ranges):
    with pytest.raises(InvalidArgument):
        ipam.match_to_subnets(subnets, gateways, ranges)


@pytest.mark.parametrize(
    "spec, families",
    [
        (NetworkSpec("n"), (4,)),
        (NetworkSpec("n", ipv6=True), (4, 6)),
        (NetworkSpec("n", ipv4=False, ipv6=True), (6,)),
        (NetworkSpec("n", ipv6=True, subnets=(Subnet("fd00::/64"),)), (4, 6)),
    ],
)
def test_requested_families(spec, families):
    assert ipam.requested_families(spec) == families


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec("n", ipv4=False),
        NetworkSpec("n", subnets=(Subnet("fd00::/64"),)),  # IPv6 without --ipv6
        NetworkSpec("n", ipv4=False, ipv6=True, subnets=(Subnet("10.0.0.0/24"),)),
    ],
)
def test_families_and_subnets_that_do_not_agree_are_refused(spec):
    with pytest.raises(InvalidArgument):
        ipam.requested_families(spec)


def test_ipv6_only_plan_takes_the_next_free_64_of_the_ula_pool():
    taken = [Net("fd50:6f6e:746f::/64")]
    (plan,) = ipam.plan_subnets([], ipam.DEFAULT_POOLS, taken, [], families=(6,))
    assert plan.subnet == Net("fd50:6f6e:746f:1::/64")
    assert str(plan.gateway) == "fd50:6f6e:746f:1::1"


def test_an_ipv4_pool_given_keeps_the_ipv6_default_and_vice_versa():
    v4 = ipam.parse_pool("base=10.200.0.0/16,size=24")
    v6 = ipam.parse_pool("base=fd00:aa::/56,size=64")
    assert ipam.with_default_pools([v4]) == [v4, ipam.DEFAULT_IPV6_POOL]
    assert ipam.with_default_pools([v6])[0] == v6
    assert ipam.DEFAULT_IPV6_POOL not in ipam.with_default_pools([v6])
    assert len(ipam.with_default_pools([v6])) == len(ipam.DEFAULT_POOLS)


def test_ip_and_ip6_must_be_of_their_family():
    assert fixed_addresses("10.0.0.5", "fd00::5") == ("10.0.0.5", "fd00::5")
    for ip, ip6 in (("fd00::5", ""), ("", "10.0.0.5"), ("", "nonsense")):
        with pytest.raises(InvalidArgument):
            fixed_addresses(ip, ip6)


def test_gateway_modes():
    assert routed_families({"com.docker.network.bridge.gateway_mode_ipv6": "routed"}) == (6,)
    assert routed_families({"com.docker.network.bridge.gateway_mode_ipv6": "nat"}) == ()
    with pytest.raises(InvalidArgument):
        check_gateway_modes({"com.docker.network.bridge.gateway_mode_ipv4": "nat-unprotected"})


# -- the host's router advertisements ------------------------------------------------------


def _proc_sys(tmp_path: Path, accept_ra: dict[str, str]) -> Path:
    conf = tmp_path / "net/ipv6/conf"
    for name, value in accept_ra.items():
        (conf / name).mkdir(parents=True)
        (conf / name / "accept_ra").write_text(value + "\n")
    (conf / "all" / "forwarding").write_text("0\n")
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "net/ipv4/ip_forward").write_text("1\n")
    return tmp_path


def test_ipv6_forwarding_keeps_router_advertisements_where_they_were_taken(tmp_path):
    proc = _proc_sys(tmp_path, {"all": "1", "default": "1", "eth0": "1", "eth1": "0", "lo": "2"})
    links.enable_forwarding({4, 6}, proc)
    conf = proc / "net/ipv6/conf"
    ra = {d.name: (d / "accept_ra").read_text().strip() for d in conf.iterdir()}
    # eth0 keeps taking RAs with forwarding on; `default` (our future bridges) does not.
    assert ra == {"all": "1", "default": "1", "eth0": "2", "eth1": "0", "lo": "2"}
    assert (conf / "all/forwarding").read_text() == "1\n"


def test_forwarding_already_on_changes_nothing(tmp_path):
    proc = _proc_sys(tmp_path, {"all": "1", "eth0": "1"})
    (proc / "net/ipv6/conf/all/forwarding").write_text("1\n")
    links.enable_forwarding({6}, proc)
    assert (proc / "net/ipv6/conf/eth0/accept_ra").read_text() == "1\n"


def test_bridges_refuse_router_advertisements(tmp_path):
    _proc_sys(tmp_path, {"all": "1", "pt-x": "2"})
    links.refuse_router_advertisements("pt-x", tmp_path)
    assert (tmp_path / "net/ipv6/conf/pt-x/accept_ra").read_text() == "0\n"


# -- firewall rendering -----------------------------------------------------------------


def test_nat_subnets_per_family():
    assert DUAL.nat_subnets(6) == ["fd00:5::/64"] and DUAL.nat_subnets(4) == ["10.5.0.0/24"]
    assert ROUTED6.nat_subnets(6) == [] and ROUTED6.nat_subnets(4) == ["10.6.0.0/24"]
    assert NetworkRules("b", ("fd00::/64",), internal=True).nat_subnets(6) == []


def test_nftables_masquerades_ipv6_subnets_in_their_own_set():
    cmds = nft.network_commands(DUAL)
    assert "add element inet pontoon nat_subnets { 10.5.0.0/24 }" in cmds
    assert "add element inet pontoon nat_subnets6 { fd00:5::/64 }" in cmds
    assert not any("nat_subnets6" in c for c in nft.network_commands(ROUTED6))
    removed = nft.remove_network_commands(DUAL)
    assert "delete element inet pontoon nat_subnets6 { fd00:5::/64 }" in removed
    assert "ip6 saddr @nat_subnets6 oifname != @bridges masquerade" in nft.skeleton(True)


def test_nftables_sync_removes_the_ipv4_only_table_of_older_releases():
    fw = nft.NftablesFirewall.__new__(nft.NftablesFirewall)
    scripts: list[str] = []
    fw.run = scripts.append  # type: ignore[method-assign,assignment]
    nft.Firewall.__init__(fw, True)
    fw.sync([DUAL], [])
    assert scripts[0].startswith("add table ip pontoon\ndelete table ip pontoon\n")


def test_expected_view_counts_ipv6_nat_elements_and_single_addresses():
    state = nft.DesiredState()
    state.add_network(DUAL)
    state.add_network(NetworkRules("pt-h", ("fd00:9::1/128",)))
    view = nft.expected_view(state, True, None)
    assert view.elements["nat_subnets6"] == {"fd00:5::/64", "fd00:9::1"}


def test_iptables_ipv6_rules_have_the_same_chains_with_ipv6_subnets():
    v6 = [(r.table, r.chain, r.spec) for r in ipt.network_rules(DUAL, True, family=6)]
    assert ("nat", ipt.POSTROUTING, "-s fd00:5::/64 ! -o pt-dual -j MASQUERADE") in v6
    assert ("nat", ipt.POSTROUTING, "! -s fd00:5::/64 -o pt-dual -j RETURN") in v6
    assert ("filter", ipt.STAGE2, "-o pt-dual -j DROP") in v6
    assert not any("10.5.0.0" in spec for _, _, spec in v6)
    routed = ipt.network_rules(ROUTED6, True, family=6)
    assert not any("MASQUERADE" in r.spec for r in routed)
    # An IPv6-only bridge is still isolated in the IPv4 tables, with no NAT there.
    v4_only6 = ipt.network_rules(ONLY6, True, family=4)
    assert v4_only6 and all(r.table == "filter" for r in v4_only6)
    assert ipt.jump_rules(True, family=6)[-2].spec.startswith("! -d ::1/128 ")


def test_iptables_firewall_writes_both_families():
    from tests.unit.test_iptables_rules import FakeIptables

    fake = FakeIptables()
    fw = fake.firewall()
    fw._nft_based = False  # no ruleset generation to consult: always compare
    fw.sync([DUAL], [])
    assert fake.v6 is not None
    nat6 = fake.v6.tables["nat"][ipt.POSTROUTING]
    assert "-s fd00:5::/64 ! -o pt-dual -j MASQUERADE" in nat6
    assert fw.check() == []
    fake.v6.tables["nat"][ipt.POSTROUTING].clear()  # someone flushes the IPv6 chain
    problems = fw.check()
    assert problems and problems[0].startswith("IPv6: ")
    assert "-s fd00:5::/64 ! -o pt-dual -j MASQUERADE" in fake.v6.tables["nat"][ipt.POSTROUTING]
    fw.remove_network(DUAL)
    assert not any("pt-dual" in r for r in fake.v6.tables["nat"][ipt.POSTROUTING])


# -- DNS ----------------------------------------------------------------------------------

VIEW = View(
    names={"web": ["10.0.0.2", "fd00::2"], "six": ["fd00::6"]},
    reverse={"fd00::6": "six", "10.0.0.2": "web"},
    upstreams=[],
    external=True,
)


@pytest.mark.parametrize(
    "name, rdtype, want",
    [("web", "A", ["10.0.0.2"]), ("web", "AAAA", ["fd00::2"]), ("six", "AAAA", ["fd00::6"]),
     ("six", "A", [])],
)  # fmt: skip
def test_a_and_aaaa_answers_both_paths(name, rdtype, want):
    query = dns.message.make_query(name, rdtype)
    fast = dns.message.from_wire(fast_answer(query.to_wire(), VIEW) or b"")
    slow = build_reply(query, VIEW)
    assert slow is not None
    for reply in (fast, slow):
        assert [rr.address for rrset in reply.answer for rr in rrset] == want


def test_any_gives_both_families():
    reply = build_reply(dns.message.make_query("web", "ANY"), VIEW)
    assert reply is not None
    types = sorted(dns.rdatatype.to_text(rrset.rdtype) for rrset in reply.answer)
    assert types == ["A", "AAAA"]


def test_ip6_arpa_ptr():
    name = ipaddress.ip_address("fd00::6").reverse_pointer
    assert _ptr_address(name) == "fd00::6"
    reply = build_reply(dns.message.make_query(name, "PTR"), VIEW)
    assert reply is not None and reply.answer[0][0].target.to_text() == "six."
    assert _ptr_address("6.0.0.f.ip6.arpa") is None  # too short
    assert _ptr_address(name.replace("6", "g", 1)) is None


def test_resolv_conf_keeps_ipv6_servers_for_containers_with_ipv6():
    host = "nameserver 10.1.1.1\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\n"
    host += "nameserver ::1\n"
    assert resolv_text(host) == "nameserver 10.1.1.1\n"
    both = resolv_text(host, families={4, 6})
    assert both == "nameserver 10.1.1.1\nnameserver 2001:db8::53\n"


def test_ipv6_enabled_reads_the_default_for_new_devices(tmp_path):
    assert not links.ipv6_enabled(tmp_path)  # booted with ipv6.disable=1: no net/ipv6
    _proc_sys(tmp_path, {"all": "1", "default": "1"})
    knob = tmp_path / "net/ipv6/conf/default/disable_ipv6"
    knob.write_text("1\n")
    assert not links.ipv6_enabled(tmp_path)
    knob.write_text("0\n")
    assert links.ipv6_enabled(tmp_path)


def test_iptables_firewall_without_ipv6_writes_ipv4_only():
    from tests.unit.test_iptables_rules import FakeIptables

    fake = FakeIptables()
    fw = fake.firewall()
    fw.families = (4,)  # a kernel booted with ipv6.disable=1
    fw.sync([DUAL], [])
    assert fake.v6 is None
    assert "-s 10.5.0.0/24 ! -o pt-dual -j MASQUERADE" in fake.tables["nat"][ipt.POSTROUTING]
