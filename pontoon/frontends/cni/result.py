"""CNI results from pontoond's answer, in the shape each spec version wants.

The daemon's POST /attachments already answers in nearly CNI shape
(interfaces, ips with interface indexes and gateways, routes, dns). Here the
interfaces' sandbox becomes the runtime's CNI_NETNS (the daemon names its own
pin), a prevResult is kept in front, and 0.3.x/0.4.0 get `version` in ips."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from pontoon.frontends.cni.protocol import version_tuple


def from_daemon(answer: dict[str, Any], netns: str, dns: dict[str, Any]) -> dict[str, Any]:
    """The daemon's result as a 1.x result (without cniVersion). `dns` is the
    runtime's dns capability: its search domains and options are kept."""
    result: dict[str, Any] = {
        "interfaces": [_interface(i, netns) for i in answer.get("interfaces", [])],
        "ips": [dict(ip) for ip in answer.get("ips", [])],
        "routes": [dict(r) for r in answer.get("routes", [])],
    }
    resolver: dict[str, Any] = {}
    nameservers = answer.get("dns", {}).get("nameservers") or []
    if nameservers:
        resolver["nameservers"] = list(nameservers)
    if dns.get("searches"):
        resolver["search"] = list(dns["searches"])
    if dns.get("options"):
        resolver["options"] = list(dns["options"])
    if resolver:
        result["dns"] = resolver
    return result


def _interface(daemon: dict[str, Any], netns: str) -> dict[str, Any]:
    """A sandbox interface gets the runtime's CNI_NETNS (the daemon names its
    own pin); a host-side one (a veth's host end) has no sandbox."""
    out = {"name": daemon["name"]}
    if daemon.get("mac"):
        out["mac"] = daemon["mac"]
    if daemon.get("sandbox"):
        out["sandbox"] = netns
    return out


def merge(prev: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """A prevResult passed through, with what this plugin made after it."""
    if not prev:
        return ours
    out = normalize(prev)
    offset = len(out.get("interfaces", []))
    out.setdefault("interfaces", []).extend(ours.get("interfaces", []))
    for ip in ours.get("ips", []):
        moved = dict(ip)
        if "interface" in moved:
            moved["interface"] += offset
        out.setdefault("ips", []).append(moved)
    out.setdefault("routes", []).extend(ours.get("routes", []))
    theirs, mine = out.get("dns") or {}, ours.get("dns") or {}
    if mine:
        merged = dict(theirs)
        for key in ("nameservers", "search", "options"):
            values = list(dict.fromkeys([*mine.get(key, []), *theirs.get(key, [])]))
            if values:
                merged[key] = values
        out["dns"] = merged
    return out


def normalize(result: dict[str, Any]) -> dict[str, Any]:
    """A copy in 1.x shape: no cniVersion, no `version` in ips."""
    out = copy.deepcopy(result)
    out.pop("cniVersion", None)
    for ip in out.get("ips", []):
        ip.pop("version", None)
    return out


def for_version(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A 1.x-shaped result as `version` has it, cniVersion first."""
    out: dict[str, Any] = {"cniVersion": version, **normalize(result)}
    if version_tuple(version) < (1, 0):
        for ip in out.get("ips", []):
            ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
    return out


def addresses_of(result: dict[str, Any] | None, ifname: str) -> set[str]:
    """The addresses a result gave the sandbox interface `ifname` (for CHECK)."""
    if not result:
        return set()
    interfaces = result.get("interfaces") or []
    wanted = {
        index
        for index, i in enumerate(interfaces)
        if isinstance(i, dict) and i.get("name") == ifname and i.get("sandbox")
    }
    return {
        ip["address"]
        for ip in result.get("ips") or []
        if isinstance(ip, dict) and ip.get("interface") in wanted and "address" in ip
    }
