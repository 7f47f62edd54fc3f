"""The firewall check: the desired state, the host table as the kernel lists
it (nft's JSON, recorded from `list table ip pontoon` of nft 1.0.6, now the
`inet` table with its IPv6 NAT set), what differs, and the repair; the
iptables backend's compare on its in-memory fake."""

from __future__ import annotations

import copy
import logging

import pytest

from pontoon.firewall.base import DesiredState, Firewall, NetworkRules, PortRule, Tunnel
from pontoon.firewall.iptables import drift, expected_rules, parse_save
from pontoon.firewall.nft.host import differences, expected_view, kernel_view
from tests.unit.test_iptables_rules import FakeIptables

NET = NetworkRules("br-a", ("10.5.0.0/24",))
HOST_ONLY = NetworkRules("br-h", ("10.9.0.1/32",), internal=True)
WEB = PortRule("0.0.0.0", "tcp", 8080, "10.5.0.2", 80, "br-a")
DNS = PortRule("192.0.2.1", "udp", 53, "10.5.0.3", 53, "br-a")

# The kernel's listing right after sync([NET, HOST_ONLY], [WEB, DNS]) in proxy
# mode (handles dropped; rule expressions are not compared).
LISTED = [
    {"table": {"family": "inet", "name": "pontoon"}},
    {
        "set": {
            "family": "inet",
            "name": "bridges",
            "table": "pontoon",
            "type": "ifname",
            "elem": ["br-a", "br-h"],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "internal",
            "table": "pontoon",
            "type": "ifname",
            "elem": ["br-h"],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "nat_subnets",
            "table": "pontoon",
            "type": "ipv4_addr",
            "flags": ["interval"],
            "elem": [{"prefix": {"addr": "10.5.0.0", "len": 24}}],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "nat_subnets6",
            "table": "pontoon",
            "type": "ipv6_addr",
            "flags": ["interval"],
        }
    },
    {
        "map": {
            "family": "inet",
            "name": "egress",
            "table": "pontoon",
            "type": "ifname",
            "map": "verdict",
            "elem": [
                ["br-a", {"jump": {"target": "from-br-a"}}],
                ["br-h", {"jump": {"target": "from-br-h"}}],
            ],
        }
    },
    {
        "map": {
            "family": "inet",
            "name": "portmap_ip",
            "table": "pontoon",
            "type": ["ipv4_addr", "inet_proto", "inet_service"],
            "map": "ipv4_addr . inet_service",
            "elem": [[{"concat": ["192.0.2.1", "udp", 53]}, {"concat": ["10.5.0.3", 53]}]],
        }
    },
    {
        "map": {
            "family": "inet",
            "name": "portmap_any",
            "table": "pontoon",
            "type": ["inet_proto", "inet_service"],
            "map": "ipv4_addr . inet_service",
            "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.5.0.2", 80]}]],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "self_hairpin",
            "table": "pontoon",
            "type": ["ipv4_addr", "ipv4_addr"],
            "elem": [{"concat": ["10.5.0.2", "10.5.0.2"]}, {"concat": ["10.5.0.3", "10.5.0.3"]}],
        }
    },
    # The IPv6 port maps and hairpin set (issue 13): empty, no IPv6 port here.
    {
        "map": {
            "family": "inet",
            "name": "portmap6_ip",
            "table": "pontoon",
            "type": ["ipv6_addr", "inet_proto", "inet_service"],
            "map": ["ipv6_addr", "inet_service"],
        }
    },
    {
        "map": {
            "family": "inet",
            "name": "portmap6_any",
            "table": "pontoon",
            "type": ["inet_proto", "inet_service"],
            "map": ["ipv6_addr", "inet_service"],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "self_hairpin6",
            "table": "pontoon",
            "type": ["ipv6_addr", "ipv6_addr"],
        }
    },
    {
        "chain": {
            "family": "inet",
            "table": "pontoon",
            "name": "guard",
            "type": "filter",
            "hook": "prerouting",
            "prio": -300,
            "policy": "accept",
        }
    },
    {
        "chain": {
            "family": "inet",
            "table": "pontoon",
            "name": "prerouting",
            "type": "nat",
            "hook": "prerouting",
            "prio": -100,
            "policy": "accept",
        }
    },
    {
        "chain": {
            "family": "inet",
            "table": "pontoon",
            "name": "output",
            "type": "nat",
            "hook": "output",
            "prio": -100,
            "policy": "accept",
        }
    },
    {"chain": {"family": "inet", "table": "pontoon", "name": "portmap"}},
    {
        "chain": {
            "family": "inet",
            "table": "pontoon",
            "name": "forward",
            "type": "filter",
            "hook": "forward",
            "prio": 0,
            "policy": "accept",
        }
    },
    {
        "chain": {
            "family": "inet",
            "table": "pontoon",
            "name": "postrouting",
            "type": "nat",
            "hook": "postrouting",
            "prio": 100,
            "policy": "accept",
        }
    },
    {"chain": {"family": "inet", "table": "pontoon", "name": "from-br-a"}},
    {"chain": {"family": "inet", "table": "pontoon", "name": "from-br-h"}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "guard", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "prerouting", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "output", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "output", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "output", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "portmap", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "portmap", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "portmap", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "portmap", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "forward", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "forward", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "postrouting", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "postrouting", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "postrouting", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "postrouting", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "from-br-a", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "from-br-a", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "from-br-a", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "from-br-h", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "from-br-h", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "from-br-h", "expr": []}},
    {"rule": {"family": "inet", "table": "pontoon", "chain": "from-br-h", "expr": []}},
]


def state(networks=(NET, HOST_ONLY), ports=(WEB, DNS)) -> DesiredState:
    s = DesiredState()
    s.replace(list(networks), list(ports))
    return s


def check(objects, desired=None) -> list[str]:
    want = expected_view(desired or state(), userland_proxy=True, tunnel=None)
    return differences(want, kernel_view(objects))


def listed() -> list[dict]:
    return copy.deepcopy(LISTED)


def test_the_listing_after_a_sync_matches_the_model():
    assert check(listed()) == []


def test_no_table():
    assert check([]) == ["table inet pontoon is missing"]


def test_a_deleted_map_element():
    objects = listed()
    portmap = next(o["map"] for o in objects if o.get("map", {}).get("name") == "portmap_any")
    portmap["elem"] = []
    assert check(objects) == [
        "portmap_any: 1 element(s) missing, e.g. (('tcp', 8080), ('10.5.0.2', 80))"
    ]


def test_a_foreign_element():
    objects = listed()
    bridges = next(o["set"] for o in objects if o.get("set", {}).get("name") == "bridges")
    bridges["elem"].append("evil0")
    assert check(objects) == ["bridges: 1 element(s) not ours, e.g. evil0"]


def test_a_deleted_rule_and_an_added_one():
    objects = [o for o in listed() if o.get("rule", {}).get("chain") != "forward"]
    objects.append({"rule": {"family": "inet", "table": "pontoon", "chain": "portmap"}})
    assert sorted(check(objects)) == [
        "chain forward has 0 rules, not 2",
        "chain portmap has 5 rules, not 4",
    ]


def test_a_deleted_chain_and_a_changed_policy():
    objects = [o for o in listed() if o.get("chain", {}).get("name") != "from-br-h"]
    guard = next(o["chain"] for o in objects if o.get("chain", {}).get("name") == "guard")
    guard["policy"] = "drop"
    assert check(objects) == [
        "chain guard hooks prerouting policy drop",
        "chain from-br-h is missing",
    ]


def test_a_foreign_chain_and_set():
    objects = listed()
    objects.append({"chain": {"family": "inet", "table": "pontoon", "name": "theirs"}})
    objects.append({"set": {"family": "inet", "table": "pontoon", "name": "theirs", "elem": []}})
    assert check(objects) == ["chain theirs is not ours", "set theirs is not ours"]


def test_elements_with_options_and_single_address_subnets_compare_by_value():
    objects = listed()
    subnets = next(o["set"] for o in objects if o.get("set", {}).get("name") == "nat_subnets")
    subnets["elem"] = [{"elem": {"val": {"prefix": {"addr": "10.5.0.0", "len": 24}}, "timeout": 9}}]
    assert check(objects) == []
    # A /32 network is listed as the bare address.
    desired = state(networks=(NET, NetworkRules("br-h", ("10.9.0.1/32",))))
    view = expected_view(desired, True, None)
    assert "10.9.0.1" in view.elements["nat_subnets"]


def test_a_vtep_removed_from_the_set_by_hand_or_added_is_seen():
    tunnel = Tunnel("10.240.0.11", 4789)
    desired = state()
    desired.set_vteps({"10.240.0.12"})
    want = expected_view(desired, userland_proxy=True, tunnel=tunnel)
    assert want.elements["vteps"] == {"10.240.0.11", "10.240.0.12"}
    assert want.chains["guard"][2] == 3  # loopback drop, VXLAN drop, notrack
    have = copy.deepcopy(want)
    assert differences(want, have) == []
    have.elements["vteps"] = {"10.240.0.11", "10.240.0.66"}
    assert differences(want, have) == [
        "vteps: 1 element(s) missing, e.g. 10.240.0.12",
        "vteps: 1 element(s) not ours, e.g. 10.240.0.66",
    ]
    del have.elements["vteps"]
    assert differences(want, have) == ["set vteps is missing"]


def test_iptables_a_deleted_vtep_rule_is_reapplied():
    fake = FakeIptables()
    fw = fake.firewall()
    fw._nft_based = False
    fw.tunnel = Tunnel("10.240.0.11", 4789)
    fw.set_vteps({"10.240.0.12"})
    fw.sync([NET], [WEB])
    assert fw.check() == []
    fake.restore("*raw\n-D PONTOON-VTEPS -s 10.240.0.12/32 -j RETURN\nCOMMIT\n")
    assert fw.check() == [
        "1 rule(s) missing, e.g. -t raw -A PONTOON-VTEPS -s 10.240.0.12/32 -j RETURN"
    ]
    assert "-s 10.240.0.12/32 -j RETURN" in fake.chain("raw", "PONTOON-VTEPS")


# -- the desired state -------------------------------------------------------------------


def test_desired_state_follows_every_change():
    s = DesiredState()
    assert not s.applied
    s.replace([NET], [WEB])
    version = s.version
    s.add_network(HOST_ONLY)
    s.add_ports([DNS, DNS])
    assert set(s.networks) == {"br-a", "br-h"} and len(s.ports) == 2
    s.remove_ports([WEB, PortRule("0.0.0.0", "tcp", 9999, "10.5.0.9", 1, "br-a")])
    s.remove_network(NET)
    assert set(s.networks) == {"br-h"} and s.container_ips() == {"10.5.0.3"}
    assert s.version == version + 4
    s.clear()
    assert not s.applied and not s.networks and not s.ports


class Recorder(Firewall):
    """A backend whose kernel is a list of problems."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.synced: list[tuple[list, list]] = []

    def sync(self, networks, ports):
        self.synced.append((networks, ports))
        self.desired.replace(networks, ports)
        self.problems = []

    def drift(self):
        return self.problems

    add_ports = remove_ports = add_network = remove_network = set_vteps = teardown = dump = None  # type: ignore[assignment]


def test_check_does_nothing_before_the_first_sync():
    fw = Recorder()
    fw.problems = ["table inet pontoon is missing"]
    assert fw.check() == [] and fw.repairs == 0


def test_check_reapplies_the_desired_state_logs_and_counts(caplog):
    fw = Recorder()
    fw.sync([NET], [WEB])
    fw.desired.add_ports([DNS])
    assert fw.check() == [] and fw.repairs == 0
    fw.problems = ["table inet pontoon is missing"]
    with caplog.at_level(logging.WARNING):
        assert fw.check() == ["table inet pontoon is missing"]
    assert fw.repairs == 1
    assert fw.synced[-1] == ([NET], [WEB, DNS])
    assert "table inet pontoon is missing" in caplog.text and "re-applying" in caplog.text


# -- iptables ----------------------------------------------------------------------------


@pytest.fixture
def ipt():
    fake = FakeIptables()
    fake.foreign()
    fw = fake.firewall(userland_proxy=False)
    fw._nft_based = False  # legacy path: no generation, always iptables-save
    fw.sync([NET, HOST_ONLY], [WEB, DNS])
    return fake, fw


def test_iptables_our_rules_match_after_sync_and_changes(ipt):
    _, fw = ipt
    assert fw.check() == []
    fw.add_ports([PortRule("0.0.0.0", "tcp", 8081, "10.5.0.2", 80, "br-a")])
    fw.remove_network(HOST_ONLY)
    assert fw.check() == [] and fw.repairs == 0


def test_iptables_flushed_chain_and_deleted_jump_are_reapplied(ipt):
    fake, fw = ipt
    fake.restore("*nat\n-F PONTOON\nCOMMIT\n*filter\n-D FORWARD -j PONTOON-FORWARD\nCOMMIT\n")
    problems = fw.check()
    assert problems == ["3 rule(s) missing, e.g. -t filter -A FORWARD -j PONTOON-FORWARD"]
    assert fw.repairs == 1 and fw.check() == []
    # Someone else's rules are neither ours nor touched.
    assert "-A DOCKER-USER -j RETURN" in fake.save()


def test_iptables_foreign_rule_in_our_chain(ipt):
    fake, fw = ipt
    fake.restore("*filter\n-A PONTOON -j ACCEPT\nCOMMIT\n")
    assert fw.check() == ["1 rule(s) not ours, e.g. -t filter -A PONTOON -j ACCEPT"]


def test_iptables_missing_chains():
    saved = parse_save("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
    problems = drift(saved, expected_rules(state(), userland_proxy=True))
    assert "chain raw PONTOON-GUARD is missing" in problems
    assert problems[-1].endswith("rule(s) missing, e.g. -t filter -A FORWARD -j PONTOON-FORWARD")
