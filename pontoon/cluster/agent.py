"""The cluster side of a host: global (overlay) networks and peers, over etcd.

Keys, under the cluster store's prefix:

    /overlay/networks/<id>             the network record (scope global)
    /overlay/endpoints/<net>/<ep>      every overlay endpoint: IP, MAC, host, VTEP
                                       (put with the host's lease)
    /overlay/hosts/<host>              this host is alive, and its VTEP (leased)
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
every other host unprograms them.

The hosts' VTEP addresses are the only sources VXLAN is accepted from (the
firewall's VTEP set, ours included): a host that registers is added on every
host, one whose lease expires is dropped. While etcd is away nothing is torn down:
running containers keep talking, and the first successful resync after it
returns catches up with everything missed, deletions included.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from typing import Any, Protocol

from pontoon import ipam
from pontoon.core import model
from pontoon.core.addresses import IPNetwork
from pontoon.core.model import Attachment, Network, NetworkSpec, Peer
from pontoon.errors import Conflict, Unavailable
from pontoon.store import Compacted, Compare, Delete, Event, Put
from pontoon.store.etcd import LeasedPut, LeaseExpired

log = logging.getLogger(__name__)

OVERLAY = "/overlay/"
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


class ClusterListener(Protocol):
    """What the agent tells this host (the engine) and asks of it. Every call
    that changes something takes the engine's lock, like an API call."""

    def local_global_attachments(self) -> list[Attachment]: ...

    async def global_networks_seen(self, nets: list[Network], complete: bool) -> None: ...

    async def global_network_gone(self, net_id: str) -> None: ...

    async def peers_replaced(self, peers: dict[str, Peer]) -> None: ...

    async def peer_added(self, peer: Peer) -> None: ...

    async def peer_removed(self, peer_id: str) -> None: ...

    async def vteps_replaced(self, vteps: set[str]) -> None: ...


class ClusterAgent:
    def __init__(self, store: Any, host_id: str, vtep: str, ttl: int) -> None:
        self.store = store  # an EtcdStore
        self.host_id = host_id
        self.vtep = vtep
        self.ttl = ttl
        self.ipam = ipam.Ipam(store)
        self.listener: ClusterListener | None = None  # set before start()
        self.lease = 0
        self.revision = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._synced = asyncio.Event()
        self.hosts: dict[str, str] = {}  # host id -> VTEP, as the store says
        self._told: set[str] | None = None  # the VTEP set the listener last got

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

    async def create_network(
        self, spec: NetworkSpec, mtu: int, pools: list[ipam.Pool], local: list[IPNetwork]
    ) -> Network:
        """A global network: its name, subnets and VNI taken cluster-wide in one
        transaction. `local` are this host's own subnets, avoided too."""
        for _attempt in range(8):
            net = await self._plan_network(spec, mtu, pools, local)
            subnet_keys = [f"/subnets/{s.subnet}" for s in net.subnets]
            ok = await self.store.txn(
                [
                    Compare(f"/names/networks/{net.name}", 0),
                    *(Compare(key, 0) for key in subnet_keys),
                    Compare(f"/vnis/{net.vni}", 0),
                ],
                [
                    Put(f"/names/networks/{net.name}", net.id),
                    *(Put(key, net.id) for key in subnet_keys),
                    Put(f"/vnis/{net.vni}", net.id),
                    Put(network_key(net.id), net.dumps()),
                ],
            )
            if ok:
                return net
            for sub in spec.subnets:
                if sub.subnet and await self.store.get(f"/subnets/{sub.subnet}"):
                    raise Conflict(
                        f"subnet {sub.subnet} is already used by another overlay network"
                    )
            # Another host took the name, subnet or VNI between our read and
            # our write: look again.
        raise Unavailable("could not allocate a subnet and VNI: too much contention")

    async def _plan_network(
        self, spec: NetworkSpec, mtu: int, pools: list[ipam.Pool], local: list[IPNetwork]
    ) -> Network:
        if await self.store.get(f"/names/networks/{spec.name}") is not None:
            raise Conflict(f"network with name {spec.name} already exists")
        taken_kvs, _ = await self.store.list_prefix("/subnets/")
        taken = [ipaddress.ip_network(kv.key.removeprefix("/subnets/")) for kv in taken_kvs]
        # Hosts may route differently, so only networks count, not routes.
        plans = ipam.plan_subnets(
            spec.subnets, pools, taken + local, [], ipam.requested_families(spec)
        )
        asked_range = {ipaddress.ip_network(s.subnet).version for s in spec.subnets if s.ip_range}
        vni_kvs, _ = await self.store.list_prefix("/vnis/")
        used = {int(kv.key.removeprefix("/vnis/")) for kv in vni_kvs}
        vni = next(v for v in range(FIRST_VNI, 1 << 24) if v not in used)
        return Network(
            id=model.new_id(),
            name=spec.name,
            driver=spec.driver,
            scope="global",
            subnets=[p.record(p.family in asked_range) for p in plans],
            internal=spec.internal,
            options=dict(spec.options),
            mtu=mtu,
            vni=vni,
            status=model.READY,
        )

    async def peers_of(self, net: Network) -> list[Peer]:
        kvs, _ = await self.store.list_prefix(f"{OVERLAY}endpoints/{net.id}/")
        return [Peer.loads(kv.value) for kv in kvs]

    async def remove_network(self, net: Network) -> None:
        users = await self.peers_of(net)
        if users:
            names = ", ".join(sorted(p.name for p in users))
            raise Conflict(f"network {net.name} has active endpoints ({names})")
        ipam_keys, _ = await self.store.list_prefix(ipam.key(net.id))
        await self.store.txn(
            [],
            [
                Delete(network_key(net.id)),
                Delete(f"/names/networks/{net.name}"),
                *(Delete(f"/subnets/{s.subnet}") for s in net.subnets),
                Delete(f"/vnis/{net.vni}"),
                *(Delete(kv.key) for kv in ipam_keys),
            ],
        )

    # attachments -----------------------------------------------------------

    async def publish(self, att: Attachment) -> None:
        att.host = self.host_id
        att.vtep = self.vtep
        await self.put_leased(endpoint_key(att.network_id, att.id), Peer.of(att).dumps())

    async def withdraw(self, att: Attachment) -> None:
        await self.store.delete(endpoint_key(att.network_id, att.id))

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
        assert self.listener is not None
        kvs, revision = await self.store.list_prefix(OVERLAY)
        networks: dict[str, Network] = {}
        peers: dict[str, Peer] = {}
        hosts: dict[str, str] = {}
        for kv in kvs:
            kind, _, rest = kv.key.removeprefix(OVERLAY).partition("/")
            if kind == "networks":
                networks[rest] = Network.loads(kv.value)
            elif kind == "endpoints":
                peer = Peer.loads(kv.value)
                peers[peer.id] = peer
            elif kind == "hosts" and (vtep := host_vtep(rest, kv.value)):
                hosts[rest] = vtep
        fresh = not self.lease
        if fresh:
            await self._register()
        hosts[self.host_id] = self.vtep
        self.hosts = hosts
        # Before any peer is programmed: their VXLAN must not meet a drop.
        await self._tell_vteps(force=True)
        # Our own attachments must be in the store (a lapsed lease deleted them),
        # and only those: what we failed to withdraw while etcd was away goes now.
        # Under a new lease (a restart) every one is put again: those still in
        # the store hang on the previous daemon's lease, and would vanish
        # cluster-wide when it expires.
        local = {a.id: a for a in self.listener.local_global_attachments()}
        for att in local.values():
            if fresh or att.id not in peers:
                log.info("publishing attachment %s of %s", att.id[:12], att.owner.name)
                await self.publish(att)
        for peer in peers.values():
            if peer.host == self.host_id and peer.id not in local:
                log.info("withdrawing stale attachment %s of %s", peer.id[:12], peer.name)
                await self.store.delete(endpoint_key(peer.network_id, peer.id))
                for ip in peer.ips:
                    await self.ipam.release(peer.network_id, ip)
        await self.listener.global_networks_seen(list(networks.values()), complete=True)
        remote = {p.id: p for p in peers.values() if p.host != self.host_id}
        await self.listener.peers_replaced(remote)
        self.revision = revision
        self._synced.set()

    async def _apply(self, event: Event) -> None:
        assert self.listener is not None
        kind, _, rest = event.key.removeprefix(OVERLAY).partition("/")
        if kind == "networks":
            if event.kind == "put" and event.value is not None:
                net = Network.loads(event.value)
                await self.listener.global_networks_seen([net], complete=False)
            else:
                await self.listener.global_network_gone(rest)
        elif kind == "hosts":
            vtep = host_vtep(rest, event.value) if event.kind == "put" else ""
            if vtep:
                self.hosts[rest] = vtep
            elif rest != self.host_id:  # our own lapsed lease: we are still here
                self.hosts.pop(rest, None)
            await self._tell_vteps()
        elif kind == "endpoints":
            peer_id = rest.rpartition("/")[2]
            if event.kind == "put" and event.value is not None:
                peer = Peer.loads(event.value)
                if peer.host != self.host_id:
                    await self.listener.peer_added(peer)
            else:
                await self.listener.peer_removed(peer_id)

    async def _tell_vteps(self, force: bool = False) -> None:
        """The listener gets the VTEP set when it changed (or, on a resync,
        again, which repairs nothing but costs one transaction at most)."""
        assert self.listener is not None
        vteps = set(self.hosts.values())
        if force or vteps != self._told:
            await self.listener.vteps_replaced(vteps)
            if vteps != self._told:
                before = self._told or set()
                log.info("VXLAN accepted from %s (joined: %s; left: %s)", _listed(vteps),
                         _listed(vteps - before), _listed(before - vteps))  # fmt: skip
            self._told = vteps


def host_vtep(host_id: str, value: str | None) -> str:
    """The VTEP of a host's registration, or "" for one we cannot use (a
    malformed record is never a reason to accept VXLAN from anywhere)."""
    try:
        vtep = json.loads(value or "")["vtep"]
        if not isinstance(vtep, str):
            raise TypeError(vtep)
        return str(ipaddress.ip_address(vtep))  # an IPv6 underlay's too
    except (ValueError, KeyError, TypeError):
        log.warning("host %s registered without a usable VTEP address: ignored", host_id[:12])
        return ""


def _listed(addrs: set[str]) -> str:
    parsed = sorted((ipaddress.ip_address(a) for a in addrs), key=lambda a: (a.version, a))
    return ", ".join(map(str, parsed)) or "-"
