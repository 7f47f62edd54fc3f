"""iptables backend: Docker-like chains, written with iptables-restore, and
the same chains for IPv6 with ip6tables-restore.

The binaries are the system's `iptables-restore` / `iptables-save` (RESTORE
and SAVE below). On Debian 12 the alternatives point them at iptables-nft
(`iptables-restore v1.8.9 (nf_tables)`), which stores the rules in the
nftables tables `ip raw`, `ip nat` and `ip filter`; `iptables-legacy-restore`
exists as well but is not used (set IptablesFirewall.commands to
choose it). The rules make the same decisions as the nftables backend
(pontoon/firewall/nft/host.py), laid out as Docker lays out its own so the two
can be read side by side:

    raw PREROUTING              -j PONTOON-GUARD
    raw PONTOON-GUARD           -d 127.0.0.0/8 ! -i lo -j DROP
                                [overlays: -p udp --dport VXLAN -j PONTOON-VTEPS
                                           -d VTEP -p udp --dport VXLAN -j CT --notrack]
    raw PONTOON-VTEPS           [overlays: -s MEMBER/32 -j RETURN       per cluster VTEP
                                           -m addrtype ! --dst-type UNICAST -j DROP]
                                [IPv6 underlay, in ip6tables: -s MEMBER/128 -j RETURN,
                                 then --dst-type LOCAL and MULTICAST -j DROP]
    raw OUTPUT                  [overlays: -j PONTOON-UNTRACK]
    raw PONTOON-UNTRACK         [overlays: -s VTEP -p udp --dport VXLAN -j CT --notrack]
    nat PREROUTING              -m addrtype --dst-type LOCAL -j PONTOON
    nat OUTPUT                  [proxy mode: ! -d 127.0.0.0/8] -m addrtype --dst-type LOCAL
                                -j PONTOON
    nat POSTROUTING             -j PONTOON-POSTROUTING
    nat PONTOON                 -d HOST_IP/32 -p P -m P --dport N -j DNAT --to-destination
                                CIP:CPORT (host address given: inserted first, as the
                                nftables backend looks @portmap_ip up before @portmap_any)
                                -p P -m P --dport N -j DNAT ...         (0.0.0.0: appended)
    nat PONTOON-POSTROUTING     [kernel mode: -s 127.0.0.0/8 -o BR -j MASQUERADE]  per bridge
                                ! -s SUBNET -o BR -j RETURN                          per bridge
                                -s SUBNET ! -o BR -j MASQUERADE          per NATed network
                                -s CIP/32 -d CIP/32 -p P -m P --dport CPORT -j MASQUERADE
                                                                  per port (self hairpin)
    filter FORWARD              -j PONTOON-FORWARD
    filter PONTOON-FORWARD      -j PONTOON-ISOLATION-STAGE-1
                                -i BR -j ACCEPT                                      per bridge
                                -o BR -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
                                -o BR -j PONTOON                   (both: per non-internal)
                                -o BR -j DROP                          per internal bridge
    filter PONTOON-ISOLATION-STAGE-1
                                -i BR ! -o BR -j PONTOON-ISOLATION-STAGE-2   per non-internal
                                -i BR ! -o BR -j DROP                        per internal
    filter PONTOON-ISOLATION-STAGE-2
                                -m conntrack --ctstate DNAT -j RETURN  (published ports)
                                -o BR -j DROP                                        per bridge
    filter PONTOON              -d CIP/32 ! -i BR -o BR -p P -m P --dport CPORT -j ACCEPT

How that maps onto the nftables backend:
- the `vteps` set is the chain PONTOON-VTEPS, one RETURN per VTEP (ipset is
  not installed on the machines pontoon targets, and a cluster has tens of
  hosts, not thousands); its DROP is the set's `fib daddr type != unicast`;
- from-<bridge> "same bridge accept / [internal: drop] / ct status dnat accept /
  oifname @bridges drop" is STAGE-1 + STAGE-2 and then `-i BR -j ACCEPT`;
- "oifname @internal drop" (traffic from elsewhere into an internal network)
  is `-o BR -j DROP`, after every `-i BR -j ACCEPT`, so a published port of
  an internal container stays reachable from the other bridges, as there;
- "oifname != @bridges" of the subnet masquerade is the per-bridge RETURN in
  front of the MASQUERADE rules: nothing entering one of our bridges is
  masqueraded except the self-hairpin and the loopback source (kernel mode).
  The RETURN spares the bridge's own subnet, so hairpin rules may sit below it.
Where the nftables backend merely does not drop, these chains ACCEPT, like
Docker's, so pontoon also works under a FORWARD policy of DROP: such packets
leave the filter FORWARD chain at our jump (inserted first) and skip the
host's later FORWARD rules. Nothing the nftables backend drops is accepted.
Other traffic into a non-internal bridge (not published, not a reply) falls
through to the host's FORWARD rules and policy, where the nftables backend's
own chain has policy accept.

Order inside our chains matters in three places and is kept on every change:
`-i BR -j ACCEPT` is inserted at position 2 of PONTOON-FORWARD (after the
isolation jump, before any `-o BR -j DROP`); the per-bridge RETURN and then the
loopback MASQUERADE are inserted at position 1 of PONTOON-POSTROUTING; DNAT for
a given host address at position 1 of nat PONTOON. Everything else is appended.

IPv6 gets the same chains from the same functions (`family=6`): ip6tables
has no `ip`/`ip6` split inside a table, so each family's rules are rendered
with that family's subnets, loopback and ports, and written by that family's
binaries (COMMANDS). VXLAN rules go where the tunnel's address family is.

Every change is one `iptables-restore --noflush` run (argument list, text on
stdin, no shell). It never flushes a chain we do not own, touches built-in
chains only to insert or delete our own jumps, and never declares a built-in
chain (which would reset its policy). iptables-nft commits each `*table ...
COMMIT` section as its own transaction, so a change is atomic per table
(legacy iptables likewise), not across tables: sections are ordered so that a
failure half-way leaves the safer state (filter before nat when adding, nat
before filter when removing), and the next sync() repairs the rest. Only
validated device names, parsed addresses and checked numbers are written.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pontoon.core.addresses import FAMILIES
from pontoon.firewall.base import (
    DesiredState,
    Firewall,
    NetworkRules,
    PortRule,
    Tunnel,
    vtep_set,
)
from pontoon.firewall.nft.writer import Generation
from pontoon.portmap.spec import PROTOCOLS, is_wildcard

RESTORE = "iptables-restore"
SAVE = "iptables-save"
RESTORE6 = "ip6tables-restore"
SAVE6 = "ip6tables-save"
# (restore, save) argv per address family.
COMMANDS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    4: ((RESTORE, "--noflush", "--wait"), (SAVE,)),
    6: ((RESTORE6, "--noflush", "--wait"), (SAVE6,)),
}

FORWARD = "PONTOON-FORWARD"
STAGE1 = "PONTOON-ISOLATION-STAGE-1"
STAGE2 = "PONTOON-ISOLATION-STAGE-2"
PORTS = "PONTOON"  # filter: ACCEPT published ports; nat: their DNAT
POSTROUTING = "PONTOON-POSTROUTING"
GUARD = "PONTOON-GUARD"
UNTRACK = "PONTOON-UNTRACK"
VTEPS = "PONTOON-VTEPS"  # raw: RETURN for the cluster's VTEPs, DROP other VXLAN

# Our chains per table, in the order the tables are written by sync().
OUR_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": (GUARD, VTEPS, UNTRACK),
    "filter": (FORWARD, STAGE1, STAGE2, PORTS),
    "nat": (PORTS, POSTROUTING),
}
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
# Section order: adding things opens the filter before NAT sends traffic in;
# removing things stops the NAT before the filter closes.
ADD_ORDER = ("raw", "filter", "nat")
REMOVE_ORDER = ("nat", "filter", "raw")

LOOPBACKS = {4: "127.0.0.0/8", 6: "::1/128"}
LOOPBACK = LOOPBACKS[4]
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class IptablesError(RuntimeError):
    pass


# -- validation: nothing reaches the restore text without passing these -------


def _ifname(name: str) -> str:
    # A leading "-" would read as an option, "+" is iptables' wildcard.
    if (
        not isinstance(name, str)
        or not _IFNAME.fullmatch(name)
        or name.startswith("-")
        or name in (".", "..")
    ):
        raise ValueError(f"invalid interface name {name!r}")
    return name


def _subnet(text: str, family: int = 4) -> str:
    net = ipaddress.ip_network(text)
    if net.version != family:
        raise ValueError(f"{text!r} is not an IPv{family} subnet")
    return str(net)


def _addr(text: str, family: int = 4) -> str:
    addr = ipaddress.ip_address(text)
    if addr.version != family:
        raise ValueError(f"{text!r} is not an IPv{family} address")
    return str(addr)


def family_of_ip(text: str) -> int:
    return ipaddress.ip_address(text).version


def _tunnel_of(tunnel: Tunnel | None, family: int) -> Tunnel | None:
    """The tunnel, in the tables of its own address family only."""
    return tunnel if tunnel is not None and family_of_ip(tunnel.local_ip) == family else None


def _port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"invalid port {value!r}")
    return value


def _proto(proto: str) -> str:
    if proto not in PROTOCOLS:
        raise ValueError(f"invalid protocol {proto!r}: use one of {', '.join(PROTOCOLS)}")
    return proto


# -- rules ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule in one of our chains. `spec` is written exactly as iptables-save
    prints it (so presence checks compare text); `insert` is the position for
    an incremental add (None: append)."""

    table: str
    chain: str
    spec: str
    insert: int | None = None

    def add_line(self) -> str:
        if self.insert is None:
            return f"-A {self.chain} {self.spec}"
        return f"-I {self.chain} {self.insert} {self.spec}"

    def delete_line(self) -> str:
        return f"-D {self.chain} {self.spec}"


def jump_rules(userland_proxy: bool, tunnel: Tunnel | None = None, family: int = 4) -> list[Rule]:
    """The jumps from built-in chains into ours (inserted first, once)."""
    local = "-m addrtype --dst-type LOCAL -j PONTOON"
    # With the proxy the host's own connections to loopback are the proxy's.
    # ::1 in both modes: IPv6 has no route_localnet, so it is never NATed.
    output = f"! -d {LOOPBACKS[family]} {local}" if userland_proxy or family == 6 else local
    tunnel = _tunnel_of(tunnel, family)
    untrack = [Rule("raw", "OUTPUT", f"-j {UNTRACK}", 1)] if tunnel is not None else []
    return [
        Rule("raw", "PREROUTING", f"-j {GUARD}", 1),
        *untrack,
        Rule("filter", "FORWARD", f"-j {FORWARD}", 1),
        Rule("nat", "PREROUTING", local, 1),
        Rule("nat", "OUTPUT", output, 1),
        Rule("nat", "POSTROUTING", f"-j {POSTROUTING}", 1),
    ]


def _host_prefix(addr: str) -> str:
    """An address as iptables-save prints a one-address source: /32 or /128."""
    parsed = ipaddress.ip_address(addr)
    return f"{parsed}/{parsed.max_prefixlen}"


def vtep_rule(vtep: str) -> Rule:
    """VXLAN from one of the cluster's VTEPs goes on (to the notrack rule);
    in the tables of the VTEP's family (ip6tables for an IPv6 underlay)."""
    return Rule("raw", VTEPS, f"-s {_host_prefix(vtep)} -j RETURN", 1)


def _vtep_key(rule: Rule) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(rule.spec.split()[1].partition("/")[0])


def skeleton_rules(tunnel: Tunnel | None = None, vteps: set[str] | frozenset[str] = frozenset(),
                   family: int = 4) -> list[Rule]:  # fmt: skip
    """The rules of our chains that do not depend on networks or ports;
    `vteps`, the VTEPs VXLAN is accepted from (with a tunnel only)."""
    tunnel = _tunnel_of(tunnel, family)
    rules = [
        # Other hosts must never reach loopback (route_localnet, both modes).
        Rule("raw", GUARD, f"-d {LOOPBACKS[family]} ! -i lo -j DROP"),
        Rule("filter", FORWARD, f"-j {STAGE1}"),
        # Published ports are reachable across bridges.
        Rule("filter", STAGE2, "-m conntrack --ctstate DNAT -j RETURN"),
    ]
    if tunnel is not None:
        # VXLAN between VTEPs needs no state (pontoon.firewall.base.Tunnel).
        vtep, port = _addr(tunnel.local_ip, family), _port(tunnel.udp_port)
        udp = f"-p udp -m udp --dport {port} -j CT --notrack"
        # Before decapsulation, VXLAN from anything but a cluster VTEP is
        # dropped: the VXLAN socket takes every local address and broadcasts,
        # so every destination that is not forwarded counts.
        members = sorted((vtep_rule(v) for v in vteps), key=_vtep_key)
        rules += [Rule("raw", GUARD, f"-p udp -m udp --dport {port} -j {VTEPS}"),
                  Rule("raw", GUARD, f"-d {_host_prefix(vtep)} {udp}"),
                  *members,
                  *_not_forwarded_drops(family),
                  Rule("raw", UNTRACK, f"-s {_host_prefix(vtep)} {udp}")]  # fmt: skip
    return rules


def _not_forwarded_drops(family: int) -> list[Rule]:
    """The DROPs closing PONTOON-VTEPS: whatever is for this host, not to be
    forwarded. IPv4 types a local address LOCAL, never UNICAST; ip6tables
    calls every unicast address UNICAST, ours included, so IPv6 names the
    local and multicast ones instead."""
    if family == 4:
        return [Rule("raw", VTEPS, "-m addrtype ! --dst-type UNICAST -j DROP")]
    return [Rule("raw", VTEPS, f"-m addrtype --dst-type {kind} -j DROP")
            for kind in ("LOCAL", "MULTICAST")]  # fmt: skip


def saved_vteps(saved: Saved) -> set[str]:
    """The VTEPs of PONTOON-VTEPS as iptables-save shows it (a previous
    daemon's set)."""
    out = set()
    for chain, spec in saved.rules.get("raw", []):
        parts = spec.split()
        if (
            chain == VTEPS
            and len(parts) == 4
            and parts[0] == "-s"
            and parts[2:] == ["-j", "RETURN"]
        ):
            with contextlib.suppress(ValueError):
                address, _, length = parts[1].partition("/")
                if length == str(ipaddress.ip_address(address).max_prefixlen):
                    out.add(str(ipaddress.ip_address(address)))
    return out


def vteps_script(old: set[str], new: set[str], saved: Saved) -> str:
    """Take PONTOON-VTEPS from `old` to `new` in one raw-table transaction:
    RETURNs of VTEPs gone deleted, those of new ones inserted first (above
    the DROP)."""
    gone = [vtep_rule(v) for v in sorted(old - new)]
    added = [vtep_rule(v) for v in sorted(new - old)]
    lines = [r.delete_line() for r in _split_by_presence(gone, saved)[0]]
    lines += [r.add_line() for r in _split_by_presence(added, saved)[1]]
    return render({"raw": lines})


def network_rules(net: NetworkRules, userland_proxy: bool, family: int = 4) -> list[Rule]:
    """Every rule of one network in one family's tables, in the order an
    incremental add writes them. Isolation is by device, so a bridge gets it
    in both families whatever its subnets."""
    br = _ifname(net.bridge)
    subnets = [_subnet(s, family) for s in net.subnets_of(family)]
    nat = [_subnet(s, family) for s in net.nat_subnets(family)]
    loopback = LOOPBACKS[family]
    rules = []
    if net.internal:
        rules.append(Rule("filter", STAGE1, f"-i {br} ! -o {br} -j DROP"))
    else:
        rules.append(Rule("filter", STAGE1, f"-i {br} ! -o {br} -j {STAGE2}"))
    rules += [
        Rule("filter", STAGE2, f"-o {br} -j DROP"),
        Rule("filter", FORWARD, f"-i {br} -j ACCEPT", 2),
    ]
    if net.internal:
        rules.append(Rule("filter", FORWARD, f"-o {br} -j DROP"))
    else:
        rules += [
            Rule(
                "filter", FORWARD, f"-o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ),
            Rule("filter", FORWARD, f"-o {br} -j {PORTS}"),
        ]
    rules += [Rule("nat", POSTROUTING, f"! -s {s} -o {br} -j RETURN", 1) for s in subnets]
    if not userland_proxy and subnets:
        # Inserted after (so above) the RETURN: the host's loopback connections
        # NATed to a container leave with the bridge address.
        rules.append(Rule("nat", POSTROUTING, f"-s {loopback} -o {br} -j MASQUERADE", 1))
    rules += [Rule("nat", POSTROUTING, f"-s {s} ! -o {br} -j MASQUERADE") for s in nat]
    return rules


HOST_PREFIX = {4: "/32", 6: "/128"}


def _match(proto: str, port: int) -> str:
    return f"-p {proto} -m {proto} --dport {port}"


def port_rules(rule: PortRule, family: int = 4) -> list[Rule]:
    """The DNAT, the filter ACCEPT and the self-hairpin MASQUERADE of one port.
    The DNAT comes first: it is the port's identity (one per host ip/proto/port)."""
    proto = _proto(rule.proto)
    host_port = _port(rule.host_port)
    cip = _addr(rule.container_ip, family)
    cport = _port(rule.container_port)
    br = _ifname(rule.bridge)
    # ip6tables writes an IPv6 DNAT target in brackets, and a host as /128.
    to = f"[{cip}]:{cport}" if family == 6 else f"{cip}:{cport}"
    host = HOST_PREFIX[family]
    dnat = f"{_match(proto, host_port)} -j DNAT --to-destination {to}"
    if is_wildcard(rule.host_ip):
        nat = Rule("nat", PORTS, dnat)
    else:
        nat = Rule("nat", PORTS, f"-d {_addr(rule.host_ip, family)}{host} {dnat}", 1)
    match = _match(proto, cport)
    return [
        nat,
        Rule("filter", PORTS, f"-d {cip}{host} ! -i {br} -o {br} {match} -j ACCEPT"),
        Rule("nat", POSTROUTING, f"-s {cip}{host} -d {cip}{host} {match} -j MASQUERADE"),
    ]


# -- iptables-save parsing -----------------------------------------------------


@dataclasses.dataclass
class Saved:
    """What iptables-save shows: per table, the chains and (chain, spec) rules."""

    chains: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    rules: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)

    def has_chain(self, table: str, chain: str) -> bool:
        return chain in self.chains.get(table, [])

    def counts(self) -> collections.Counter[tuple[str, str, str]]:
        return collections.Counter(
            (table, chain, spec) for table, rules in self.rules.items() for chain, spec in rules
        )

    def jumps(self, table: str) -> list[tuple[str, str]]:
        """Rules in built-in chains of `table` that jump to one of our chains."""
        ours = OUR_CHAINS.get(table, ())
        return [
            (chain, spec)
            for chain, spec in self.rules.get(table, [])
            if chain in BUILTIN_CHAINS.get(table, ()) and _target(spec) in ours
        ]


def _target(spec: str) -> str | None:
    tokens = spec.split()
    for i, token in enumerate(tokens[:-1]):
        if token in ("-j", "--jump", "-g", "--goto"):
            return tokens[i + 1]
    return None


def parse_save(text: str) -> Saved:
    saved = Saved()
    table = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            saved.chains.setdefault(table, [])
            saved.rules.setdefault(table, [])
        elif table is None or not line or line.startswith("#"):
            continue
        elif line.startswith(":"):
            saved.chains[table].append(line[1:].split()[0])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            saved.rules[table].append((chain, rest[0] if rest else ""))
    return saved


def dump_text(save_text: str) -> str:
    """Only our chains, their rules and the jumps into them, as iptables-save
    prints them."""
    saved = parse_save(save_text)
    out = []
    for table in ADD_ORDER:
        ours = [c for c in saved.chains.get(table, []) if c in OUR_CHAINS[table]]
        jumps = saved.jumps(table)
        if not ours and not jumps:
            continue
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in ours]
        out += [
            f"-A {chain} {spec}"
            for chain, spec in saved.rules[table]
            if chain in ours or (chain, spec) in jumps
        ]
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)


# -- restore scripts -------------------------------------------------------------


def render(sections: dict[str, list[str]], order: tuple[str, ...] = ADD_ORDER) -> str:
    """iptables-restore text: one `*table ... COMMIT` section per non-empty table."""
    out = []
    for table in order:
        lines = sections.get(table)
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "".join(line + "\n" for line in out)


def ports_of(ports: Iterable[PortRule], family: int) -> list[PortRule]:
    """The published ports whose container address is of `family`."""
    return [p for p in ports if family_of_ip(p.container_ip) == family]


def sync_script(
    networks: list[NetworkRules],
    ports: list[PortRule],
    userland_proxy: bool,
    saved: Saved,
    tunnel: Tunnel | None = None,
    vteps: set[str] | frozenset[str] = frozenset(),
    family: int = 4,
) -> str:
    """Declare (create or, under --noflush, flush) and refill all our chains
    of one family, and make the jumps into them exactly jump_rules(): the
    stale ones (other proxy mode, duplicates) deleted, the missing ones
    inserted first."""
    skeleton = skeleton_rules(tunnel, vteps, family)
    rules = skeleton + [r for n in networks for r in network_rules(n, userland_proxy, family)]
    rules += [r for p in ports_of(ports, family) for r in port_rules(p, family)]

    def rank(rule: Rule) -> int:
        # The order incremental changes keep (see the module docstring): the
        # fixed rules first, the loopback MASQUERADE above every RETURN, then
        # what is inserted at the top, then what is appended.
        if rule in skeleton:
            return 0
        if rule.chain == POSTROUTING and rule.spec.startswith(f"-s {LOOPBACKS[family]} "):
            return 1
        return 2 if rule.insert is not None else 3

    # Chain by chain; stable, so networks and ports keep their given order.
    rules.sort(key=lambda r: (OUR_CHAINS[r.table].index(r.chain), rank(r)))

    sections: dict[str, list[str]] = {
        t: [f":{c} - [0:0]" for c in OUR_CHAINS[t]] for t in OUR_CHAINS
    }
    for table in OUR_CHAINS:
        sections[table] += [f"-F {c}" for c in OUR_CHAINS[table]]
        want = [r for r in jump_rules(userland_proxy, tunnel, family) if r.table == table]
        keep = set()
        for chain, spec in saved.jumps(table):
            rule = Rule(table, chain, spec, 1)
            if rule in want and rule not in keep:
                keep.add(rule)
            else:
                sections[table].append(f"-D {chain} {spec}")
        sections[table] += [r.add_line() for r in want if r not in keep]
        sections[table] += [f"-A {r.chain} {r.spec}" for r in rules if r.table == table]
    return render(sections)


def _split_by_presence(rules: list[Rule], saved: Saved) -> tuple[list[Rule], list[Rule]]:
    """(rules already in the tables, rules missing), counting duplicates."""
    present = saved.counts()
    there, missing = [], []
    for rule in rules:
        key = (rule.table, rule.chain, rule.spec)
        if present[key] > 0:
            present[key] -= 1
            there.append(rule)
        else:
            missing.append(rule)
    return there, missing


def add_script(rules: list[Rule], saved: Saved) -> str:
    """Add the rules that are not there yet (adding is idempotent)."""
    sections: dict[str, list[str]] = collections.defaultdict(list)
    for rule in _split_by_presence(rules, saved)[1]:
        sections[rule.table].append(rule.add_line())
    return render(sections, ADD_ORDER)


def remove_script(rules: list[Rule], saved: Saved) -> str:
    """Delete the rules that are there; missing ones are skipped."""
    sections: dict[str, list[str]] = collections.defaultdict(list)
    for rule in _split_by_presence(rules, saved)[0]:
        sections[rule.table].append(rule.delete_line())
    return render(sections, REMOVE_ORDER)


def add_network_script(
    net: NetworkRules, userland_proxy: bool, saved: Saved, family: int = 4
) -> str:
    return add_script(network_rules(net, userland_proxy, family), saved)


def remove_network_script(net: NetworkRules, saved: Saved, family: int = 4) -> str:
    """Whatever rules this bridge has, whichever flags and mode wrote them."""
    rules: list[Rule] = []
    for internal in (False, True):
        variant = dataclasses.replace(net, internal=internal, masquerade=True, routed=())
        for rule in network_rules(variant, userland_proxy=False, family=family):
            if rule not in rules:
                rules.append(rule)
    return remove_script(rules, saved)


def _port_plan(ports: list[PortRule], saved: Saved, present: bool, family: int = 4) -> list[Rule]:
    """The rules of the ports (of `family`) whose DNAT rule is there
    (present=True) or is not. The ACCEPT and hairpin rules of two ports to the
    same container port are equal: each port owns one copy of them."""
    counts = saved.counts()
    out = []
    for port in ports_of(ports, family):
        rules = port_rules(port, family)
        key = (rules[0].table, rules[0].chain, rules[0].spec)
        if (counts[key] > 0) == present:
            out += rules
            # A port listed twice: the second sees what the first did.
            counts[key] += -1 if present else 1
    return out


def add_ports_script(ports: list[PortRule], saved: Saved, family: int = 4) -> str:
    rules = _port_plan(ports, saved, present=False, family=family)
    sections: dict[str, list[str]] = collections.defaultdict(list)
    for rule in rules:
        sections[rule.table].append(rule.add_line())
    return render(sections, ADD_ORDER)


def remove_ports_script(ports: list[PortRule], saved: Saved, family: int = 4) -> str:
    return remove_script(_port_plan(ports, saved, present=True, family=family), saved)


def teardown_script(saved: Saved) -> str:
    """Delete the jumps into our chains, then flush and delete the chains."""
    sections: dict[str, list[str]] = {}
    for table, chains in OUR_CHAINS.items():
        ours = [c for c in chains if saved.has_chain(table, c)]
        lines = [f"-D {chain} {spec}" for chain, spec in saved.jumps(table)]
        lines += [f"-F {c}" for c in ours] + [f"-X {c}" for c in ours]
        sections[table] = lines
    return render(sections, REMOVE_ORDER)


# -- the check: our chains against the desired state ------------------------------


def expected_rules(
    state: DesiredState, userland_proxy: bool, tunnel: Tunnel | None = None, family: int = 4
) -> collections.Counter[tuple[str, str, str]]:
    """Every (table, chain, spec) sync() would write for `state` in one
    family's tables, jumps included."""
    rules = jump_rules(userland_proxy, tunnel, family) + skeleton_rules(
        tunnel, vtep_set(state.vteps, tunnel), family
    )
    nets = state.networks.values()
    rules += [r for n in nets for r in network_rules(n, userland_proxy, family)]
    rules += [r for p in ports_of(state.ports.values(), family) for r in port_rules(p, family)]
    return collections.Counter((r.table, r.chain, r.spec) for r in rules)


def drift(saved: Saved, want: collections.Counter[tuple[str, str, str]]) -> list[str]:
    """How iptables-save's view of our chains and jumps differs from `want`
    (as multisets: a rule moved within its chain is not seen)."""
    out = [
        f"chain {table} {chain} is missing"
        for table, chains in OUR_CHAINS.items()
        for chain in chains
        if not saved.has_chain(table, chain)
    ]
    have: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for table, rules in saved.rules.items():
        ours = OUR_CHAINS.get(table, ())
        jumps = set(saved.jumps(table))
        for chain, spec in rules:
            if chain in ours or (chain, spec) in jumps:
                have[(table, chain, spec)] += 1
    if missing := want - have:
        out.append(f"{sum(missing.values())} rule(s) missing, e.g. {_show(missing)}")
    if extra := have - want:
        out.append(f"{sum(extra.values())} rule(s) not ours, e.g. {_show(extra)}")
    return out


def _show(rules: collections.Counter[tuple[str, str, str]]) -> str:
    table, chain, spec = min(rules)
    return f"-t {table} -A {chain} {spec}"


# -- the backend -----------------------------------------------------------------


class IptablesFirewall(Firewall):
    """Both families' tables: every change is made in the IPv4 tables and
    then the IPv6 ones (a failure in between is repaired by the next check)."""

    commands: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = COMMANDS

    def __init__(self, userland_proxy: bool = True) -> None:
        super().__init__(userland_proxy)
        # A kernel booted with ipv6.disable=1 has no ip6tables tables to write.
        self.families = FAMILIES if Path("/proc/sys/net/ipv6").exists() else (4,)
        self._generation = Generation()
        self._verified_generation: int | None = None
        self._nft_based: bool | None = None
        self._expected: tuple[object, dict[int, collections.Counter[tuple[str, str, str]]]] | None
        self._expected = None

    def _exec(self, argv: tuple[str, ...], stdin: str | None = None) -> str:
        try:
            proc = subprocess.run(
                list(argv), input=stdin, capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise IptablesError(f"{argv[0]}: {exc}") from None
        if proc.returncode != 0:
            raise IptablesError(
                proc.stderr.strip() or f"{argv[0]} failed with status {proc.returncode}"
            )
        return proc.stdout

    def run(self, script: str, family: int = 4) -> None:
        """One (ip6)iptables-restore run (each table section is one transaction)."""
        if script:
            self._exec(self.commands[family][0], script)

    def saved(self, family: int = 4) -> Saved:
        return parse_save(self._exec(self.commands[family][1]))

    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        for family in self.families:
            saved = self.saved(family)
            if _tunnel_of(self.tunnel, family) is not None and self.desired.vteps is None:
                # Before the cluster store is read: the previous daemon's set.
                self.desired.set_vteps(saved_vteps(saved) | self.known_vteps)
            vteps = self.accepted_vteps() if self.tunnel is not None else set()
            script = sync_script(
                networks, ports, self.userland_proxy, saved, self.tunnel, vteps, family
            )
            self.run(script, family)
        self.desired.replace(networks, ports)

    def set_vteps(self, vteps: set[str]) -> None:
        before = self.accepted_vteps()
        self.desired.set_vteps(vteps)
        if self.tunnel is None or not self.desired.applied:
            return  # the next sync writes it
        family = family_of_ip(self.tunnel.local_ip)
        try:
            self.run(vteps_script(before, self.accepted_vteps(), self.saved(family)), family)
        except IptablesError:
            # Our chain was changed under us: rebuild all of it from the model.
            self.check()

    def add_network(self, net: NetworkRules) -> None:
        for family in self.families:
            self.run(add_network_script(net, self.userland_proxy, self.saved(family), family),
                     family)  # fmt: skip
        self.desired.add_network(net)

    def remove_network(self, net: NetworkRules) -> None:
        for family in self.families:
            self.run(remove_network_script(net, self.saved(family), family), family)
        self.desired.remove_network(net)

    def add_ports(self, rules: list[PortRule]) -> None:
        for family in {family_of_ip(r.container_ip) for r in rules}:
            self.run(add_ports_script(rules, self.saved(family), family), family)
        if rules:
            self.desired.add_ports(rules)

    def remove_ports(self, rules: list[PortRule]) -> None:
        for family in {family_of_ip(r.container_ip) for r in rules}:
            self.run(remove_ports_script(rules, self.saved(family), family), family)
        if rules:
            self.desired.remove_ports(rules)

    def drift(self) -> list[str]:
        # Cost, measured on the 2-CPU dev VM with 1,000 published ports (3,000
        # rules): with iptables-nft, while the nftables ruleset generation has
        # not moved since the last match, one netlink query (0.3 ms).
        # Otherwise (and always with legacy iptables, which has no generation)
        # iptables-save and its parsing (85-100 ms) and a multiset compare with
        # the expected rules (cached; 50 ms to rebuild after a change), and
        # as much again for ip6tables (few rules without IPv6 networks).
        generation = self._generation() if self._on_nftables() else None
        if generation is not None and generation == self._verified_generation:
            return []
        key = (self.desired.version, self.userland_proxy, self.tunnel)
        if self._expected is None or self._expected[0] != key:
            want = {
                f: expected_rules(self.desired, self.userland_proxy, self.tunnel, f)
                for f in self.families
            }
            self._expected = (key, want)
        problems = []
        for family in self.families:
            found = drift(self.saved(family), self._expected[1][family])
            problems += [f"IPv{family}: {p}" if family != 4 else p for p in found]
        # Read before iptables-save: a later change moves the generation on.
        self._verified_generation = None if problems else generation
        return problems

    def _on_nftables(self) -> bool:
        """Whether our iptables-save is iptables-nft (its rules are nftables
        rules, so the ruleset generation covers them)."""
        if self._nft_based is None:
            saves = [self.commands[f][1][0] for f in self.families]
            self._nft_based = all("nf_tables" in self._exec((save, "--version")) for save in saves)
        return self._nft_based

    def teardown(self) -> None:
        for family in self.families:
            self.run(teardown_script(self.saved(family)), family)
        self.desired.clear()

    def dump(self) -> str:
        dumps = {f: dump_text(self._exec(self.commands[f][1])) for f in self.families}
        return dumps[4] + "".join(f"# ip6tables\n{d}" for f, d in dumps.items() if f != 4 and d)
