"""What `pontoon topology` draws: this host's networks, namespaces, bridges,
veths, VXLAN links and published ports (the pictures the seed drew by hand)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from pontoon import model

IFF_LOOPBACK = 0x8

if TYPE_CHECKING:
    from pontoon.daemon.service import Service


async def topology(svc: Service) -> dict[str, Any]:
    host = {
        "id": svc.cluster.host_id if svc.cluster is not None else "",
        "vtep": svc.kernel.overlay.vtep if svc.kernel.overlay is not None else "",
        "socket": str(svc.config.socket),
        # Who serves a published port depends on it (see cli/topology.py).
        "userland_proxy": svc.config.userland_proxy,
        "links": await svc.kernel.call(host_links, svc.kernel.ipr),
    }
    networks = []
    for net in sorted(svc.networks.values(), key=lambda n: n.name):
        local = [ep for ep in svc.endpoints.values() if ep.network_id == net.id]
        if net.driver == "overlay" and not local and not net.gateway_bridge:
            networks.append(_network(svc, net, [], False))
            continue
        networks.append(_network(svc, net, local, True))
    containers = [
        {
            "name": c.name,
            "id": c.id[:12],
            "sandbox": c.sandbox,
            "ports": [
                {
                    "host": f"{p.host_ip}:{p.host_port}",
                    "container": p.container_port,
                    "proto": p.proto,
                    # Where DNAT (or the proxy) sends it, and through which bridge.
                    "container_ip": rule.container_ip if rule else "",
                    "bridge": rule.bridge if rule else "",
                }
                for p, rule in zip(c.ports, _padded(svc.port_rules(c), len(c.ports)), strict=True)
            ],
        }
        for c in svc.containers.values()
        if c.state == model.RUNNING
    ]
    return {"host": host, "networks": networks, "containers": containers}


def _network(svc: Service, net: model.Network, local: list[model.Endpoint], here: bool) -> dict:
    info: dict[str, Any] = {
        "name": net.name,
        "driver": net.driver,
        "subnet": net.subnet,
        "gateway": net.gateway,
        "internal": net.internal,
        "present": here,
        "endpoints": [
            {
                "container": ep.container_name,
                "ifname": ep.ifname,
                "ip": ep.ip,
                "mac": ep.mac,
                "host_ifname": ep.host_ifname,
            }
            for ep in local
        ],
    }
    if net.driver == "overlay" and svc.kernel.overlay is not None:
        from pontoon.drivers.overlay import BRIDGE, vxlan_name

        info.update(
            namespace=str(svc.kernel.overlay.namespace(net)),
            bridge=BRIDGE,
            vxlan=vxlan_name(net),
            vni=net.vni,
            peers=[
                {"container": ep.container_name, "ip": ep.ip, "vtep": ep.vtep}
                for ep in (svc.cluster.remote.values() if svc.cluster is not None else [])
                if ep.network_id == net.id
            ],
        )
    else:
        info["bridge"] = net.bridge
    return info


def _padded(items: list[Any], size: int) -> list[Any]:
    return items + [None] * (size - len(items))


def host_links(ipr: Any) -> list[dict[str, Any]]:
    """The host's own interfaces and IPv4 addresses, as `ip -br addr` shows
    them (the picture starts where a packet enters). Runs on the kernel thread."""
    links = list(ipr.get_links())
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
    addresses: dict[int, list[str]] = {}
    for addr in ipr.get_addr(family=socket.AF_INET):
        addresses.setdefault(addr["index"], []).append(
            f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
        )
    out = []
    for link in sorted(links, key=lambda link: link["index"]):
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
        out.append(
            {
                "name": names[link["index"]],
                "kind": kind or ("loopback" if link["flags"] & IFF_LOOPBACK else "device"),
                "state": str(link.get_attr("IFLA_OPERSTATE") or "").lower(),
                "addresses": addresses.get(link["index"], []),
                "master": names.get(link.get_attr("IFLA_MASTER"), ""),
            }
        )
    return out
