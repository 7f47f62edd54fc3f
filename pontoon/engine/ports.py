"""Published ports of attachments: reservation, kernel NAT, the userland proxy.

A host port is reserved (bound) before any rule exists, so a taken port fails
the request before anything changes. The NAT target is the attachment itself
when the host routes to it; an attachment whose network the host cannot reach
(an overlay) is published through its owner's attachment on the gateway
bridge, as Docker publishes overlay containers through docker_gwbridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

from pontoon.core.model import Attachment, Network, PortMapping
from pontoon.drivers.registry import DriverRegistry
from pontoon.engine.kernel import Kernel
from pontoon.engine.state import State
from pontoon.errors import InvalidArgument
from pontoon.firewall import PortRule
from pontoon.portmap import conntrack, reserve
from pontoon.portmap.spec import PortRequest, family_of

log = logging.getLogger(__name__)


class ProxyPort(Protocol):
    """What the engine needs from the userland proxy (pontoon.proxy.client)."""

    def add(self, mapping_id: str, proto: str, sock: socket.socket, ip: str, port: int) -> None: ...

    def remove(self, mapping_id: str) -> None: ...

    def add_many(self, mappings: Sequence[tuple[str, str, socket.socket, str, int]]) -> None: ...

    def remove_many(self, ids: Sequence[str]) -> list[str]: ...

    def list(self) -> dict[str, dict]: ...


def proxy_id(att: Attachment, p: PortMapping) -> str:
    # The owner's ID, not the attachment's: release 1 named mappings after the
    # container, and a proxy that outlived an upgrade still has those names.
    return f"{att.owner.id[:12]}/{p.proto}/{p.host_ip}/{p.host_port}"


class Ports:
    def __init__(self, state: State, drivers: DriverRegistry, kernel: Kernel) -> None:
        self.state = state
        self.drivers = drivers
        self.kernel = kernel
        self.proxy: ProxyPort | None = None
        # Host-port reservations we hold (kernel mode, or until handed to the proxy).
        self._reservations: dict[str, list[socket.socket]] = {}

    def check(self, net: Network, requests: list[PortRequest]) -> None:
        if not requests:
            return
        if net.internal:
            raise InvalidArgument(f"cannot publish ports on internal network {net.name}")
        if not self.drivers.of(net).capabilities.publishes_ports:
            raise InvalidArgument(
                f"{net.driver} network {net.name} does not publish ports: its endpoints are "
                "reachable on the network itself"
            )

    def _families(self, att: Attachment) -> set[int]:
        """The address families the port target will have: its network's (an
        endpoint published through the gateway bridge gets the same ones there,
        and ports are reserved before that attachment exists)."""
        net = self.state.networks.get(att.network_id)
        return {s.family for s in net.subnets} if net is not None else {4}

    def _servable(self, att: Attachment, requests: list[PortRequest]) -> list[PortRequest]:
        """Drop the implicit `::` twins IPv6 cannot serve (a host with IPv6 off;
        kernel mode and a target without IPv6); refuse an explicit IPv6 host IP
        in that case, rather than publish a port nothing answers on."""
        if not any(r.family == 6 for r in requests):
            return requests
        if not reserve.ipv6_available():
            return [r for r in requests if not r.implicit]
        if self.proxy is not None:
            return requests
        for r in requests:
            if r.host_ip == "::1":  # IPv6 has no route_localnet: only a proxy serves it
                raise InvalidArgument(
                    "cannot publish on ::1 with the userland proxy off: the kernel does not "
                    "NAT IPv6 loopback"
                )
        if 6 in self._families(att):
            return requests
        for r in requests:
            if r.family == 6 and not r.implicit:
                raise InvalidArgument(
                    f"cannot publish on IPv6 host IP {r.host_ip}: the network has no IPv6 and "
                    "the userland proxy is off"
                )
        return [r for r in requests if not r.implicit]

    def reserve(self, att: Attachment, requests: list[PortRequest]) -> None:
        """Bind every host port now; ephemeral ports get their number here."""
        requests = self._servable(att, requests)
        taken = reserve.reserve_all(requests, listen=self.proxy is not None)
        att.ports = [
            PortMapping(r.host_ip, port, r.container_port, r.proto)
            for r, (_, port) in zip(requests, taken, strict=True)
        ]
        self._reservations[att.id] = [sock for sock, _ in taken]

    def reserve_existing(self, att: Attachment) -> None:
        """Bind a live attachment's host ports again (after a restart)."""
        reqs = [PortRequest(p.host_ip, p.host_port, p.container_port, p.proto) for p in att.ports]
        taken = reserve.reserve_all(reqs, listen=self.proxy is not None)
        self._reservations[att.id] = [sock for sock, _ in taken]

    def target(self, att: Attachment) -> tuple[Attachment, Network] | None:
        """The attachment (and its network) that published ports DNAT to."""
        net = self.state.networks.get(att.network_id)
        if net is None:
            return None
        caps = self.drivers.of(net).capabilities
        if caps.host_reachable:
            return att, net
        if caps.needs_gateway_bridge:
            gw = self.state.gateway_network()
            for other in self.state.of_owner(att.owner.key):
                if gw is not None and other.network_id == gw.id:
                    return other, gw
        return None

    def pairs(self, att: Attachment) -> list[tuple[PortMapping, PortRule | None]]:
        """Each port of an attachment with its firewall rule: DNAT to the
        target's address of the binding's family, None when it has none."""
        found = self.target(att) if att.ports else None
        if found is None:
            return [(p, None) for p in att.ports]
        target, net = found
        out: list[tuple[PortMapping, PortRule | None]] = []
        for p in att.ports:
            ip = target.ip_for(family_of(p.host_ip))
            rule = PortRule(p.host_ip, p.proto, p.host_port, ip, p.container_port, net.bridge)
            out.append((p, rule if ip else None))
        return out

    def rules(self, att: Attachment) -> list[PortRule]:
        """Firewall rules for an attachment's ports (those the kernel can NAT)."""
        return [rule for _, rule in self.pairs(att) if rule is not None]

    def backend(self, att: Attachment, p: PortMapping) -> str:
        """Where the proxy sends a binding's connections: the target's address
        of the binding's family, else of the other (an IPv6 client of an
        IPv4-only container)."""
        found = self.target(att)
        if found is None:
            return ""
        family = family_of(p.host_ip)
        return found[0].ip_for(family) or found[0].ip_for(10 - family)

    async def publish(self, att: Attachment) -> None:
        found = self.target(att) if att.ports else None
        if found is None:
            return
        target, net = found
        if not target.ips:
            return
        await self.kernel.call(self.drivers.of(net).prepare_publish, net, target)
        await self.kernel.call(self.kernel.firewall.add_ports, self.rules(att))
        if self.proxy is not None:
            await self.hand_to_proxy(att)

    async def hand_to_proxy(self, att: Attachment) -> None:
        """Give the reserved sockets to the proxy; it owns them from now on."""
        assert self.proxy is not None
        socks = self._reservations.pop(att.id, [])
        try:
            # The proxy speaks TCP and UDP; SCTP takes the kernel path only.
            batch = [
                (proxy_id(att, m), m.proto, sock, self.backend(att, m), m.container_port)
                for m, sock in zip(att.ports, socks, strict=True)
                if m.proto != "sctp" and self.backend(att, m)
            ]
            await asyncio.to_thread(self.proxy.add_many, batch)  # one round trip
        finally:
            for sock in socks:
                sock.close()

    async def unpublish(self, att: Attachment) -> None:
        rules = self.rules(att)
        if rules:
            await self.kernel.call(self.kernel.firewall.remove_ports, rules)
        if self.proxy is not None and att.ports:
            ids = [proxy_id(att, mapping) for mapping in att.ports]
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.proxy.remove_many, ids)
        self.release(att)
        taken = [(p.host_ip, p.proto, p.host_port) for p in att.ports if p.host_port]
        if taken:
            await self.kernel.call(conntrack.flush, taken)

    def release(self, att: Attachment) -> None:
        for sock in self._reservations.pop(att.id, []):
            sock.close()

    def all_rules(self) -> list[PortRule]:
        return [rule for att in self.state.attachments.values() for rule in self.rules(att)]

    async def restore(self) -> None:
        """Take the host ports of live attachments back: in kernel mode the
        daemon holds them again; in proxy mode the proxy (which survived us) is
        told exactly the mappings that should exist."""
        published = [a for a in self.state.attachments.values() if a.ports]
        if self.proxy is None:
            for att in published:
                try:
                    self.reserve_existing(att)
                except Exception as exc:  # someone took the port while we were down
                    log.warning("%s: cannot reserve its ports again: %s", _who(att), exc)
            return
        have = await asyncio.to_thread(self.proxy.list)
        want = {proxy_id(a, p): a for a in published for p in a.ports}
        stale = sorted(set(have) - set(want))
        if stale:
            log.info("proxy: removing stale mappings %s", ", ".join(stale))
            await asyncio.to_thread(self.proxy.remove_many, stale)
        for att in {a.id: a for mid, a in want.items() if mid not in have}.values():
            log.info("proxy: restoring the mappings of %s", _who(att))
            try:
                self.reserve_existing(att)
                await self.hand_to_proxy(att)
            except Exception as exc:
                log.warning("%s: cannot restore its ports: %s", _who(att), exc)


def _who(att: Attachment) -> str:
    return f"{att.owner.kind} {att.owner.name or att.owner.id[:12]}"
