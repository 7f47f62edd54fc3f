"""Start-up reconciliation: make the kernel match the store.

The store is the truth. Whatever a previous daemon finished is restored if the
kernel lost it; whatever it left half-made (records still "creating") is rolled
back; whatever the kernel holds that we own and the store does not know
(sandboxes, veths, bridges, address allocations) is removed. Running
containers are never touched beyond re-plugging a missing interface, so their
traffic does not notice the restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pontoon import model
from pontoon.daemon.kernel import OUR_BRIDGE, OUR_VETH
from pontoon.daemon.service import Service, ep_key, network_rules
from pontoon.runtime import process
from pontoon.sandbox import netns

log = logging.getLogger(__name__)


async def reconcile(svc: Service) -> None:
    await _networks(svc)
    await _containers(svc)
    running = [c for c in svc.containers.values() if c.state == model.RUNNING]
    await svc.kernel.call(
        svc.kernel.firewall.sync,
        [network_rules(n) for n in svc.networks.values() if n.driver == "bridge"],
        [rule for c in running for rule in svc.port_rules(c)],
    )
    await _ports(svc, running)
    await _stray_endpoints(svc)
    await _stray_addresses(svc)
    await _stray_sandboxes(svc)
    await _stray_links(svc)


async def _networks(svc: Service) -> None:
    for net in list(svc.networks.values()):
        if net.scope == "global":
            continue  # an overlay's namespace comes back with its first endpoint
        if net.status == model.CREATING:
            log.info("rolling back half-created network %s", net.name)
            await svc._destroy_network(net)
        else:
            await svc.restore_network(net)


async def _containers(svc: Service) -> None:
    for c in list(svc.containers.values()):
        if c.state == model.CREATING:
            log.info("rolling back half-created container %s", c.name)
            await svc._destroy_container(c)
        elif c.state == model.RUNNING:
            if process.alive(c.shim_pid, c.shim_start):
                await _replug(svc, c)
                svc.watch_exit(c)
                if c.embedded_dns:
                    await svc.resolver.start(c.id, Path(c.sandbox))
            else:
                log.info("container %s exited while the daemon was down", c.name)
                await svc._finish(c)


async def _ports(svc: Service, running: list[model.Container]) -> None:
    """Take the host ports of running containers back: in kernel mode the
    daemon holds them again; in proxy mode the proxy (which survived us) is
    told exactly the mappings that should exist."""
    published = [c for c in running if c.ports]
    if svc.proxy is None:
        for c in published:
            try:
                svc.reserve_existing(c)
            except Exception as exc:  # someone took the port while we were down
                log.warning("container %s: cannot reserve its ports again: %s", c.name, exc)
        return
    have = await asyncio.to_thread(svc.proxy.list)
    want = {svc.proxy_id(c, p): c for c in published for p in c.ports}
    for mapping_id in set(have) - set(want):
        log.info("proxy: removing stale mapping %s", mapping_id)
        await asyncio.to_thread(svc.proxy.remove, mapping_id)
    for c in {id(c): c for mid, c in want.items() if mid not in have}.values():
        log.info("proxy: restoring the mappings of %s", c.name)
        try:
            svc.reserve_existing(c)
            await svc._hand_to_proxy(c, svc.port_rules(c))
        except Exception as exc:
            log.warning("container %s: cannot restore its ports: %s", c.name, exc)


async def restore_proxy(svc: Service) -> None:
    """The proxy died and a new, empty one runs (DaemonProxy's `on_restart`):
    hand it the ports of every running container again."""
    await _ports(svc, [c for c in svc.containers.values() if c.state == model.RUNNING])


async def _replug(svc: Service, c: model.Container) -> None:
    """Re-create endpoints whose devices vanished while we were down."""
    for ep in svc.container_endpoints(c):
        net = svc.networks.get(ep.network_id)
        if net is None:
            continue
        driver = svc.driver(net)
        if net.driver == "overlay":
            await svc.kernel.call(driver.create_network, net)  # idempotent
        if not await svc.kernel.call(driver.endpoint_present, net, ep):
            log.info("container %s: re-plugging %s on %s", c.name, ep.ifname, net.name)
            await svc.kernel.call(driver.join, net, ep, Path(c.sandbox))
            if c.ports and c.networks and ep.network_id == c.networks[0].network_id:
                await svc.kernel.call(svc.kernel.bridge.set_hairpin, ep)
            await svc.save_endpoint(ep)


async def _stray_endpoints(svc: Service) -> None:
    live = {
        ep_id
        for c in svc.containers.values()
        if c.state == model.RUNNING
        for ep_id in c.endpoints.values()
    }
    for ep in list(svc.endpoints.values()):
        if ep.id in live:
            continue
        log.info("removing stray endpoint %s of %s", ep.id[:12], ep.container_name)
        net = svc.networks.get(ep.network_id)
        if net is not None and net.driver == "bridge":
            await svc.kernel.call(svc.kernel.bridge.leave, net, ep)
            await svc.ipam.release(ep.network_id, ep.ip)
        elif net is not None and svc.kernel.overlay is not None:
            await svc.kernel.call(svc.kernel.overlay.leave, net, ep)  # the cluster side: resync
        await svc.store.delete(ep_key(ep.id))
        del svc.endpoints[ep.id]


async def _stray_addresses(svc: Service) -> None:
    kvs, _ = await svc.store.list_prefix("/ipam/")
    for kv in kvs:
        _, _, network_id, addr = kv.key.split("/", 3)
        if network_id not in svc.networks or kv.value not in svc.endpoints:
            log.info("releasing stray address %s", addr)
            await svc.ipam.release(network_id, addr)


async def _stray_sandboxes(svc: Service) -> None:
    keep = {c.sandbox for c in svc.containers.values() if c.state == model.RUNNING}
    if svc.kernel.overlay is not None:
        keep |= {
            str(svc.kernel.overlay.namespace(svc.networks[ep.network_id]))
            for ep in svc.local_overlay_endpoints()
        }
    directory = svc.config.netns_dir
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if str(path) not in keep:
            log.info("removing stray sandbox %s", path)
            await svc.kernel.call(netns.remove, path)


async def _stray_links(svc: Service) -> None:
    veths = {ep.host_ifname for ep in svc.endpoints.values()}
    bridges = {n.bridge for n in svc.networks.values()}
    links = await svc.kernel.call(svc.kernel.link_names)
    for name, info in links.items():
        stray_veth = info["kind"] == "veth" and OUR_VETH.match(name) and name not in veths
        stray_bridge = info["kind"] == "bridge" and OUR_BRIDGE.match(name) and name not in bridges
        if stray_veth or stray_bridge:
            log.info("removing stray device %s", name)
            await svc.kernel.call(svc.kernel.delete_link, name)
