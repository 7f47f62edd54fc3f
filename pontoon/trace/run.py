"""Running a trace inside the daemon: resolve the two ends, watch, probe,
collect, explain."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import NetlinkError

from pontoon.core import addresses
from pontoon.core.model import Attachment, Network, Peer
from pontoon.errors import InvalidArgument, NotFound, os_error_text
from pontoon.firewall.nft.trace import TABLE
from pontoon.trace import probe, remote
from pontoon.trace.inventory import Inventory, Member
from pontoon.trace.monitor import FlowMatch, Monitor, TraceEvent

if TYPE_CHECKING:
    # Only for types: the etcd client it imports costs ~20 MB.
    from pontoon.cluster.agent import ClusterAgent

PROTOS = ("icmp", "tcp", "udp")
BASE_HOOKS = {
    # our table
    "guard": "prerouting", "prerouting": "prerouting", "output": "output",
    "forward": "forward", "postrouting": "postrouting", "input": "input",
    # iptables(-nft) built-ins
    "PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward",
    "OUTPUT": "output", "POSTROUTING": "postrouting",
}  # fmt: skip


@dataclasses.dataclass
class Point:
    """One end of a trace."""

    kind: str  # container | host | netns | address
    label: str
    ns: Path | None = None  # where a source sends from (None: the daemon's namespace)
    ip: str = ""
    port: int = 0
    container: Member | None = None
    endpoint: Attachment | Peer | None = None
    remote: bool = False  # an overlay endpoint on another host


def parse_target(text: str, proto: str) -> tuple[str, int, str]:
    """NAME | NAME:PORT | IP[:PORT] | host:PORT, each with an optional /PROTO."""
    body, _, suffix = text.partition("/")
    if suffix:
        if suffix not in PROTOS:
            raise InvalidArgument(f"unknown protocol {suffix!r}: use icmp, tcp or udp")
        proto = suffix
    name, port_text = _split_port(body, text)
    port = 0
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InvalidArgument(f"invalid port {port_text!r} in {text!r}")
        port = int(port_text)
    proto = proto or ("tcp" if port else "icmp")
    if proto != "icmp" and not port:
        raise InvalidArgument(f"a {proto} trace needs a port: {name}:PORT/{proto}")
    return name, port, proto


def _split_port(body: str, text: str) -> tuple[str, str]:
    """NAME[:PORT], IPV4[:PORT], IPV6, or [IPV6]:PORT -> (name, port text)."""
    if body.startswith("["):
        address, close, rest = body[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise InvalidArgument(f"invalid target {text!r}: use [IPV6]:PORT")
        return address, rest[1:]
    if body.count(":") > 1:  # a bare IPv6 address: its colons are not a port
        return body, ""
    name, _, port_text = body.rpartition(":") if ":" in body else (body, "", "")
    return name, port_text


def _container_point(inv: Inventory, name: str, family: int = 0) -> Point | None:
    member = inv.member(name)
    if member is not None:
        return Point("container", member.name, member.netns, container=member)
    peer = inv.remote(name)
    if peer is not None:
        return Point("container", name, ip=_ip(peer, family), endpoint=peer, remote=True)
    return None


def _ip(item: Attachment | Peer, family: int = 0) -> str:
    """The endpoint's address of `family`; with 0 (unsaid), IPv4 when it has
    one, else its IPv6 address (an IPv6-only network)."""
    for wanted in (family,) if family else addresses.FAMILIES:
        ip = next((ip for ip in item.ips if addresses.family_of(ip) == wanted), "")
        if ip:
            return ip
    return ""


def resolve_source(inv: Inventory, text: str) -> Point:
    if text == "host":
        return Point("host", "host")
    if text.startswith("netns:"):
        path = Path("/run/netns") / text.removeprefix("netns:")
        if not path.exists():
            raise NotFound(f"no network namespace {text.removeprefix('netns:')!r} in /run/netns")
        return Point("netns", text, path)
    point = _container_point(inv, text)
    if point is None and (found := inv.member_with_ip(text)) is not None:
        # An address of a local endpoint (a CNI runtime's containers are
        # known to their users by it): the member that owns it.
        member = found[0]
        point = Point("container", member.name, member.netns, container=member)
    if point is None or point.remote:
        raise NotFound(f"no running container {text!r} on this host")
    return point


def resolve_target(
    inv: Inventory, src: Point, text: str, proto: str, host_ip: str, family: int = 0
) -> tuple[Point, str]:
    name, port, proto = parse_target(text, proto)
    if name == "host":
        return Point("host", f"host:{port}", ip=host_ip, port=port), proto
    try:
        address = str(ipaddress.ip_address(name))
        return Point("address", address, ip=address, port=port), proto
    except ValueError:
        pass
    point = _container_point(inv, name, family)
    if point is None:
        raise NotFound(f"no running container {name!r} known to this host")
    point.port = port
    if point.remote:
        return point, proto
    point.endpoint = _shared_endpoint(inv, src, point.container)
    point.ip = _ip(point.endpoint, family)
    if not point.ip:
        raise NotFound(f"container {name} has no IPv{family} address on that network")
    return point, proto


def _shared_endpoint(inv: Inventory, src: Point, dst: Member | None) -> Attachment:
    assert dst is not None
    mine = dst.attachments
    if src.container is not None:
        theirs = {ep.network_id for ep in src.container.attachments}
        for ep in mine:
            if ep.network_id in theirs:
                return ep
    if not mine:
        raise NotFound(f"container {dst.name} has no address")
    return mine[0]


def host_address(inv: Inventory, family: int = 4) -> str:
    """The address of this host's interface with the default route of
    `family` (a route lookup only; nothing is sent), "" when it has none.
    Runs on the kernel thread."""
    try:
        routes = inv.kernel.ipr.route("get", dst=addresses.documentation_address(family))
    except NetlinkError as exc:
        if exc.code == errno.ENETUNREACH:
            return ""
        raise InvalidArgument(f"cannot pick this host's address: {os_error_text(exc)}") from None
    return next((str(r.get("RTA_PREFSRC")) for r in routes if r.get("RTA_PREFSRC")), "")


def _container_gateway(inv: Inventory, src: Point, family: int = 4) -> str:
    """The host as a container sees it: the gateway of its default route."""
    if src.container is None:
        return ""
    eps = src.container.attachments
    return next(
        (g for ep in eps if ep.default_route for g in ep.gateways
         if addresses.family_of(g) == family),
        "",
    )  # fmt: skip


async def _host_ip(inv: Inventory, src: Point, target: str, proto: str, family: int) -> str:
    """`--to host:PORT`: the default route's address; on a host without a
    default route (a laptop offline, a CI sandbox) a container source still
    reaches the host at its gateway, as Docker's host-gateway does."""
    _, port, proto = parse_target(target, proto)
    family = family or 4
    address = await inv.kernel.call(host_address, inv, family) or _container_gateway(
        inv, src, family
    )
    if address:
        return address
    if src.kind == "host":
        instead = f"--to 127.0.0.1:{port}/{proto} (or another address of this host)"
    else:
        instead = f"--to IP:{port}/{proto} with an address of this host"
    raise InvalidArgument(
        f"cannot pick this host's address: it has no default route; give one instead: {instead}"
    )


# -- running ---------------------------------------------------------------


async def trace(
    inv: Inventory, source: str, target: str, proto: str = "", live: float = 0, family: int = 0
) -> dict[str, Any]:
    if family not in (0, *addresses.FAMILIES):
        raise InvalidArgument(f"invalid address family {family!r}: use 4 or 6")
    src = resolve_source(inv, source)
    host_ip = await _host_ip(inv, src, target, proto, family) if target.startswith("host:") else ""
    dst, proto = resolve_target(inv, src, target, proto, host_ip, family)
    if not 0 <= live <= 300:
        raise InvalidArgument("--live takes 1-300 seconds")
    mark = probe.new_mark(proto)
    vxlan_port = inv.vxlan_port
    # A route lookup first: a probe with no route would only come back as an
    # errno; this says where it cannot go and what to do instead.
    src_ip = await asyncio.to_thread(source_address, src, dst.ip)
    # The header names the address the probe leaves from: of the target's
    # family (`-6` on a dual-stack network), not the source's first one.
    src.ip = src_ip or src.ip
    if live:
        if not src_ip:
            raise NotFound(f"{src.label} has no source address toward {dst.ip}")
        match = FlowMatch(proto, live_src=src.ip, live_dport=dst.port, vxlan_port=vxlan_port)
    else:
        icmp = proto == "icmp"
        match = FlowMatch(
            proto, port=0 if icmp else mark, icmp_id=mark if icmp else 0, vxlan_port=vxlan_port
        )
    monitors = [Monitor(match, None, "host")]
    for net, ns in _namespaces_involved(inv, src, dst):
        monitors.append(Monitor(match, ns, f"{net.driver} {net.name}"))
    far = _far_end(inv, dst)
    before = await _proxy_stats(inv)
    try:
        for mon in monitors:
            await asyncio.to_thread(mon.start)
        if far is not None:
            far.watching = await remote.begin(far.agent, far.host, far.id, match)
        if live:
            await asyncio.sleep(live)  # watch real traffic, send nothing
            result: dict[str, Any] = {"live": live}
        else:
            result = await asyncio.to_thread(probe.run, src.ns, proto, dst.ip, dst.port, mark)
    finally:
        events = {}
        for mon in monitors:
            events[mon.label] = await asyncio.to_thread(mon.stop)
        if far is not None and far.watching:
            far_events = await remote.end(far.agent, far.host, far.id)
            far.reported = bool(far_events)
            events.update(far_events)
        elif far is not None:
            await remote.cancel(far.agent, far.host, far.id)
    after = await _proxy_stats(inv)
    if live:
        nat = await inv.kernel.call(_live_conntrack, proto, src.ip, dst.port)
        result["packets"] = sum(w["count"] for w in _group(events["host"]))
    else:
        nat = await inv.kernel.call(_conntrack, proto, mark)
    out = explain(inv, src, dst, proto, mark, result, events, nat, _proxy_used(before, after))
    if far is not None:
        out["remote_host"] = {"vtep": far.vtep, "reported": far.reported}
    return out


@dataclasses.dataclass
class FarEnd:
    """The other host of a cross-host overlay trace, which watches too."""

    agent: ClusterAgent
    host: str
    vtep: str
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    watching: bool = False
    reported: bool = False


def _far_end(inv: Inventory, dst: Point) -> FarEnd | None:
    if inv.cluster is None or not dst.remote or dst.endpoint is None or not dst.endpoint.host:
        return None
    return FarEnd(inv.cluster, dst.endpoint.host, dst.endpoint.vtep)


def source_address(src: Point, dst_ip: str) -> str:
    """The address a source uses toward `dst_ip` (a route lookup in its
    namespace), "" when the route names none."""
    from pontoon.sandbox import netns

    def lookup() -> str:
        with netns.iproute(None) as ipr:
            try:
                routes = ipr.route("get", dst=dst_ip)
            except NetlinkError as exc:
                raise InvalidArgument(
                    f"cannot route a probe from {src.label} to {dst_ip}: {os_error_text(exc)}; "
                    f"trace to an address {src.label} has a route to"
                ) from None
            for route in routes:
                if route.get("RTA_PREFSRC"):
                    return str(route.get("RTA_PREFSRC"))
        return ""

    return netns.run_in(src.ns, lookup) if src.ns is not None else lookup()


def _live_conntrack(proto: str, src_ip: str, dport: int) -> list[dict[str, Any]]:
    return [
        ct
        for ct in _all_conntrack(proto)
        if ct["orig"]["src"] == src_ip and (not dport or ct["orig"]["dport"] == dport)
    ][:1]


def _namespaces_involved(inv: Inventory, src: Point, dst: Point) -> list[tuple[Network, Path]]:
    """Namespaces of the ends' networks that drivers keep here (an overlay's)."""
    out: list[tuple[Network, Path]] = []
    for point in (src, dst):
        if point.container is not None:
            for ep in point.container.attachments:
                net = inv.network(ep.network_id)
                if net is None:
                    continue
                for ns in inv.namespaces_of(net):
                    if (net, ns) not in out:
                        out.append((net, ns))
    return out


async def _proxy_stats(inv: Inventory) -> dict[str, dict[str, int]]:
    if inv.proxy is None:
        return {}
    try:
        return await asyncio.to_thread(inv.proxy.stats)
    except Exception:
        return {}


def _proxy_used(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    for mapping_id, stats in after.items():
        was = before.get(mapping_id, {}).get("connections_total", 0)
        if stats.get("connections_total", 0) > was:
            return {"mapping": mapping_id, **stats}
    return None


def _conntrack(proto: str, mark: int) -> list[dict[str, Any]]:
    """The probe's conntrack entry: original and reply tuples show every NAT."""
    return [ct for ct in _all_conntrack(proto) if ct["mark"] == mark]


def _all_conntrack(proto: str) -> list[dict[str, Any]]:
    from pyroute2 import Conntrack

    # ICMP is protocol 1 over IPv4 and 58 (ICMPv6) over IPv6.
    numbers = {"tcp": (socket.IPPROTO_TCP,), "udp": (socket.IPPROTO_UDP,), "icmp": (1, 58)}[proto]
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):  # one family per dump
        out += _conntrack_of(family, numbers, proto, Conntrack)
    return out


def _conntrack_of(
    family: int, numbers: tuple[int, ...], proto: str, conntrack: Any
) -> list[dict[str, Any]]:
    out = []
    ct = conntrack(nfgen_family=family)
    try:
        for entry in ct.dump_entries():
            o, r = entry.tuple_orig, entry.tuple_reply
            if o.proto not in numbers:
                continue
            mark = o.sport if proto != "icmp" else getattr(o, "icmp_id", None) or o.sport
            out.append({
                "mark": mark,
                "orig": {"src": o.saddr, "dst": o.daddr, "sport": o.sport, "dport": o.dport},
                "reply": {"src": r.saddr, "dst": r.daddr, "sport": r.sport, "dport": r.dport},
                "status": entry.status_name() if hasattr(entry, "status_name") else "",
            })  # fmt: skip
    finally:
        ct.close()
    return out


# -- explaining ------------------------------------------------------------


def explain(
    inv: Inventory,
    src: Point,
    dst: Point,
    proto: str,
    mark: int,
    result: dict[str, Any],
    events: dict[str, list[TraceEvent]],
    conntrack: list[dict[str, Any]],
    proxy: dict[str, Any] | None,
) -> dict[str, Any]:
    hooks = {where: _group(evs) for where, evs in events.items()}
    nat = _nat(conntrack)
    dropped = _drop(hooks)
    if "live" in result:
        verdict = (f"observed {result['packets']} packet walks in {result['live']:g}s"
                   if result["packets"] else "no matching traffic seen")  # fmt: skip
        if dropped:
            verdict += f"; dropped in {dropped['where']}: {dropped['table']} {dropped['chain']}"
    elif result.get("ok"):
        verdict = "delivered"
    elif dropped:
        verdict = f"dropped in {dropped['where']}: {dropped['table']} {dropped['chain']}"
    else:
        verdict = f"no answer ({result.get('error', 'timeout')})"
    path = devices(inv, src, dst, hooks)
    path += _behind_nat(inv, conntrack, proxy, path)
    return {
        "from": _describe_point(src),
        "to": _describe_point(dst),
        "proto": proto,
        "probe": {"mark": mark, **result},
        "path": path,
        "netfilter": hooks,
        "nat": nat,
        "proxy": proxy,
        "verdict": verdict,
        "dropped": dropped,
    }


def _behind_nat(
    inv: Inventory,
    conntrack: list[dict[str, Any]],
    proxy: dict[str, Any] | None,
    path: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Where a DNAT (or the proxy) really delivered: the container behind a
    published port, as the seed found by reading DNAT targets."""
    target = ""
    hops: list[dict[str, Any]] = []
    if proxy is not None:
        target = str(proxy.get("backend_ip", "")) or _proxy_backend(inv, proxy["mapping"])
        hops.append({"kind": "userland proxy", "note": f"accepts, then connects to {target}"})
    elif conntrack and conntrack[0]["reply"]["src"] != conntrack[0]["orig"]["dst"]:
        target = conntrack[0]["reply"]["src"]
    if not target or any(h.get("ip") == target and h["kind"] == "container" for h in path):
        return hops
    found = inv.member_with_ip(target)
    if found is not None:
        side = _container_side(inv, found[0], found[1], outbound=False,
                               family=addresses.family_of(target))  # fmt: skip
        return hops + list(reversed(side))
    return hops


def _proxy_backend(inv: Inventory, mapping_id: str) -> str:
    return inv.proxy_backend(mapping_id)


def _describe_point(p: Point) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": p.kind, "name": p.label}
    if p.ip:
        out["ip"] = p.ip
    if p.port:
        out["port"] = p.port
    if p.remote and p.endpoint is not None:
        out["host_vtep"] = p.endpoint.vtep
    return out


def _group(events: list[TraceEvent]) -> list[dict[str, Any]]:
    """One entry per packet walk through the hooks (a new one starts where our
    marking chain sees a packet enter prerouting or output), then repeated
    walks of the same shape folded into a count: the first SYN, SYN-ACK, ...
    tell the story, the rest of the flow repeats it."""
    walks: list[dict[str, Any]] = []
    current: dict[str, dict[str, Any]] = {}  # trace id -> its walk in progress
    walk: dict[str, Any] | None
    for ev in events:
        if ev.kind == "packet" and ev.table == TABLE:
            walk = {"hook": ev.chain, "packet": dict(ev.fields), "seen": [], "chains": []}
            walks.append(walk)
            current[ev.id] = walk
            continue
        walk = current.get(ev.id)
        if walk is None and walks and ev.kind == "packet":
            # Past routing the kernel may give the same packet a new trace id
            # (forward after prerouting): it continues the latest walk.
            walk = current[ev.id] = walks[-1]
        if walk is None or ev.table == TABLE:
            continue
        hook = BASE_HOOKS.get(ev.chain) or (walk["chains"][-1]["hook"] if walk["chains"]
                                            else walk["hook"])  # fmt: skip
        if ev.kind == "packet":
            walk["seen"].append({"hook": hook, **ev.fields})
            continue
        walk["chains"].append({
            "hook": hook,
            "table": f"{ev.family} {ev.table}",
            "chain": ev.chain,
            "kind": ev.kind,
            "rule": ev.text,
            "verdict": ev.verdict,
        })  # fmt: skip
    return _fold(walks)


def _fold(walks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    index: dict[str, dict[str, Any]] = {}
    for walk in walks:
        pkt = walk["packet"]
        rewritten = next((p for p in walk["seen"] if p.get("daddr") != pkt.get("daddr")), None)
        if rewritten:
            walk["rewritten"] = {
                k: rewritten[k] for k in ("hook", "daddr", "dport") if k in rewritten
            }
        rules = [(c["chain"], c["rule"]) for c in walk["chains"]]
        ends = (pkt.get("saddr"), pkt.get("daddr"), pkt.get("iif"), pkt.get("oif"))
        shape = repr((walk["hook"], ends, rules))
        if shape in index:
            index[shape]["count"] += 1
            continue
        walk["count"] = 1
        del walk["seen"]
        index[shape] = walk
        out.append(walk)
    return out


def _nat(conntrack: list[dict[str, Any]]) -> list[dict[str, str]]:
    """DNAT/SNAT on the way out, un-SNAT/un-DNAT on the way back (the seed's
    "DNAT -> SNAT -> un-SNAT -> un-DNAT")."""
    out = []
    for ct in conntrack:
        o, r = ct["orig"], ct["reply"]
        if (r["src"], r["sport"]) != (o["dst"], o["dport"]):
            out.append({"step": "DNAT", "from": _at(o["dst"], o["dport"]),
                        "to": _at(r["src"], r["sport"])})  # fmt: skip
        if (r["dst"], r["dport"]) != (o["src"], o["sport"]):
            out.append({"step": "SNAT", "from": _at(o["src"], o["sport"]),
                        "to": _at(r["dst"], r["dport"])})  # fmt: skip
        if (r["dst"], r["dport"]) != (o["src"], o["sport"]):
            out.append({"step": "un-SNAT (reply)", "from": _at(r["dst"], r["dport"]),
                        "to": _at(o["src"], o["sport"])})  # fmt: skip
        if (r["src"], r["sport"]) != (o["dst"], o["dport"]):
            out.append({"step": "un-DNAT (reply)", "from": _at(r["src"], r["sport"]),
                        "to": _at(o["dst"], o["dport"])})  # fmt: skip
        if ct.get("status"):
            out.append({"step": "conntrack", "status": ct["status"]})
    return out


def _at(ip: str, port: int) -> str:
    """ADDR:PORT, an IPv6 address in brackets."""
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def _drop(hooks: dict[str, list[dict[str, Any]]]) -> dict[str, str] | None:
    for where, groups in hooks.items():
        for walk in groups:
            for chain in walk["chains"]:
                if chain["verdict"].startswith("drop") or chain["verdict"].startswith("reject"):
                    return {"where": where, "hook": chain["hook"], "table": chain["table"],
                            "chain": chain["chain"], "rule": chain["rule"]}  # fmt: skip
    return None


def devices(
    inv: Inventory, src: Point, dst: Point, hooks: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The devices a request crosses, source to destination."""
    path: list[dict[str, Any]] = []
    family = addresses.family_of(dst.ip) if dst.ip else 0
    if src.container is not None:
        ep = _source_endpoint(inv, src, dst)
        path += _container_side(inv, src.container, ep, outbound=True, family=family)
    else:
        first: dict[str, Any] = next((w["packet"] for w in hooks.get("host", [])), {})
        path.append({"kind": "namespace", "name": src.label})
        if first.get("iif") or first.get("oif"):
            way = "enters the host on" if first.get("iif") else "leaves through"
            path.append({"kind": "host", "device": first.get("iif") or first.get("oif"),
                         "note": way})  # fmt: skip
    if dst.remote and dst.endpoint is not None:
        path.append({"kind": "remote host", "vtep": dst.endpoint.vtep,
                     "note": "decapsulated there: vxlan -> br0 -> veth -> eth0"})  # fmt: skip
        path.append({"kind": "container", "name": dst.label, "ip": dst.ip,
                     "host": dst.endpoint.host})  # fmt: skip
    elif dst.container is not None and isinstance(dst.endpoint, Attachment):
        side = _container_side(inv, dst.container, dst.endpoint, outbound=False, family=family)
        path += list(reversed(side))
    else:
        path.append({"kind": "destination", "name": dst.label, "ip": dst.ip})
    # Two containers on one bridge: the bridge is crossed once.
    return [hop for i, hop in enumerate(path) if i == 0 or hop != path[i - 1]]


def _source_endpoint(inv: Inventory, src: Point, dst: Point) -> Attachment:
    assert src.container is not None
    eps = src.container.attachments
    if dst.endpoint is not None:
        for ep in eps:
            if ep.network_id == dst.endpoint.network_id:
                return ep
    return next((ep for ep in eps if ep.default_route), eps[0])


def _container_side(
    inv: Inventory, c: Member, ep: Attachment, outbound: bool, family: int = 0
) -> list[dict[str, Any]]:
    """The container's interface (its address of the traced family, when it
    has one) and the devices behind it."""
    net = inv.network(ep.network_id)
    ip = _ip(ep, family) or _ip(ep)
    hops: list[dict[str, Any]] = [
        {"kind": "container", "name": c.name, "device": ep.ifname, "ip": ip, "mac": ep.mac}
    ]
    if net is None:
        return hops
    return hops + inv.devices(net, ep)
