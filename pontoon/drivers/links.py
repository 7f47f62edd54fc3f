"""Plumbing the drivers share: veth pairs, the container side of an
interface, and the options every driver reads the same way."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pontoon.core import addresses
from pontoon.core.model import Attachment, NetworkSpec
from pontoon.errors import InvalidArgument
from pontoon.sandbox import netns

MTU_OPTIONS = ("com.docker.network.driver.mtu", "mtu")
IFA_F_NODAD = 0x02  # an IPv6 address usable at once, without the DAD wait


def host_ifname(attachment_id: str) -> str:
    return "veth" + attachment_id[:11]


def ignore_missing(exc: NetlinkError) -> None:
    if exc.code not in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        raise exc


def mtu_option(spec: NetworkSpec, default: int) -> int:
    for key in MTU_OPTIONS:
        if key in spec.options:
            try:
                mtu = int(spec.options[key])
            except ValueError:
                raise InvalidArgument(f"invalid MTU {spec.options[key]!r}") from None
            if not 68 <= mtu <= 65535:
                raise InvalidArgument(f"invalid MTU {mtu}: must be 68-65535")
            return mtu
    return default


def add_veth(
    ipr: IPRoute,
    att: Attachment,
    mtu: int,
    sandbox: Path,
    host_ns: Path | None = None,
    master: int | None = None,
) -> None:
    """One netlink request makes the pair with both ends where they belong:
    the host side in `host_ns` (ipr's namespace when None), the container side
    already in the sandbox, named as asked, with its MAC. With `master` (a
    bridge of ipr's namespace), the host side is born a port of it and up:
    one request less per endpoint, 2 of 6 ms here."""
    fds = [os.open(sandbox, os.O_RDONLY)]
    extra: dict[str, object] = {}
    if master is not None:
        extra.update(master=master, state="up")
    try:
        if host_ns is not None:
            fds.append(os.open(host_ns, os.O_RDONLY))
            extra["net_ns_fd"] = fds[1]
        ipr.link(
            "add",
            ifname=att.host_ifname,
            kind="veth",
            mtu=mtu,
            peer={"ifname": att.ifname, "net_ns_fd": fds[0], "address": att.mac, "mtu": mtu},
            **extra,
        )
    finally:
        for fd in fds:
            os.close(fd)


def configure_container_side(sandbox: Path, att: Attachment) -> None:
    """Addresses, link up and (for the default-route network) a default route
    per family; `lo` too, on the socket we have open anyway (sandboxes are
    made without it). Nothing for an interface handed over: its owner's
    runtime configures it once it has moved it."""
    if att.handover:
        return
    with netns.iproute(sandbox) as ipr:
        ipr.link("set", index=1, state="up")  # lo is always ifindex 1
        idx = ipr.link_lookup(ifname=att.ifname)[0]
        for interface in att.addresses:
            extra = {"flags": IFA_F_NODAD} if addresses.family_of(interface) == 6 else {}
            ipr.addr(
                "add",
                index=idx,
                address=addresses.address_of(interface),
                prefixlen=addresses.prefixlen_of(interface),
                **extra,
            )
        ipr.link("set", index=idx, state="up")
        if att.default_route:
            for gateway in att.gateways:
                family = addresses.family_of(gateway)
                ipr.route("add", dst=addresses.default_route(family), gateway=gateway, oif=idx)


def pin_bridge_address(ipr: IPRoute, index: int) -> None:
    """Set a bridge's MAC to the one it has. Until its MAC is set, a Linux
    bridge takes the lowest MAC of its ports, so a container joining or
    leaving changes the gateway's MAC under every other container, whose
    neighbour entries then point at nobody until they expire (tens of
    seconds without replies through the gateway)."""
    (link,) = ipr.link("get", index=index)
    ipr.link("set", index=index, address=link.get_attr("IFLA_ADDRESS"))


def ensure_addresses(ipr: IPRoute, index: int, wanted: list[tuple[str, int]]) -> None:
    """Give a device these (address, prefixlen) pairs unless it has them."""
    have = {(a.get("address"), a["prefixlen"]) for a in ipr.addr("dump", index=index)}
    for address, prefixlen in wanted:
        if (address, prefixlen) not in have:
            extra = {"flags": IFA_F_NODAD} if addresses.family_of(address) == 6 else {}
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen, **extra)


def ipv6_enabled(proc_sys: Path = Path("/proc/sys")) -> bool:
    """Whether this namespace can carry IPv6: not booted with ipv6.disable=1
    (no net/ipv6 at all), and not switched off for new devices."""
    knob = proc_sys / "net/ipv6/conf/default/disable_ipv6"
    return knob.exists() and knob.read_text().strip() == "0"


def enable_forwarding(families: set[int], proc_sys: Path = Path("/proc/sys")) -> None:
    """Let this namespace route for its bridges in these families. Turning
    IPv6 forwarding on makes the kernel ignore router advertisements on every
    interface with accept_ra=1, which dropped Docker hosts' default routes:
    those interfaces get accept_ra=2 (accept them even when forwarding) first.
    /proc/sys/net is the calling thread's namespace (the daemon's host)."""
    for family in sorted(families):
        knob = proc_sys / addresses.forwarding_sysctl(family)
        if knob.read_text().strip() == "1":
            continue
        if family == 6:
            keep_router_advertisements(proc_sys / "net/ipv6/conf")
        knob.write_text("1\n")


def keep_router_advertisements(conf: Path) -> list[str]:
    """accept_ra 1 -> 2 on every existing interface, so that router
    advertisements keep configuring the host with forwarding on. Not the
    `default` for new devices: our bridges must never take a container's RA
    (the class of CVE-2020-13401). Returns the interfaces changed."""
    changed = []
    for entry in sorted(conf.iterdir()):
        knob = entry / "accept_ra"
        if entry.name in ("all", "default") or not knob.exists():
            continue
        if knob.read_text().strip() == "1":
            knob.write_text("2\n")
            changed.append(entry.name)
    return changed


def refuse_router_advertisements(ifname: str, proc_sys: Path = Path("/proc/sys")) -> None:
    """A bridge faces containers: whatever the host's default, no RA heard
    on it may change the host's routes."""
    knob = proc_sys / "net/ipv6/conf" / ifname / "accept_ra"
    if knob.exists():
        knob.write_text("0\n")


def delete_link(ipr: IPRoute, ifname: str) -> None:
    try:
        ipr.link("del", ifname=ifname)
    except NetlinkError as exc:
        ignore_missing(exc)


def describe_endpoint(ipr: IPRoute, sandbox: Path, att: Attachment) -> dict[str, object]:
    """What the seed found with `ethtool -S` and `ip link`: both ends of the
    veth with their ifindexes, and the container side's MTU. `ipr` is bound
    to the namespace holding the host side (the host's, or an overlay's)."""
    info: dict[str, object] = {"HostInterface": att.host_ifname}
    found = ipr.link_lookup(ifname=att.host_ifname) if att.host_ifname else []
    info["HostIfindex"] = found[0] if found else None
    try:
        with netns.iproute(sandbox) as nipr:
            link = nipr.link("get", ifname=att.ifname)[0]
            info["Ifindex"] = link["index"]
            info["PeerIfindex"] = link.get("IFLA_LINK")
            info["MTU"] = link.get("IFLA_MTU")
    except (OSError, NetlinkError, IndexError):
        info["Ifindex"] = None
    return info


def sandbox_routes(sandbox: Path) -> list[str]:
    """The namespace's routing tables, as `ip route` prints them (the seed's
    first look). Empty when the namespace is gone (its owner is leaving)."""
    try:
        return _routes(sandbox)
    except (OSError, NetlinkError):
        return []


def _routes(sandbox: Path) -> list[str]:
    out = []
    with netns.iproute(sandbox) as nipr:
        names = {link["index"]: link.get("ifname") for link in nipr.link("dump")}
        for family in addresses.FAMILIES:
            for route in nipr.route("dump", family=addresses.socket_family(family), table=254):
                dst = route.get("dst")
                if family == 6 and (route.get("type") != 1 or (dst or "").startswith("fe80")):
                    continue  # link-local and multicast noise every IPv6 device has
                dest = f"{dst}/{route['dst_len']}" if dst else "default"
                parts = [dest]
                if route.get("gateway"):
                    parts.append(f"via {route.get('gateway')}")
                parts.append(f"dev {names.get(route.get('oif'), '?')}")
                if route.get("prefsrc"):
                    parts.append(f"src {route.get('prefsrc')}")
                out.append(" ".join(parts))
    return out


def bridge_ports(ipr: IPRoute, bridge: str) -> list[str]:
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        return []
    return sorted(
        link.get("ifname") for link in ipr.link("dump") if link.get("IFLA_MASTER") == found[0]
    )
