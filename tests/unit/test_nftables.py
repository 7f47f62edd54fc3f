"""The nftables backend's generated commands (text only: nothing is applied)."""

from __future__ import annotations

import pytest

from pontoon.firewall.base import NetworkRules, Tunnel
from pontoon.firewall.nft.host import network_commands, remove_network_commands, skeleton

T = "ip pontoon"
NORMAL = NetworkRules(bridge="pt-0123456789ab", subnet="10.5.0.0/24")
INTERNAL = NetworkRules(bridge="br-int", subnet="10.6.0.0/24", internal=True)


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
    net = NetworkRules(bridge="br-x", subnet="10.7.0.0/24", masquerade=False)
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


def test_tunnel_address_must_be_an_address():
    with pytest.raises(ValueError):
        skeleton(userland_proxy=True, tunnel=Tunnel("10.0.0.1; flush ruleset", 4789))
