"""Forget NAT state for unpublished ports.

Removing a mapping must delete the conntrack entries keyed on the host port:
otherwise a UDP client that keeps sending refreshes an entry still pointing at
the old container and is blackholed until it idles out.
"""

from __future__ import annotations

import socket

from pyroute2 import Conntrack

PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}


def flush(ports: list[tuple[str, str, int]]) -> int:
    """Delete entries whose original destination is one of (host_ip, proto,
    port); host_ip 0.0.0.0 matches any address. Returns how many went."""
    if not ports:
        return 0
    wanted = {(PROTO_NUMBERS[p], port): ip for ip, p, port in ports}
    deleted = 0
    ct = Conntrack()
    try:
        doomed = []
        for entry in list(ct.dump_entries()):
            orig = entry.tuple_orig
            ip = wanted.get((orig.proto, orig.dport))
            if ip is not None and (ip == "0.0.0.0" or orig.daddr == ip):
                doomed.append(entry)
        for entry in doomed:
            try:
                ct.delete(entry)
                deleted += 1
            except OSError:
                pass  # gone meanwhile
    finally:
        ct.close()
    return deleted
