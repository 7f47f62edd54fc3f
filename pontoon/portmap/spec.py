"""The -p grammar (SPEC §4), Docker's:

    [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp|/sctp]

HOST_IP is an IPv4 address, an IPv6 address in brackets (`[::1]:8080:80`),
or a bare IPv6 address before the two port fields (`::1:8080:80`: the last
two fields are the ports, as Docker reads it). Ranges map one to one; without
HOST_PORT the host port is ephemeral (chosen when the port is reserved).
Without HOST_IP a port is published twice, as Docker 27+ does: on 0.0.0.0
and on `::` (the second marked `implicit`: dropped where IPv6 cannot serve it).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from pontoon.errors import InvalidArgument

PROTOCOLS = ("tcp", "udp", "sctp")
ANY = "0.0.0.0"
ANY6 = "::"
WILDCARDS = (ANY, ANY6)
# More than one host has of one protocol: a request beyond it is a mistake,
# and expanding it would only eat the daemon's memory. Counted per family.
MAX_REQUESTS = 65535


@dataclasses.dataclass(frozen=True)
class PortRequest:
    """One container port asked to be published; host_port 0 = ephemeral.
    `implicit`: the `::` twin of a request that named no host IP."""

    host_ip: str
    host_port: int
    container_port: int
    proto: str
    implicit: bool = False

    @property
    def family(self) -> int:
        return family_of(self.host_ip)


def family_of(host_ip: str) -> int:
    return 6 if ":" in host_ip else 4


def is_wildcard(host_ip: str) -> bool:
    """Every local address of one family (0.0.0.0 or ::)."""
    return host_ip in WILDCARDS


def _port(text: str, spec: str) -> int:
    # ASCII digits only: str.isdigit() also takes '²' (which int() refuses)
    # and Arabic-Indic digits (which it reads as ASCII ones).
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgument(f"invalid port {text!r} in {spec!r}")
    digits = text.lstrip("0") or "0"
    # Never int() thousands of digits: Python refuses past 4300 of them.
    if len(digits) > 5 or not 1 <= int(digits) <= 65535:
        raise InvalidArgument(f"invalid port {digits} in {spec!r}: must be 1-65535")
    return int(digits)


def _range(text: str, spec: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    lo = _port(first, spec)
    hi = _port(last, spec) if sep else lo
    if hi < lo:
        raise InvalidArgument(f"invalid port range {text!r} in {spec!r}")
    return lo, hi


def _host_ip(text: str, spec: str, bracketed: bool) -> str:
    bad = f"invalid host IP {text!r} in {spec!r}"
    if not text.isascii() or "%" in text:  # no zone indexes: a host IP is global
        raise InvalidArgument(bad)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(bad) from None
    if addr.version == 6 and not bracketed and text.count(":") < 2:
        raise InvalidArgument(bad)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise InvalidArgument(f"{bad}: use the IPv4 address {addr.ipv4_mapped}")
    return str(addr)


def _split(body: str, spec: str) -> tuple[str | None, str, str]:
    """(host IP or None, host range, container range) of a spec without /proto."""
    if body.startswith("["):
        inside, sep, rest = body[1:].partition("]")
        ports = rest[1:].split(":")
        if not sep or not rest.startswith(":") or len(ports) != 2 or not inside:
            raise InvalidArgument(
                f"invalid port specification {spec!r}: use [IPV6]:HOST_PORT:CONTAINER_PORT"
            )
        return _host_ip(inside, spec, bracketed=True), ports[0], ports[1]
    if "[" in body or "]" in body:
        raise InvalidArgument(f"invalid port specification {spec!r}: misplaced bracket")
    parts = body.split(":")
    if len(parts) == 1:
        return None, "", parts[0]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    # Docker's reading: the last two fields are ports, the rest the address.
    host = ":".join(parts[:-2])
    if len(parts) > 3 and host.count(":") < 2:
        raise InvalidArgument(f"invalid port specification {spec!r}: {host!r} is not an IP address")
    return _host_ip(host, spec, bracketed=False), parts[-2], parts[-1]


def parse(spec: str) -> list[PortRequest]:
    body, sep, proto = spec.partition("/")
    proto = proto.lower() if sep else "tcp"
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {proto!r} in {spec!r}: use tcp, udp or sctp")
    if not body:
        raise InvalidArgument(f"invalid port specification {spec!r}")
    host_ip, host_range, container_range = _split(body, spec)
    c_lo, c_hi = _range(container_range, spec)
    pairs: list[tuple[int, int]]
    if not host_range:
        pairs = [(0, p) for p in range(c_lo, c_hi + 1)]
    else:
        h_lo, h_hi = _range(host_range, spec)
        if h_hi - h_lo != c_hi - c_lo:
            raise InvalidArgument(
                f"invalid port specification {spec!r}: host and container ranges differ in length"
            )
        pairs = [(h_lo + i, c_lo + i) for i in range(c_hi - c_lo + 1)]
    if host_ip is not None:
        return [PortRequest(host_ip, h, c, proto) for h, c in pairs]
    # Each IPv4 request directly followed by its IPv6 twin: reservation gives
    # an ephemeral pair one port number.
    return [
        req
        for h, c in pairs
        for req in (PortRequest(ANY, h, c, proto), PortRequest(ANY6, h, c, proto, implicit=True))
    ]


def parse_all(specs: list[str]) -> list[PortRequest]:
    """Parse every -p and reject two requests for the same host port."""
    out: list[PortRequest] = []
    counts = {4: 0, 6: 0}
    # (proto, family, host port) -> the host addresses it is published on.
    # Looked up, never scanned: a scan per request made `-p 1-65535:1-65535`
    # quadratic (minutes of the daemon's event loop).
    seen: dict[tuple[str, int, int], set[str]] = {}
    for spec in specs:
        requests = parse(spec)
        for family in counts:
            counts[family] += sum(1 for r in requests if r.family == family)
            if counts[family] > MAX_REQUESTS:
                raise InvalidArgument(f"too many ports published: at most {MAX_REQUESTS}")
        for req in requests:
            if req.host_port:
                ips = seen.setdefault((req.proto, req.family, req.host_port), set())
                if (
                    req.host_ip in ips
                    or any(map(is_wildcard, ips))
                    or (is_wildcard(req.host_ip) and ips)
                ):
                    raise InvalidArgument(
                        f"host port {req.host_port}/{req.proto} is published twice"
                    )
                ips.add(req.host_ip)
            out.append(req)
    return out


def requests_of(mappings: list[tuple[str, int, int, str]]) -> list[PortRequest]:
    """Requests again from stored (host_ip, host_port, container_port, proto)
    rows, which do not keep `implicit`: a `::` row right after its 0.0.0.0
    twin is one, as parse() made them."""
    out: list[PortRequest] = []
    for host_ip, host_port, container_port, proto in mappings:
        prev = out[-1] if out else None
        implicit = (
            host_ip == ANY6
            and prev is not None
            and (prev.host_ip, prev.host_port, prev.container_port, prev.proto)
            == (ANY, host_port, container_port, proto)
        )
        out.append(PortRequest(host_ip, host_port, container_port, proto, implicit))
    return out
