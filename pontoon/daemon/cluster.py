"""The cluster side of a host: global (overlay) networks and peers, over etcd.

Keys, under the cluster store's prefix:

    /overlay/networks/<id>             the network record (scope global)
    /overlay/endpoints/<net>/<ep>      every overlay endpoint: IP, MAC, host, VTEP
                                       (put with the host's lease)
    /overlay/hosts/<host>              this host is alive (leased)
    /names/networks/<name>             a name is taken, cluster-wide
    /subnets/<cidr>, /vnis/<n>         a subnet or VNI is taken, cluster-wide
    /ipam/<net>/<address>              an address is taken (the Ipam keys)
    /trace/...                         a trace's far end (pontoon.trace.remote)

Creating a network is one etcd transaction that takes its name, subnet and VNI
only if they are all free, so two hosts racing never get the same one. A host
watches /overlay/ from the revision it listed at and programs a permanent
neighbour + FDB entry for every remote endpoint of the networks it has
containers on; a periodic resync repairs any drift from the store, the single
source of truth. When a host's lease expires etcd deletes its endpoints and
every other host unprograms them. While etcd is away nothing is torn down:
running containers keep talking, and the first successful resync after it
returns catches up with everything missed, deletions included.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from typing import TYPE_CHECKING, Any

from pontoon import ipam, model
from pontoon.errors import Conflict, Unavailable
from pontoon.model import Endpoint, Network, NetworkSpec
from pontoon.store import Compacted, Compare, Delete, Event, Put
from pontoon.store.etcd import LeasedPut, LeaseExpired

if TYPE_CHECKING:
    from pontoon.daemon.service import Service

log = logging.getLogger(__name__)

OVERLAY = "/overlay/"
OVERLAY_POOL = ipam.Pool(ipaddress.IPv4Network("10.0.0.0/8"), 24)
FIRST_VNI = 256
# Events arrive through the watch; the periodic resync only repairs drift (an
# entry deleted by hand, a missed event). Each one re-lists every endpoint and
# dumps the kernel's tables, so it is kept rare: at 10 s it cost an idle daemon
# with 1,000 peers 4 % of a CPU.
RESYNC_SECONDS = 30.0


def network_key(net_id: str) -> str:
    return f"{OVERLAY}networks/{net_id}"


def endpoint_key(net_id: str, ep_id: str) -> str:
    return f"{OVERLAY}endpoints/{net_id}/{ep_id}"


class ClusterAgent:
    def __init__(self, svc: Service, store: Any, host_id: str, vtep: str, ttl: int) -> None:
        self.svc = svc
        self.store = store  # an EtcdStore
        self.host_id = host_id
        self.vtep = vtep
        self.ttl = ttl
        self.ipam = ipam.Ipam(store)
        self.remote: dict[str, Endpoint] = {}  # endpoints living on other hosts
        self.lease = 0
        self.revision = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._synced = asyncio.Event()

    # lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.resync()
        except Unavailable as exc:
            log.warning("cluster store unreachable at start, running on local state: %s", exc)
        from pontoon.trace.remote import Responder

        self._tasks = [
            asyncio.create_task(self._watch_loop(), name="cluster-watch"),
            asyncio.create_task(self._lease_loop(), name="cluster-lease"),
            asyncio.create_task(self._resync_loop(), name="cluster-resync"),
            # Other hosts' traces of flows to our containers (pontoon.trace.remote).
            asyncio.create_task(Responder(self).run(), name="cluster-trace"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()

    # networks --------------------------------------------------------------

    async def create_network(self, spec: NetworkSpec, mtu: int) -> Network:
        for _attempt in range(8):
            net = await self._plan_network(spec, mtu)
            ok = await self.store.txn(
                [
                    Compare(f"/names/networks/{net.name}", 0),
                    Compare(f"/subnets/{net.subnet}", 0),
                    Compare(f"/vnis/{net.vni}", 0),
                ],
                [
                    Put(f"/names/networks/{net.name}", net.id),
                    Put(f"/subnets/{net.subnet}", net.id),
                    Put(f"/vnis/{net.vni}", net.id),
                    Put(network_key(net.id), net.dumps()),
                ],
            )
            if ok:
                self.svc.networks[net.id] = net
                return net
            if spec.subnet and await self.store.get(f"/subnets/{net.subnet}"):
                raise Conflict(f"subnet {spec.subnet} is already used by another overlay network")
            # Another host took the name, subnet or VNI between our read and
            # our write: look again.
        raise Unavailable("could not allocate a subnet and VNI: too much contention")

    async def _plan_network(self, spec: NetworkSpec, mtu: int) -> Network:
        if await self.store.get(f"/names/networks/{spec.name}") is not None:
            raise Conflict(f"network with name {spec.name} already exists")
        taken_kvs, _ = await self.store.list_prefix("/subnets/")
        taken = [ipaddress.IPv4Network(kv.key.removeprefix("/subnets/")) for kv in taken_kvs]
        local = [ipaddress.IPv4Network(n.subnet) for n in self.svc.networks.values() if n.subnet]
        # Hosts may route differently, so only networks count, not routes.
        plan = ipam.plan_subnet(spec, [OVERLAY_POOL], taken + local, [])
        vni_kvs, _ = await self.store.list_prefix("/vnis/")
        used = {int(kv.key.removeprefix("/vnis/")) for kv in vni_kvs}
        vni = next(v for v in range(FIRST_VNI, 1 << 24) if v not in used)
        return Network(
            id=model.new_id(),
            name=spec.name,
            driver="overlay",
            scope="global",
            subnet=str(plan.subnet),
            gateway=str(plan.gateway),
            ip_range=spec.ip_range and str(plan.ip_range),
            internal=spec.internal,
            options=dict(spec.options),
            mtu=mtu,
            vni=vni,
            status=model.READY,
        )

    async def endpoints_of(self, net: Network) -> list[Endpoint]:
        kvs, _ = await self.store.list_prefix(f"{OVERLAY}endpoints/{net.id}/")
        return [Endpoint.loads(kv.value) for kv in kvs]

    async def remove_network(self, net: Network) -> None:
        users = await self.endpoints_of(net)
        if users:
            names = ", ".join(sorted(ep.container_name for ep in users))
            raise Conflict(f"network {net.name} has active endpoints ({names})")
        ipam_keys, _ = await self.store.list_prefix(ipam.key(net.id))
        await self.store.txn(
            [],
            [
                Delete(network_key(net.id)),
                Delete(f"/names/networks/{net.name}"),
                Delete(f"/subnets/{net.subnet}"),
                Delete(f"/vnis/{net.vni}"),
                *(Delete(kv.key) for kv in ipam_keys),
            ],
        )
        self.svc.networks.pop(net.id, None)

    # endpoints -------------------------------------------------------------

    async def allocate(self, net: Network, owner: str, requested: str) -> ipaddress.IPv4Address:
        if net.id not in self.ipam.spaces:
            await self.ipam.open(
                net.id,
                ipam.SubnetPlan.build(ipaddress.IPv4Network(net.subnet), net.gateway, net.ip_range),
            )
        return await self.ipam.allocate(net.id, owner, requested)

    async def release(self, net_id: str, addr: str) -> None:
        await self.ipam.release(net_id, addr)

    async def publish(self, ep: Endpoint) -> None:
        ep.host = self.host_id
        ep.vtep = self.vtep
        await self.put_leased(endpoint_key(ep.network_id, ep.id), ep.dumps())

    async def withdraw(self, ep: Endpoint) -> None:
        await self.store.delete(endpoint_key(ep.network_id, ep.id))

    async def put_leased(self, key: str, value: str) -> None:
        if not self.lease:
            await self._register()
        await self.store.txn([], [LeasedPut(key, value, self.lease)])

    # liveness --------------------------------------------------------------

    async def _register(self) -> None:
        self.lease = await self.store.grant_lease(self.ttl)
        host = {"id": self.host_id, "vtep": self.vtep}
        await self.store.txn(
            [],
            [LeasedPut(f"{OVERLAY}hosts/{self.host_id}", json.dumps(host), self.lease)],
        )

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.ttl / 3))
            try:
                if not self.lease:
                    await self.resync()
                else:
                    await self.store.keepalive(self.lease)
            except LeaseExpired:
                # Expired while we were cut off: etcd has deleted our endpoints;
                # a resync registers again and re-publishes them.
                self.lease = 0
                with contextlib.suppress(Unavailable):
                    await self.resync()
            except Unavailable as exc:
                log.debug("lease keepalive failed: %s", exc)

    # watching and resync ---------------------------------------------------

    async def _watch_loop(self) -> None:
        backoff = 0.2
        while True:
            try:
                if not self._synced.is_set():
                    await self.resync()
                async for event in self.store.watch(OVERLAY, self.revision + 1):
                    await self._apply(event)
                    self.revision = event.revision
                    backoff = 0.2
            except Compacted:
                self._synced.clear()
            except Unavailable as exc:
                self._synced.clear()
                log.debug("cluster watch interrupted: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are shutting down
                # The store's channel was closed under the watch: start over.
                self._synced.clear()
                await asyncio.sleep(backoff)
            except Exception:
                log.exception("cluster watch failed; resyncing")
                self._synced.clear()
                await asyncio.sleep(backoff)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                await self.resync()
            except Unavailable as exc:
                log.debug("periodic resync skipped: %s", exc)
            except Exception:
                log.exception("periodic resync failed")

    async def resync(self) -> None:
        """Make caches and kernel match the store exactly (drift, missed events)."""
        kvs, revision = await self.store.list_prefix(OVERLAY)
        networks: dict[str, Network] = {}
        endpoints: dict[str, Endpoint] = {}
        for kv in kvs:
            kind, _, rest = kv.key.removeprefix(OVERLAY).partition("/")
            if kind == "networks":
                networks[rest] = Network.loads(kv.value)
            elif kind == "endpoints":
                ep = Endpoint.loads(kv.value)
                endpoints[ep.id] = ep
        if not self.lease:
            await self._register()
        # Our own endpoints must be in the store (a lapsed lease deleted them),
        # and only those: what we failed to withdraw while etcd was away goes now.
        local = {ep.id: ep for ep in self.svc.local_overlay_endpoints()}
        for ep in local.values():
            if ep.id not in endpoints:
                log.info("re-publishing endpoint %s of %s", ep.id[:12], ep.container_name)
                await self.publish(ep)
        for ep in endpoints.values():
            if ep.host == self.host_id and ep.id not in local:
                log.info("withdrawing stale endpoint %s of %s", ep.id[:12], ep.container_name)
                await self.withdraw(ep)
                await self.release(ep.network_id, ep.ip)
        for net in networks.values():
            await self.svc.global_network_seen(net)
        for net in [n for n in self.svc.networks.values() if n.scope == "global"]:
            if net.id not in networks:
                await self.svc.global_network_gone(net)
        self.remote = {e.id: e for e in endpoints.values() if e.host != self.host_id}
        await self.svc.reprogram_peers()
        self.revision = revision
        self._synced.set()

    async def _apply(self, event: Event) -> None:
        kind, _, rest = event.key.removeprefix(OVERLAY).partition("/")
        if kind == "networks":
            if event.kind == "put" and event.value is not None:
                await self.svc.global_network_seen(Network.loads(event.value))
            elif (net := self.svc.networks.get(rest)) is not None:
                await self.svc.global_network_gone(net)
        elif kind == "endpoints":
            ep_id = rest.rpartition("/")[2]
            if event.kind == "put" and event.value is not None:
                ep = Endpoint.loads(event.value)
                if ep.host != self.host_id:
                    self.remote[ep.id] = ep
                    await self.svc.peer_added(ep)
            elif (gone := self.remote.pop(ep_id, None)) is not None:
                await self.svc.peer_removed(gone)
