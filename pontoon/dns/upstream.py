"""Where queries we cannot answer go: the host's resolvers or --dns servers.

Forwarding happens from the daemon's own (host) namespace, as the host would
resolve. Every upstream try is bounded, so a dead resolver turns into a quick
SERVFAIL, never a hung client.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode

HOST_RESOLV = Path("/etc/resolv.conf")
# systemd-resolved's stub listens on 127.0.0.53 in the host's namespace; the
# servers behind it are listed here.
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")
TRY_TIMEOUT = 1.0
TOTAL_TIMEOUT = 2.5


def nameservers_from(text: str) -> list[str]:
    """The servers of a resolv.conf, both families (we forward from the
    host's namespace, which reaches them as the host does)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(fields[1])))
            except ValueError:
                continue
    return out


def host_nameservers() -> list[str]:
    try:
        servers = nameservers_from(HOST_RESOLV.read_text())
    except OSError:
        servers = []
    if servers == ["127.0.0.53"] and RESOLVED_UPSTREAMS.exists():
        servers = nameservers_from(RESOLVED_UPSTREAMS.read_text())
    return servers


async def forward(query: dns.message.Message, servers: list[str]) -> dns.message.Message:
    """Ask each server in turn (UDP, TCP when truncated); SERVFAIL if none answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TOTAL_TIMEOUT
    for server in servers:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        timeout = min(TRY_TIMEOUT, remaining)
        try:
            reply = await dns.asyncquery.udp(query, server, timeout=timeout, ignore_trailing=True)
            if reply.flags & dns.flags.TC:
                reply = await dns.asyncquery.tcp(query, server, timeout=timeout)
            return reply
        except (dns.exception.DNSException, OSError):
            continue
    return servfail(query)


def servfail(query: dns.message.Message) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.SERVFAIL)
    return reply
