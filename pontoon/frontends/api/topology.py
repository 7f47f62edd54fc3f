"""What `pontoon topology` draws: this host's networks, namespaces, bridges,
veths, tunnels and published ports (the pictures the seed drew by hand)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pontoon.core import model

IFF_LOOPBACK = 0x8
SCOPE_LINK = 253  # RT_SCOPE_LINK: fe80::/64, which every IPv6 device has

if TYPE_CHECKING:
    from pontoon.daemon.config import DaemonConfig
    from pontoon.engine.engine import Engine
    from pontoon.runtime.containers import Runtime


async def topology(engine: Engine, runtime: Runtime, config: DaemonConfig) -> dict[str, Any]:
    host = {
        "id": engine.cluster.host_id if engine.cluster is not None else "",
        "vtep": engine.drivers.ctx.vtep,
        "socket": str(config.socket or ""),
        # Who serves a published port depends on it (see cli/topology.py).
        "userland_proxy": config.userland_proxy,
        "links": await engine.kernel.call(host_links, engine.kernel.ipr),
    }
    networks = []
    for net in sorted(engine.state.networks.values(), key=lambda n: n.name):
        local = engine.state.on_network(net.id)
        networks.append(await _network(engine, net, local))
    containers = [
        {
            "name": c.name,
            "id": c.id[:12],
            "owner": model.OWNER_PONTOON,
            "sandbox": c.sandbox,
            "ports": [
                _port(p, rule, engine.ports.backend(att, p))
                for att in runtime.attachments(c)
                for p, rule in engine.ports.pairs(att)
            ],
        }
        for c in runtime.containers.values()
        if c.state == model.RUNNING
    ]
    return {"host": host, "networks": networks, "containers": containers + _other_owners(engine)}


def _other_owners(engine: Engine) -> list[dict[str, Any]]:
    """Namespaces attached for other owners (CNI runtimes, dockerd): no
    pontoon container, but endpoints and published ports all the same."""
    owners: dict[str, dict[str, Any]] = {}
    for att in engine.state.attachments.values():
        if att.owner.kind == model.OWNER_PONTOON:
            continue
        entry = owners.setdefault(att.owner.key, {
            "name": att.owner.name or att.owner.id[:12], "id": att.owner.id[:12],
            "owner": att.owner.kind, "sandbox": att.netns, "ports": [],
        })  # fmt: skip
        entry["ports"] += [
            _port(p, rule, engine.ports.backend(att, p)) for p, rule in engine.ports.pairs(att)
        ]
    return list(owners.values())


async def _network(engine: Engine, net: model.Network, local: list[model.Attachment]) -> dict:
    driver = engine.drivers.of(net)
    here = bool(local) or driver.capabilities.scope != "global" or net.gateway_bridge
    info: dict[str, Any] = {
        "name": net.name,
        "driver": net.driver,
        "subnet": ", ".join(s.subnet for s in net.subnets),
        "gateway": ", ".join(s.gateway for s in net.subnets),
        "internal": net.internal,
        "present": here,
        "endpoints": [
            {
                "container": att.owner.name or att.owner.id[:12],
                "owner": att.owner.kind,
                "owner_id": att.owner.id,
                "ifname": att.ifname,
                "ip": ", ".join(att.ips),
                "mac": att.mac,
                "host_ifname": att.host_ifname,
            }
            for att in local
        ],
    }
    if not here:
        return info
    described = await engine.kernel.call(driver.describe_network, net)
    overlay = described.get("Overlay") or {}
    if overlay:
        info.update(
            namespace=overlay["Namespace"],
            bridge=overlay["Bridge"],
            vxlan=overlay["VXLAN"],
            vni=net.vni,
            peers=[
                {"container": p.name, "ip": ", ".join(p.ips), "vtep": p.vtep}
                for p in engine.state.remote_on(net.id)
            ],
        )
    elif net.bridge:
        info["bridge"] = net.bridge
    else:
        info.update({k.lower(): v for k, v in described.items() if isinstance(v, str)})
    return info


def _port(p: model.PortMapping, rule: Any, backend: str) -> dict[str, Any]:
    host = f"[{p.host_ip}]" if ":" in p.host_ip else p.host_ip
    return {
        "host": f"{host}:{p.host_port}",
        "container": p.container_port,
        "proto": p.proto,
        # Where DNAT sends it (or, with no rule of its family, the proxy: an
        # IPv6 binding of an IPv4-only container), and through which bridge.
        "container_ip": rule.container_ip if rule else backend,
        "bridge": rule.bridge if rule else "",
        "kernel_nat": rule is not None,
    }


def host_links(ipr: Any) -> list[dict[str, Any]]:
    """The host's own interfaces and addresses of both families (not the
    link-local ones every IPv6 device has), as `ip -br addr` shows them (the
    picture starts where a packet enters). Runs on the kernel thread."""
    links = list(ipr.get_links())
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
    addresses: dict[int, list[str]] = {}
    for addr in ipr.get_addr():
        if addr["scope"] == SCOPE_LINK:
            continue
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
