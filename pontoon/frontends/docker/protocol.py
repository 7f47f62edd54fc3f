"""Docker's plugin protocol, as data: the payloads libnetwork sends a remote
network driver and a remote IPAM driver, turned into pontoon's terms, and
the replies. No I/O here (the server is plugin.py).

References: moby/libnetwork docs/remote.md and docs/ipam.md, and what
dockerd 20.10 actually sends (tests/unit/test_docker_protocol.py keeps
captured payloads).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

from pontoon.core.model import Network, NetworkSpec, Subnet
from pontoon.errors import InvalidArgument
from pontoon.frontends import fields
from pontoon.frontends.fields import array as _list
from pontoon.frontends.fields import mapping as _dict
from pontoon.frontends.fields import string as _str
from pontoon.frontends.fields import whole_number as _int
from pontoon.portmap.spec import ANY, ANY6, PortRequest

PLUGIN_NAME = "pontoon"
IMPLEMENTS = ["NetworkDriver", "IpamDriver"]
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

# Keys libnetwork uses (netlabel).
GENERIC = "com.docker.network.generic"  # the -o options of `network create`
INTERNAL = "com.docker.network.internal"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
PORT_MAP = "com.docker.network.portmap"
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY_ADDRESS = "com.docker.network.gateway"

# Our own options, in `-o` (driver) and `--ipam-opt` (IPAM).
DRIVER_OPTION = "pontoon.driver"  # bridge (default), overlay, macvlan
# The pontoon network a Docker network stands for, when pontoon made the
# Docker network itself (a global network seen from another host).
NETWORK_OPTION = "pontoon.network"

LOCAL_ADDRESS_SPACE = "pontoon"
GLOBAL_ADDRESS_SPACE = "pontoon-global"
POOL_PREFIX = "pontoon:"
# Where the interface goes once Docker moved it: eth0, eth1, … (Docker adds the index).
DST_PREFIX = "eth"
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


def error_key(path: str) -> str:
    """Network-driver replies carry `Err`, IPAM replies `Error`."""
    return "Error" if path.startswith("/IpamDriver.") else "Err"


def error_reply(path: str, message: str) -> dict[str, str]:
    """One line, whatever a message quotes of the payload (Docker shows it as
    the command's error)."""
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")
    return {error_key(path): f"{PLUGIN_NAME}: {one_line}"}


# -- IPAM pools --------------------------------------------------------------------


def pool_id(pool: str, sub_pool: str = "") -> str:
    """A pool's ID says what it is (no state needed to read it back, also
    after a restart): pontoon:<subnet>[:<ip range>]."""
    return POOL_PREFIX + pool + (f":{sub_pool}" if sub_pool else "")


# The subnet ends at its prefix length: IPv6 subnets have colons of their own.
_POOL_ID_RE = re.compile(r"([^/]+/\d+)(?::([^/]+/\d+))?")


def parse_pool_id(value: str) -> tuple[str, str]:
    found = _POOL_ID_RE.fullmatch(value.removeprefix(POOL_PREFIX))
    if not value.startswith(POOL_PREFIX) or found is None:
        raise InvalidArgument(f"unknown pool {value!r}")
    return found.group(1), found.group(2) or ""


@dataclasses.dataclass(frozen=True)
class PoolRequest:
    pool: str  # CIDR, "" for "choose one"
    sub_pool: str
    options: dict[str, str]
    family: int = 4  # Docker asks once per family (V6: true with --ipv6)


def pool_request(data: dict[str, Any]) -> PoolRequest:
    pool, sub_pool = _str(data, "Pool"), _str(data, "SubPool")
    family = 6 if data.get("V6") is True else 4
    if sub_pool and not pool:
        raise InvalidArgument("--ip-range needs --subnet")
    if pool:
        subnet = _network(pool, "subnet")
        if subnet.version != family:
            raise InvalidArgument(f"subnet {subnet} is not an IPv{family} subnet")
        pool = str(subnet)
    if sub_pool:
        rng = _network(sub_pool, "ip-range")
        if rng.version != family or not rng.subnet_of(_network(pool, "subnet")):  # type: ignore[arg-type]
            raise InvalidArgument(f"ip-range {rng} is not inside subnet {pool}")
        sub_pool = str(rng)
    options = _dict(data, "Options")
    unknown = sorted(set(options) - {NETWORK_OPTION})
    if unknown:
        raise InvalidArgument(f"unknown IPAM option {unknown[0]!r}")
    return PoolRequest(pool, sub_pool, {str(k): str(v) for k, v in options.items()}, family)


def aux_address(pool: str, asked: str) -> str:
    """An --aux-address Docker reserves before the network exists: a host
    address of the pool (reserved in pontoon's IPAM once the network is made)."""
    net = _network(pool, "subnet")
    addr = _address(asked, "auxiliary address")
    if not _host_address(net, addr):
        raise InvalidArgument(f"auxiliary address {addr} is not a usable address of subnet {net}")
    return with_prefix(str(addr), pool)


def is_gateway_request(data: dict[str, Any]) -> bool:
    options = data.get("Options") or {}
    return isinstance(options, dict) and options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_ADDRESS


def gateway_for(pool: str, asked: str) -> str:
    """The gateway Docker reserves at network creation: the one asked, else
    the pool's first host address (as pontoon's IPAM would pick)."""
    net = _network(pool, "subnet")
    if not asked:
        return str(next(iter(net.hosts())))
    addr = _address(asked, "gateway")
    if not _host_address(net, addr):
        raise InvalidArgument(f"gateway {addr} is not a usable address of subnet {net}")
    return str(addr)


def with_prefix(address: str, pool: str) -> str:
    return f"{address}/{_network(pool, 'subnet').prefixlen}"


# -- networks -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetworkCreate:
    network_id: str
    spec: NetworkSpec  # its name is a placeholder: Docker does not say it
    pools: tuple[str, ...]  # one subnet per family, IPv4 first
    existing: str  # NETWORK_OPTION: a pontoon network this one stands for
    aux: tuple[str, ...] = ()  # --aux-address: never handed out


def network_create(data: dict[str, Any], placeholder_name: str) -> NetworkCreate:
    network_id = _str(data, "NetworkID")
    if not network_id:
        raise InvalidArgument("NetworkID is required")
    options = _dict(data, "Options")
    v4, v6 = _list(data, "IPv4Data"), _list(data, "IPv6Data")
    if len(v4) != 1:
        raise InvalidArgument("give exactly one IPv4 subnet")
    if len(v6) > 1:
        raise InvalidArgument("give at most one IPv6 subnet")
    ipv6 = bool(v6)
    if options.get(ENABLE_IPV6) is True and not ipv6:
        raise InvalidArgument("--ipv6 needs an IPv6 subnet from the IPAM driver")
    subnets, aux = [], []
    for family, entry in ((4, v4[0]), *((6, e) for e in v6)):
        subnet, entry_aux = _ipam_data(entry, family)
        subnets.append(subnet)
        aux += entry_aux
    generic = dict(_dict(options, GENERIC))  # a copy: its options are popped
    driver = str(generic.pop(DRIVER_OPTION, "bridge"))
    existing = str(generic.pop(NETWORK_OPTION, ""))
    spec = NetworkSpec(
        name=placeholder_name,
        driver=driver,
        subnets=tuple(subnets),
        internal=bool(options.get(INTERNAL)),
        options={str(k): str(v) for k, v in generic.items()},
        ipv6=ipv6,
    )
    pools = tuple(s.subnet for s in subnets)
    return NetworkCreate(network_id, spec, pools, existing, tuple(dict.fromkeys(aux)))


def _ipam_data(entry: Any, family: int) -> tuple[Subnet, list[str]]:
    """One IPv4Data/IPv6Data entry: its subnet (and gateway) and the
    auxiliary addresses in it."""
    if not isinstance(entry, dict):
        raise InvalidArgument(f"IPv{family}Data must be a list of objects")
    subnet = _network(_str(entry, "Pool"), "subnet")
    if subnet.version != family:
        raise InvalidArgument(f"subnet {subnet} is not an IPv{family} subnet")
    pool = str(subnet)
    gateway = _str(entry, "Gateway").partition("/")[0]
    if gateway:
        gateway = gateway_for(pool, gateway)
    aux = []
    for value in _dict(entry, "AuxAddresses").values():
        if not isinstance(value, str):
            raise InvalidArgument("AuxAddresses must map names to addresses")
        address = aux_address(pool, value.partition("/")[0])
        if address.partition("/")[0] == gateway:
            raise InvalidArgument(f"auxiliary address {gateway} is the gateway")
        aux.append(address.partition("/")[0])
    return Subnet(pool, gateway), aux


def docker_network_body(net: Network) -> dict[str, Any]:
    """POST /networks/create for a pontoon network pontoon shows in dockerd:
    both option maps name it, so our IPAM and driver bind to it."""
    config = [sub.ipam_config() for sub in net.subnets]
    return {
        "Name": net.name,
        "Driver": PLUGIN_NAME,
        "CheckDuplicate": True,
        "Internal": net.internal,
        "EnableIPv6": net.subnet_for(6) is not None,
        "IPAM": {"Driver": PLUGIN_NAME, "Config": config, "Options": {NETWORK_OPTION: net.id}},
        "Options": {NETWORK_OPTION: net.id, DRIVER_OPTION: net.driver},
    }


def shows_subnets_of(info: dict[str, Any], net: Network) -> bool:
    """Whether a network as dockerd shows it (GET /networks/ID) has every
    subnet of the pontoon network it stands for: a Docker network's IPAM
    configuration is fixed when it is made, so it never learns one added later."""
    config = _dict(info, "IPAM").get("Config") or []
    shown = {
        str(_network(str(c["Subnet"]), "subnet"))
        for c in config
        if isinstance(c, dict) and c.get("Subnet")
    }
    return all(s.subnet in shown for s in net.subnets)


# -- endpoints ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EndpointCreate:
    network_id: str
    endpoint_id: str
    address: str  # address/prefix from our IPAM
    mac: str  # asked (--mac-address), or ""
    address6: str = ""  # the IPv6 one (address/prefix), on a network with IPv6


def endpoint_create(data: dict[str, Any]) -> EndpointCreate:
    iface = _dict(data, "Interface")
    address, address6 = _str(iface, "Address"), _str(iface, "AddressIPv6")
    if not address:
        raise InvalidArgument("the endpoint has no address: create the network with "
                              "--ipam-driver pontoon")  # fmt: skip
    for text, kind in ((address, ipaddress.IPv4Interface), (address6, ipaddress.IPv6Interface)):
        try:
            if text:
                kind(text)
        except ValueError:
            raise InvalidArgument(f"invalid endpoint address {text!r}") from None
    network_id, endpoint_id = _str(data, "NetworkID"), _str(data, "EndpointID")
    if not network_id or not endpoint_id:
        raise InvalidArgument("NetworkID and EndpointID are required")
    mac = fields.mac(iface, "MacAddress")
    return EndpointCreate(network_id, endpoint_id, address, mac, address6)


def interface_name(endpoint_id: str) -> str:
    """The container side's name until Docker moves it (15 characters at most)."""
    return "vpt" + endpoint_id[:12]


def join_reply(
    src_name: str, gateway: str, own_gateway: bool = False, gateway6: str = ""
) -> dict[str, Any]:
    """`own_gateway`: the way out comes from pontoon (its gateway bridge), so
    Docker must not add its docker_gwbridge. Docker adds a default route per
    gateway given (GatewayIPv6: the IPv6 one)."""
    reply: dict[str, Any] = {"InterfaceName": {"SrcName": src_name, "DstPrefix": DST_PREFIX}}
    if gateway:
        reply["Gateway"] = gateway
    if gateway6:
        reply["GatewayIPv6"] = gateway6
    if own_gateway:
        reply["DisableGatewayService"] = True
    return reply


def port_requests(options: Any) -> list[PortRequest]:
    """Docker's port bindings (ranges already expanded, -P as host port 0, a
    host IP as HostIP) as pontoon's port requests. A binding without a host
    IP is published on both families, as pontoon's own `-p` (the `::` one
    implicit: left out where IPv6 cannot serve it)."""
    out: list[PortRequest] = []
    if not isinstance(options, dict):
        raise InvalidArgument("Options must be an object")
    for binding in _list(options, PORT_MAP):
        if not isinstance(binding, dict):
            raise InvalidArgument(f"{PORT_MAP} must be a list of objects")
        proto = PROTOCOLS.get(_int(binding, "Proto", 6, 0, 255))
        if proto is None:
            raise InvalidArgument(f"unsupported protocol number {binding.get('Proto')}")
        host_ip = _str(binding, "HostIP")
        if host_ip:
            host_ip = str(_address(host_ip, "host IP"))
        host_port = _int(binding, "HostPort", 0, 0, 65535)
        end = _int(binding, "HostPortEnd", 0, 0, 65535) or host_port
        if host_port and end != host_port:
            raise InvalidArgument(
                f"host port range {host_port}-{end} for one container port is not supported"
            )
        container_port = _int(binding, "Port", 0, 1, 65535)
        if host_ip:
            wanted = [PortRequest(host_ip, host_port, container_port, proto)]
        else:
            wanted = [
                PortRequest(ANY, host_port, container_port, proto),
                PortRequest(ANY6, host_port, container_port, proto, implicit=True),
            ]
        for request in wanted:
            if not any(_same_binding(request, seen) for seen in out):
                out.append(request)
    return out


def _same_binding(a: PortRequest, b: PortRequest) -> bool:
    return (a.host_ip, a.host_port, a.container_port, a.proto) == (
        b.host_ip, b.host_port, b.container_port, b.proto
    )  # fmt: skip


# -- helpers ------------------------------------------------------------------------


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r}") from None


def _host_address(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    """In the subnet, not its network address, nor (IPv4) its broadcast one."""
    if addr.version != net.version or addr not in net or addr == net.network_address:
        return False
    return net.version == 6 or addr != net.broadcast_address


def _address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r}") from None
