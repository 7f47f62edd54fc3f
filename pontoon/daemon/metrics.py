"""Prometheus text metrics on --metrics-addr (loopback by default)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pontoon import __version__
from pontoon.core import addresses, model
from pontoon.store.timed import TimedStore

if TYPE_CHECKING:
    from pontoon.engine.engine import Engine
    from pontoon.runtime.containers import Runtime


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        label = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        self.lines.append(f"{name}{{{label}}} {value}" if label else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class Sources:
    """What the metrics read: the engine and the container runtime."""

    def __init__(self, engine: Engine, runtime: Runtime) -> None:
        self.engine = engine
        self.runtime = runtime
        self.networks = engine.state.networks
        self.containers = runtime.containers
        self.attachments = engine.state.attachments
        self.store = engine.store
        self.resolver = engine.resolver
        self.kernel = engine.kernel

    @property
    def remote(self) -> dict:
        return self.engine.state.remote

    @property
    def cluster(self) -> Any:
        return self.engine.cluster

    @property
    def proxy(self) -> Any:
        return self.engine.ports.proxy


async def collect(svc: Sources) -> str:
    m = Metrics()
    m.family("pontoon_build_info", "gauge", "pontoon version")
    m.sample("pontoon_build_info", 1, version=__version__)
    m.family("pontoon_networks", "gauge", "Networks known to this host, by driver")
    for driver, count in sorted(Counter(n.driver for n in svc.networks.values()).items()):
        m.sample("pontoon_networks", count, driver=driver)
    m.family("pontoon_containers", "gauge", "Containers, by state")
    states = Counter(c.state for c in svc.containers.values())
    for state in (model.RUNNING, model.EXITED, model.CREATING):
        m.sample("pontoon_containers", states.get(state, 0), state=state)
    m.family("pontoon_endpoints", "gauge", "Attachments on this host, by network")
    by_net = Counter(ep.network_id for ep in svc.attachments.values())
    for net_id, count in sorted(by_net.items()):
        net = svc.networks.get(net_id)
        m.sample("pontoon_endpoints", count, network=net.name if net else net_id[:12])
    m.family(
        "pontoon_endpoint_addresses", "gauge", "Addresses of attachments on this host, by family"
    )
    families = Counter(addresses.family_of(ip) for a in svc.attachments.values() for ip in a.ips)
    for family in addresses.FAMILIES:
        m.sample("pontoon_endpoint_addresses", families.get(family, 0), family=f"ipv{family}")
    m.family("pontoon_published_ports", "gauge", "Host ports published by running containers")
    m.sample(
        "pontoon_published_ports",
        sum(len(a.ports) for a in svc.attachments.values()),
    )
    m.family("pontoon_attachments", "gauge", "Attachments on this host, by owner kind")
    kinds = Counter(a.owner.kind for a in svc.attachments.values())
    for kind in model.OWNER_KINDS:
        m.sample("pontoon_attachments", kinds.get(kind, 0), owner=kind)
    if svc.cluster is not None:
        m.family("pontoon_overlay_peers", "gauge", "Remote endpoints known, by overlay network")
        peers = Counter(p.network_id for p in svc.remote.values())
        for net_id, count in sorted(peers.items()):
            net = svc.networks.get(net_id)
            m.sample("pontoon_overlay_peers", count, network=net.name if net else net_id[:12])
    m.family(
        "pontoon_firewall_repairs_total",
        "counter",
        "Times our firewall rules were found removed or changed by something else and re-applied",
    )
    m.sample("pontoon_firewall_repairs_total", svc.kernel.firewall.repairs)
    await _proxy(svc, m)
    _stores(svc, m)
    _dns(svc, m)
    return m.text()


async def _proxy(svc: Sources, m: Metrics) -> None:
    if svc.proxy is None:
        return
    try:
        stats = await asyncio.to_thread(svc.proxy.stats)
        restarts = await asyncio.to_thread(svc.proxy.restarts)
    except Exception:
        stats, restarts = {}, {}
    totals = Counter()  # type: Counter[str]
    for mapping in stats.values():
        totals.update({k: v for k, v in mapping.items() if isinstance(v, int)})
    m.family("pontoon_proxy_connections_total", "counter", "Connections the proxy accepted")
    m.sample("pontoon_proxy_connections_total", totals.get("connections_total", 0))
    m.family("pontoon_proxy_connections_active", "gauge", "Connections the proxy carries now")
    m.sample("pontoon_proxy_connections_active", totals.get("connections_active", 0))
    m.family("pontoon_proxy_bytes_total", "counter", "Bytes the proxy carried")
    m.sample("pontoon_proxy_bytes_total", totals.get("bytes_in", 0), direction="in")
    m.sample("pontoon_proxy_bytes_total", totals.get("bytes_out", 0), direction="out")
    m.family("pontoon_proxy_udp_flows", "gauge", "UDP flows the proxy tracks")
    m.sample("pontoon_proxy_udp_flows", totals.get("udp_flows", 0))
    m.family("pontoon_proxy_restarts_total", "counter", "Proxy restarts: a worker, or the whole")
    for kind in ("worker", "proxy"):
        m.sample("pontoon_proxy_restarts_total", restarts.get(kind, 0), kind=kind)


def _stores(svc: Sources, m: Metrics) -> None:
    stores = [svc.store]
    if svc.cluster is not None:
        stores.append(svc.cluster.store)
    timed = [s for s in stores if isinstance(s, TimedStore)]
    if not timed:
        return
    m.family("pontoon_store_operation_seconds", "summary", "Store operation latency")
    for s in timed:
        m.sample("pontoon_store_operation_seconds_count", s.count, store=s.name)
        m.sample("pontoon_store_operation_seconds_sum", round(s.seconds, 6), store=s.name)
    m.family("pontoon_store_operation_max_seconds", "gauge", "Slowest store operation so far")
    for s in timed:
        m.sample("pontoon_store_operation_max_seconds", round(s.max_seconds, 6), store=s.name)
    m.family("pontoon_store_errors_total", "counter", "Store operations that failed")
    for s in timed:
        m.sample("pontoon_store_errors_total", s.errors, store=s.name)


def _dns(svc: Sources, m: Metrics) -> None:
    r = svc.resolver
    m.family("pontoon_dns_queries_total", "counter", "Queries the embedded resolver answered")
    for outcome, count in sorted(r.counters.items()):
        m.sample("pontoon_dns_queries_total", count, outcome=outcome)


async def start(svc: Sources, addr: str) -> web.AppRunner:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=await collect(svc), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = addr.rpartition(":")
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    return runner
