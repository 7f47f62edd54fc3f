"""Forget NAT state for unpublished ports.

Removing a mapping must delete the conntrack entries keyed on the host port:
otherwise a UDP client that keeps sending refreshes an entry still pointing at
the old container and is blackholed until it idles out.
"""

from __future__ import annotations

import socket
import subprocess

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError

from pontoon.portmap.spec import family_of, is_wildcard

PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}


CLI_MAX_PORTS = 16


def flush(ports: list[tuple[str, str, int]]) -> int:
    """Delete entries whose original destination is one of (host_ip, proto,
    port); host_ip 0.0.0.0 (::) matches any address of its family. Each family
    has its own table: `conntrack` reads IPv4 unless told `-f ipv6`.

    A few ports go through the `conntrack` tool, which filters in C (a Python
    dump of a busy table takes seconds); a long range through one dump."""
    if not ports:
        return 0
    if len(ports) <= CLI_MAX_PORTS:
        return sum(_flush_cli(ip, proto, port) for ip, proto, port in ports)
    return _flush_dump(ports)


def _flush_cli(ip: str, proto: str, port: int) -> int:
    family = "ipv6" if family_of(ip) == 6 else "ipv4"
    args = ["conntrack", "-D", "-f", family, "-p", proto, "--orig-port-dst", str(port)]
    if not is_wildcard(ip):
        args += ["--orig-dst", ip]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    # "N flow entries have been deleted" is on stderr; exit 1 means none matched.
    words = proc.stderr.split()
    return int(words[words.index("flow") - 1]) if "flow" in words else 0


def _flush_dump(ports: list[tuple[str, str, int]]) -> int:
    wanted = {(family_of(ip), PROTO_NUMBERS[p], port): ip for ip, p, port in ports}
    return sum(_flush_family(family, wanted) for family in sorted({f for f, _, _ in wanted}))


def _flush_family(family: int, wanted: dict[tuple[int, int, int], str]) -> int:
    # A dump holds one family: pyroute2 asks for nfgen_family AF_INET unless told.
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    deleted = 0
    ct = Conntrack(nfgen_family=af)
    try:
        doomed = []
        for entry in list(ct.dump_entries()):
            orig = entry.tuple_orig
            ip = wanted.get((family, orig.proto, orig.dport))
            if ip is not None and (is_wildcard(ip) or orig.daddr == ip):
                doomed.append(entry)
        for entry in doomed:
            try:
                ct.delete(entry)
                deleted += 1
            except (OSError, NetlinkError):
                pass  # gone meanwhile
    finally:
        ct.close()
    return deleted
