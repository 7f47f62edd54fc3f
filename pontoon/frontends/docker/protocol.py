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
from pontoon.frontends.fields import string as _str
from pontoon.portmap.spec import ANY, PortRequest

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
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


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


def parse_pool_id(value: str) -> tuple[str, str]:
    if not value.startswith(POOL_PREFIX):
        raise InvalidArgument(f"unknown pool {value!r}")
    pool, _, sub_pool = value.removeprefix(POOL_PREFIX).partition(":")
    return pool, sub_pool


@dataclasses.dataclass(frozen=True)
class PoolRequest:
    pool: str  # CIDR, "" for "choose one"
    sub_pool: str
    options: dict[str, str]


def pool_request(data: dict[str, Any]) -> PoolRequest:
    pool, sub_pool = _str(data, "Pool"), _str(data, "SubPool")
    if data.get("V6") or (pool and _network(pool, "subnet").version == 6):
        raise InvalidArgument("IPv6 subnets are not supported yet")
    if sub_pool and not pool:
        raise InvalidArgument("--ip-range needs --subnet")
    if pool:
        pool = str(_network(pool, "subnet"))
    if sub_pool:
        rng = _network(sub_pool, "ip-range")
        if rng.version != 4 or not rng.subnet_of(_network(pool, "subnet")):  # type: ignore[arg-type]
            raise InvalidArgument(f"ip-range {rng} is not inside subnet {pool}")
        sub_pool = str(rng)
    options = _dict(data, "Options")
    unknown = sorted(set(options) - {NETWORK_OPTION})
    if unknown:
        raise InvalidArgument(f"unknown IPAM option {unknown[0]!r}")
    return PoolRequest(pool, sub_pool, {str(k): str(v) for k, v in options.items()})


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
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise InvalidArgument(f"gateway {addr} is not a usable address of subnet {net}")
    return str(addr)


def with_prefix(address: str, pool: str) -> str:
    return f"{address}/{_network(pool, 'subnet').prefixlen}"


# -- networks -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetworkCreate:
    network_id: str
    spec: NetworkSpec  # its name is a placeholder: Docker does not say it
    pool: str
    gateway: str
    existing: str  # NETWORK_OPTION: a pontoon network this one stands for


def network_create(data: dict[str, Any], placeholder_name: str) -> NetworkCreate:
    network_id = _str(data, "NetworkID")
    if not network_id:
        raise InvalidArgument("NetworkID is required")
    options = _dict(data, "Options")
    if data.get("IPv6Data") or options.get(ENABLE_IPV6):
        raise InvalidArgument("IPv6 subnets are not supported yet")
    v4 = _list(data, "IPv4Data")
    if len(v4) != 1 or not isinstance(v4[0], dict):
        raise InvalidArgument("give exactly one IPv4 subnet")
    if v4[0].get("AuxAddresses"):
        raise InvalidArgument("auxiliary addresses (--aux-address) are not supported")
    subnet = _network(_str(v4[0], "Pool"), "subnet")
    if subnet.version != 4:
        raise InvalidArgument("IPv6 subnets are not supported yet")
    pool = str(subnet)
    gateway = _str(v4[0], "Gateway").partition("/")[0]
    if gateway:
        gateway = gateway_for(pool, gateway)
    generic = dict(_dict(options, GENERIC))  # a copy: its options are popped
    driver = str(generic.pop(DRIVER_OPTION, "bridge"))
    existing = str(generic.pop(NETWORK_OPTION, ""))
    spec = NetworkSpec(
        name=placeholder_name,
        driver=driver,
        subnets=(Subnet(pool, gateway),),
        internal=bool(options.get(INTERNAL)),
        options={str(k): str(v) for k, v in generic.items()},
    )
    return NetworkCreate(network_id, spec, pool, gateway, existing)


def docker_network_body(net: Network) -> dict[str, Any]:
    """POST /networks/create for a pontoon network pontoon shows in dockerd:
    both option maps name it, so our IPAM and driver bind to it."""
    config = [sub.ipam_config() for sub in net.subnets]
    return {
        "Name": net.name,
        "Driver": PLUGIN_NAME,
        "CheckDuplicate": True,
        "Internal": net.internal,
        "IPAM": {"Driver": PLUGIN_NAME, "Config": config, "Options": {NETWORK_OPTION: net.id}},
        "Options": {NETWORK_OPTION: net.id, DRIVER_OPTION: net.driver},
    }


# -- endpoints ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EndpointCreate:
    network_id: str
    endpoint_id: str
    address: str  # address/prefix from our IPAM
    mac: str  # asked (--mac-address), or ""


def endpoint_create(data: dict[str, Any]) -> EndpointCreate:
    iface = _dict(data, "Interface")
    if iface.get("AddressIPv6"):
        raise InvalidArgument("IPv6 addresses are not supported yet")
    address = _str(iface, "Address")
    if not address:
        raise InvalidArgument("the endpoint has no address: create the network with "
                              "--ipam-driver pontoon")  # fmt: skip
    try:
        ipaddress.IPv4Interface(address)
    except ValueError:
        raise InvalidArgument(f"invalid endpoint address {address!r}") from None
    network_id, endpoint_id = _str(data, "NetworkID"), _str(data, "EndpointID")
    if not network_id or not endpoint_id:
        raise InvalidArgument("NetworkID and EndpointID are required")
    mac = _str(iface, "MacAddress").lower()
    if mac and not MAC_RE.fullmatch(mac):
        raise InvalidArgument(f"invalid MAC address {mac!r}")
    return EndpointCreate(network_id, endpoint_id, address, mac)


def interface_name(endpoint_id: str) -> str:
    """The container side's name until Docker moves it (15 characters at most)."""
    return "vpt" + endpoint_id[:12]


def join_reply(src_name: str, gateway: str, own_gateway: bool = False) -> dict[str, Any]:
    """`own_gateway`: the way out comes from pontoon (its gateway bridge), so
    Docker must not add its docker_gwbridge."""
    reply: dict[str, Any] = {"InterfaceName": {"SrcName": src_name, "DstPrefix": DST_PREFIX}}
    if gateway:
        reply["Gateway"] = gateway
    if own_gateway:
        reply["DisableGatewayService"] = True
    return reply


def port_requests(options: Any) -> list[PortRequest]:
    """Docker's port bindings (ranges already expanded, -P as host port 0, a
    loopback binding as HostIP) as pontoon's port requests."""
    out: list[PortRequest] = []
    if not isinstance(options, dict):
        raise InvalidArgument("Options must be an object")
    for binding in _list(options, PORT_MAP):
        if not isinstance(binding, dict):
            raise InvalidArgument(f"{PORT_MAP} must be a list of objects")
        proto = PROTOCOLS.get(_int(binding, "Proto", 6, 0, 255))
        if proto is None:
            raise InvalidArgument(f"unsupported protocol number {binding.get('Proto')}")
        host_ip = _str(binding, "HostIP") or ANY
        if _address(host_ip, "host IP").version == 6:
            continue  # the host firewall is IPv4 today: Docker's [::] twin of a binding
        host_port = _int(binding, "HostPort", 0, 0, 65535)
        end = _int(binding, "HostPortEnd", 0, 0, 65535) or host_port
        if host_port and end != host_port:
            raise InvalidArgument(
                f"host port range {host_port}-{end} for one container port is not supported"
            )
        container_port = _int(binding, "Port", 0, 1, 65535)
        request = PortRequest(host_ip, host_port, container_port, proto)
        if request not in out:
            out.append(request)
    return out


# -- helpers ------------------------------------------------------------------------


def _dict(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{key} must be an object")
    return value


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise InvalidArgument(f"{key} must be a list")
    return value


def _int(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """A whole number in [low, high]: JSON's, not a float, a bool nor a text."""
    value = data.get(key)
    if value is None:
        value = default
    if type(value) is not int or not low <= value <= high:
        raise InvalidArgument(f"{key} must be a whole number from {low} to {high}")
    return value


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r}") from None


def _address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r}") from None
