"""The objects pontoon manages and how they are stored.

Network, Endpoint and Container follow libnetwork's model: a network is a
broadcast domain, an endpoint is one container's attachment to one network,
and a container owns a sandbox (its network namespace) plus a main process.
Records are plain dataclasses so that every store backend holds them as JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import secrets
from typing import Any, Self

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
    """JSON round-trip for the dataclasses below; unknown keys are ignored so
    that a newer daemon's records load in an older one."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def loads(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass
class Network(Record):
    id: str
    name: str
    driver: str
    scope: str = "local"
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    internal: bool = False
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    bridge: str = ""
    mtu: int = 1500
    vni: int = 0
    created: str = dataclasses.field(default_factory=now)
    status: str = CREATING
    default: bool = False  # the built-in `bridge` network (no embedded DNS there)
    icc: bool = True  # containers may talk to each other (False on the gateway bridge)
    gateway_bridge: bool = False  # pontoon_gwbridge: outside access for overlay containers


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """What `network create` asks for, before any choice is made."""

    name: str
    driver: str = "bridge"
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    internal: bool = False
    options: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PortMapping(Record):
    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"


@dataclasses.dataclass
class Endpoint(Record):
    id: str
    network_id: str
    container_id: str
    container_name: str
    ifname: str
    ip: str
    mac: str
    prefixlen: int
    gateway: str = ""
    host_ifname: str = ""
    aliases: list[str] = dataclasses.field(default_factory=list)
    default_route: bool = False
    dns_names: list[str] = dataclasses.field(default_factory=list)  # what peers resolve
    host: str = ""  # the host (daemon) holding the container, for global networks
    vtep: str = ""  # that host's VXLAN tunnel endpoint


@dataclasses.dataclass
class NetworkRequest(Record):
    """What `run --net/--ip/--network-alias` or `network connect` asked for."""

    network_id: str
    ip: str = ""
    aliases: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Container(Record):
    id: str
    name: str
    hostname: str
    command: list[str]
    env: list[str] = dataclasses.field(default_factory=list)
    networks: list[NetworkRequest] = dataclasses.field(default_factory=list)
    endpoints: dict[str, str] = dataclasses.field(default_factory=dict)  # network id -> endpoint id
    ports: list[PortMapping] = dataclasses.field(default_factory=list)
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
