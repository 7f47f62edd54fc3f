"""pontoon's names for Docker's containers.

Docker's embedded resolver (127.0.0.11 in each container) answers only the
containers of its own engine on a local-scope network; a name it does not
know, it forwards to the nameservers dockerd gives containers (`--dns`, or
daemon.json's "dns"). This listener is such a nameserver: on the default
bridge's address (pontoon0, on every host), port 53, it answers each
container with that container's own DNS view, so containers on other hosts
resolve by name and alias; anything else goes on to pontoon's upstreams.

Docker's resolver sends from inside the container: the source address says
who asks. On a bridge network it is the container's pontoon address; an
overlay container's default route is Docker's docker_gwbridge, so its
address there is mapped to its endpoints through dockerd's API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pontoon.core.model import OWNER_DOCKER

if TYPE_CHECKING:
    from pontoon.frontends.docker.plugin import DockerPlugin

log = logging.getLogger(__name__)

PORT = 53
GW_NETWORK = "docker_gwbridge"
REFRESH_SECONDS = 2.0  # at most one look at dockerd per interval for unknown askers


class DockerDns(asyncio.DatagramProtocol):
    def __init__(self, plugin: DockerPlugin) -> None:
        self.plugin = plugin
        self.transport: asyncio.DatagramTransport | None = None
        self._gw_owners: dict[str, str] = {}  # docker_gwbridge address -> owner key
        self._refreshed = 0.0

    async def start(self) -> str:
        default = self.plugin.engine.state.default_network()
        if default is None or not default.subnets:
            return ""
        address = default.subnets[0].gateway
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(address, PORT))
        log.info("names for Docker's resolver on %s:%d (dockerd --dns %s)", address, PORT, address)
        return address

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().create_task(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        owner = await self.owner_of(addr[0])
        if owner is None:
            return  # not one of ours: no answer (the asker tries its next server)
        out = await self.plugin.engine.resolver.answer(owner, data)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    async def owner_of(self, source: str) -> str | None:
        for att in self.plugin.engine.state.attachments.values():
            if att.owner.kind == OWNER_DOCKER and source in att.ips:
                return att.owner.key
        owner = self._gw_owners.get(source)
        if owner is None and time.monotonic() - self._refreshed > REFRESH_SECONDS:
            await self._refresh()
            owner = self._gw_owners.get(source)
        return owner

    async def _refresh(self) -> None:
        """docker_gwbridge address -> container -> one of its pontoon
        endpoints -> the container's owner key."""
        self._refreshed = time.monotonic()
        dockerd = self.plugin.dockerd
        if dockerd is None:
            return
        try:
            gw = await dockerd.network(GW_NETWORK)
            by_container: dict[str, str] = {}
            for docker_id in list(self.plugin.networks):
                found = await dockerd.network(docker_id)
                for container, ep in ((found or {}).get("Containers") or {}).items():
                    by_container.setdefault(container, ep.get("EndpointID", ""))
        except Exception as exc:  # dockerd away: unknown askers stay unknown
            log.debug("docker dns: %s", exc)
            return
        owners = {}
        for container, ep in ((gw or {}).get("Containers") or {}).items():
            address = str(ep.get("IPv4Address", "")).partition("/")[0]
            att = self.plugin.attachment_of(by_container.get(container, ""))
            if att is not None and address:
                owners[address] = att.owner.key
        self._gw_owners = owners
