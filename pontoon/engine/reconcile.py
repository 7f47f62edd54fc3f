"""Start-up reconciliation: make the kernel match the store.

The store is the truth. Whatever a previous daemon finished is restored if the
kernel lost it; whatever it left half-made (records still "creating") is rolled
back; whatever the kernel holds that we own and the store does not know
(namespaces, veths, bridges, address allocations) is removed. Live
attachments are never touched beyond re-plugging a missing interface, so their
traffic does not notice the restart.

Owner kinds decide what is stray: an attachment of pontoon's own container
goes when the runtime says the container is gone; one owned by a CNI runtime
or by dockerd is kept until its owner detaches it (or CNI GC collects it),
since only the owner knows whether it still exists.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pontoon.core import model
from pontoon.engine.engine import Engine
from pontoon.sandbox import netns

log = logging.getLogger(__name__)


async def reconcile(engine: Engine, keep_namespaces: set[str]) -> None:
    """`keep_namespaces`: namespace files front ends still use (sandboxes of
    running containers), besides those of live attachments."""
    async with engine.lock:
        await _networks(engine)
        await _attachments(engine)
        engine.kernel.firewall.known_vteps = await _programmed_vteps(engine)
        await engine.kernel.call(
            engine.kernel.firewall.sync, engine.networks.firewall_state(), engine.ports.all_rules()
        )
        await engine.ports.restore()
        await _resolvers(engine)
        await _stray_addresses(engine)
        await _stray_namespaces(engine, keep_namespaces)
        await _stray_devices(engine)


async def _networks(engine: Engine) -> None:
    for net in list(engine.state.networks.values()):
        if engine.drivers.of(net).capabilities.scope == "global":
            continue  # its devices come back with its first attachment
        if net.status == model.CREATING:
            log.info("rolling back half-created network %s", net.name)
            await engine.networks.destroy(net)
        else:
            await engine.networks.restore(net)


def _alive(engine: Engine, att: model.Attachment) -> bool:
    judge = engine.judges.get(att.owner.kind)
    return judge is None or judge(att.owner)


async def _attachments(engine: Engine) -> None:
    for att in list(engine.state.attachments.values()):
        if att.id not in engine.state.attachments:
            continue  # went with another (a gateway attachment with its owner's last)
        who = att.owner.name or att.owner.id[:12]
        if att.status == model.CREATING:
            log.info("rolling back half-made attachment of %s to %s", who, att.network_id[:12])
            await engine.attachments.detach(att)
        elif not _alive(engine, att):
            log.info("removing stray attachment %s of %s", att.id[:12], who)
            await engine.attachments.detach(att)
        elif not netns.is_mounted(Path(att.netns)):
            log.info("attachment %s of %s: its namespace is gone", att.id[:12], who)
            await engine.attachments.detach(att)
        else:
            await engine.attachments.replug(att)


async def _programmed_vteps(engine: Engine) -> set[str]:
    """VTEPs of the peers the kernel has programmed (the previous daemon's, from
    the store): VXLAN from them must not be cut at a restart, or at an upgrade
    from a release without a VTEP set, before the cluster store is read."""
    vteps: set[str] = set()
    for net in list(engine.state.networks.values()):
        if engine.state.participating(net.id):
            driver = engine.drivers.of(net)
            peers = await engine.kernel.call(driver.programmed_peers, net)
            vteps |= {p.vtep for p in peers}
    return vteps


async def _resolvers(engine: Engine) -> None:
    for att in engine.state.attachments.values():
        net = engine.state.networks.get(att.network_id)
        # A handed-over interface's runtime brings its own resolver (Docker's);
        # records from before `resolver` existed say True.
        if att.resolver and net is not None and not net.default and not att.handover:
            await engine.resolver.start(att.owner.key, Path(att.netns))


async def _stray_addresses(engine: Engine) -> None:
    kvs, _ = await engine.store.list_prefix("/ipam/")
    for kv in kvs:
        _, _, network_id, addr = kv.key.split("/", 3)
        if network_id not in engine.state.networks or kv.value not in engine.state.attachments:
            log.info("releasing stray address %s", addr)
            await engine.ipam.release(network_id, addr)


async def _stray_namespaces(engine: Engine, keep: set[str]) -> None:
    keep = keep | {a.netns for a in engine.state.attachments.values()}
    for net in engine.state.networks.values():
        if engine.state.participating(net.id):
            driver = engine.drivers.of(net)
            keep |= {str(p) for p in await engine.kernel.call(driver.owned_namespaces, net)}
    directory = engine.config.netns_dir
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if str(path) not in keep:
            log.info("removing stray namespace %s", path)
            await engine.kernel.call(netns.remove, path)


async def _stray_devices(engine: Engine) -> None:
    networks = list(engine.state.networks.values())
    attachments = list(engine.state.attachments.values())
    for name in engine.drivers.names():
        driver = engine.drivers.get(name)
        for device in await engine.kernel.call(driver.sweep, networks, attachments):
            log.info("removed stray device %s", device)
