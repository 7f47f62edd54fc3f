"""The userland proxy: one process tree per host for every published port.

SPEC §6: with `--userland-proxy=true` the kernel DNATs what it can; the proxy
serves the rest (e.g. connections to 127.0.0.1). Unlike Docker's one
docker-proxy per port and protocol, one supervisor (asyncio) and a few
workers (each on its own epoll loop) hold every mapping, outlive daemon
restarts and receive the host sockets the daemon reserved (already bound)
over a control socket.

    client.py      ProxyClient, DaemonProxy, spawn, ensure_running, terminate (daemon side)
    server.py      the supervisor process: control socket and its requests
    supervisor.py  desired mappings, the workers, fan-out and healing
    worker.py      a worker process: serves what the supervisor hands it
    wire.py        the control protocol's framing (batches over several packets)
    evloop.py      the workers' epoll loop (EPOLLEXCLUSIVE for shared listening sockets)
    tcp.py         TCP: splice through pipes, no thread per connection
    udp.py         UDP: per-client flows, replies sourced with IP(V6)_PKTINFO
    mapping.py     what TCP and UDP mappings share
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
