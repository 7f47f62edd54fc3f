"""Docker-shaped JSON views of networks and containers (SPEC §4).

Field names follow `docker inspect` wherever Docker has one, so jq recipes
keep working; beyond Docker we add what the seed dug out by hand: per network
the interface name and the host-side veth with its ifindex.
"""

from __future__ import annotations

from typing import Any

from pontoon.core import addresses
from pontoon.core.model import Attachment, Container, Network, NetworkRequest, Peer


def network_summary(net: Network, endpoint_count: int) -> dict[str, Any]:
    return {
        "Name": net.name,
        "Id": net.id,
        "Driver": net.driver,
        "Scope": net.scope,
        "Subnet": ", ".join(s.subnet for s in net.subnets),
        "Internal": net.internal,
        "Containers": endpoint_count,
    }


def _member(item: Attachment | Peer) -> dict[str, Any]:
    """One network member in Docker's shape (IPv4Address/IPv6Address)."""
    v4 = [a for a in item.addresses if addresses.family_of(a) == 4]
    v6 = [a for a in item.addresses if addresses.family_of(a) == 6]
    if isinstance(item, Peer):
        return {"Name": item.name, "EndpointID": item.id, "MacAddress": item.mac,
                "IPv4Address": v4[0] if v4 else "", "IPv6Address": v6[0] if v6 else "",
                "Interface": item.ifname, "HostInterface": item.host_ifname, "Host": item.host,
                "VTEP": item.vtep}  # fmt: skip
    return {
        "Name": item.owner.name,
        "Owner": {"Kind": item.owner.kind, "Id": item.owner.id, "Name": item.owner.name},
        "EndpointID": item.id,
        "MacAddress": item.mac,
        "IPv4Address": v4[0] if v4 else "",
        "IPv6Address": v6[0] if v6 else "",
        "Interface": item.ifname,
        "HostInterface": item.host_ifname,
        **({"Host": item.host, "VTEP": item.vtep} if item.host else {}),
    }


def network_view(net: Network, members: list[Attachment | Peer]) -> dict[str, Any]:
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": net.scope,
        "Driver": net.driver,
        "EnableIPv4": net.subnet_for(4) is not None,
        "EnableIPv6": net.subnet_for(6) is not None,
        "IPAM": {"Driver": "default", "Config": [sub.ipam_config() for sub in net.subnets]},
        "Internal": net.internal,
        "Options": net.options,
        "Labels": {},
        "Bridge": net.bridge,
        "MTU": net.mtu,
        "Containers": {
            (m.owner_id if isinstance(m, Peer) else m.owner.id): _member(m) for m in members
        },
    }


def attachment_view(att: Attachment, net: Network | None) -> dict[str, Any]:
    return {
        "Id": att.id,
        "Network": net.name if net else att.network_id,
        "NetworkID": att.network_id,
        "Owner": {"Kind": att.owner.kind, "Id": att.owner.id, "Name": att.owner.name},
        "Netns": att.netns,
        "Interface": att.ifname,
        "Addresses": list(att.addresses),
        "Gateways": list(att.gateways),
        "MacAddress": att.mac,
        "HostInterface": att.host_ifname,
        "Aliases": list(att.aliases),
        "DNSNames": list(att.dns_names),
        "DefaultRoute": att.default_route,
        "Ports": [p.to_dict() for p in att.ports],
        "Status": att.status,
    }


def container_summary(
    c: Container, endpoints: list[Attachment], networks: dict[str, Network]
) -> dict:
    return {
        "Id": c.id,
        "Name": c.name,
        "Command": c.command,
        "State": c.state,
        "ExitCode": c.exit_code,
        "Created": c.created,
        "Networks": [networks[ep.network_id].name for ep in endpoints if ep.network_id in networks],
        "IPs": [ip for ep in endpoints for ip in ep.ips],
    }


def container_view(
    c: Container,
    endpoints: list[Attachment],
    networks: dict[str, Network],
    devices: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    by_net = {ep.network_id: ep for ep in endpoints}
    nets: dict[str, Any] = {}
    for req in c.networks:
        net = networks.get(req.network_id)
        if net is None:
            continue
        ep = by_net.get(net.id)
        entry: dict[str, Any] = {
            "NetworkID": net.id,
            "EndpointID": ep.id if ep else "",
            **_addresses(ep),
            "MacAddress": ep.mac if ep else "",
            "Aliases": list(req.aliases),
            "IPAMConfig": _ipam_request(req),
        }
        if ep:
            entry["Interface"] = ep.ifname
            entry.update(devices.get(ep.id, {}))
        nets[net.name] = entry
    default: dict[str, Any] = next(
        (nets[n.name] for n in networks.values() if n.default and n.name in nets), {}
    )
    running = c.state == "running"
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in c.ports:
        bindings.setdefault(f"{p.container_port}/{p.proto}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""}
        )
    return {
        "Id": c.id,
        "Name": c.name,
        "Created": c.created,
        "Path": c.command[0],
        "Args": c.command[1:],
        "State": {
            "Status": c.state,
            "Running": running,
            "Pid": c.pid if running else 0,
            "ExitCode": c.exit_code if c.exit_code is not None else 0,
            "StartedAt": c.started_at,
            "FinishedAt": c.finished_at,
        },
        "Config": {"Hostname": c.hostname, "Cmd": c.command, "Env": c.env},
        "HostConfig": {"AutoRemove": c.auto_remove, "Dns": c.dns, "PortBindings": bindings},
        "NetworkSettings": {
            "SandboxKey": c.sandbox if running else "",
            "Ports": bindings if running else {},
            "IPAddress": default.get("IPAddress", ""),
            "Gateway": default.get("Gateway", ""),
            "GlobalIPv6Address": default.get("GlobalIPv6Address", ""),
            "GlobalIPv6PrefixLen": default.get("GlobalIPv6PrefixLen", 0),
            "IPv6Gateway": default.get("IPv6Gateway", ""),
            "MacAddress": default.get("MacAddress", ""),
            "Networks": nets,
        },
    }


def _ipam_request(req: NetworkRequest) -> dict[str, str] | None:
    """Docker's IPAMConfig: the fixed addresses asked for (--ip, --ip6), or null."""
    asked = {"IPv4Address": req.ip, "IPv6Address": req.ip6}
    return {k: v for k, v in asked.items() if v} or None


def _addresses(att: Attachment | None) -> dict[str, Any]:
    """Docker's per-network address fields, for both families."""
    out: dict[str, Any] = {
        "IPAddress": "", "IPPrefixLen": 0, "Gateway": "",
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPv6Gateway": "",
    }  # fmt: skip
    if att is None:
        return out
    gateways = {addresses.family_of(g): g for g in att.gateways}
    for interface in att.addresses:
        ip, plen = addresses.address_of(interface), addresses.prefixlen_of(interface)
        if addresses.family_of(ip) == 4 and not out["IPAddress"]:
            out.update(IPAddress=ip, IPPrefixLen=plen, Gateway=gateways.get(4, ""))
        elif addresses.family_of(ip) == 6 and not out["GlobalIPv6Address"]:
            out.update(
                GlobalIPv6Address=ip, GlobalIPv6PrefixLen=plen, IPv6Gateway=gateways.get(6, "")
            )
    return out
