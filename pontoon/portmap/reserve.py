"""Reserving host ports: a published port is a bound socket before it is a rule.

Binding first is how we find out that a port is taken (by another mapping or
by any process of the host) or that HOST_IP is not ours, before anything has
changed. In proxy mode the sockets are then handed to the proxy, which serves
the connections the kernel cannot NAT; in kernel mode the daemon keeps them
so nobody else can take the port.

IPv6 sockets are IPV6_V6ONLY: `0.0.0.0:8080` and `[::]:8080` are two
bindings (Docker 27+), each served for its own family.
"""

from __future__ import annotations

import errno
import socket

from pontoon.errors import Conflict, InvalidArgument
from pontoon.portmap.spec import PortRequest

IPPROTO_SCTP = 132
# An ephemeral 0.0.0.0/:: pair must get one port number; the kernel picks the
# IPv4 one, which may be taken on IPv6: try again a few times.
PAIR_ATTEMPTS = 8


def _socket(proto: str, family: int) -> socket.socket:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    if proto == "tcp":
        sock = socket.socket(af, socket.SOCK_STREAM)
    elif proto == "udp":
        sock = socket.socket(af, socket.SOCK_DGRAM)
    else:
        try:
            sock = socket.socket(af, socket.SOCK_STREAM, IPPROTO_SCTP)
        except OSError:
            raise InvalidArgument("sctp is not supported by this host's kernel") from None
    if family == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def ipv6_available() -> bool:
    """False on a host with IPv6 off: the implicit `::` bindings are skipped."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def reserve(
    req: PortRequest, port: int | None = None, listen: bool = True
) -> tuple[socket.socket, int]:
    """Bind (and for stream protocols listen on, for the proxy) the host side
    of a mapping. Returns the socket and the host port (chosen by the kernel
    when 0); `port` overrides the request's (an ephemeral pair's second half).

    Without `listen` (kernel mode: the daemon only holds the port) a
    connection the kernel does not NAT (to `::1`) is refused at once instead
    of waiting in a backlog nobody accepts from; without SO_REUSEADDR the
    bound socket still keeps everyone else off the port."""
    host_port = req.host_port if port is None else port
    sock = _socket(req.proto, req.family)
    stream = req.proto != "udp"
    try:
        if stream and listen:
            # A restart must be able to bind again over connections the proxy
            # left in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((req.host_ip, host_port))
        if stream and listen:
            sock.listen(128)
    except OSError as exc:
        sock.close()
        host = f"[{req.host_ip}]" if req.family == 6 else req.host_ip
        where = f"{host}:{host_port or '(ephemeral)'}/{req.proto}"
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(f"host port {where} is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(f"host IP {req.host_ip} is not an address of this host") from None
        raise InvalidArgument(f"cannot reserve host port {where}: {exc.strerror}") from None
    return sock, sock.getsockname()[1]


def _twin(first: PortRequest, second: PortRequest) -> bool:
    """An ephemeral request and its `::` twin (spec.parse puts them in a row)."""
    return (
        second.implicit
        and first.host_port == 0
        and second.host_port == 0
        and (first.container_port, first.proto) == (second.container_port, second.proto)
    )


def _reserve_pair(
    first: PortRequest, second: PortRequest, listen: bool
) -> list[tuple[socket.socket, int]]:
    for attempt in range(PAIR_ATTEMPTS):
        sock, port = reserve(first, listen=listen)
        try:
            return [(sock, port), reserve(second, port, listen)]
        except Conflict:
            sock.close()
            if attempt == PAIR_ATTEMPTS - 1:
                raise
        except BaseException:
            sock.close()
            raise
    raise AssertionError("unreachable")


def reserve_all(reqs: list[PortRequest], listen: bool = True) -> list[tuple[socket.socket, int]]:
    """All or nothing: on the first failure every socket taken is released.
    An ephemeral 0.0.0.0 request followed by its `::` twin gets one port."""
    taken: list[tuple[socket.socket, int]] = []
    try:
        i = 0
        while i < len(reqs):
            if i + 1 < len(reqs) and _twin(reqs[i], reqs[i + 1]):
                taken += _reserve_pair(reqs[i], reqs[i + 1], listen)
                i += 2
            else:
                taken.append(reserve(reqs[i], listen=listen))
                i += 1
    except BaseException:
        for sock, _ in taken:
            sock.close()
        raise
    return taken
