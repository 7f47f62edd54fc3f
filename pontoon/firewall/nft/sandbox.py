"""The per-sandbox DNS port rewrite: table `ip pontoon_dns` in a container's namespace.

Stateless port rewriting, not a DNAT: a NAT rule would switch conntrack on
for every packet of the container, which costs overlay and bridge throughput
for the sake of a few DNS queries. Queries have their destination port
rewritten on the way out of the asker, answers their source port on the way
out of the resolver's socket; both sockets live in the sandbox, so every
packet passes its output hook. Priority raw: before conntrack, should the
container enable it, so it sees port 53 on both directions of the flow.

An `ip` table, not `inet` as the host's: it rewrites only packets to and from
127.0.0.11, on the container's own loopback, which every namespace has -
IPv6-only containers ask the resolver there too (docs/ipv6.md, DNS), so no
IPv6 packet ever needs the rewrite.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pontoon.firewall.nft import writer

TABLE = "pontoon_dns"


def dns_rewrite_script(listen_addr: str, port: int) -> str:
    """listen_addr:53 <-> listen_addr:port, the table replaced atomically
    (a restarted daemon picks a new port)."""
    addr = ipaddress.IPv4Address(listen_addr)
    port = int(port)
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid port {port}")
    chain = "\n        ".join(
        f"ip daddr {addr} {proto} dport 53 {proto} dport set {port}\n        "
        f"ip saddr {addr} {proto} sport {port} {proto} sport set 53"
        for proto in ("udp", "tcp")
    )
    return f"""
add table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
    chain output {{
        type filter hook output priority raw; policy accept;
        {chain}
    }}
}}
"""


def redirect_dns(listen_addr: str, port: int, ns: Path | str | int | None = None) -> None:
    """Install the rewrite in namespace `ns` (None: the calling thread's)."""
    writer.run(dns_rewrite_script(listen_addr, port), ns)
