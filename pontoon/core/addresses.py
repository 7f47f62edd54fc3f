"""Address helpers: the few places that must know an address's family.

Everything else handles addresses as strings and asks here: which family, the
default route of that family, the MAC derived from an address.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FAMILIES = (4, 6)
_DEFAULT_ROUTE = {4: "0.0.0.0/0", 6: "::/0"}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_UNSPECIFIED = {4: "0.0.0.0", 6: "::"}
# An address outside every real network (RFC 5737, RFC 3849): a route lookup
# toward it finds the default route of its family, and nothing is ever sent.
_DOCUMENTATION = {4: "192.0.2.1", 6: "2001:db8::1"}
# The sysctl (under /proc/sys) that makes a namespace route between its devices.
_FORWARDING = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}


def family_of(text: str) -> int:
    """4 or 6, for an address, an interface (address/prefix) or a network."""
    return 6 if ":" in text else 4


def address_of(interface: str) -> str:
    """`10.0.0.2/24` -> `10.0.0.2`."""
    return interface.partition("/")[0]


def prefixlen_of(interface: str) -> int:
    return int(interface.partition("/")[2] or (128 if family_of(interface) == 6 else 32))


def default_route(family: int) -> str:
    return _DEFAULT_ROUTE[family]


def unspecified(family: int) -> str:
    return _UNSPECIFIED[family]


def documentation_address(family: int) -> str:
    return _DOCUMENTATION[family]


def forwarding_sysctl(family: int) -> str:
    return _FORWARDING[family]


def socket_family(family: int) -> int:
    return _AF[family]


def netlink_family(address: str) -> int:
    return _AF[family_of(address)]


def mac_for(address: str) -> str:
    """02:42 + the last four bytes of the address, as Docker derives it from
    the IPv4 address: stable across a container's restarts while it keeps its
    address, so peers' neighbour entries stay right."""
    tail = ipaddress.ip_address(address).packed[-4:]
    return "02:42:" + ":".join(f"{b:02x}" for b in tail)


def primary_address(addresses: list[str]) -> str:
    """The address shown where one is shown (Docker's IPAddress): IPv4 first."""
    ips = [address_of(a) for a in addresses]
    return next((ip for ip in ips if family_of(ip) == 4), ips[0] if ips else "")
