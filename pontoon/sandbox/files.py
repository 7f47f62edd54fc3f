"""The /etc files a container sees: hosts, resolv.conf and hostname.

They are bind-mounted over the host's files inside the container's mount
namespace, so updates must keep the inode: files are rewritten in place,
never replaced by rename.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

HOSTS_HEADER = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""

FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as f:  # O_TRUNC keeps the inode the bind mount points at
        f.write(text)


def hosts_text(entries: Iterable[tuple[str, Iterable[str]]]) -> str:
    lines = [HOSTS_HEADER]
    for ip, names in entries:
        lines.append(f"{ip}\t{' '.join(names)}\n")
    return "".join(lines)


def resolv_text(
    host_resolv: str,
    nameservers: list[str] | None = None,
    extra_options: list[str] | None = None,
    families: Iterable[int] = (4,),
) -> str:
    """resolv.conf for a container: the given nameservers, or the host's minus
    those it cannot reach (loopback and link-local ones, which mean the
    host's own devices, and those of a family it has no address of), as
    Docker does."""
    search: list[str] = []
    options: list[str] = []
    host_ns: list[str] = []
    for line in host_resolv.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            host_ns.append(fields[1])
        elif fields[0] in ("search", "domain"):
            search = fields[1:]
        elif fields[0] == "options":
            options.extend(fields[1:])
    if nameservers is None:
        wanted = set(families)
        nameservers = [ns for ns in host_ns if _reachable(ns, wanted)] or list(FALLBACK_NAMESERVERS)
    out = [f"nameserver {ns}\n" for ns in nameservers]
    if search:
        out.append(f"search {' '.join(search)}\n")
    options += [o for o in extra_options or [] if o not in options]
    if options:
        out.append(f"options {' '.join(options)}\n")
    return "".join(out)


def _reachable(addr: str, families: set[int]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False  # also a link-local address with a %zone: the host's device
    return ip.version in families and not (ip.is_loopback or ip.is_link_local)
