"""pontoon's names for Docker's containers.

Docker's embedded resolver (127.0.0.11 in each container) answers only the
containers of its own engine on a local-scope network; a name it does not
know, it forwards to the nameservers dockerd gives containers (`--dns`, or
daemon.json's "dns"). This listener is such a nameserver: on the default
bridge's address (pontoon0, on every host), port 53, it answers each
container with that container's own DNS view, so containers on other hosts
resolve by name and alias; anything else goes on to pontoon's upstreams.

Docker's resolver sends from inside the container: the source address says
who asks, one of the container's pontoon addresses (on an overlay, the one
on pontoon's gateway bridge, which has its default route).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pontoon.core.model import OWNER_DOCKER

if TYPE_CHECKING:
    from pontoon.frontends.docker.plugin import DockerPlugin

log = logging.getLogger(__name__)

PORT = 53


class DockerDns(asyncio.DatagramProtocol):
    def __init__(self, plugin: DockerPlugin) -> None:
        self.plugin = plugin
        self.transport: asyncio.DatagramTransport | None = None

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
        return None
