"""IPv6 published ports in both firewall backends' rules (issue 13)."""

from __future__ import annotations

import pytest

from pontoon.firewall.base import DesiredState, PortRule
from pontoon.firewall.iptables import jump_rules, port_rules
from pontoon.firewall.nft.host import (
    expected_view,
    port_commands,
    remove_port_commands,
    skeleton,
)

ANY6 = PortRule("::", "tcp", 8080, "fd00:50::2", 80, "br-a")
ONE6 = PortRule("2001:db8::1", "udp", 53, "fd00:50::3", 53, "br-a")
ANY4 = PortRule("0.0.0.0", "tcp", 8080, "10.5.0.2", 80, "br-a")


def test_nft_ipv6_ports_go_to_their_own_maps() -> None:
    cmds = port_commands([ANY4, ANY6, ONE6])
    assert "add element inet pontoon portmap_any { tcp . 8080 : 10.5.0.2 . 80 }" in cmds
    assert "add element inet pontoon portmap6_any { tcp . 8080 : fd00:50::2 . 80 }" in cmds
    assert (
        "add element inet pontoon portmap6_ip { 2001:db8::1 . udp . 53 : fd00:50::3 . 53 }" in cmds
    )
    assert "add element inet pontoon self_hairpin6 { fd00:50::2 . fd00:50::2 }" in cmds
    assert "add element inet pontoon self_hairpin { 10.5.0.2 . 10.5.0.2 }" in cmds
    removed = remove_port_commands([ANY6], keep={"10.5.0.2"})
    assert removed == [
        "delete element inet pontoon portmap6_any { tcp . 8080 }",
        "delete element inet pontoon self_hairpin6 { fd00:50::2 . fd00:50::2 }",
    ]


def test_nft_never_nats_ipv6_loopback_and_dnats_ipv6() -> None:
    for proxy in (True, False):
        table = skeleton(proxy)
        assert "ip6 daddr ::1 return" in table
        assert "dnat ip6 to meta l4proto . th dport map @portmap6_any" in table
        assert "ct status dnat ip6 saddr . ip6 daddr @self_hairpin6 masquerade" in table


def test_nft_expected_view_has_ipv6_elements() -> None:
    state = DesiredState()
    state.replace([], [ANY6, ONE6])
    el = expected_view(state, True, None).elements
    assert el["portmap6_any"] == {(("tcp", 8080), ("fd00:50::2", 80))}
    assert el["portmap6_ip"] == {(("2001:db8::1", "udp", 53), ("fd00:50::3", 53))}
    assert el["self_hairpin6"] == {("fd00:50::2", "fd00:50::2"), ("fd00:50::3", "fd00:50::3")}


def test_nft_refuses_a_rule_mixing_families() -> None:
    with pytest.raises(ValueError, match="mixes families"):
        port_commands([PortRule("127.0.0.1", "tcp", 1, "fd00::2", 1, "br-a")])


def test_ip6tables_port_rules() -> None:
    specs = [r.spec for r in port_rules(ONE6, family=6)]
    assert specs == [
        "-d 2001:db8::1/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:50::3]:53",
        "-d fd00:50::3/128 ! -i br-a -o br-a -p udp -m udp --dport 53 -j ACCEPT",
        "-s fd00:50::3/128 -d fd00:50::3/128 -p udp -m udp --dport 53 -j MASQUERADE",
    ]
    assert port_rules(ANY6, family=6)[0].spec.startswith("-p tcp -m tcp --dport 8080 -j DNAT")


def test_ip6tables_output_jump_skips_loopback_in_both_modes() -> None:
    for proxy in (True, False):
        (output,) = [r for r in jump_rules(proxy, family=6) if r.chain == "OUTPUT"]
        assert output.spec.startswith("! -d ::1/128 ")
