"""What every published port has in common, whatever its protocol.

A mapping is one listening socket of the host (handed over by the daemon)
forwarding to one backend (container IP and port). Protocol modules subclass
`Mapping`; the server only sees this interface.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
from typing import Any

from pontoon.proxy.evloop import Loop


@dataclasses.dataclass(frozen=True)
class Backend:
    ip: str
    port: int

    @functools.cached_property
    def family(self) -> socket.AddressFamily:
        # Once per mapping, not per connection: parsing the address was a few
        # per cent of the proxy's work for a short connection.
        return socket.AF_INET6 if ipaddress.ip_address(self.ip).version == 6 else socket.AF_INET

    @functools.cached_property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclasses.dataclass
class Counters:
    """Per-mapping counters; for UDP a "connection" is a flow."""

    connections_total: int = 0
    connections_active: int = 0
    bytes_in: int = 0  # client -> backend
    bytes_out: int = 0  # backend -> client
    connect_failures: int = 0


def format_address(addr: tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Mapping:
    """One published port. Owns its listening socket from construction on."""

    proto: str = ""

    def __init__(
        self,
        mapping_id: str,
        sock: socket.socket,
        backend: Backend,
        counters: Counters,
        loop: Loop,
    ) -> None:
        self.id = mapping_id
        self.sock = sock
        self.backend = backend
        self.counters = counters
        self.listen = format_address(sock.getsockname())
        self.loop = loop

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening and end every connection/flow (the container is gone)."""
        raise NotImplementedError

    def take_over(self, old: Mapping) -> None:
        """Replace `old` (same id): adopt its live traffic if the backend is
        unchanged, so a daemon re-adding what it already added cuts nothing."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "backend_ip": self.backend.ip,
            "backend_port": self.backend.port,
            "listen": self.listen,
        }

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "connections_total": c.connections_total,
            "connections_active": c.connections_active,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "udp_flows": 0,
            "connect_failures": c.connect_failures,
        }
