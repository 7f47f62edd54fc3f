"""Reserving host ports: a published port is a bound socket before it is a rule.

Binding first is how we find out that a port is taken (by another mapping or
by any process of the host) or that HOST_IP is not ours, before anything has
changed. In proxy mode the sockets are then handed to the proxy, which serves
the connections the kernel cannot NAT; in kernel mode the daemon keeps them
so nobody else can take the port.
"""

from __future__ import annotations

import errno
import socket

from pontoon.errors import Conflict, InvalidArgument
from pontoon.portmap.spec import PortRequest

IPPROTO_SCTP = 132


def _socket(proto: str) -> socket.socket:
    if proto == "tcp":
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if proto == "udp":
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)
    except OSError:
        raise InvalidArgument("sctp is not supported by this host's kernel") from None


def reserve(req: PortRequest) -> tuple[socket.socket, int]:
    """Bind (and for stream protocols listen on) the host side of a mapping.
    Returns the socket and the host port (chosen by the kernel when 0)."""
    sock = _socket(req.proto)
    try:
        if req.proto != "udp":
            # A restart must be able to bind again over connections the proxy
            # left in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((req.host_ip, req.host_port))
        if req.proto != "udp":
            sock.listen(128)
    except OSError as exc:
        sock.close()
        where = f"{req.host_ip}:{req.host_port or '(ephemeral)'}/{req.proto}"
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(f"host port {where} is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(f"host IP {req.host_ip} is not an address of this host") from None
        raise InvalidArgument(f"cannot reserve host port {where}: {exc.strerror}") from None
    return sock, sock.getsockname()[1]


def reserve_all(reqs: list[PortRequest]) -> list[tuple[socket.socket, int]]:
    """All or nothing: on the first failure every socket taken is released."""
    taken: list[tuple[socket.socket, int]] = []
    try:
        for req in reqs:
            taken.append(reserve(req))
    except BaseException:
        for sock, _ in taken:
            sock.close()
        raise
    return taken
