"""What a trace may know of this host: a small read-only view over the engine
and the container runtime, so that trace does not depend on either's inside."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pontoon.core import model
from pontoon.core.model import Attachment, Network, Owner, Peer
from pontoon.engine.ports import proxy_id

if TYPE_CHECKING:
    from pontoon.cluster.agent import ClusterAgent
    from pontoon.daemon.config import DaemonConfig
    from pontoon.engine.engine import Engine
    from pontoon.engine.kernel import Kernel
    from pontoon.runtime.containers import Runtime


@dataclasses.dataclass
class Member:
    """One owner's namespace on this host with its attachments."""

    owner: Owner
    netns: Path
    attachments: list[Attachment]

    @property
    def name(self) -> str:
        return self.owner.name or self.owner.id[:12]

    @property
    def first_network(self) -> str:
        return self.attachments[0].network_id if self.attachments else ""


class Inventory:
    def __init__(self, config: DaemonConfig, engine: Engine, runtime: Runtime) -> None:
        self._engine = engine
        self._runtime = runtime
        self.kernel: Kernel = engine.kernel
        self.cluster: ClusterAgent | None = engine.cluster
        self.proxy: Any = engine.ports.proxy
        self.vxlan_port = config.vxlan_port if engine.cluster is not None else 0

    def _members(self) -> list[Member]:
        owners: dict[str, Member] = {}
        for att in self._engine.state.attachments.values():
            member = owners.setdefault(att.owner.key, Member(att.owner, Path(att.netns), []))
            member.attachments.append(att)
        # A container's asked networks first, in its order (eth0 = its primary).
        for c in self._runtime.containers.values():
            found = owners.get(c.owner.key)
            if found is not None:
                order = [r.network_id for r in c.networks]
                found.attachments.sort(
                    key=lambda a: order.index(a.network_id) if a.network_id in order else 99
                )
        return list(owners.values())

    def member(self, name: str) -> Member | None:
        """A local owner by name, owner ID (or its 12-character short form) or
        one of its attachments' IDs; pontoon's own containers only while running."""
        for m in self._members():
            if _names(m, name):
                c = self._runtime.containers.get(m.owner.id)
                if m.owner.kind != model.OWNER_PONTOON or (c and c.state == model.RUNNING):
                    return m
        return None

    def remote(self, name: str) -> Peer | None:
        return next((p for p in self._engine.state.remote.values() if p.name == name), None)

    def member_with_ip(self, ip: str) -> tuple[Member, Attachment] | None:
        for m in self._members():
            for att in m.attachments:
                if ip in att.ips:
                    return m, att
        return None

    def network(self, network_id: str) -> Network | None:
        return self._engine.state.networks.get(network_id)

    def namespaces_of(self, net: Network) -> list[Path]:
        """Namespaces the network's driver keeps here (where netfilter may run)."""
        return self._engine.drivers.of(net).owned_namespaces(net)

    def devices(self, net: Network, att: Attachment) -> list[dict[str, Any]]:
        return self._engine.drivers.of(net).trace_devices(net, att)

    def proxy_backend(self, mapping_id: str) -> str:
        owner_id = mapping_id.split("/", 1)[0]
        for att in self._engine.state.attachments.values():
            if att.owner.id.startswith(owner_id) and att.ports:
                for p in att.ports:
                    if proxy_id(att, p) == mapping_id:
                        return self._engine.ports.backend(att, p)
                return self._engine.ports.backend(att, att.ports[0])
        return ""


def _names(member: Member, name: str) -> bool:
    """Whether `name` designates the member: CNI owners are known to their
    runtime by container ID, to pontoon by attachment ID."""
    owner = member.owner
    short = len(name) >= 12 and owner.id.startswith(name)
    return name in (owner.name, owner.id) or short or any(a.id == name for a in member.attachments)
