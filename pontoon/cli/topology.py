"""Rendering `pontoon topology`: text, Graphviz dot, or SVG through `dot`."""

from __future__ import annotations

import subprocess
from typing import Any


def _id(*parts: str) -> str:
    return '"' + ":".join(parts).replace('"', "'") + '"'


def to_text(hosts: dict[str, dict[str, Any]]) -> str:
    lines = []
    for hname, topo in hosts.items():
        vtep = topo["host"].get("vtep")
        lines.append(f"host {hname}" + (f" (VTEP {vtep})" if vtep else ""))
        for net in topo["networks"]:
            if not net["present"]:
                continue
            dev = net.get("bridge", "")
            where = f" in {net['namespace']}" if net.get("namespace") else ""
            extra = f" VNI {net['vni']} via {net['vxlan']}" if net.get("vni") else ""
            lines.append(f"  network {net['name']} ({net['driver']}, {net['subnet']}): "
                         f"bridge {dev}{where}{extra}")  # fmt: skip
            for ep in net["endpoints"]:
                lines.append(f"    {ep['container']}:{ep['ifname']} {ep['ip']} <-> "
                             f"{ep['host_ifname']}")  # fmt: skip
            for peer in net.get("peers", []):
                lines.append(f"    peer {peer['container']} {peer['ip']} at VTEP {peer['vtep']}")
        for c in topo["containers"]:
            for p in c["ports"]:
                lines.append(
                    f"  published {p['host']}/{p['proto']} -> {c['name']}:{p['container']}"
                )
    return "\n".join(lines)


def to_dot(hosts: dict[str, dict[str, Any]]) -> str:
    out = ["digraph pontoon {", "  rankdir=LR; node [fontname=Helvetica fontsize=10];"]
    vteps = {}
    for hname, topo in hosts.items():
        out.append(f"  subgraph {_id('cluster', hname)} {{ label={_id(hname)};")
        if topo["host"].get("vtep"):
            vteps[topo["host"]["vtep"]] = _id(hname, "underlay")
            out.append(f"    {_id(hname, 'underlay')} [label={_id('eth0 ' + topo['host']['vtep'])} "
                       "shape=box style=filled fillcolor=lightgrey];")  # fmt: skip
        for net in topo["networks"]:
            if not net["present"]:
                continue
            br = _id(hname, net["name"], "bridge")
            label = f"{net.get('bridge')}\\n{net['name']} {net['subnet']}"
            out.append(f"    {br} [label={_id(label)} shape=box style=rounded];")
            if net.get("vni"):
                vx = _id(hname, net["name"], "vxlan")
                out.append(f"    {vx} [label={_id(net['vxlan'] + ' VNI ' + str(net['vni']))} "
                           "shape=hexagon];")  # fmt: skip
                out.append(f"    {br} -> {vx} [dir=both];")
                out.append(f"    {vx} -> {_id(hname, 'underlay')} [style=dashed];")
            for ep in net["endpoints"]:
                ctr = _id(hname, "ctr", ep["container"])
                out.append(f"    {ctr} [label={_id(ep['container'])} shape=ellipse];")
                label = f"{ep['ifname']} {ep['ip']} / {ep['host_ifname']}"
                out.append(f"    {ctr} -> {br} [dir=both label={_id(label)}];")
        for c in topo["containers"]:
            for p in c["ports"]:
                port = _id(hname, "port", p["host"], p["proto"])
                out.append(f"    {port} [label={_id(p['host'] + '/' + p['proto'])} shape=note];")
                out.append(f"    {port} -> {_id(hname, 'ctr', c['name'])} "
                           f"[label={_id(':' + str(p['container']))}];")  # fmt: skip
        out.append("  }")
    done = set()
    for hname, topo in hosts.items():
        for net in topo["networks"]:
            for peer in net.get("peers", []):
                a, b = _id(hname, "underlay"), vteps.get(peer["vtep"])
                if b and (b, a) not in done and a != b:
                    done.add((a, b))
                    out.append(f"  {a} -> {b} [dir=both color=blue label={_id('VXLAN')}];")
    out.append("}")
    return "\n".join(out)


def to_svg(hosts: dict[str, dict[str, Any]]) -> str:
    proc = subprocess.run(["dot", "-Tsvg"], input=to_dot(hosts), capture_output=True, text=True,
                          check=True)  # fmt: skip
    return proc.stdout
