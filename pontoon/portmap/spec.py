"""The -p grammar (SPEC §4):

    [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp|/sctp]

Ranges map one to one; without HOST_PORT the host port is ephemeral (chosen
when the port is reserved). HOST_IP defaults to 0.0.0.0: every address of the
host.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from pontoon.errors import InvalidArgument

PROTOCOLS = ("tcp", "udp", "sctp")
ANY = "0.0.0.0"
# More than one host has of one protocol: a request beyond it is a mistake,
# and expanding it would only eat the daemon's memory.
MAX_REQUESTS = 65535


@dataclasses.dataclass(frozen=True)
class PortRequest:
    """One container port asked to be published; host_port 0 = ephemeral."""

    host_ip: str
    host_port: int
    container_port: int
    proto: str


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


def parse(spec: str) -> list[PortRequest]:
    body, sep, proto = spec.partition("/")
    proto = proto.lower() if sep else "tcp"
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {proto!r} in {spec!r}: use tcp, udp or sctp")
    parts = body.split(":")
    if len(parts) > 3 or not body:
        raise InvalidArgument(f"invalid port specification {spec!r}")
    host_ip = ANY
    host_range = ""
    if len(parts) == 3:
        host_ip, host_range, container_range = parts
        try:
            addr = ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise InvalidArgument(f"invalid host IP {host_ip!r} in {spec!r}") from None
        host_ip = str(addr)
    elif len(parts) == 2:
        host_range, container_range = parts
    else:
        (container_range,) = parts
    c_lo, c_hi = _range(container_range, spec)
    if not host_range:
        return [PortRequest(host_ip, 0, p, proto) for p in range(c_lo, c_hi + 1)]
    h_lo, h_hi = _range(host_range, spec)
    if h_hi - h_lo != c_hi - c_lo:
        raise InvalidArgument(
            f"invalid port specification {spec!r}: host and container ranges differ in length"
        )
    return [PortRequest(host_ip, h_lo + i, c_lo + i, proto) for i in range(c_hi - c_lo + 1)]


def parse_all(specs: list[str]) -> list[PortRequest]:
    """Parse every -p and reject two requests for the same host port."""
    out: list[PortRequest] = []
    # (proto, host port) -> the host addresses it is published on. Looked up,
    # never scanned: a scan per request made `-p 1-65535:1-65535` quadratic
    # (minutes of the daemon's event loop).
    seen: dict[tuple[str, int], set[str]] = {}
    for spec in specs:
        requests = parse(spec)
        if len(out) + len(requests) > MAX_REQUESTS:
            raise InvalidArgument(f"too many ports published: at most {MAX_REQUESTS}")
        for req in requests:
            if req.host_port:
                ips = seen.setdefault((req.proto, req.host_port), set())
                if req.host_ip in ips or ANY in ips or (req.host_ip == ANY and ips):
                    raise InvalidArgument(
                        f"host port {req.host_port}/{req.proto} is published twice"
                    )
                ips.add(req.host_ip)
            out.append(req)
    return out
