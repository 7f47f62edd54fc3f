"""What `pontoon topology` draws: this host's networks, namespaces, bridges,
veths, VXLAN links and published ports (the pictures the seed drew by hand)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pontoon import model

if TYPE_CHECKING:
    from pontoon.daemon.service import Service


async def topology(svc: Service) -> dict[str, Any]:
    host = {
        "id": svc.cluster.host_id if svc.cluster is not None else "",
        "vtep": svc.kernel.overlay.vtep if svc.kernel.overlay is not None else "",
        "socket": str(svc.config.socket),
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
                }
                for p in c.ports
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
