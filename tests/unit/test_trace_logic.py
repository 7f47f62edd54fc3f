"""Pure logic of `pontoon trace`: parsing kernel trace lines, folding walks,
NAT steps and the rendering."""

from __future__ import annotations

import pytest

from pontoon.errors import InvalidArgument
from pontoon.trace import monitor, run
from pontoon.trace.render import render

SAMPLE = """\
trace id aa ip pontoon_trace prerouting packet: iif "eth0" ip saddr 198.51.100.2 ip daddr 198.51.100.1 tcp sport 43392 tcp dport 12580 tcp flags == syn
trace id aa ip pontoon_trace prerouting rule tcp sport 43392 meta nftrace set 1 (verdict continue)
trace id aa ip pontoon guard policy accept
trace id aa ip pontoon prerouting rule fib daddr type local jump portmap (verdict jump portmap)
trace id aa ip pontoon portmap rule dnat ip to meta l4proto . th dport map @portmap_any (verdict accept)
trace id bb ip pontoon forward packet: iif "eth0" oif "pontoon0" ip saddr 198.51.100.2 ip daddr 172.17.0.2 tcp sport 43392 tcp dport 80 tcp flags == syn
trace id bb ip pontoon forward rule iifname vmap @egress (verdict jump from-pontoon0)
trace id bb ip pontoon from-pontoon0 rule oifname @bridges drop (verdict drop)
garbage line
"""  # noqa: E501


def test_parse_reads_packets_rules_and_verdicts():
    events = monitor.parse(SAMPLE)
    assert len(events) == 8
    first = events[0]
    assert (first.kind, first.table, first.chain) == ("packet", "pontoon_trace", "prerouting")
    assert first.fields["iif"] == "eth0" and first.fields["dport"] == "12580"
    assert first.fields["tcp_flags"] == "syn"
    assert events[3].verdict == "jump portmap"
    assert events[3].text == "fib daddr type local jump portmap"
    assert events[2].kind == "policy" and events[2].verdict == "accept"


def test_hex_tcp_flags_get_names():
    assert monitor._flags("0x12") == "syn,ack"
    assert monitor._flags("syn") == "syn"


def test_group_follows_a_packet_across_a_new_trace_id_and_finds_the_drop():
    walks = run._group(monitor.parse(SAMPLE))
    assert len(walks) == 1
    walk = walks[0]
    assert walk["hook"] == "prerouting" and walk["packet"]["iif"] == "eth0"
    assert [c["chain"] for c in walk["chains"]] == [
        "guard", "prerouting", "portmap", "forward", "from-pontoon0",
    ]  # fmt: skip
    assert walk["chains"][-1]["hook"] == "forward"
    assert walk["rewritten"]["daddr"] == "172.17.0.2"
    dropped = run._drop({"host": walks})
    assert dropped == {
        "where": "host", "hook": "forward", "table": "ip pontoon", "chain": "from-pontoon0",
        "rule": "oifname @bridges drop",
    }  # fmt: skip


def test_identical_walks_fold_into_a_count():
    text = SAMPLE.splitlines()[0] + "\n" + SAMPLE.splitlines()[0].replace("aa", "cc") + "\n"
    walks = run._group(monitor.parse(text))
    assert len(walks) == 1 and walks[0]["count"] == 2


def test_nat_steps_in_the_seeds_order():
    ct = [{
        "orig": {"src": "127.0.0.1", "dst": "127.0.0.1", "sport": 44121, "dport": 12580},
        "reply": {"src": "172.17.0.2", "dst": "172.17.0.1", "sport": 80, "dport": 44121},
        "status": "SEEN_REPLY",
    }]  # fmt: skip
    steps = [s["step"] for s in run._nat(ct) if s["step"] != "conntrack"]
    assert steps == ["DNAT", "SNAT", "un-SNAT (reply)", "un-DNAT (reply)"]


def test_flow_match_rules_cover_both_directions_and_vxlan():
    rules = monitor.FlowMatch("tcp", port=43000, vxlan_port=4789).rules()
    assert "tcp sport 43000 meta nftrace set 1" in rules
    assert "tcp dport 43000 meta nftrace set 1" in rules
    assert any(r.startswith("udp dport 4789 @th,400,16 43000") for r in rules)
    # Inside a dual-stack overlay the inner IPv6 header is 40 bytes: ports at bit 560.
    assert any(r.startswith("udp dport 4789 @th,560,16 43000") for r in rules)
    assert any(r.startswith("udp dport 4789 @th,576,16 43000") for r in rules)
    assert monitor.FlowMatch("icmp", icmp_id=7).rules() == [
        "icmp id 7 meta nftrace set 1",
        "icmpv6 id 7 meta nftrace set 1",
    ]


def test_live_rules_say_the_family_of_the_source():
    rules = monitor.FlowMatch("tcp", live_src="fd00::2", live_dport=80, vxlan_port=4789).rules()
    assert rules == [
        "ip6 saddr fd00::2 tcp dport 80 meta nftrace set 1",
        "ip6 daddr fd00::2 meta l4proto tcp meta nftrace set 1",
    ]
    ping = monitor.FlowMatch("icmp", live_src="fd00::2").rules()
    assert ping[0] == "ip6 saddr fd00::2 icmpv6 type echo-request meta nftrace set 1"


def test_ipv6_packet_fields():
    line = (
        'trace id cc inet pontoon forward packet: iif "pt-a" oif "pt-b" ip6 saddr fd00:61::2 '
        "ip6 daddr fd00:62::2 icmpv6 type echo-request"
    )
    (event,) = monitor.parse(line)
    assert event.fields["saddr"] == "fd00:61::2" and event.fields["daddr"] == "fd00:62::2"
    assert event.fields["icmp_type"] == "echo-request"


def test_parse_target_forms():
    assert run.parse_target("web", "") == ("web", 0, "icmp")
    assert run.parse_target("web:80", "") == ("web", 80, "tcp")
    assert run.parse_target("host:53/udp", "") == ("host", 53, "udp")
    assert run.parse_target("10.0.0.1:80/tcp", "") == ("10.0.0.1", 80, "tcp")
    assert run.parse_target("[fd00::5]:80/udp", "") == ("fd00::5", 80, "udp")
    assert run.parse_target("fd00::5", "") == ("fd00::5", 0, "icmp")
    assert run.parse_target("[fd00::5]", "") == ("fd00::5", 0, "icmp")
    with pytest.raises(InvalidArgument):
        run.parse_target("[fd00::5", "")
    with pytest.raises(InvalidArgument):
        run.parse_target("[fd00::5]80", "")


def test_render_has_the_story():
    result = {
        "proto": "tcp",
        "from": {"kind": "netns", "name": "netns:client"},
        "to": {"kind": "host", "name": "host:12580", "ip": "198.51.100.1", "port": 12580},
        "probe": {"mark": 43392, "ok": True, "ms": 0.6},
        "path": [{"kind": "namespace", "name": "netns:client"},
                 {"kind": "container", "name": "web", "device": "eth0", "ip": "172.17.0.2"}],
        "netfilter": {"host": run._group(monitor.parse(SAMPLE))},
        "nat": [{"step": "DNAT", "from": "198.51.100.1:12580", "to": "172.17.0.2:80"}],
        "proxy": None,
        "verdict": "delivered",
    }  # fmt: skip
    text = render(result)
    assert "DNAT             198.51.100.1:12580 -> 172.17.0.2:80" in text
    assert "from-pontoon0: oifname @bridges drop -> drop" in text
    assert "userland proxy: not used" in text and "verdict: delivered" in text


def test_live_rules_also_match_inside_vxlan():
    rules = monitor.FlowMatch("tcp", live_src="10.0.0.2", live_dport=80, vxlan_port=4789).rules()
    # Outer UDP header, then VXLAN 8, Ethernet 14: the inner source address at
    # byte 8+8+14+12 = 42 (bit 336), its protocol at bit 312, its dport at 416.
    assert "udp dport 4789 @th,336,32 0x0a000002 @th,312,8 6 @th,416,16 80" in rules[2]
    assert rules[3].startswith("udp dport 4789 @th,368,32 0x0a000002 @th,312,8 6 ")
    plain = monitor.FlowMatch("icmp", live_src="10.0.0.2").rules()
    assert len(plain) == 2 and all("@th" not in r for r in plain)
