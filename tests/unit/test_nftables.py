"""The nft builders' generated commands: the host table, the sandbox DNS
rewrite and the trace rules (text only: nothing is applied)."""

from __future__ import annotations

import pytest

from pontoon.firewall.base import NetworkRules, PortRule, Tunnel, vtep_set
from pontoon.firewall.nft import trace as trace_rules
from pontoon.firewall.nft.host import (
    network_commands,
    port_commands,
    remove_network_commands,
    remove_port_commands,
    skeleton,
    vtep_commands,
    vteps_of,
)
from pontoon.firewall.nft.sandbox import dns_rewrite_script

T = "inet pontoon"
NORMAL = NetworkRules(bridge="pt-0123456789ab", subnets=("10.5.0.0/24",))
INTERNAL = NetworkRules(bridge="br-int", subnets=("10.6.0.0/24",), internal=True)


def rules(cmds: list[str], chain: str) -> list[str]:
    """The rule bodies added to `chain`, in order."""
    head = f"add rule {T} {chain} "
    return [c.removeprefix(head) for c in cmds if c.startswith(head)]


def test_chain_is_created_and_flushed_before_its_rules():
    cmds = network_commands(NORMAL)
    assert cmds[:2] == [
        f"add chain {T} from-pt-0123456789ab",
        f"flush chain {T} from-pt-0123456789ab",
    ]


def test_normal_network_chain_rules_in_order():
    assert rules(network_commands(NORMAL), "from-pt-0123456789ab") == [
        'oifname "pt-0123456789ab" accept',  # same bridge
        "ct status dnat accept",  # published ports
        "oifname @bridges drop",  # isolation from other networks
    ]


def test_normal_network_joins_bridges_set_and_egress_map():
    cmds = network_commands(NORMAL)
    assert f'add element {T} bridges {{ "pt-0123456789ab" }}' in cmds
    assert f'add element {T} egress {{ "pt-0123456789ab" : jump from-pt-0123456789ab }}' in cmds


def test_normal_network_subnet_is_masqueraded():
    assert f"add element {T} nat_subnets {{ 10.5.0.0/24 }}" in network_commands(NORMAL)


def test_normal_network_is_not_internal():
    assert not any(" internal " in c for c in network_commands(NORMAL))


def test_internal_network_drops_everything_but_its_own_bridge():
    assert rules(network_commands(INTERNAL), "from-br-int") == [
        'oifname "br-int" accept',
        "drop",
        "ct status dnat accept",
        "oifname @bridges drop",
    ]


def test_internal_network_joins_internal_set():
    assert f'add element {T} internal {{ "br-int" }}' in network_commands(INTERNAL)


def test_internal_network_is_not_masqueraded():
    assert not any("nat_subnets" in c for c in network_commands(INTERNAL))


def test_masquerade_false_leaves_subnet_out_of_nat():
    net = NetworkRules(bridge="br-x", subnets=("10.7.0.0/24",), masquerade=False)
    assert not any("nat_subnets" in c for c in network_commands(net))


def test_remove_normal_network():
    assert remove_network_commands(NORMAL) == [
        f'delete element {T} egress {{ "pt-0123456789ab" }}',
        f'delete element {T} bridges {{ "pt-0123456789ab" }}',
        f"delete element {T} nat_subnets {{ 10.5.0.0/24 }}",
        f"delete chain {T} from-pt-0123456789ab",
    ]


def test_remove_internal_network():
    assert remove_network_commands(INTERNAL) == [
        f'delete element {T} egress {{ "br-int" }}',
        f'delete element {T} bridges {{ "br-int" }}',
        f'delete element {T} internal {{ "br-int" }}',
        f"delete chain {T} from-br-int",
    ]


def test_vxlan_between_vteps_is_untracked_only_on_overlay_hosts():
    plain = skeleton(userland_proxy=True)
    assert "notrack" not in plain and "chain untrack" not in plain
    text = skeleton(userland_proxy=True, tunnel=Tunnel("10.240.0.11", 4789))
    assert "ip daddr 10.240.0.11 udp dport 4789 notrack" in text
    untrack = text[text.index("chain untrack") :]
    assert "hook output priority raw" in untrack
    assert "ip saddr 10.240.0.11 udp dport 4789 notrack" in untrack


def test_vxlan_from_outside_the_vtep_set_is_dropped_before_it_is_untracked():
    assert "vteps" not in skeleton(userland_proxy=True)  # no overlays: no set, no rule
    text = skeleton(userland_proxy=True, tunnel=Tunnel("10.240.0.11", 4789))
    assert "set vteps { type ipv4_addr; }" in text
    guard = text[text.index("chain guard") : text.index("chain untrack")]
    drop = "udp dport 4789 ip saddr != @vteps fib daddr type != unicast counter drop"
    assert drop in guard
    # Before the loopback guard? No: after it, and before the notrack rule.
    assert guard.index("127.0.0.0/8 drop") < guard.index(drop) < guard.index("notrack")


def test_vtep_set_changes_are_one_add_and_one_delete():
    old = {"10.240.0.11", "10.240.0.12", "10.240.0.13"}
    new = {"10.240.0.11", "10.240.0.14", "10.240.0.2"}
    assert vtep_commands(old, new) == [
        f"add element {T} vteps {{ 10.240.0.2, 10.240.0.14 }}",
        f"delete element {T} vteps {{ 10.240.0.12, 10.240.0.13 }}",
    ]
    assert vtep_commands(new, new) == []
    with pytest.raises(ValueError):
        vtep_commands((), {"10.0.0.1 } ; flush ruleset"})


def test_the_vtep_set_always_holds_our_own_vtep():
    tunnel = Tunnel("10.240.0.11", 4789)
    assert vtep_set(None, tunnel) == {"10.240.0.11"}
    assert vtep_set({"10.240.0.12"}, tunnel) == {"10.240.0.11", "10.240.0.12"}
    assert vtep_set({"10.240.0.12"}, None) == {"10.240.0.12"}


def test_a_previous_daemons_vtep_set_is_read_from_the_listing():
    listing = [
        {"table": {"family": "ip", "name": "pontoon"}},
        {"set": {"name": "vteps", "type": "ipv4_addr", "elem": ["10.240.0.12", "10.240.0.11"]}},
    ]
    assert vteps_of(listing) == {"10.240.0.11", "10.240.0.12"}
    assert vteps_of([{"set": {"name": "vteps", "type": "ipv4_addr"}}]) == set()


def test_tunnel_address_must_be_an_address():
    with pytest.raises(ValueError):
        skeleton(userland_proxy=True, tunnel=Tunnel("10.0.0.1; flush ruleset", 4789))


def test_skeleton_chains_hook_as_before():
    text = skeleton(userland_proxy=True)
    assert "chain guard {\n        type filter hook prerouting priority raw; policy accept;" in text
    assert "type nat hook output priority -100; policy accept;" in text
    assert "ip daddr 127.0.0.0/8 return" in text  # proxy mode: loopback left to the proxy
    kernel_mode = skeleton(userland_proxy=False)
    assert "ip daddr 127.0.0.0/8 return" not in kernel_mode
    assert "ip saddr 127.0.0.0/8 oifname @bridges masquerade" in kernel_mode


def test_removing_ports_keeps_the_hairpin_of_a_container_still_publishing():
    web = PortRule("0.0.0.0", "tcp", 8080, "10.5.0.2", 80, NORMAL.bridge)
    assert remove_port_commands([web], keep={"10.5.0.2"}) == [
        f"delete element {T} portmap_any {{ tcp . 8080 }}"
    ]
    assert remove_port_commands([web])[-1] == (
        f"delete element {T} self_hairpin {{ 10.5.0.2 . 10.5.0.2 }}"
    )


def test_port_elements_reject_bad_addresses():
    with pytest.raises(ValueError):
        port_commands([PortRule("0.0.0.0", "tcp", 80, "10.0.0.1 }; flush ruleset", 80, "br")])


# -- the sandbox DNS rewrite and the trace rules ---------------------------------------


def test_dns_rewrite_maps_port_53_both_ways_in_its_own_table():
    script = dns_rewrite_script("127.0.0.11", 40123)
    assert script.index("add table ip pontoon_dns") < script.index("delete table ip pontoon_dns")
    assert "type filter hook output priority raw; policy accept;" in script
    for proto in ("udp", "tcp"):
        assert f"ip daddr 127.0.0.11 {proto} dport 53 {proto} dport set 40123" in script
        assert f"ip saddr 127.0.0.11 {proto} sport 40123 {proto} sport set 53" in script


@pytest.mark.parametrize(("addr", "port"), [("127.0.0.11; flush ruleset", 53), ("127.0.0.11", 0)])
def test_dns_rewrite_rejects_bad_input(addr, port):
    with pytest.raises(ValueError):
        dns_rewrite_script(addr, port)


def test_trace_rules_hook_both_paths_before_conntrack():
    script = trace_rules.trace_script(["tcp sport 40000 meta nftrace set 1"])
    assert script.startswith("add table inet pontoon_trace\ndelete table inet pontoon_trace\n")
    for hook in ("prerouting", "output"):
        assert f"type filter hook {hook} priority -350; policy accept;" in script
    assert script.count("tcp sport 40000 meta nftrace set 1") == 2
    assert trace_rules.remove_script() == (
        "add table inet pontoon_trace\ndelete table inet pontoon_trace\n"
        "add table ip pontoon_trace\ndelete table ip pontoon_trace\n"  # an older release's
    )


def test_an_ipv6_underlay_has_an_ipv6_vtep_set_and_ip6_rules():
    tunnel = Tunnel("fd6c:6162:a00::b", 4789)
    text = skeleton(userland_proxy=True, tunnel=tunnel)
    assert "set vteps { type ipv6_addr; }" in text
    assert "udp dport 4789 ip6 saddr != @vteps fib daddr type != unicast counter drop" in text
    assert "ip6 daddr fd6c:6162:a00::b udp dport 4789 notrack" in text
    assert "ip6 saddr fd6c:6162:a00::b udp dport 4789 notrack" in text
    # Only our family's VTEPs: an IPv4 one could never be a peer of this VTEP.
    assert vtep_set({"fd6c:6162:a00::c", "10.240.0.12"}, tunnel) == {
        "fd6c:6162:a00::b", "fd6c:6162:a00::c"}  # fmt: skip
    assert vtep_commands((), {"fd6c:6162:a00::c"}) == [
        f"add element {T} vteps {{ fd6c:6162:a00::c }}"
    ]
