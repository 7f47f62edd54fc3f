"""The iptables backend's generated iptables-restore text (nothing is applied).

Besides the text itself, a small in-memory iptables (FakeIptables: it runs the
restore text, as --noflush does, and prints iptables-save text) drives the
IptablesFirewall class, and a first-match evaluator of the rules we write
checks that the chains give the verdicts of the nftables backend's layout,
whatever order networks and ports were added in."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools

import pytest

from pontoon.firewall import iptables as ipt
from pontoon.firewall.base import NetworkRules, PortRule, Tunnel
from pontoon.firewall.iptables import (
    IptablesFirewall,
    Saved,
    add_network_script,
    add_ports_script,
    dump_text,
    jump_rules,
    network_rules,
    parse_save,
    port_rules,
    remove_network_script,
    remove_ports_script,
    sync_script,
    teardown_script,
)

NORMAL = NetworkRules(bridge="pt-0123456789ab", subnets=("10.5.0.0/24",))
OTHER = NetworkRules(bridge="pt-other", subnets=("10.7.0.0/24",))
INTERNAL = NetworkRules(bridge="br-int", subnets=("10.6.0.0/24",), internal=True)
WEB = PortRule("0.0.0.0", "tcp", 8080, "10.5.0.2", 80, "pt-0123456789ab")
DNS = PortRule("192.0.2.1", "udp", 5353, "10.5.0.3", 53, "pt-0123456789ab")
SCTP = PortRule("0.0.0.0", "sctp", 9000, "10.7.0.2", 9000, "pt-other")
HIDDEN = PortRule("0.0.0.0", "tcp", 8443, "10.6.0.2", 443, "br-int")  # on the internal net

BR = "pt-0123456789ab"


def lines(script: str) -> list[str]:
    return script.splitlines()


def section(script: str, table: str) -> list[str]:
    """The lines of one `*table ... COMMIT` section (without those two)."""
    out, inside = [], False
    for line in lines(script):
        if line == f"*{table}":
            inside = True
        elif inside and line == "COMMIT":
            return out
        elif inside:
            out.append(line)
    return out


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "br 0", "br;x", "a" * 16, "br+", "-j", "..", 'x"y', "br\n", "br0\t"]
)
def test_bad_interface_names_are_refused(name):
    with pytest.raises(ValueError):
        network_rules(dataclasses.replace(NORMAL, bridge=name), userland_proxy=True)
    with pytest.raises(ValueError):
        port_rules(dataclasses.replace(WEB, bridge=name))


@pytest.mark.parametrize("name", ["pontoon0", "pt-0123456789ab", "br_x.1", "a" * 15])
def test_good_interface_names_pass(name):
    network_rules(dataclasses.replace(NORMAL, bridge=name), userland_proxy=True)


@pytest.mark.parametrize("subnet", ["10.5.0.1/24", "10.5.0.0/33", "fd00::1/64", "-j ACCEPT", ""])
def test_bad_subnets_are_refused(subnet):
    with pytest.raises(ValueError):
        network_rules(dataclasses.replace(NORMAL, subnets=(subnet,)), userland_proxy=True)


@pytest.mark.parametrize(
    "change",
    [
        {"proto": "icmp"},
        {"proto": "TCP"},
        {"proto": "tcp -j ACCEPT"},
        {"host_port": 0},
        {"host_port": 65536},
        {"host_port": "80"},
        {"host_port": True},
        {"container_port": -1},
        {"container_ip": "10.5.0.256"},
        {"container_ip": "10.5.0.2 -j ACCEPT"},
        {"container_ip": "::1"},
        {"host_ip": "localhost"},
        {"host_ip": "192.0.2.1/24"},
    ],
)
def test_bad_port_rules_are_refused(change):
    with pytest.raises(ValueError):
        port_rules(dataclasses.replace(WEB, **change))


# -- the rules of one network, one port -------------------------------------------


def test_jumps_in_proxy_mode_leave_loopback_output_to_the_proxy():
    assert [r.add_line() for r in jump_rules(userland_proxy=True)] == [
        "-I PREROUTING 1 -j PONTOON-GUARD",
        "-I FORWARD 1 -j PONTOON-FORWARD",
        "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j PONTOON",
        "-I OUTPUT 1 ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PONTOON",
        "-I POSTROUTING 1 -j PONTOON-POSTROUTING",
    ]


def test_jumps_in_kernel_mode_nat_loopback_output_too():
    jumps = {(r.table, r.chain): r.spec for r in jump_rules(userland_proxy=False)}
    assert jumps[("nat", "OUTPUT")] == "-m addrtype --dst-type LOCAL -j PONTOON"


def test_normal_network_rules():
    assert [(r.table, r.add_line()) for r in network_rules(NORMAL, userland_proxy=True)] == [
        ("filter", f"-A PONTOON-ISOLATION-STAGE-1 -i {BR} ! -o {BR} -j PONTOON-ISOLATION-STAGE-2"),
        ("filter", f"-A PONTOON-ISOLATION-STAGE-2 -o {BR} -j DROP"),
        ("filter", f"-I PONTOON-FORWARD 2 -i {BR} -j ACCEPT"),
        (
            "filter",
            f"-A PONTOON-FORWARD -o {BR} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        ("filter", f"-A PONTOON-FORWARD -o {BR} -j PONTOON"),
        ("nat", f"-I PONTOON-POSTROUTING 1 ! -s 10.5.0.0/24 -o {BR} -j RETURN"),
        ("nat", f"-A PONTOON-POSTROUTING -s 10.5.0.0/24 ! -o {BR} -j MASQUERADE"),
    ]


def test_internal_network_rules_drop_all_but_its_own_bridge_and_are_not_nated():
    assert [(r.table, r.add_line()) for r in network_rules(INTERNAL, userland_proxy=True)] == [
        ("filter", "-A PONTOON-ISOLATION-STAGE-1 -i br-int ! -o br-int -j DROP"),
        ("filter", "-A PONTOON-ISOLATION-STAGE-2 -o br-int -j DROP"),
        ("filter", "-I PONTOON-FORWARD 2 -i br-int -j ACCEPT"),
        ("filter", "-A PONTOON-FORWARD -o br-int -j DROP"),
        ("nat", "-I PONTOON-POSTROUTING 1 ! -s 10.6.0.0/24 -o br-int -j RETURN"),
    ]


def test_masquerade_false_leaves_the_subnet_out_of_nat():
    net = dataclasses.replace(NORMAL, masquerade=False)
    assert not any("MASQUERADE" in r.spec for r in network_rules(net, userland_proxy=True))


def test_kernel_mode_masquerades_loopback_into_the_bridge_above_its_return():
    rules = [r.add_line() for r in network_rules(NORMAL, userland_proxy=False)]
    ret = rules.index(f"-I PONTOON-POSTROUTING 1 ! -s 10.5.0.0/24 -o {BR} -j RETURN")
    loop = rules.index(f"-I PONTOON-POSTROUTING 1 -s 127.0.0.0/8 -o {BR} -j MASQUERADE")
    assert loop > ret  # inserted later at position 1: ends up above it


def test_port_on_every_address():
    assert [(r.table, r.add_line()) for r in port_rules(WEB)] == [
        ("nat", "-A PONTOON -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.5.0.2:80"),
        (
            "filter",
            f"-A PONTOON -d 10.5.0.2/32 ! -i {BR} -o {BR} -p tcp -m tcp --dport 80 -j ACCEPT",
        ),
        (
            "nat",
            "-A PONTOON-POSTROUTING -s 10.5.0.2/32 -d 10.5.0.2/32 -p tcp -m tcp --dport 80 "
            "-j MASQUERADE",
        ),
    ]


def test_port_on_one_address_goes_first():
    nat = port_rules(DNS)[0]
    assert nat.add_line() == (
        "-I PONTOON 1 -d 192.0.2.1/32 -p udp -m udp --dport 5353 "
        "-j DNAT --to-destination 10.5.0.3:53"
    )


def test_sctp_port():
    assert port_rules(SCTP)[0].spec == (
        "-p sctp -m sctp --dport 9000 -j DNAT --to-destination 10.7.0.2:9000"
    )


# -- sync ---------------------------------------------------------------------------

SYNC_PROXY = f"""\
*raw
:PONTOON-GUARD - [0:0]
:PONTOON-VTEPS - [0:0]
:PONTOON-UNTRACK - [0:0]
-F PONTOON-GUARD
-F PONTOON-VTEPS
-F PONTOON-UNTRACK
-I PREROUTING 1 -j PONTOON-GUARD
-A PONTOON-GUARD -d 127.0.0.0/8 ! -i lo -j DROP
COMMIT
*filter
:PONTOON-FORWARD - [0:0]
:PONTOON-ISOLATION-STAGE-1 - [0:0]
:PONTOON-ISOLATION-STAGE-2 - [0:0]
:PONTOON - [0:0]
-F PONTOON-FORWARD
-F PONTOON-ISOLATION-STAGE-1
-F PONTOON-ISOLATION-STAGE-2
-F PONTOON
-I FORWARD 1 -j PONTOON-FORWARD
-A PONTOON-FORWARD -j PONTOON-ISOLATION-STAGE-1
-A PONTOON-FORWARD -i {BR} -j ACCEPT
-A PONTOON-FORWARD -i br-int -j ACCEPT
-A PONTOON-FORWARD -o {BR} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A PONTOON-FORWARD -o {BR} -j PONTOON
-A PONTOON-FORWARD -o br-int -j DROP
-A PONTOON-ISOLATION-STAGE-1 -i {BR} ! -o {BR} -j PONTOON-ISOLATION-STAGE-2
-A PONTOON-ISOLATION-STAGE-1 -i br-int ! -o br-int -j DROP
-A PONTOON-ISOLATION-STAGE-2 -m conntrack --ctstate DNAT -j RETURN
-A PONTOON-ISOLATION-STAGE-2 -o {BR} -j DROP
-A PONTOON-ISOLATION-STAGE-2 -o br-int -j DROP
-A PONTOON -d 10.5.0.2/32 ! -i {BR} -o {BR} -p tcp -m tcp --dport 80 -j ACCEPT
-A PONTOON -d 10.5.0.3/32 ! -i {BR} -o {BR} -p udp -m udp --dport 53 -j ACCEPT
COMMIT
*nat
:PONTOON - [0:0]
:PONTOON-POSTROUTING - [0:0]
-F PONTOON
-F PONTOON-POSTROUTING
-I PREROUTING 1 -m addrtype --dst-type LOCAL -j PONTOON
-I OUTPUT 1 ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PONTOON
-I POSTROUTING 1 -j PONTOON-POSTROUTING
-A PONTOON -d 192.0.2.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.5.0.3:53
-A PONTOON -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.5.0.2:80
-A PONTOON-POSTROUTING ! -s 10.5.0.0/24 -o {BR} -j RETURN
-A PONTOON-POSTROUTING ! -s 10.6.0.0/24 -o br-int -j RETURN
-A PONTOON-POSTROUTING -s 10.5.0.0/24 ! -o {BR} -j MASQUERADE
-A PONTOON-POSTROUTING -s 10.5.0.2/32 -d 10.5.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A PONTOON-POSTROUTING -s 10.5.0.3/32 -d 10.5.0.3/32 -p udp -m udp --dport 53 -j MASQUERADE
COMMIT
"""


def test_sync_from_nothing_in_proxy_mode():
    assert sync_script([NORMAL, INTERNAL], [WEB, DNS], True, Saved()) == SYNC_PROXY


def test_sync_in_kernel_mode_adds_loopback_masquerade_above_the_returns():
    nat = section(sync_script([NORMAL, INTERNAL], [WEB, DNS], False, Saved()), "nat")
    assert "-I OUTPUT 1 -m addrtype --dst-type LOCAL -j PONTOON" in nat
    rules = [line for line in nat if line.startswith("-A PONTOON-POSTROUTING")]
    assert rules[:4] == [
        f"-A PONTOON-POSTROUTING -s 127.0.0.0/8 -o {BR} -j MASQUERADE",
        "-A PONTOON-POSTROUTING -s 127.0.0.0/8 -o br-int -j MASQUERADE",
        f"-A PONTOON-POSTROUTING ! -s 10.5.0.0/24 -o {BR} -j RETURN",
        "-A PONTOON-POSTROUTING ! -s 10.6.0.0/24 -o br-int -j RETURN",
    ]


def test_sync_declares_and_flushes_only_our_chains():
    ours = {c for chains in ipt.OUR_CHAINS.values() for c in chains}
    script = sync_script([NORMAL, INTERNAL], [WEB, DNS], False, parse_save(SAVED_PROXY))
    for line in lines(script):
        if line.startswith(":"):  # a built-in here would reset its policy
            assert line == f"{line.split()[0]} - [0:0]" and line.split()[0][1:] in ours
        elif line.startswith(("-F", "-X", "-A")):
            assert line.split()[1] in ours, line


SAVED_PROXY = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:PONTOON-GUARD - [0:0]
-A PREROUTING -j PONTOON-GUARD
-A PONTOON-GUARD -d 127.0.0.0/8 ! -i lo -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:PONTOON - [0:0]
:PONTOON-FORWARD - [0:0]
:PONTOON-ISOLATION-STAGE-1 - [0:0]
:PONTOON-ISOLATION-STAGE-2 - [0:0]
-A FORWARD -j PONTOON-FORWARD
-A FORWARD -j DOCKER-USER
-A FORWARD -j PONTOON-FORWARD
-A PONTOON-FORWARD -j PONTOON-ISOLATION-STAGE-1
-A PONTOON-ISOLATION-STAGE-2 -m conntrack --ctstate DNAT -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:PONTOON - [0:0]
:PONTOON-POSTROUTING - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j PONTOON
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PONTOON
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -j PONTOON-POSTROUTING
COMMIT
"""


def test_sync_keeps_existing_jumps_and_drops_duplicates():
    script = sync_script([], [], True, parse_save(SAVED_PROXY))
    assert section(script, "filter")[8:10] == [
        "-D FORWARD -j PONTOON-FORWARD",  # the duplicate; the first one stays
        "-A PONTOON-FORWARD -j PONTOON-ISOLATION-STAGE-1",
    ]
    assert not any(line.startswith("-I ") for line in lines(script))
    assert "DOCKER" not in script


def test_sync_into_the_other_mode_replaces_the_output_jump():
    nat = section(sync_script([], [], False, parse_save(SAVED_PROXY)), "nat")
    assert [line for line in nat if "OUTPUT" in line] == [
        "-D OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PONTOON",
        "-I OUTPUT 1 -m addrtype --dst-type LOCAL -j PONTOON",
    ]


# -- incremental changes -------------------------------------------------------------


def test_add_network_onto_synced_state():
    saved = parse_save(SAVED_PROXY)
    script = add_network_script(NORMAL, True, saved)
    assert script == (
        "*filter\n"
        f"-A PONTOON-ISOLATION-STAGE-1 -i {BR} ! -o {BR} -j PONTOON-ISOLATION-STAGE-2\n"
        f"-A PONTOON-ISOLATION-STAGE-2 -o {BR} -j DROP\n"
        f"-I PONTOON-FORWARD 2 -i {BR} -j ACCEPT\n"
        f"-A PONTOON-FORWARD -o {BR} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        f"-A PONTOON-FORWARD -o {BR} -j PONTOON\n"
        "COMMIT\n"
        "*nat\n"
        f"-I PONTOON-POSTROUTING 1 ! -s 10.5.0.0/24 -o {BR} -j RETURN\n"
        f"-A PONTOON-POSTROUTING -s 10.5.0.0/24 ! -o {BR} -j MASQUERADE\n"
        "COMMIT\n"
    )


def test_add_network_is_idempotent():
    fake = FakeIptables()
    fw = fake.firewall(userland_proxy=False)
    fw.sync([NORMAL], [])
    before = fake.save()
    assert add_network_script(NORMAL, False, parse_save(before)) == ""
    fw.add_network(NORMAL)
    assert fake.save() == before


def test_remove_network_deletes_only_what_is_there():
    fake = FakeIptables()
    fake.firewall(userland_proxy=True).sync([NORMAL], [])
    saved = parse_save(fake.save())
    assert remove_network_script(NORMAL, saved) == (
        "*nat\n"
        f"-D PONTOON-POSTROUTING ! -s 10.5.0.0/24 -o {BR} -j RETURN\n"
        f"-D PONTOON-POSTROUTING -s 10.5.0.0/24 ! -o {BR} -j MASQUERADE\n"
        "COMMIT\n"
        "*filter\n"
        f"-D PONTOON-ISOLATION-STAGE-1 -i {BR} ! -o {BR} -j PONTOON-ISOLATION-STAGE-2\n"
        f"-D PONTOON-ISOLATION-STAGE-2 -o {BR} -j DROP\n"
        f"-D PONTOON-FORWARD -i {BR} -j ACCEPT\n"
        f"-D PONTOON-FORWARD -o {BR} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        f"-D PONTOON-FORWARD -o {BR} -j PONTOON\n"
        "COMMIT\n"
    )
    assert remove_network_script(OTHER, saved) == ""


def test_remove_network_finds_rules_whatever_flags_wrote_them():
    fake = FakeIptables()
    fw = fake.firewall(userland_proxy=False)
    fw.sync([INTERNAL], [])
    fw.remove_network(dataclasses.replace(INTERNAL, internal=False))
    assert fake.rules_of("br-int") == []


def test_add_ports_text():
    saved = parse_save(SAVED_PROXY)
    assert add_ports_script([WEB, DNS], saved) == (
        "*filter\n"
        f"-A PONTOON -d 10.5.0.2/32 ! -i {BR} -o {BR} -p tcp -m tcp --dport 80 -j ACCEPT\n"
        f"-A PONTOON -d 10.5.0.3/32 ! -i {BR} -o {BR} -p udp -m udp --dport 53 -j ACCEPT\n"
        "COMMIT\n"
        "*nat\n"
        "-A PONTOON -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.5.0.2:80\n"
        "-A PONTOON-POSTROUTING -s 10.5.0.2/32 -d 10.5.0.2/32 -p tcp -m tcp --dport 80 "
        "-j MASQUERADE\n"
        "-I PONTOON 1 -d 192.0.2.1/32 -p udp -m udp --dport 5353 "
        "-j DNAT --to-destination 10.5.0.3:53\n"
        "-A PONTOON-POSTROUTING -s 10.5.0.3/32 -d 10.5.0.3/32 -p udp -m udp --dport 53 "
        "-j MASQUERADE\n"
        "COMMIT\n"
    )


def test_add_ports_skips_ports_already_published():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.sync([NORMAL], [WEB])
    assert add_ports_script([WEB, WEB], parse_save(fake.save())) == ""
    assert add_ports_script([DNS, DNS], parse_save(fake.save())).count("DNAT") == 1


def test_remove_ports_text_and_missing_ones_are_fine():
    fake = FakeIptables()
    fake.firewall().sync([NORMAL], [WEB])
    assert remove_ports_script([WEB, DNS], parse_save(fake.save())) == (
        "*nat\n"
        "-D PONTOON -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.5.0.2:80\n"
        "-D PONTOON-POSTROUTING -s 10.5.0.2/32 -d 10.5.0.2/32 -p tcp -m tcp --dport 80 "
        "-j MASQUERADE\n"
        "COMMIT\n"
        "*filter\n"
        f"-D PONTOON -d 10.5.0.2/32 ! -i {BR} -o {BR} -p tcp -m tcp --dport 80 -j ACCEPT\n"
        "COMMIT\n"
    )
    assert remove_ports_script([DNS], parse_save(fake.save())) == ""


def test_two_host_ports_to_one_container_port_share_rules_by_copy():
    alt = dataclasses.replace(WEB, host_port=8081)
    fake = FakeIptables()
    fw = fake.firewall()
    fw.sync([NORMAL], [WEB, alt])
    fw.remove_ports([WEB])
    fw.remove_ports([WEB])  # again: nothing more goes
    assert fake.chain("filter", "PONTOON") == [
        r.spec for r in port_rules(alt) if r.table == "filter"
    ]
    assert len([s for s in fake.chain("nat", "PONTOON-POSTROUTING") if "10.5.0.2/32" in s]) == 1
    fw.remove_ports([alt])
    assert fake.chain("filter", "PONTOON") == []


def test_teardown_text():
    fake = FakeIptables()
    fake.foreign()
    fake.firewall().sync([NORMAL], [WEB])
    assert teardown_script(parse_save(fake.save())) == (
        "*nat\n"
        "-D PREROUTING -m addrtype --dst-type LOCAL -j PONTOON\n"
        "-D OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PONTOON\n"
        "-D POSTROUTING -j PONTOON-POSTROUTING\n"
        "-F PONTOON\n-F PONTOON-POSTROUTING\n-X PONTOON\n-X PONTOON-POSTROUTING\n"
        "COMMIT\n"
        "*filter\n"
        "-D FORWARD -j PONTOON-FORWARD\n"
        "-F PONTOON-FORWARD\n-F PONTOON-ISOLATION-STAGE-1\n-F PONTOON-ISOLATION-STAGE-2\n"
        "-F PONTOON\n"
        "-X PONTOON-FORWARD\n-X PONTOON-ISOLATION-STAGE-1\n-X PONTOON-ISOLATION-STAGE-2\n"
        "-X PONTOON\n"
        "COMMIT\n"
        "*raw\n"
        "-D PREROUTING -j PONTOON-GUARD\n-F PONTOON-GUARD\n-F PONTOON-VTEPS\n-F PONTOON-UNTRACK\n"
        "-X PONTOON-GUARD\n-X PONTOON-VTEPS\n-X PONTOON-UNTRACK\n"
        "COMMIT\n"
    )


def test_teardown_of_nothing_writes_nothing():
    assert teardown_script(Saved()) == ""
    fake = FakeIptables()
    fake.firewall().teardown()
    assert fake.restores == []


def test_dump_shows_only_ours():
    text = dump_text(SAVED_PROXY)
    assert "DOCKER" not in text and "docker0" not in text and "policy" not in text
    assert lines(text)[:4] == [
        "*raw",
        ":PONTOON-GUARD - [0:0]",
        "-A PREROUTING -j PONTOON-GUARD",
        "-A PONTOON-GUARD -d 127.0.0.0/8 ! -i lo -j DROP",
    ]
    assert "-A FORWARD -j PONTOON-FORWARD" in text
    assert dump_text("") == ""


# -- the class, on a fake iptables ---------------------------------------------------


class FakeIptables:
    """iptables in memory: applies restore text as --noflush does (and fails
    the way it does), prints iptables-save text."""

    BUILTIN = ipt.BUILTIN_CHAINS

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {}
        self.restores: list[str] = []
        # ip6tables: a fake of its own (its rules are checked where they matter)
        self.v6: FakeIptables | None = None

    def firewall(self, userland_proxy: bool = True) -> IptablesFirewall:
        fw = IptablesFirewall(userland_proxy)
        fw._exec = self.exec  # type: ignore[method-assign]
        return fw

    def foreign(self) -> None:
        """Someone else's rules, which must survive everything we do."""
        self.restore(
            "*filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n"
            "-A DOCKER-USER -j RETURN\nCOMMIT\n"
            "*nat\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n"
        )

    def exec(self, argv, stdin=None):
        if argv[0] in (ipt.RESTORE6, ipt.SAVE6):
            if self.v6 is None:
                self.v6 = FakeIptables()
            return self.v6.exec((argv[0].replace("ip6", "ip"), *argv[1:]), stdin)
        if argv[0] == ipt.RESTORE:
            assert "--noflush" in argv
            self.restores.append(stdin)
            self.restore(stdin)
            return ""
        assert argv == (ipt.SAVE,)
        return self.save()

    def table(self, name: str) -> dict[str, list[str]]:
        return self.tables.setdefault(name, {c: [] for c in self.BUILTIN[name]})

    def restore(self, text: str) -> None:
        for block in text.split("COMMIT\n"):
            if not block.strip():
                continue
            head, *body = block.splitlines()
            assert head.startswith("*")
            new = {c: list(r) for c, r in self.table(head[1:]).items()}
            for line in body:
                self._apply(new, line)
            self.tables[head[1:]] = new  # each table is one transaction

    def _apply(self, t: dict[str, list[str]], line: str) -> None:
        if line.startswith(":"):
            name = line[1:].split()[0]
            assert name not in self.BUILTIN["filter"] + self.BUILTIN["nat"], "policy reset"
            t[name] = []  # created, or flushed under --noflush
            return
        op, chain, *rest = line.split(" ", 2)
        if chain not in t:
            raise RuntimeError(f"no chain {chain}")
        spec = rest[0] if rest else ""
        if op == "-A":
            t[chain].append(spec)
        elif op == "-I":
            pos, spec = spec.split(" ", 1)
            assert 1 <= int(pos) <= len(t[chain]) + 1, "index of insertion too big"
            t[chain].insert(int(pos) - 1, spec)
        elif op == "-D":
            if spec not in t[chain]:
                raise RuntimeError(f"Bad rule: {line}")
            t[chain].remove(spec)
        elif op == "-F":
            t[chain] = []
        elif op == "-X":
            refs = [s for rules in t.values() for s in rules if s.endswith(f"-j {chain}")]
            assert not t[chain] and not refs, f"chain {chain} busy"
            del t[chain]
        else:
            raise AssertionError(line)

    def save(self) -> str:
        out = []
        for name, chains in self.tables.items():
            out.append(f"*{name}")
            out += [f":{c} ACCEPT [0:0]" for c in chains if c in self.BUILTIN[name]]
            out += [f":{c} - [0:0]" for c in sorted(chains) if c not in self.BUILTIN[name]]
            out += [f"-A {c} {s}" for c, rules in chains.items() for s in rules]
            out.append("COMMIT")
        return "".join(line + "\n" for line in out)

    def everything(self) -> set[tuple[str, str, str]]:
        """Every chain and rule, ignoring empty built-in chains."""
        out = set()
        for name, chains in self.tables.items():
            for chain, rules in chains.items():
                if chain not in self.BUILTIN[name]:
                    out.add((name, chain, ":"))
                out |= {(name, chain, f"{n} {s}") for n, s in enumerate(rules)}
        return out

    def chain(self, table: str, chain: str) -> list[str]:
        return self.tables[table][chain]

    def rules_of(self, bridge: str) -> list[str]:
        return [
            s
            for t in self.tables.values()
            for rules in t.values()
            for s in rules
            if bridge in s.split()
        ]


def test_every_change_is_one_restore_run():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.sync([NORMAL], [])
    fw.add_network(INTERNAL)
    fw.add_ports([WEB, DNS])
    fw.remove_ports([WEB, DNS])
    fw.remove_network(INTERNAL)
    fw.teardown()
    assert len(fake.restores) == 6


def test_teardown_leaves_foreign_rules_alone_and_nothing_of_ours():
    fake = FakeIptables()
    fake.foreign()
    before = fake.everything()
    fw = fake.firewall(userland_proxy=False)
    fw.sync([NORMAL, INTERNAL], [WEB, DNS])
    fw.teardown()
    assert fake.everything() == before
    assert "PONTOON" not in fake.save()


def test_sync_twice_is_a_fixpoint_and_replaces_old_state():
    fake = FakeIptables()
    fake.foreign()
    fw = fake.firewall()
    fw.sync([NORMAL, OTHER], [WEB, SCTP])
    fw.sync([NORMAL], [DNS])
    once = fake.save()
    fw.sync([NORMAL], [DNS])
    assert fake.save() == once
    assert fake.rules_of("pt-other") == []
    assert "DOCKER-USER -j RETURN" in once


def test_incremental_changes_end_where_sync_does():
    fake, ref = FakeIptables(), FakeIptables()
    fw = fake.firewall(userland_proxy=False)
    fw.sync([], [])
    for net in (NORMAL, INTERNAL, OTHER):
        fw.add_network(net)
    fw.add_ports([WEB, HIDDEN])
    fw.add_ports([SCTP, DNS])
    ref.firewall(userland_proxy=False).sync([NORMAL, INTERNAL, OTHER], [WEB, HIDDEN, SCTP, DNS])
    for table, chains in ref.tables.items():
        for chain, rules in chains.items():
            assert sorted(fake.chain(table, chain)) == sorted(rules), chain
    fw.remove_ports([WEB, HIDDEN, SCTP, DNS])
    for net in (NORMAL, INTERNAL, OTHER):
        fw.remove_network(net)
    ref2 = FakeIptables()
    ref2.firewall(userland_proxy=False).sync([], [])
    assert fake.save() == ref2.save()


# -- verdicts: the nftables backend's decisions, evaluated from our rules ---------------


def _matches(spec: str, pkt: dict) -> tuple[bool, str | None]:
    """Does the rule match the packet, and what is its target."""
    tokens = spec.split()
    target, neg, i = None, False, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            neg = True
            i += 1
            continue
        arg = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in ("-s", "-d"):
            ok = ipaddress.ip_address(pkt["src" if tok == "-s" else "dst"]) in (
                ipaddress.ip_network(arg)
            )
        elif tok in ("-i", "-o"):
            ok = pkt["in" if tok == "-i" else "out"] == arg
        elif tok == "-p":
            ok = pkt.get("proto") == arg
        elif tok == "--dport":
            ok = pkt.get("dport") == int(arg)
        elif tok == "--ctstate":
            ok = bool(set(arg.split(",")) & pkt["ct"])
        elif tok == "--dst-type":
            ok = ("LOCAL" if pkt.get("local") else pkt.get("dst_type", "UNICAST")) == arg
        elif tok == "-m":
            ok = True
        elif tok == "-j":
            target = arg
            ok = True
        elif tok == "--notrack":
            target = "NOTRACK"
            ok = True
        elif tok == "--to-destination":
            target = f"DNAT {arg}"
            ok = True
        else:
            raise AssertionError(f"evaluator does not know {tok}")
        if ok == neg:
            return False, None
        neg = False
        i += 2
    return True, target


def _walk(fake: FakeIptables, table: str, chain: str, pkt: dict) -> str | None:
    """First-match evaluation with jumps and RETURN; None: fell off the end."""
    for spec in fake.chain(table, chain):
        hit, target = _matches(spec, pkt)
        if not hit:
            continue
        if target == "RETURN":
            return None
        if target in fake.tables[table]:
            verdict = _walk(fake, table, target, pkt)
            if verdict is not None:
                return verdict
            continue
        return target
    return None


def nft_forward(nets: list[NetworkRules], i: str, o: str, dnat: bool) -> str:
    """pontoon/firewall/nft/host.py's forward + from-<bridge> chains."""
    bridges = {n.bridge: n for n in nets}
    if i in bridges:
        if o == i:
            return "accept"
        if bridges[i].internal:
            return "drop"
        if dnat:
            return "accept"
        if o in bridges:
            return "drop"
    if o in bridges and bridges[o].internal:
        return "drop"
    return "accept"


NETS = [NORMAL, INTERNAL, OTHER]
IFACES = [n.bridge for n in NETS] + ["eth0"]


@pytest.mark.parametrize("order", list(itertools.permutations(NETS)))
def test_forward_verdicts_match_the_nftables_backend(order):
    fake = FakeIptables()
    fw = fake.firewall()
    fw.sync([], [])
    for net in order:
        fw.add_network(net)
    for i, o, dnat in itertools.product(IFACES, IFACES, (False, True)):
        if i == o == "eth0":
            continue
        pkt = {"in": i, "out": o, "src": "10.9.9.9", "dst": "10.9.9.8", "ct": {"NEW"}}
        if dnat:
            pkt["ct"] |= {"DNAT"}
        got = _walk(fake, "filter", "FORWARD", pkt)
        want = nft_forward(NETS, i, o, dnat)
        assert (got or "ACCEPT").lower() == want, (i, o, dnat, got)
        if i in (n.bridge for n in NETS) and want == "accept":
            assert got == "ACCEPT"  # works under a FORWARD policy of DROP too


def test_published_port_is_accepted_from_outside_under_drop_policy():
    fake = FakeIptables()
    fake.firewall().sync(NETS, [WEB, HIDDEN])
    pkt = {"in": "eth0", "out": BR, "src": "198.51.100.2", "dst": "10.5.0.2"}
    assert _walk(fake, "filter", "FORWARD", {**pkt, "proto": "tcp", "dport": 80, "ct": {"NEW"}})
    assert _walk(fake, "filter", "FORWARD", {**pkt, "ct": {"ESTABLISHED"}}) == "ACCEPT"
    assert _walk(fake, "filter", "FORWARD", {**pkt, "ct": {"NEW"}}) is None  # not published
    # An internal network's published port: not from outside, as with nftables.
    pkt = {"in": "eth0", "out": "br-int", "src": "198.51.100.2", "dst": "10.6.0.2"}
    pkt |= {"proto": "tcp", "dport": 443, "ct": {"NEW", "DNAT"}}
    assert _walk(fake, "filter", "FORWARD", pkt) == "DROP"


def nft_masquerade(nets, ports, proxy: bool, src: str, dst: str, out: str, dnat: bool) -> bool:
    """pontoon/firewall/nft/host.py's postrouting chain."""
    bridges = {n.bridge for n in nets}
    hairpin = {(p.container_ip, p.container_ip) for p in ports}
    if dnat and (src, dst) in hairpin:
        return True
    loopback = ipaddress.ip_address(src) in ipaddress.ip_network("127.0.0.0/8")
    if not proxy and loopback and out in bridges:
        return True
    nated = [s for n in nets for s in n.nat_subnets(4)]
    in_nated = any(ipaddress.ip_address(src) in ipaddress.ip_network(s) for s in nated)
    return in_nated and out not in bridges


@pytest.mark.parametrize("proxy", [True, False])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_masquerade_decisions_match_the_nftables_backend(proxy, order):
    ports = [WEB, HIDDEN, SCTP]
    fake = FakeIptables()
    fw = fake.firewall(userland_proxy=proxy)
    fw.sync([], [])
    for k in order:
        fw.add_network(NETS[k])
        fw.add_ports([p for p in ports if p.bridge == NETS[k].bridge])
    sources = ["10.5.0.2", "10.5.0.9", "10.6.0.2", "10.7.0.2", "127.0.0.1", "198.51.100.2"]
    for src, dst, out, dnat in itertools.product(
        sources, ["10.5.0.2", "10.6.0.2", "10.7.0.2", "8.8.8.8"], IFACES, (False, True)
    ):
        if src == dst and not dnat:
            continue  # a container talking to itself never leaves it
        # A packet DNATed to itself is bound for one of its own published
        # ports, through its own bridge.
        for port in [p for p in ports if src != dst or (p.container_ip, p.bridge) == (dst, out)]:
            pkt = {"src": src, "dst": dst, "out": out, "in": "", "ct": {"NEW"}}
            pkt |= {"proto": port.proto, "dport": port.container_port}
            if dnat:
                pkt["ct"] |= {"DNAT"}
            got = _walk(fake, "nat", "POSTROUTING", pkt) == "MASQUERADE"
            want = nft_masquerade(NETS, ports, proxy, src, dst, out, dnat)
            assert got == want, pkt


@pytest.mark.parametrize("first", ["any", "ip"])
def test_port_on_one_address_wins_over_every_address_as_with_nftables(first):
    ip_rule = dataclasses.replace(WEB, host_ip="192.0.2.1", container_ip="10.5.0.9")
    fake = FakeIptables()
    fw = fake.firewall()
    fw.sync([NORMAL], [])
    for rule in (WEB, ip_rule) if first == "any" else (ip_rule, WEB):
        fw.add_ports([rule])
    pkt = {"src": "198.51.100.2", "proto": "tcp", "dport": 8080, "in": "eth0", "out": ""}
    pkt |= {"ct": {"NEW"}, "local": True}
    assert _walk(fake, "nat", "PREROUTING", {**pkt, "dst": "192.0.2.1"}) == "DNAT 10.5.0.9:80"
    assert _walk(fake, "nat", "PREROUTING", {**pkt, "dst": "192.0.2.2"}) == "DNAT 10.5.0.2:80"


@pytest.mark.parametrize("proxy", [True, False])
def test_host_connections_to_loopback_are_nated_only_in_kernel_mode(proxy):
    fake = FakeIptables()
    fake.firewall(userland_proxy=proxy).sync([NORMAL], [WEB])
    pkt = {"src": "127.0.0.1", "dst": "127.0.0.1", "proto": "tcp", "dport": 8080}
    pkt |= {"in": "", "out": "lo", "ct": {"NEW"}, "local": True}
    got = _walk(fake, "nat", "OUTPUT", pkt)
    assert got == (None if proxy else "DNAT 10.5.0.2:80")


def test_guard_drops_loopback_from_other_hosts():
    fake = FakeIptables()
    fake.firewall().sync([], [])
    pkt = {"src": "198.51.100.2", "dst": "127.0.0.1", "ct": {"NEW"}}
    assert _walk(fake, "raw", "PREROUTING", {**pkt, "in": "eth0", "out": ""}) == "DROP"
    assert _walk(fake, "raw", "PREROUTING", {**pkt, "in": "lo", "out": ""}) is None


def test_overlay_hosts_leave_vxlan_untracked():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.tunnel = Tunnel("10.240.0.11", 4789)
    fw.sync([NORMAL], [])
    udp = "-p udp -m udp --dport 4789 -j CT --notrack"
    assert fake.chain("raw", "PONTOON-GUARD")[-1] == f"-d 10.240.0.11/32 {udp}"
    assert fake.chain("raw", "PONTOON-UNTRACK") == [f"-s 10.240.0.11/32 {udp}"]
    assert fake.chain("raw", "OUTPUT") == ["-j PONTOON-UNTRACK"]
    # A restart without overlays drops the jump; teardown leaves nothing.
    fw.tunnel = None
    fw.sync([NORMAL], [])
    assert fake.chain("raw", "OUTPUT") == [] and fake.chain("raw", "PONTOON-UNTRACK") == []
    fw.tunnel = Tunnel("10.240.0.11", 4789)
    fw.sync([NORMAL], [])
    fw.teardown()
    assert "PONTOON" not in fake.save()


def _vxlan(src: str, **extra) -> dict:
    return {"src": src, "dst": "10.240.0.11", "proto": "udp", "dport": 4789, "in": "eth0",
            "out": "", "ct": set(), "local": True, **extra}  # fmt: skip


def test_vxlan_is_accepted_only_from_the_clusters_vteps():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.tunnel = Tunnel("10.240.0.11", 4789)
    fw.set_vteps({"10.240.0.12"})  # before the first sync: kept for it
    fw.sync([NORMAL], [])
    assert fake.chain("raw", "PONTOON-VTEPS") == [
        "-s 10.240.0.11/32 -j RETURN",
        "-s 10.240.0.12/32 -j RETURN",
        "-m addrtype ! --dst-type UNICAST -j DROP",
    ]
    assert fake.chain("raw", "PONTOON-GUARD")[1:] == [
        "-p udp -m udp --dport 4789 -j PONTOON-VTEPS",
        "-d 10.240.0.11/32 -p udp -m udp --dport 4789 -j CT --notrack",
    ]
    walk = lambda pkt: _walk(fake, "raw", "PREROUTING", pkt)  # noqa: E731
    assert walk(_vxlan("10.240.0.12")) == "NOTRACK"  # a member: on to the notrack rule
    assert walk(_vxlan("10.240.0.99")) == "DROP"  # anyone else
    assert walk(_vxlan("10.240.0.99", dst="10.240.0.200", local=False, dst_type="BROADCAST")) == (
        "DROP"
    )
    # Forwarded VXLAN (a container's own tunnel, say) is none of our business.
    assert walk(_vxlan("10.240.0.99", dst="192.0.2.7", local=False)) is None


def test_vtep_set_changes_are_one_raw_transaction_and_keep_the_drop_last():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.tunnel = Tunnel("10.240.0.11", 4789)
    fw.sync([], [])
    fake.restores.clear()
    fw.set_vteps({"10.240.0.12", "10.240.0.13"})
    fw.set_vteps({"10.240.0.13", "10.240.0.14"})
    assert fake.restores[-1] == (
        "*raw\n-D PONTOON-VTEPS -s 10.240.0.12/32 -j RETURN\n"
        "-I PONTOON-VTEPS 1 -s 10.240.0.14/32 -j RETURN\nCOMMIT\n"
    )
    assert len(fake.restores) == 2
    chain = fake.chain("raw", "PONTOON-VTEPS")
    assert chain[-1] == "-m addrtype ! --dst-type UNICAST -j DROP"
    assert sorted(chain[:-1]) == [f"-s 10.240.0.{n}/32 -j RETURN" for n in (11, 13, 14)]
    fw.set_vteps({"10.240.0.13", "10.240.0.14"})  # no change: nothing run
    assert len(fake.restores) == 2
    fw._nft_based = False  # the fake is legacy iptables: no generation to ask
    assert fw.check() == []


def test_a_restart_keeps_the_previous_daemons_vtep_set_until_the_store_says():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.tunnel = Tunnel("10.240.0.11", 4789)
    fw.set_vteps({"10.240.0.12"})
    fw.sync([], [])
    again = fake.firewall()
    again.tunnel = Tunnel("10.240.0.11", 4789)
    again.sync([], [])
    assert again.accepted_vteps() == {"10.240.0.11", "10.240.0.12"}
    assert "-s 10.240.0.12/32 -j RETURN" in fake.chain("raw", "PONTOON-VTEPS")


def test_a_bad_vtep_changes_nothing():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.tunnel = Tunnel("10.240.0.11", 4789)
    fw.sync([], [])
    with pytest.raises(ValueError):
        fw.set_vteps({"10.0.0.1/32 -j ACCEPT"})
    assert fw.accepted_vteps() == {"10.240.0.11"}


def test_tunnel_address_is_validated():
    fw = FakeIptables().firewall()
    fw.tunnel = Tunnel("10.0.0.1 -j ACCEPT", 4789)
    with pytest.raises(ValueError):
        fw.sync([], [])


def test_an_ipv6_underlay_guards_vxlan_in_ip6tables():
    fake = FakeIptables()
    fw = fake.firewall()
    fw.tunnel = Tunnel("fd6c:6162:a00::b", 4789)
    fw.set_vteps({"fd6c:6162:a00::c", "10.240.0.12"})
    rules = ipt.skeleton_rules(fw.tunnel, fw.accepted_vteps(), family=6)
    vteps = [r.spec for r in rules if r.chain == "PONTOON-VTEPS"]
    assert vteps == [
        "-s fd6c:6162:a00::b/128 -j RETURN",
        "-s fd6c:6162:a00::c/128 -j RETURN",
        # ip6tables calls our own addresses UNICAST too: name what is not forwarded.
        "-m addrtype --dst-type LOCAL -j DROP",
        "-m addrtype --dst-type MULTICAST -j DROP",
    ]
    guard = [r.spec for r in rules if r.chain == "PONTOON-GUARD"]
    assert "-d fd6c:6162:a00::b/128 -p udp -m udp --dport 4789 -j CT --notrack" in guard
    assert not [r for r in ipt.skeleton_rules(fw.tunnel, set(), family=4) if "VTEPS" in r.chain]
