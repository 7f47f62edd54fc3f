"""Human-readable trace output: the seed's LOG-rule analysis, as one listing."""

from __future__ import annotations

from typing import Any


def _point(p: dict[str, Any]) -> str:
    where = p["name"]
    if p.get("ip"):
        where += f" ({p['ip']}{':' + str(p['port']) if p.get('port') else ''})"
    return where


def _hop(h: dict[str, Any]) -> str:
    kind = h["kind"]
    if kind == "container":
        extra = f" {h['device']}" if h.get("device") else ""
        return f"container {h['name']}{extra} {h.get('ip', '')} {h.get('mac', '')}".rstrip()
    if kind == "vxlan":
        return (f"vxlan {h['device']} VNI {h['vni']} (encapsulated from VTEP {h['local_vtep']}, "
                f"UDP {h['udp_port']})")  # fmt: skip
    if kind == "userland proxy":
        return f"userland proxy (pontoon.proxy): {h['note']}"
    if kind == "remote host":
        return f"underlay -> host {h['vtep']}: {h['note']}"
    parts = [kind, h.get("device") or h.get("name", "")]
    if h.get("namespace") and h["namespace"] != "host":
        parts.append(f"in {h['namespace']}")
    if h.get("network"):
        parts.append(f"(network {h['network']})")
    if h.get("note"):
        parts.append(f"- {h['note']}")
    return " ".join(p for p in parts if p)


def _walk(walk: dict[str, Any]) -> list[str]:
    pkt = walk["packet"]
    src = pkt.get("saddr", "?") + (f":{pkt['sport']}" if pkt.get("sport") else "")
    dst = pkt.get("daddr", "?") + (f":{pkt['dport']}" if pkt.get("dport") else "")
    devs = " ".join(f"{k} {pkt[k]}" for k in ("iif", "oif") if pkt.get(k))
    what = pkt.get("tcp_flags") or pkt.get("icmp_type") or pkt.get("proto", "")
    times = f"  (x{walk['count']})" if walk["count"] > 1 else ""
    lines = [f"  {walk['hook']:<11} {devs:<22} {src} -> {dst} {what}{times}"]
    for ch in walk["chains"]:
        verdict = f" -> {ch['verdict']}" if ch["verdict"] else ""
        lines.append(f"      {ch['hook']:<11} {ch['table']} {ch['chain']}: {ch['rule']}{verdict}")
    if walk.get("rewritten"):
        rw = walk["rewritten"]
        lines.append(f"      destination now {rw.get('daddr')}:{rw.get('dport', '')} "
                     f"(seen at {rw.get('hook')})")  # fmt: skip
    return lines


def render(result: dict[str, Any]) -> str:
    lines = [
        f"trace {result['proto']} from {_point(result['from'])} to {_point(result['to'])}"
        f" (probe mark {result['probe']['mark']})",
        "",
        "devices:",
    ]
    lines += [f"  {i}. {_hop(h)}" for i, h in enumerate(result["path"], 1)]
    for where, groups in result["netfilter"].items():
        if not groups:
            continue
        lines += ["", f"netfilter in {where} namespace:"]
        for walk in groups:
            lines += _walk(walk)
    far = result.get("remote_host")
    if far is not None and not far["reported"]:
        lines += ["", f"remote host {far['vtep']}: did not report (its side is not shown)"]
    if result["nat"]:
        lines += ["", "NAT (conntrack):"]
        for step in result["nat"]:
            if step["step"] == "conntrack":
                lines.append(f"  state {step['status']}")
            else:
                lines.append(f"  {step['step']:<16} {step['from']} -> {step['to']}")
    proxy = result.get("proxy")
    lines += [
        "",
        "userland proxy: " + (f"carried it ({proxy['mapping']})" if proxy else "not used"),
        f"verdict: {result['verdict']}"
        + (f" in {result['probe'].get('ms')} ms" if result["probe"].get("ok") else ""),
    ]
    return "\n".join(lines)
