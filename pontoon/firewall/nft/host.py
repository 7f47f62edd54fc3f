"""nftables backend: one table, `inet pontoon`, written through nft/writer.py's
long-lived context on the kernel thread, and checked against what we last
applied (check()). Family `inet`: the per-bridge isolation chains see IPv4 and
IPv6 alike; what differs by family (loopback, NAT subnets, port maps) says
`ip` or `ip6` in its rule. Release 1 and 2 wrote `ip pontoon`: a sync removes
it in the same transaction.

Layout (docs/architecture.md has the packet walk):

    guard (raw prerouting)   iifname != "lo" ip daddr 127.0.0.0/8 drop
                             [overlays: udp dport VXLAN ip saddr != @vteps
                                        fib daddr type != unicast counter drop
                                        ip daddr VTEP udp dport VXLAN notrack]
    untrack (raw output)     [overlays: ip saddr VTEP udp dport VXLAN notrack]
    prerouting (dstnat)      fib daddr type local jump portmap
    output (dstnat)          [proxy mode: ip daddr 127.0.0.0/8 return]
                             ip6 daddr ::1 return   (no route_localnet in IPv6)
                             fib daddr type local jump portmap
    portmap                  dnat ip to daddr . proto . port via @portmap_ip
                             dnat ip to proto . port via @portmap_any
                             dnat ip6 to ... @portmap6_ip, @portmap6_any
    forward (filter)         iifname vmap @egress  -> chain from-<bridge>
                             oifname @internal drop
    from-<bridge>            oifname "<bridge>" accept (same network)
                             [drop, for --internal]
                             ct status dnat accept     (published ports)
                             oifname @bridges drop     (isolation)
    postrouting (srcnat)     ct status dnat saddr . daddr @self_hairpin masquerade
                             ct status dnat ip6 saddr . daddr @self_hairpin6 masquerade
                             [kernel mode: ip saddr 127.0.0.0/8 oifname @bridges masquerade]
                             ip saddr @nat_subnets oifname != @bridges masquerade
                             ip6 saddr @nat_subnets6 oifname != @bridges masquerade

With overlays, `vteps` holds the cluster's VTEP addresses (from the cluster
store, ours included): VXLAN from anywhere else is dropped before the VXLAN
socket decapsulates it (the class of CVE-2023-28840/-28841/-28842).

Per-network and per-port state lives in set and map elements (hash lookups,
so the cost of a packet does not grow with the number of networks or
published ports), and every change is one transaction. Only names we generate
(bridge devices) and parsed addresses and numbers are written into rules.

The check reads the table back as JSON and compares it with the desired
state (DesiredState in firewall/base.py): the table, its chains (hook and
policy), the number of rules in each chain, and every set and map element.
A rule replaced in place by one of the same count is not seen; everything a
flush, a deleted table, chain, rule or element, or an added one leaves is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import Hashable, Iterable

from pontoon.core.addresses import FAMILIES, IPNetwork
from pontoon.firewall.base import (
    DesiredState,
    Firewall,
    NetworkRules,
    PortRule,
    Tunnel,
    vtep_set,
)
from pontoon.firewall.nft.writer import HostContext, NftError
from pontoon.portmap.spec import is_wildcard

log = logging.getLogger(__name__)

TABLE = "pontoon"
FAMILY = "inet"
T = f"{FAMILY} {TABLE}"
LEGACY_T = f"ip {TABLE}"  # what releases before IPv6 wrote

SETS = {
    "bridges": "set bridges { type ifname; }",
    "internal": "set internal { type ifname; }",
    "nat_subnets": "set nat_subnets { type ipv4_addr; flags interval; }",
    "nat_subnets6": "set nat_subnets6 { type ipv6_addr; flags interval; }",
    "egress": "map egress { type ifname : verdict; }",
    "portmap_ip": "map portmap_ip "
    "{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }",
    "portmap_any": "map portmap_any { type inet_proto . inet_service : ipv4_addr . inet_service; }",
    "self_hairpin": "set self_hairpin { type ipv4_addr . ipv4_addr; }",
    "portmap6_ip": "map portmap6_ip "
    "{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }",
    "portmap6_any": "map portmap6_any "
    "{ type inet_proto . inet_service : ipv6_addr . inet_service; }",
    "self_hairpin6": "set self_hairpin6 { type ipv6_addr . ipv6_addr; }",
}
# Per family: (map by host address, map for every address, hairpin set).
PORT_SETS = {
    4: ("portmap_ip", "portmap_any", "self_hairpin"),
    6: ("portmap6_ip", "portmap6_any", "self_hairpin6"),
}
NAT_SETS = {4: "nat_subnets", 6: "nat_subnets6"}
# Only on a host with overlays (a Tunnel): the VTEPs VXLAN is accepted from.
VTEPS = "vteps"
# The set and the rules matching it take the family of our VTEP address (the
# underlay's): ip/ipv4_addr or ip6/ipv6_addr.
VTEP_FAMILY = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}


def _tunnel_family(tunnel: Tunnel) -> tuple[str, str]:
    return VTEP_FAMILY[ipaddress.ip_address(tunnel.local_ip).version]


def set_decls(tunnel: Tunnel | None) -> dict[str, str]:
    if tunnel is None:
        return dict(SETS)
    return {**SETS, VTEPS: f"set {VTEPS} {{ type {_tunnel_family(tunnel)[1]}; }}"}


__all__ = ["NftError", "NftablesFirewall", "network_commands", "skeleton"]


@dataclasses.dataclass(frozen=True)
class Chain:
    """One chain of the skeleton; `hook` is empty for a regular chain."""

    name: str
    rules: tuple[str, ...]
    hook: str = ""  # e.g. "filter prerouting raw" (type, hook, priority)

    def render(self) -> str:
        lines = []
        if self.hook:
            kind, hook, priority = self.hook.split()
            lines.append(f"type {kind} hook {hook} priority {priority}; policy accept;")
        lines += self.rules
        body = "".join(f"        {line}\n" for line in lines)
        return f"    chain {self.name} {{\n{body}    }}\n"


def skeleton_chains(userland_proxy: bool, tunnel: Tunnel | None = None) -> list[Chain]:
    # With the proxy, the host's own connections to 127.0.0.1 reach it; without,
    # they are NATed too, which needs route_localnet on bridges and a masquerade
    # of the loopback source. The guard keeps other hosts from abusing that
    # (the 2020 route_localnet class of bugs) in both modes.
    loopback_output = ("ip daddr 127.0.0.0/8 return",) if userland_proxy else ()
    loopback_masq = () if userland_proxy else ("ip saddr 127.0.0.0/8 oifname @bridges masquerade",)
    guard = ['iifname != "lo" ip daddr 127.0.0.0/8 drop']
    chains = []
    if tunnel is not None:
        # VXLAN between VTEPs untracked; nothing without overlays, so other
        # hosts pay for no extra hook.
        vtep, port = ipaddress.ip_address(tunnel.local_ip), int(tunnel.udp_port)
        ip = _tunnel_family(tunnel)[0]
        # The VXLAN socket listens on every local address (and takes
        # broadcasts), so anything for this host that is not to be forwarded
        # counts, not only the VTEP address. Members' packets skip the fib
        # lookup: the set is tested first.
        guard.append(
            f"udp dport {port} {ip} saddr != @{VTEPS} fib daddr type != unicast counter drop"
        )
        guard.append(f"{ip} daddr {vtep} udp dport {port} notrack")
        chains.append(
            Chain("untrack", (f"{ip} saddr {vtep} udp dport {port} notrack",), "filter output raw")
        )
    local = "fib daddr type local jump portmap"
    return [
        Chain("guard", tuple(guard), "filter prerouting raw"),
        *chains,
        Chain("prerouting", (local,), "nat prerouting dstnat"),
        # ::1 is never NATed: a packet from ::1 may not leave lo. The proxy
        # serves it (in kernel mode nothing does, as with Docker).
        Chain("output", (*loopback_output, "ip6 daddr ::1 return", local), "nat output -100"),
        Chain(
            "portmap",
            (
                "dnat ip to ip daddr . meta l4proto . th dport map @portmap_ip",
                "dnat ip to meta l4proto . th dport map @portmap_any",
                "dnat ip6 to ip6 daddr . meta l4proto . th dport map @portmap6_ip",
                "dnat ip6 to meta l4proto . th dport map @portmap6_any",
            ),
        ),
        Chain(
            "forward", ("iifname vmap @egress", "oifname @internal drop"), "filter forward filter"
        ),
        Chain(
            "postrouting",
            (
                "ct status dnat ip saddr . ip daddr @self_hairpin masquerade",
                "ct status dnat ip6 saddr . ip6 daddr @self_hairpin6 masquerade",
                *loopback_masq,
                "ip saddr @nat_subnets oifname != @bridges masquerade",
                "ip6 saddr @nat_subnets6 oifname != @bridges masquerade",
            ),
            "nat postrouting srcnat",
        ),
    ]


def skeleton(userland_proxy: bool, tunnel: Tunnel | None = None) -> str:
    sets = "".join(f"    {decl}\n" for decl in set_decls(tunnel).values())
    chains = "".join(c.render() for c in skeleton_chains(userland_proxy, tunnel))
    return f"\ntable {T} {{\n{sets}{chains}}}\n"


def _chain(bridge: str) -> str:
    return f"from-{bridge}"


def _quote(ifname: str) -> str:
    # Device names are generated or validated to [A-Za-z0-9_.-]; quoting keeps
    # names such as "br-1" from being read as expressions.
    return f'"{ifname}"'


def network_chain_rules(net: NetworkRules) -> list[str]:
    rules = [f"oifname {_quote(net.bridge)} accept"] if net.icc else []
    if net.internal:
        rules.append("drop")
    return [*rules, "ct status dnat accept", "oifname @bridges drop"]


def _nat_elements(net: NetworkRules) -> list[tuple[str, IPNetwork]]:
    """(set, subnet) for every subnet of the network that is masqueraded."""
    return [
        (NAT_SETS[family], ipaddress.ip_network(subnet))
        for family in FAMILIES
        for subnet in net.nat_subnets(family)
    ]


def network_commands(net: NetworkRules) -> list[str]:
    chain = _chain(net.bridge)
    br = _quote(net.bridge)
    cmds = [f"add chain {T} {chain}", f"flush chain {T} {chain}"]
    cmds += [f"add rule {T} {chain} {rule}" for rule in network_chain_rules(net)]
    cmds += [
        f"add element {T} bridges {{ {br} }}",
        f"add element {T} egress {{ {br} : jump {chain} }}",
    ]
    if net.internal:
        cmds.append(f"add element {T} internal {{ {br} }}")
    cmds += [f"add element {T} {name} {{ {subnet} }}" for name, subnet in _nat_elements(net)]
    return cmds


def remove_network_commands(net: NetworkRules) -> list[str]:
    chain = _chain(net.bridge)
    br = _quote(net.bridge)
    cmds = [
        f"delete element {T} egress {{ {br} }}",
        f"delete element {T} bridges {{ {br} }}",
    ]
    if net.internal:
        cmds.append(f"delete element {T} internal {{ {br} }}")
    cmds += [f"delete element {T} {name} {{ {subnet} }}" for name, subnet in _nat_elements(net)]
    cmds.append(f"delete chain {T} {chain}")
    return cmds


def _family(rule: PortRule) -> int:
    """A rule's family is its container address's; the host's must match."""
    family = ipaddress.ip_address(rule.container_ip).version
    if not is_wildcard(rule.host_ip) and ipaddress.ip_address(rule.host_ip).version != family:
        raise ValueError(f"port rule mixes families: {rule.host_ip} -> {rule.container_ip}")
    return family


def _port_elements(rule: PortRule) -> tuple[str, str]:
    """(map name, element key) for one published port."""
    proto, port = rule.proto, int(rule.host_port)
    by_ip, every, _ = PORT_SETS[_family(rule)]
    if is_wildcard(rule.host_ip):
        return every, f"{proto} . {port}"
    return by_ip, f"{ipaddress.ip_address(rule.host_ip)} . {proto} . {port}"


def _hairpin(addresses: Iterable[str]) -> list[tuple[str, str]]:
    """(set name, element) of each container address's self-hairpin pair."""
    addrs = sorted({ipaddress.ip_address(a) for a in addresses}, key=lambda a: (a.version, a))
    return [(PORT_SETS[a.version][2], f"{a} . {a}") for a in addrs]


def port_commands(rules: list[PortRule]) -> list[str]:
    cmds = []
    for rule in rules:
        name, key = _port_elements(rule)
        target = f"{ipaddress.ip_address(rule.container_ip)} . {int(rule.container_port)}"
        cmds.append(f"add element {T} {name} {{ {key} : {target} }}")
    for name, pair in _hairpin(r.container_ip for r in rules):
        cmds.append(f"add element {T} {name} {{ {pair} }}")
    return cmds


def remove_port_commands(rules: list[PortRule], keep: Iterable[str] = ()) -> list[str]:
    """Delete the ports' elements, and the hairpin element of every container
    address in them except those in `keep` (addresses other ports still use)."""
    cmds = []
    for rule in rules:
        name, key = _port_elements(rule)
        cmds.append(f"delete element {T} {name} {{ {key} }}")
    kept = set(keep)
    for name, pair in _hairpin(r.container_ip for r in rules if r.container_ip not in kept):
        cmds.append(f"delete element {T} {name} {{ {pair} }}")
    return cmds


def vtep_commands(old: Iterable[str], new: Iterable[str]) -> list[str]:
    """Make the `vteps` set go from `old` to `new` (both parsed addresses):
    one add and one delete, run as one transaction."""
    before, after = set(old), set(new)
    cmds = []
    if added := after - before:
        cmds.append(f"add element {T} {VTEPS} {{ {_addresses(added)} }}")
    if gone := before - after:
        cmds.append(f"delete element {T} {VTEPS} {{ {_addresses(gone)} }}")
    return cmds


def _addresses(addrs: Iterable[str]) -> str:
    parsed = {ipaddress.ip_address(a) for a in addrs}
    return ", ".join(str(a) for a in sorted(parsed, key=lambda a: (a.version, a)))


def vteps_of(objects: list[dict[str, object]]) -> set[str]:
    """The `vteps` set's elements in nft's JSON of our table (a previous
    daemon's), or none."""
    for obj in objects:
        s = obj.get("set")
        if isinstance(s, dict) and s.get("name") == VTEPS:
            return {str(ipaddress.ip_address(e)) for e in s.get("elem", []) if isinstance(e, str)}
    return set()


# -- the desired table, as the check compares it ---------------------------------

Element = Hashable


@dataclasses.dataclass
class TableView:
    """What matters of our table, from the kernel's JSON or from the model:
    chains with (hook, policy, rule count), and the elements of every set."""

    chains: dict[str, tuple[str, str, int]] = dataclasses.field(default_factory=dict)
    elements: dict[str, set[Element]] = dataclasses.field(default_factory=dict)


def expected_view(state: DesiredState, userland_proxy: bool, tunnel: Tunnel | None) -> TableView:
    view = TableView(elements={name: set() for name in set_decls(tunnel)})
    for chain in skeleton_chains(userland_proxy, tunnel):
        hook = chain.hook.split()[1] if chain.hook else ""
        view.chains[chain.name] = (hook, "accept" if hook else "", len(chain.rules))
    el = view.elements
    for net in state.networks.values():
        view.chains[_chain(net.bridge)] = ("", "", len(network_chain_rules(net)))
        el["bridges"].add(net.bridge)
        el["egress"].add((net.bridge, ("jump", _chain(net.bridge))))
        if net.internal:
            el["internal"].add(net.bridge)
        for name, subnet in _nat_elements(net):
            el[name].add(_prefix(str(subnet.network_address), subnet.prefixlen))
    for rule in state.ports.values():
        by_ip, every, hairpin = PORT_SETS[_family(rule)]
        target = (str(ipaddress.ip_address(rule.container_ip)), int(rule.container_port))
        if is_wildcard(rule.host_ip):
            el[every].add(((rule.proto, int(rule.host_port)), target))
        else:
            key = (str(ipaddress.ip_address(rule.host_ip)), rule.proto, int(rule.host_port))
            el[by_ip].add((key, target))
        el[hairpin].add((target[0], target[0]))
    if tunnel is not None:
        el[VTEPS] = set(vtep_set(state.vteps, tunnel))
    return view


def _prefix(addr: str, length: int) -> str:
    # nft prints a one-address element of an interval set (/32, /128) bare.
    return addr if length == ipaddress.ip_address(addr).max_prefixlen else f"{addr}/{length}"


def _element(value: object) -> Element:
    """One element of nft's JSON, made hashable and comparable with the model."""
    if isinstance(value, list):  # a map element: [key, data]
        return tuple(_element(v) for v in value)
    if not isinstance(value, dict):
        return value
    if "elem" in value:  # an element with options (timeout, comment)
        return _element(value["elem"]["val"])
    if "concat" in value:
        return tuple(_element(v) for v in value["concat"])
    if "prefix" in value:
        return _prefix(value["prefix"]["addr"], value["prefix"]["len"])
    if "range" in value:
        return ("range", *(_element(v) for v in value["range"]))
    if "jump" in value:
        return ("jump", value["jump"]["target"])
    if "goto" in value:
        return ("goto", value["goto"]["target"])
    return repr(sorted(value.items()))  # anything else: unequal to all of ours


def kernel_view(objects: list[dict[str, object]]) -> TableView | None:
    """Our table as `nft -j list table` shows it; None when there is none."""
    view = TableView()
    found = False
    counts: dict[str, int] = {}
    for obj in objects:
        if "table" in obj:
            found = True
        elif "chain" in obj:
            c = obj["chain"]
            view.chains[c["name"]] = (c.get("hook", ""), c.get("policy", ""), 0)  # type: ignore[index,attr-defined]
        elif "set" in obj or "map" in obj:
            s = obj.get("set") or obj["map"]
            view.elements[s["name"]] = {_element(e) for e in s.get("elem", [])}  # type: ignore[index,attr-defined]
        elif "rule" in obj:
            chain = obj["rule"]["chain"]  # type: ignore[index]
            counts[chain] = counts.get(chain, 0) + 1
    for name, (hook, policy, _) in view.chains.items():
        view.chains[name] = (hook, policy, counts.get(name, 0))
    return view if found else None


def differences(want: TableView, have: TableView | None) -> list[str]:
    """What is wrong with `have`, in words, for the log."""
    if have is None:
        return [f"table {T} is missing"]
    out = []
    for name, (hook, policy, rules) in want.chains.items():
        got = have.chains.get(name)
        if got is None:
            out.append(f"chain {name} is missing")
        elif got[:2] != (hook, policy):
            out.append(f"chain {name} hooks {got[0] or '-'} policy {got[1] or '-'}")
        elif got[2] != rules:
            out.append(f"chain {name} has {got[2]} rules, not {rules}")
    out += [f"chain {name} is not ours" for name in have.chains.keys() - want.chains.keys()]
    for name, elements in want.elements.items():
        got_elements = have.elements.get(name)
        if got_elements is None:
            out.append(f"set {name} is missing")
            continue
        if missing := elements - got_elements:
            out.append(f"{name}: {len(missing)} element(s) missing, e.g. {_sample(missing)}")
        if extra := got_elements - elements:
            out.append(f"{name}: {len(extra)} element(s) not ours, e.g. {_sample(extra)}")
    out += [f"set {name} is not ours" for name in have.elements.keys() - want.elements.keys()]
    return out


def _sample(elements: set[Element]) -> str:
    return str(min(elements, key=str))


# -- the backend ---------------------------------------------------------------------


class NftablesFirewall(Firewall):
    def __init__(self, userland_proxy: bool = True) -> None:
        super().__init__(userland_proxy)
        self._nft = HostContext()
        # The ruleset generation at which the table last matched the model.
        self._verified_generation = -1
        self._expected: tuple[tuple[int, bool, Tunnel | None], TableView] | None = None

    def run(self, script: str) -> str:
        """Run a script as one transaction: all of it applies or none does."""
        return self._nft.run(script)

    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        # "add; delete; define" replaces our table atomically whether or not it
        # existed: packets see either the old ruleset or the new one.
        if self.tunnel is not None and self.desired.vteps is None:
            self._adopt_vteps()
        lines = [f"add table {LEGACY_T}", f"delete table {LEGACY_T}"]  # an older release's
        lines += [f"add table {T}", f"delete table {T}", skeleton(self.userland_proxy, self.tunnel)]
        for net in networks:
            lines += network_commands(net)
        lines += port_commands(ports)
        if self.tunnel is not None:
            lines += vtep_commands((), self.accepted_vteps())
        self.run("\n".join(lines))
        self.desired.replace(networks, ports)

    def _adopt_vteps(self) -> None:
        """At start-up, before the cluster store has been read: keep the set
        the previous daemon programmed (from the store), so a restart does not
        cut the overlay off until the first resync, nor open it."""
        found: set[str] = set()
        for table in (T, LEGACY_T):  # ours, or an older release's (an upgrade)
            try:
                found = vteps_of(self._nft.read_json(f"list set {table} {VTEPS}"))
                break
            except NftError:
                continue  # no table or no set yet: our own VTEP only
        if found:
            log.info("keeping the %d VTEPs of the previous ruleset until the cluster store "
                     "is read", len(found))  # fmt: skip
        self.desired.set_vteps(found | self.known_vteps)

    def set_vteps(self, vteps: set[str]) -> None:
        before = self.accepted_vteps()
        self.desired.set_vteps(vteps)
        cmds = vtep_commands(before, self.accepted_vteps())
        if self.tunnel is None or not self.desired.applied or not cmds:
            return  # the next sync writes it
        try:
            self.run("\n".join(cmds))
        except NftError:
            # An element someone else removed or added: rebuild from the model.
            self.check()

    def _change(self, cmds: list[str]) -> None:
        """An incremental change; when it fails because something else broke
        the table since the last check, repair the table first and retry."""
        try:
            self.run("\n".join(cmds))
        except NftError:
            if not self.check():
                raise
            self.run("\n".join(cmds))

    def add_network(self, net: NetworkRules) -> None:
        self._change(network_commands(net))
        self.desired.add_network(net)

    def remove_network(self, net: NetworkRules) -> None:
        self._change(remove_network_commands(net))
        self.desired.remove_network(net)

    def add_ports(self, rules: list[PortRule]) -> None:
        if rules:
            self._change(port_commands(rules))
            self.desired.add_ports(rules)

    def remove_ports(self, rules: list[PortRule]) -> None:
        if not rules:
            return
        self.desired.remove_ports(rules)
        cmds = remove_port_commands(rules, keep=self.desired.container_ips())
        try:
            self.run("\n".join(cmds))
        except NftError:
            # Some element was already gone: remove the rest one by one.
            for cmd in cmds:
                with contextlib.suppress(NftError):
                    self.run(cmd)

    def drift(self) -> list[str]:
        # Cost, measured on the 2-CPU dev VM with 1,000 published ports: while
        # no nftables transaction has been committed in this namespace since
        # the last match, one generation query (0.3 ms). Otherwise the table is
        # read back as JSON (libnftables about 47 ms, json.loads 7 ms, our view
        # of it 7 ms) and compared with the model's view (cached; 14 ms to
        # rebuild after a change): 60-100 ms with the machine's noise, at most
        # once per check interval, on the kernel thread.
        generation = self._nft.generation()
        if generation == self._verified_generation:
            return []
        try:
            objects = self._nft.read_json(f"list table {T}")
        except NftError:
            objects = []  # no such table
        problems = differences(self._expected_view(), kernel_view(objects))
        # Read before the table: a change made after it bumps the generation
        # past this one, so the next check compares again.
        self._verified_generation = -1 if problems else generation
        return problems

    def _expected_view(self) -> TableView:
        key = (self.desired.version, self.userland_proxy, self.tunnel)
        if self._expected is None or self._expected[0] != key:
            view = expected_view(self.desired, self.userland_proxy, self.tunnel)
            self._expected = (key, view)
        return self._expected[1]

    def teardown(self) -> None:
        self.run(f"add table {T}\ndelete table {T}\nadd table {LEGACY_T}\ndelete table {LEGACY_T}")
        self.desired.clear()

    def dump(self) -> str:
        return self.run(f"list table {T}")
