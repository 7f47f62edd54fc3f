"""The userland proxy: one process per host for every published port.

SPEC §6: with `--userland-proxy=true` the kernel DNATs what it can; this
process serves the rest (e.g. connections to 127.0.0.1). Unlike Docker's one
docker-proxy per port and protocol, a single asyncio process holds every
mapping, outlives daemon restarts and receives the host sockets the daemon
reserved (already bound) over a control socket.

    client.py   ProxyClient, spawn, ensure_running, terminate (daemon side)
    server.py   the process: control socket and its requests
    tcp.py      TCP: splice through pipes, no thread per connection
    udp.py      UDP: per-client flows, replies sourced with IP_PKTINFO
    mapping.py  what TCP and UDP mappings share
"""

from pontoon.proxy.client import (
    ProxyClient,
    ProxyError,
    ProxyUnavailable,
    ensure_running,
    spawn,
    terminate,
)

__all__ = [
    "ProxyClient",
    "ProxyError",
    "ProxyUnavailable",
    "ensure_running",
    "spawn",
    "terminate",
]
