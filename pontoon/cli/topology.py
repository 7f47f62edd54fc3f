"""Rendering `pontoon topology`: text, Graphviz dot, or SVG through `dot`.

The picture answers "how does a packet get in?", as the seed's figures do:
the host's own links and addresses, each published port with where it
listens and who serves it (the kernel's DNAT or the userland proxy), then the
bridge, the host's vethXXX and the container's eth0 it reaches."""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any

import click

from pontoon.core.addresses import family_of

WILDCARDS = ("0.0.0.0", "::")
KERNEL_IN = "kernel DNAT (prerouting)"
KERNEL_OUT = "kernel DNAT (output)"
PROXY = "userland proxy"


def _id(*parts: str) -> str:
    return '"' + ":".join(parts).replace('"', "'") + '"'


def _ip(cidr: str) -> str:
    return cidr.split("/", 1)[0]


# -- facts shared by every format ------------------------------------------


def drawn_links(topo: dict[str, Any]) -> list[dict[str, Any]]:
    """The host's own links: not the networks' bridges nor the containers'
    veths (drawn as such), and only those up or with an address."""
    bridges = {net.get("bridge") for net in topo["networks"] if not net.get("namespace")}
    veths = {ep["host_ifname"] for net in topo["networks"] for ep in net["endpoints"]}
    return [
        link
        for link in topo["host"].get("links", [])
        if link["name"] not in bridges | veths
        and (link["addresses"] or link["state"] in ("up", "unknown"))
    ]


def entrances(topo: dict[str, Any], port: dict[str, Any]) -> list[dict[str, str]]:
    """Where a published port listens: each host address it covers, the link
    holding it, who serves a packet arriving there, and from where.

    The proxy only sees what the kernel leaves to it: the host's own
    connections to 127.0.0.0/8 (our output chain returns them in proxy mode).
    Everything else, containers' hairpin included, is DNAT in the kernel."""
    proxy_mode = bool(topo["host"].get("userland_proxy"))
    bound = port["host"].rpartition(":")[0].strip("[]")
    # No rule of the binding's family (`::` of an IPv4-only container): only
    # the proxy serves it, on every address.
    nat = port.get("kernel_nat", True)
    bridges = {
        net.get("bridge"): net["name"] for net in topo["networks"] if not net.get("namespace")
    }
    out = []
    for link in topo["host"].get("links", []):
        for cidr in link["addresses"]:
            address = _ip(cidr)
            # A port covers addresses of its own family (0.0.0.0: every IPv4 one).
            if bound not in (*WILDCARDS, address) or family_of(address) != family_of(bound):
                continue
            # IPv6 has no route_localnet: ::1 is the proxy's in both modes.
            loopback = ipaddress.ip_address(address).is_loopback
            if not nat or (loopback and family_of(address) == 6):
                if not proxy_mode:
                    continue  # kernel mode: nothing answers there
                served, source = PROXY, "this host" if loopback else "anyone"
            elif loopback:
                served, source = (PROXY if proxy_mode else KERNEL_OUT), "this host"
            elif link["name"] in bridges:
                served, source = KERNEL_IN, f"containers on {bridges[link['name']]} (hairpin)"
            else:
                served, source = KERNEL_IN, "outside"
            out.append({"link": link["name"], "address": address, "served_by": served,
                        "from": source})  # fmt: skip
    return out


def _target(topo: dict[str, Any], cname: str, port: dict[str, Any]) -> dict[str, Any] | None:
    """The endpoint a published port is delivered to."""
    for net in topo["networks"]:
        for ep in net["endpoints"]:
            if ep["container"] == cname and port.get("container_ip") in ep["ip"].split(", "):
                return {**ep, "network": net["name"]}
    return None


def _ports(topo: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["name"], p) for c in topo["containers"] for p in c["ports"]]


# -- text --------------------------------------------------------------------


def to_text(hosts: dict[str, dict[str, Any]]) -> str:
    lines = []
    for hname, topo in hosts.items():
        vtep = topo["host"].get("vtep")
        proxy = topo["host"].get("userland_proxy")
        mode = "" if proxy is None else f" (userland proxy {'on' if proxy else 'off'})"
        lines.append(f"host {hname}" + (f" (VTEP {vtep})" if vtep else "") + mode)
        for link in drawn_links(topo):
            lines.append(f"  link {link['name']} {' '.join(link['addresses']) or '(no address)'}")
        for net in topo["networks"]:
            if net["present"]:
                lines += _network_text(net)
        for cname, p in _ports(topo):
            lines += _port_text(topo, cname, p)
    return "\n".join(lines)


def _network_text(net: dict[str, Any]) -> list[str]:
    dev = net.get("bridge", "")
    where = f" in {net['namespace']}" if net.get("namespace") else ""
    extra = f" VNI {net['vni']} via {net['vxlan']}" if net.get("vni") else ""
    gateway = f" gateway {net['gateway']}" if net.get("gateway") else ""
    lines = [f"  network {net['name']} ({net['driver']}, {net['subnet']}): "
             f"bridge {dev}{where}{gateway}{extra}"]  # fmt: skip
    for ep in net["endpoints"]:
        lines.append(f"    {ep['container']}:{ep['ifname']} {ep['ip']} <-> "
                     f"{ep['host_ifname']} <-> {dev}{_owned_by(ep)}")  # fmt: skip
    for peer in net.get("peers", []):
        lines.append(f"    peer {peer['container']} {peer['ip']} at VTEP {peer['vtep']}")
    return lines


def _owned_by(ep: dict[str, Any]) -> str:
    """Who the endpoint is for, unless it is one of pontoon's own containers."""
    kind = ep.get("owner", "pontoon")
    return "" if kind == "pontoon" else f" ({kind} {ep['owner_id'][:12]})"


def _port_text(topo: dict[str, Any], cname: str, p: dict[str, Any]) -> list[str]:
    target = _target(topo, cname, p)
    where = f" ({target['ifname']} {target['ip']} via {p['bridge']})" if target else ""
    lines = [f"  published {p['host']}/{p['proto']} -> {cname}:{p['container']}{where}"]
    for way in entrances(topo, p):
        lines.append(f"    in at {way['address']} ({way['link']}) from {way['from']}: "
                     f"{way['served_by']}")  # fmt: skip
    return lines


# -- dot ---------------------------------------------------------------------


def to_dot(hosts: dict[str, dict[str, Any]]) -> str:
    out = [
        "digraph pontoon {",
        "  rankdir=LR;",
        "  node [fontname=Helvetica fontsize=10]; edge [fontname=Helvetica fontsize=9];",
    ]
    underlays: dict[str, str] = {}
    for hname, topo in hosts.items():
        out += _host_dot(hname, topo, underlays)
    out += _vxlan_dot(hosts, underlays)
    out.append("}")
    return "\n".join(out)


def _host_dot(hname: str, topo: dict[str, Any], underlays: dict[str, str]) -> list[str]:
    """Left to right, the way a packet comes in: the host's links, the
    published ports, the bridges, the host's veths, the containers' eths.
    Nodes first, each in its cluster; edges after, so no edge pulls a node
    into the wrong cluster."""
    proxy = topo["host"].get("userland_proxy")
    mode = "" if proxy is None else f" (userland proxy {'on' if proxy else 'off'})"
    nodes: list[str] = []
    edges: list[str] = []
    vtep = topo["host"].get("vtep", "")
    for link in drawn_links(topo):
        node = _id(hname, "link", link["name"])
        label = "\\n".join([link["name"], *link["addresses"]])
        nodes.append(f"{node} [label={_id(label)} shape=box style=filled fillcolor=lightgrey];")
        if vtep and any(_ip(a) == vtep for a in link["addresses"]):
            underlays[vtep] = node
    if vtep and vtep not in underlays:
        underlays[vtep] = _id(hname, "underlay")
        nodes.append(f"{underlays[vtep]} [label={_id('underlay ' + vtep)} shape=box "
                     "style=filled fillcolor=lightgrey];")  # fmt: skip
    bridges: dict[str, str] = {}
    for net in topo["networks"]:
        if net["present"] and not net.get("namespace"):
            bridges[net["bridge"]] = _bridge_node(hname, net, nodes)
            _veths_dot(hname, net, bridges[net["bridge"]], nodes, edges)
    for cname, p in _ports(topo):
        _port_dot(hname, topo, cname, p, bridges, nodes, edges)
    out = [f"  subgraph {_id('cluster', hname)} {{ label={_id(hname + mode)};",
           f"    subgraph {_id('cluster', hname, 'hostns')} {{ label={_id('host namespace')}; "
           "style=dashed;"]  # fmt: skip
    out += [f"      {line}" for line in nodes]
    out.append("    }")
    for net in topo["networks"]:
        if net["present"] and net.get("namespace"):
            out += _overlay_dot(hname, net, underlays.get(vtep, _id(hname, "underlay")), edges)
    out += _containers_dot(hname, topo, edges)
    out += [f"    {line}" for line in edges]
    out.append("  }")
    return out


def _bridge_node(hname: str, net: dict[str, Any], nodes: list[str]) -> str:
    node = _id(hname, "net", net["name"])
    gateway = f"\\ngateway {net['gateway']}" if net.get("gateway") else ""
    label = f"{net.get('bridge')}\\n{net['name']} {net['subnet']}{gateway}"
    nodes.append(f"{node} [label={_id(label)} shape=box style=rounded];")
    return node


def _veths_dot(
    hname: str, net: dict[str, Any], bridge: str, nodes: list[str], edges: list[str]
) -> None:
    """The seed's figure: bridge <-> host vethXXX <-> container eth0."""
    for ep in net["endpoints"]:
        veth = _id(hname, "veth", ep["host_ifname"])
        eth = _id(hname, "ctr", ep["container"], ep["ifname"])
        nodes.append(f"{veth} [label={_id(ep['host_ifname'])} shape=cds];")
        edges.append(f"{bridge} -> {veth} [dir=both label={_id('bridge port')}];")
        edges.append(f"{veth} -> {eth} [dir=both label={_id('veth pair')}];")


def _overlay_dot(hname: str, net: dict[str, Any], underlay: str, edges: list[str]) -> list[str]:
    ns = net["namespace"].rsplit("/", 1)[-1]
    nodes: list[str] = []
    bridge = _bridge_node(hname, net, nodes)
    vx = _id(hname, net["name"], "vxlan")
    nodes.append(f"{vx} [label={_id(net['vxlan'] + ' VNI ' + str(net['vni']))} shape=hexagon];")
    edges.append(f"{vx} -> {bridge} [dir=both];")
    edges.append(f"{underlay} -> {vx} [dir=both style=dashed label={_id('UDP encap')}];")
    _veths_dot(hname, net, bridge, nodes, edges)
    return [f"    subgraph {_id('cluster', hname, 'ns', net['name'])} {{ "
            f"label={_id('overlay namespace ' + ns)}; style=dashed;",
            *[f"      {line}" for line in nodes], "    }"]  # fmt: skip


def _containers_dot(hname: str, topo: dict[str, Any], edges: list[str]) -> list[str]:
    by_container: dict[str, list[dict[str, Any]]] = {}
    for net in topo["networks"]:
        if net["present"]:
            for ep in net["endpoints"]:
                by_container.setdefault(ep["container"], []).append(ep)
    out = []
    for cname, eps in by_container.items():
        out.append(f"    subgraph {_id('cluster', hname, 'ctr', cname)} {{ "
                   f"label={_id('container ' + cname)}; style=rounded;")  # fmt: skip
        for ep in sorted(eps, key=lambda e: e["ifname"]):
            node = _id(hname, "ctr", cname, ep["ifname"])
            label = f"{ep['ifname']}\\n{ep['ip']}"
            out.append(f"      {node} [label={_id(label)} shape=box];")
        out.append("    }")
    return out


def _port_dot(
    hname: str,
    topo: dict[str, Any],
    cname: str,
    p: dict[str, Any],
    bridges: dict[str, str],
    nodes: list[str],
    edges: list[str],
) -> None:
    """A published port: the links it listens on (and who serves each), then
    the bridge its DNAT routes to; containers' hairpin goes in its label."""
    node = _id(hname, "port", p["host"], p["proto"])
    ways = entrances(topo, p)
    hairpin = {w["served_by"] for w in ways if "hairpin" in w["from"]}
    label = f"{p['host']}/{p['proto']}"
    if hairpin:
        label += "\\nfrom containers (hairpin): " + ", ".join(sorted(hairpin))
    nodes.append(f"{node} [label={_id(label)} shape=cds style=filled fillcolor=lightyellow];")
    for way in ways:
        if "hairpin" in way["from"]:
            continue
        style = "dashed" if way["served_by"] == PROXY else "solid"
        text = f"{way['address']}: {way['served_by']}"
        edges.append(f"{_id(hname, 'link', way['link'])} -> {node} [label={_id(text)} "
                     f"style={style}];")  # fmt: skip
    target = _target(topo, cname, p)
    bridge = bridges.get(p.get("bridge", ""))
    if target is not None and bridge is not None:
        text = f"to {cname} {target['ip']}:{p['container']}"
        edges.append(f"{node} -> {bridge} [label={_id(text)} color=darkgreen];")


def _vxlan_dot(hosts: dict[str, dict[str, Any]], underlays: dict[str, str]) -> list[str]:
    out, done = [], set()
    for topo in hosts.values():
        mine = underlays.get(topo["host"].get("vtep", ""))
        for net in topo["networks"]:
            for peer in net.get("peers", []):
                theirs = underlays.get(peer["vtep"])
                if mine and theirs and mine != theirs and (theirs, mine) not in done:
                    done.add((mine, theirs))
                    out.append(f"  {mine} -> {theirs} [dir=both color=blue "
                               f"label={_id('VXLAN')}];")  # fmt: skip
    return out


def to_svg(hosts: dict[str, dict[str, Any]]) -> str:
    try:
        proc = subprocess.run(["dot", "-Tsvg"], input=to_dot(hosts), capture_output=True,
                              text=True, check=False)  # fmt: skip
    except FileNotFoundError:
        raise click.ClickException(
            "svg needs Graphviz's `dot` (apt-get install graphviz); --format dot prints its input"
        ) from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no message"])[0]
        raise click.ClickException(f"dot failed: {first}")
    return proc.stdout
