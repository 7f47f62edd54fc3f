"""The engine's records in memory, and their keys in the local store.

One place knows where a record lives; everything else asks here. Remote
attachments (on other hosts of a global network) are kept here too, written
only by the cluster listener, so that DNS views, trace and metrics read one
source.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pontoon.core.model import Attachment, Network, Peer
from pontoon.errors import InvalidArgument, NotFound
from pontoon.store import Delete, Put, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

NETWORKS = "/networks/"
ATTACHMENTS = "/attachments/"
GLOBAL_NETWORKS = "/global/networks/"  # global networks this host is on, as last seen
LEGACY_ENDPOINTS = "/endpoints/"  # release 1's attachments


def net_key(network_id: str) -> str:
    return f"{NETWORKS}{network_id}"


def att_key(attachment_id: str) -> str:
    return f"{ATTACHMENTS}{attachment_id}"


def global_key(network_id: str) -> str:
    return f"{GLOBAL_NETWORKS}{network_id}"


def find(items: Iterable[T], ref: str, kind: str, key: Callable[[T], tuple[str, str]]) -> T:
    """By name, full ID or unique ID prefix (of at least 3 hex digits)."""
    items = list(items)
    for item in items:
        if ref in key(item):
            return item
    if len(ref) >= 3 and all(ch in "0123456789abcdef" for ch in ref):
        matches = [item for item in items if key(item)[1].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"{kind} ID prefix {ref} is ambiguous")
    # Quoted when it would not print as itself: an error stays one line.
    raise NotFound(f"no such {kind}: {ref if ref.isprintable() else repr(ref)}")


class State:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.networks: dict[str, Network] = {}
        self.attachments: dict[str, Attachment] = {}
        self.remote: dict[str, Peer] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called after any attachment or peer change (DNS views drop caches)."""
        self._listeners.append(callback)

    def changed(self) -> None:
        for callback in self._listeners:
            callback()

    # -- loading --------------------------------------------------------------

    async def load(self, legacy_netns: Callable[[str], str]) -> None:
        """Read every record; release-1 endpoints become attachments (their
        namespace is their container's sandbox: `legacy_netns(container id)`)."""
        for value in await self.store.values(NETWORKS):
            net = Network.loads(value)
            self.networks[net.id] = net
        # Global networks this host is on, as last seen: enough to keep their
        # datapath up across a restart while the cluster store is away.
        for value in await self.store.values(GLOBAL_NETWORKS):
            net = Network.loads(value)
            self.networks.setdefault(net.id, net)
        for value in await self.store.values(ATTACHMENTS):
            att = Attachment.loads(value)
            self.attachments[att.id] = att
        await self._upgrade_endpoints(legacy_netns)

    async def _upgrade_endpoints(self, legacy_netns: Callable[[str], str]) -> None:
        kvs, _ = await self.store.list_prefix(LEGACY_ENDPOINTS)
        for kv in kvs:
            data: dict[str, Any] = json.loads(kv.value)
            att = Attachment.from_endpoint(data, legacy_netns(data["container_id"]))
            # One transaction per record: a crash half-way leaves each record in
            # exactly one of its two shapes.
            await self.store.txn([], [Put(att_key(att.id), att.dumps()), Delete(kv.key)])
            self.attachments[att.id] = att
            log.info("upgraded endpoint %s of %s to an attachment", att.id[:12], att.owner.name)

    # -- lookups ---------------------------------------------------------------

    def find_network(self, ref: str) -> Network:
        return find(self.networks.values(), ref, "network", lambda n: (n.name, n.id))

    def on_network(self, network_id: str) -> list[Attachment]:
        """Local attachments of a network."""
        return [a for a in self.attachments.values() if a.network_id == network_id]

    def remote_on(self, network_id: str) -> list[Peer]:
        return [p for p in self.remote.values() if p.network_id == network_id]

    def of_owner(self, owner_key: str) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.owner.key == owner_key]

    def in_netns(self, netns: str) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.netns == netns]

    def participating(self, network_id: str) -> bool:
        """This host has attachments on the network."""
        return any(a.network_id == network_id for a in self.attachments.values())

    def gateway_network(self) -> Network | None:
        return next((n for n in self.networks.values() if n.gateway_bridge), None)

    def default_network(self) -> Network | None:
        return next((n for n in self.networks.values() if n.default), None)

    # -- persisting ------------------------------------------------------------

    async def save_network(self, net: Network) -> None:
        self.networks[net.id] = net
        await self.store.put(net_key(net.id), net.dumps())

    async def forget_network(self, net: Network) -> None:
        await self.store.delete(net_key(net.id))
        self.networks.pop(net.id, None)

    async def save_attachment(self, att: Attachment) -> None:
        self.attachments[att.id] = att
        await self.store.put(att_key(att.id), att.dumps())
        self.changed()

    async def forget_attachment(self, att: Attachment) -> None:
        await self.store.delete(att_key(att.id))
        self.attachments.pop(att.id, None)
        self.changed()

    async def remember_global(self, net: Network) -> None:
        await self.store.put(global_key(net.id), net.dumps())

    async def forget_global(self, net: Network) -> None:
        await self.store.delete(global_key(net.id))
