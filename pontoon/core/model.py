"""The records pontoon keeps, and how they are stored.

A network is a broadcast domain with one or more subnets (one per address
family). An attachment is a network namespace joined to a network as one
interface, for an owner: pontoon's own container runtime, a CNI runtime or
dockerd. Everything else (containers, ports, DNS views) hangs off those two.

Records are plain dataclasses stored as JSON. Each carries a schema version;
`from_dict` upgrades what an older release wrote, and unknown keys are ignored
so that a newer daemon's records load in an older one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import secrets
from typing import Any, ClassVar, Self

from pontoon.core import addresses
from pontoon.errors import InvalidArgument

# Used with fullmatch: `$` would also accept a trailing newline.
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
HOSTNAME_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")

# Lifecycle markers. A record written in a "creating" state is an intent:
# if the daemon dies before it turns "ready"/"running", restart rolls it back.
CREATING = "creating"
READY = "ready"
RUNNING = "running"
EXITED = "exited"

# Who asked for an attachment. Reconciliation treats each kind by its own rules:
# only pontoon's own containers are ever judged stray by pontoon alone.
OWNER_PONTOON = "pontoon"
OWNER_CNI = "cni"
OWNER_DOCKER = "docker"
OWNER_KINDS = (OWNER_PONTOON, OWNER_CNI, OWNER_DOCKER)


def new_id() -> str:
    return secrets.token_hex(32)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: use 1-64 characters [a-zA-Z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


def check_hostname(name: str) -> str:
    if not HOSTNAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid hostname {name!r}: use a DNS label of 1-63 characters")
    return name


class Record:
    """JSON round-trip for the dataclasses below. SCHEMA is the version this
    release writes; `upgrade` turns an older record's dict into the current
    shape before it is loaded."""

    SCHEMA: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if data.get("schema", 1) < cls.SCHEMA:
            data = cls.upgrade(dict(data))
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def loads(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


# -- networks -------------------------------------------------------------------


@dataclasses.dataclass
class Subnet(Record):
    """One address family's addressing on a network."""

    subnet: str  # CIDR
    gateway: str = ""
    ip_range: str = ""  # the part endpoints get addresses from (CIDR; empty: all of it)

    @property
    def family(self) -> int:
        return addresses.family_of(self.subnet)

    def ipam_config(self) -> dict[str, str]:
        """Docker's IPAM.Config entry (inspect shows it; dockerd is given it)."""
        entry = {"Subnet": self.subnet, "Gateway": self.gateway}
        if self.ip_range:
            entry["IPRange"] = self.ip_range
        return entry


@dataclasses.dataclass
class Network(Record):
    SCHEMA: ClassVar[int] = 2

    id: str
    name: str
    driver: str
    scope: str = "local"
    subnets: list[Subnet] = dataclasses.field(default_factory=list)
    internal: bool = False
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    bridge: str = ""  # the host device the host firewall filters on (bridge driver)
    mtu: int = 1500
    vni: int = 0
    created: str = dataclasses.field(default_factory=now)
    status: str = CREATING
    default: bool = False  # the built-in `bridge` network (no embedded DNS there)
    icc: bool = True  # containers may talk to each other (False on the gateway bridge)
    gateway_bridge: bool = False  # pontoon_gwbridge: outside access for overlay containers
    schema: int = 2

    def subnet_for(self, family: int) -> Subnet | None:
        return next((s for s in self.subnets if s.family == family), None)

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Release 1 had one IPv4 subnet in three flat fields.
        if "subnets" not in data and data.get("subnet"):
            data["subnets"] = [
                {
                    "subnet": data["subnet"],
                    "gateway": data.get("gateway", ""),
                    "ip_range": data.get("ip_range", ""),
                }
            ]
        data["schema"] = cls.SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        net = super().from_dict(data)
        net.subnets = [s if isinstance(s, Subnet) else Subnet.from_dict(s) for s in net.subnets]
        return net

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        # Release-1 daemons on other hosts read overlay records from etcd during
        # a rolling upgrade: keep the flat IPv4 fields they know beside the list.
        first = self.subnet_for(4)
        if first is not None:
            out.update(subnet=first.subnet, gateway=first.gateway, ip_range=first.ip_range)
        return out


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """What `network create` asks for, before any choice is made."""

    name: str
    driver: str = "bridge"
    subnets: tuple[Subnet, ...] = ()
    internal: bool = False
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    ipv4: bool = True  # Docker's --ipv4 (false: an IPv6-only network)
    ipv6: bool = False  # Docker's --ipv6


# -- attachments ----------------------------------------------------------------


@dataclasses.dataclass
class Owner(Record):
    """Who an attachment is for. `id` is unique within the kind (a container
    ID for pontoon and CNI, an endpoint ID for dockerd); `name` is what peers
    resolve and what listings show."""

    kind: str
    id: str
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.id}"


@dataclasses.dataclass
class PortMapping(Record):
    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"


@dataclasses.dataclass
class Attachment(Record):
    """A namespace joined to a network as interface `ifname`, for `owner`.

    `netns` is the namespace file as this daemon sees it: a sandbox pontoon made,
    or a foreign namespace pinned under <exec-root>/netns for the attachment's
    life. `addresses` are interface addresses (address/prefix), one per family.
    """

    SCHEMA: ClassVar[int] = 2

    id: str
    network_id: str
    owner: Owner
    netns: str
    ifname: str
    addresses: list[str] = dataclasses.field(default_factory=list)
    gateways: list[str] = dataclasses.field(default_factory=list)
    mac: str = ""
    host_ifname: str = ""
    aliases: list[str] = dataclasses.field(default_factory=list)
    dns_names: list[str] = dataclasses.field(default_factory=list)  # what peers resolve
    default_route: bool = False
    ports: list[PortMapping] = dataclasses.field(default_factory=list)
    dns_servers: list[str] = dataclasses.field(default_factory=list)  # upstreams for its owner
    pinned: bool = False  # netns is our bind mount of a namespace someone else made
    # The interface was left unconfigured in the daemon's namespace for the
    # owner's runtime to move into netns (Docker's remote drivers).
    handover: bool = False
    # The owner asked for the embedded resolver (CNI's and Docker's may not):
    # a restart starts it again only then.
    resolver: bool = True
    status: str = CREATING
    host: str = ""  # the host (daemon) holding it, for global networks
    vtep: str = ""  # that host's VXLAN tunnel endpoint
    schema: int = 2

    @property
    def ips(self) -> list[str]:
        return [addresses.address_of(a) for a in self.addresses]

    def ip_for(self, family: int) -> str:
        return next((ip for ip in self.ips if addresses.family_of(ip) == family), "")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        att = super().from_dict(data)
        if not isinstance(att.owner, Owner):
            att.owner = Owner.from_dict(att.owner)
        att.ports = [
            p if isinstance(p, PortMapping) else PortMapping.from_dict(p) for p in att.ports
        ]
        return att

    @classmethod
    def from_endpoint(cls, data: dict[str, Any], netns: str) -> Attachment:
        """A release-1 endpoint record (always a pontoon container's, one IPv4
        address) as an attachment; its namespace comes from the container."""
        ip = data.get("ip", "")
        return cls(
            id=data["id"],
            network_id=data["network_id"],
            owner=Owner(OWNER_PONTOON, data["container_id"], data.get("container_name", "")),
            netns=netns,
            ifname=data["ifname"],
            addresses=[f"{ip}/{data['prefixlen']}"] if ip else [],
            gateways=[data["gateway"]] if data.get("gateway") else [],
            mac=data.get("mac", ""),
            host_ifname=data.get("host_ifname", ""),
            aliases=list(data.get("aliases", [])),
            dns_names=list(data.get("dns_names", [])),
            default_route=bool(data.get("default_route")),
            status=READY,
            host=data.get("host", ""),
            vtep=data.get("vtep", ""),
        )


@dataclasses.dataclass
class Peer(Record):
    """An attachment as the cluster store shares it with other hosts.

    Carries release 1's endpoint fields (ip, prefixlen, container_id,
    container_name) beside the address list, so that hosts still on release 1
    keep reading it during a rolling upgrade."""

    SCHEMA: ClassVar[int] = 2

    id: str
    network_id: str
    mac: str
    host: str
    vtep: str
    addresses: list[str] = dataclasses.field(default_factory=list)
    dns_names: list[str] = dataclasses.field(default_factory=list)
    owner_kind: str = OWNER_PONTOON
    owner_id: str = ""
    name: str = ""
    # release 1's shape
    ip: str = ""
    prefixlen: int = 0
    container_id: str = ""
    container_name: str = ""
    ifname: str = "eth0"
    gateway: str = ""
    host_ifname: str = ""
    schema: int = 2

    @classmethod
    def of(cls, att: Attachment) -> Peer:
        first = next(iter(att.addresses), "/0")
        ip, _, plen = first.partition("/")
        return cls(
            id=att.id,
            network_id=att.network_id,
            mac=att.mac,
            host=att.host,
            vtep=att.vtep,
            addresses=list(att.addresses),
            dns_names=list(att.dns_names),
            owner_kind=att.owner.kind,
            owner_id=att.owner.id,
            name=att.owner.name,
            ip=ip,
            prefixlen=int(plen or 0),
            container_id=att.owner.id,
            container_name=att.owner.name,
            ifname=att.ifname,
            gateway=next(iter(att.gateways), ""),
            host_ifname=att.host_ifname,
        )

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        if not data.get("addresses") and data.get("ip"):
            data["addresses"] = [f"{data['ip']}/{data.get('prefixlen', 32)}"]
        data.setdefault("name", data.get("container_name", ""))
        data.setdefault("owner_id", data.get("container_id", ""))
        data["schema"] = cls.SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        # Release 1 wrote no schema and no address list: upgrade by content.
        return super().from_dict(cls.upgrade(dict(data)))

    @property
    def ips(self) -> list[str]:
        return [addresses.address_of(a) for a in self.addresses]


# -- pontoon's own containers -----------------------------------------------------


@dataclasses.dataclass
class NetworkRequest(Record):
    """What `run --net/--ip/--network-alias` or `network connect` asked for."""

    network_id: str
    ip: str = ""
    aliases: list[str] = dataclasses.field(default_factory=list)
    ip6: str = ""  # --ip6


@dataclasses.dataclass
class Container(Record):
    SCHEMA: ClassVar[int] = 2

    id: str
    name: str
    hostname: str
    command: list[str]
    env: list[str] = dataclasses.field(default_factory=list)
    networks: list[NetworkRequest] = dataclasses.field(default_factory=list)
    attachments: dict[str, str] = dataclasses.field(default_factory=dict)  # network -> attachment
    ports: list[PortMapping] = dataclasses.field(default_factory=list)  # as asked (HostConfig)
    dns: list[str] = dataclasses.field(default_factory=list)
    auto_remove: bool = False
    embedded_dns: bool = False  # on a user-defined network: resolver at 127.0.0.11
    state: str = CREATING
    sandbox: str = ""
    pid: int = 0  # PID 1 of the container, as the host sees it
    pid_start: int = 0
    shim_pid: int = 0
    shim_start: int = 0
    exit_code: int | None = None
    created: str = dataclasses.field(default_factory=now)
    started_at: str = ""
    finished_at: str = ""
    schema: int = 2

    @property
    def owner(self) -> Owner:
        return Owner(OWNER_PONTOON, self.id, self.name)

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Release 1 called attachments endpoints.
        if "attachments" not in data:
            data["attachments"] = data.pop("endpoints", {})
        data["schema"] = cls.SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        obj = super().from_dict(data)
        obj.networks = [
            n if isinstance(n, NetworkRequest) else NetworkRequest.from_dict(n)
            for n in obj.networks
        ]
        obj.ports = [
            p if isinstance(p, PortMapping) else PortMapping.from_dict(p) for p in obj.ports
        ]
        return obj
