"""Docker-shaped JSON views of networks and containers (SPEC §4).

Field names follow `docker inspect` wherever Docker has one, so jq recipes
keep working; beyond Docker we add what the seed dug out by hand: per network
the interface name and the host-side veth with its ifindex.
"""

from __future__ import annotations

from typing import Any

from pontoon.model import Container, Endpoint, Network


def network_summary(net: Network, endpoint_count: int) -> dict[str, Any]:
    return {
        "Name": net.name,
        "Id": net.id,
        "Driver": net.driver,
        "Scope": net.scope,
        "Subnet": net.subnet,
        "Internal": net.internal,
        "Containers": endpoint_count,
    }


def network_view(net: Network, endpoints: list[Endpoint]) -> dict[str, Any]:
    ipam_config: dict[str, str] = {"Subnet": net.subnet, "Gateway": net.gateway}
    if net.ip_range:
        ipam_config["IPRange"] = net.ip_range
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": net.scope,
        "Driver": net.driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Config": [ipam_config]},
        "Internal": net.internal,
        "Options": net.options,
        "Labels": {},
        "Bridge": net.bridge,
        "MTU": net.mtu,
        "Containers": {
            ep.container_id: {
                "Name": ep.container_name,
                "EndpointID": ep.id,
                "MacAddress": ep.mac,
                "IPv4Address": f"{ep.ip}/{ep.prefixlen}",
                "Interface": ep.ifname,
                "HostInterface": ep.host_ifname,
                **({"Host": ep.host, "VTEP": ep.vtep} if ep.host else {}),
            }
            for ep in endpoints
        },
    }


def container_summary(
    c: Container, endpoints: list[Endpoint], networks: dict[str, Network]
) -> dict:
    return {
        "Id": c.id,
        "Name": c.name,
        "Command": c.command,
        "State": c.state,
        "ExitCode": c.exit_code,
        "Created": c.created,
        "Networks": [networks[ep.network_id].name for ep in endpoints if ep.network_id in networks],
        "IPs": [ep.ip for ep in endpoints],
    }


def container_view(
    c: Container,
    endpoints: list[Endpoint],
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
            "Gateway": ep.gateway if ep else "",
            "IPAddress": ep.ip if ep else "",
            "IPPrefixLen": ep.prefixlen if ep else 0,
            "MacAddress": ep.mac if ep else "",
            "Aliases": list(req.aliases),
            "IPAMConfig": {"IPv4Address": req.ip} if req.ip else None,
        }
        if ep:
            entry["Interface"] = ep.ifname
            entry.update(devices.get(ep.id, {}))
        nets[net.name] = entry
    default = next((nets[n.name] for n in networks.values() if n.default and n.name in nets), {})
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
            "MacAddress": default.get("MacAddress", ""),
            "Networks": nets,
        },
    }
