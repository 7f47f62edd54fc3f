"""The CNI protocol's inputs and errors (spec 1.1.0, section 2): the
environment, the configuration on stdin, CNI_ARGS and runtimeConfig, turned
into what pontoond's POST /attachments takes. Pure logic, standard library only."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

LATEST = "1.1.0"
# 0.3.x results have 0.4.0's shape; 0.1.0 and 0.2.0 had a different one.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# Error codes (spec section 5).
INCOMPATIBLE_VERSION = 1
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
UNDECODABLE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
INTERNAL = 999

# CNI_ARGS keys runtimes send that pontoon reads or may safely ignore.
KNOWN_ARGS = {
    "IP",
    "MAC",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IgnoreUnknown",
}
CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
SHORT_ID = 12
HEX_ID = re.compile(r"[0-9a-f]{13,}")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class CniError(Exception):
    """An error the plugin reports as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


class Config(NamedTuple):
    """One plugin's request configuration, as the runtime derived it.
    (NamedTuples, not dataclasses: `dataclasses` imports `inspect` and `ast`,
    a fifth of the plugin's start-up, paid on every container operation.)"""

    cni_version: str
    name: str  # the CNI network's name (the conflist's)
    network: str  # the pontoon network
    host: str | None  # the daemon's -H URL; None = the default socket
    runtime: dict[str, Any]  # runtimeConfig
    prev_result: dict[str, Any] | None
    valid_attachments: set[tuple[str, str]]  # GC: (containerID, ifname)


def decode(data: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(UNDECODABLE, "cannot decode the network configuration", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(UNDECODABLE, "the network configuration must be a JSON object")
    return conf


def parse_config(conf: dict[str, Any], need_network: bool = True) -> Config:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "the network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            f"pontoon supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    network = conf.get("network", "")
    if not isinstance(network, str) or (need_network and not network):
        raise CniError(
            INVALID_CONFIG, "the plugin configuration needs `network`: a pontoon network"
        )
    host = conf.get("host")
    if host is not None and not (isinstance(host, str) and host.startswith(("unix:///", "/"))):
        raise CniError(INVALID_CONFIG, f"invalid host {host!r}: use unix:///PATH")
    runtime = _object(conf, "runtimeConfig")
    prev = _prev_result(conf)
    return Config(
        cni_version=version,
        name=str(conf.get("name") or ""),
        network=network,
        host=host or None,
        runtime=runtime,
        prev_result=prev or None,
        valid_attachments=_valid_attachments(conf),
    )


def _object(conf: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = conf.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, f"{key} must be an object")
    return value


def _prev_result(conf: Mapping[str, Any]) -> dict[str, Any] | None:
    """prevResult in the shape the plugin passes on and merges with its own:
    lists of objects, addresses as CIDRs, interface indexes as integers."""
    prev = conf.get("prevResult")
    if prev is None:
        return None
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult must be an object")
    for key in ("interfaces", "ips", "routes"):
        items = prev.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise CniError(INVALID_CONFIG, f"prevResult.{key} must be a list of objects")
    for ip in prev.get("ips", []):
        address, index = ip.get("address"), ip.get("interface")
        if not isinstance(address, str) or not _is_interface(address):
            raise CniError(INVALID_CONFIG, f"prevResult.ips: invalid address {address!r}")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise CniError(INVALID_CONFIG, f"prevResult.ips: invalid interface {index!r}")
    _string_lists(prev.get("dns", {}), "prevResult.dns", ("nameservers", "search", "options"))
    return prev


def _string_lists(value: Any, where: str, keys: tuple[str, ...]) -> None:
    """`value` is an object whose `keys`, where present, are lists of strings."""
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, f"{where} must be an object")
    for key in keys:
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise CniError(INVALID_CONFIG, f"{where}.{key} must be a list of strings")


def _is_interface(text: str) -> bool:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


def _valid_attachments(conf: Mapping[str, Any]) -> set[tuple[str, str]]:
    items = conf.get("cni.dev/valid-attachments") or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list of objects")
    return {(str(i.get("containerID", "")), str(i.get("ifname", ""))) for i in items}


# -- the environment -------------------------------------------------------------


class Invocation(NamedTuple):
    container_id: str
    ifname: str
    netns: str
    args: dict[str, str]


def parse_environment(env: Mapping[str, str], need_netns: bool) -> Invocation:
    container_id = env.get("CNI_CONTAINERID", "")
    if not CONTAINER_ID_RE.fullmatch(container_id):
        what = "is not set" if not container_id else f"is invalid: {container_id!r}"
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {what}")
    ifname = env.get("CNI_IFNAME", "")
    if not valid_ifname(ifname):
        what = "is not set" if not ifname else f"is not an interface name: {ifname!r}"
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {what}")
    netns = env.get("CNI_NETNS", "")
    if need_netns and not netns:
        raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is not set")
    return Invocation(container_id, ifname, netns, parse_args(env.get("CNI_ARGS", "")))


def valid_ifname(name: str) -> bool:
    """As the kernel and CNI's ValidateInterfaceName take it."""
    return (
        0 < len(name) <= 15
        and name not in (".", "..")
        and not any(c in name for c in "/:") and not any(c.isspace() for c in name)
    )  # fmt: skip


def parse_args(text: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V`. Unknown keys are an error unless IgnoreUnknown is true."""
    args: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        args[key] = value
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and args.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_ARGS: unknown argument {', '.join(unknown)} (set IgnoreUnknown=1 to ignore)",
        )
    return args


# -- the attachment request ---------------------------------------------------------


def short_id(container_id: str) -> str:
    """The name peers resolve when the runtime gives none: Podman's and
    Docker's hex IDs by the 12-character short form their users see; any
    other ID whole (`ctr run --cni` sends NAMESPACE-ID, whose first 12
    characters every container of the namespace shares) while it makes a
    DNS label."""
    if HEX_ID.fullmatch(container_id) or not LABEL.fullmatch(container_id):
        return container_id[:SHORT_ID]
    return container_id


def attach_request(conf: Config, inv: Invocation) -> dict[str, Any]:
    """The body of POST /attachments, less the namespace descriptor."""
    name = inv.args.get("K8S_POD_NAME") or short_id(inv.container_id)
    body: dict[str, Any] = {
        "Network": conf.network,
        "Ifname": inv.ifname,
        "Owner": {"Kind": "cni", "Id": inv.container_id, "Name": name},
    }
    rc = conf.runtime
    # Capability arguments win over the deprecated CNI_ARGS (CONVENTIONS.md).
    ips = _ips(rc["ips"], "runtimeConfig.ips") if rc.get("ips") else _ips_arg(inv.args)
    if ips:
        body["IPs"] = ips
    mac = rc.get("mac") or inv.args.get("MAC", "")
    if mac:
        if not isinstance(mac, str) or not MAC_RE.fullmatch(mac):
            raise CniError(INVALID_CONFIG, f"invalid MAC address {mac!r}")
        body["MAC"] = mac.lower()
    aliases = _aliases(rc.get("aliases"), conf)
    if aliases:
        body["Aliases"] = aliases
    ports = [port_spec(m) for m in _list(rc, "portMappings")]
    if ports:
        body["Ports"] = ports
    servers = _dns(rc).get("servers") or []
    if servers:
        body["Upstreams"] = [str(s) for s in servers]
    return body


def _list(rc: Mapping[str, Any], key: str) -> list[Any]:
    value = rc.get(key) or []
    if not isinstance(value, list):
        raise CniError(INVALID_CONFIG, f"runtimeConfig.{key} must be a list")
    return value


def _dns(rc: Mapping[str, Any]) -> dict[str, Any]:
    value = rc.get("dns") or {}
    _string_lists(value, "runtimeConfig.dns", ("servers", "searches", "options"))
    return value


def _ips(items: Any, where: str) -> list[str]:
    """Addresses without their prefix: the network's subnet decides it."""
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise CniError(INVALID_CONFIG, f"{where} must be a list of addresses")
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_interface(item.strip()).ip))
        except ValueError:
            raise CniError(INVALID_CONFIG, f"{where}: invalid IP address {item!r}") from None
    return out


def _ips_arg(args: Mapping[str, str]) -> list[str]:
    text = args.get("IP", "")
    return _ips(text.split(","), "CNI_ARGS IP") if text else []


def _aliases(value: Any, conf: Config) -> list[str]:
    """A list (the convention), or Podman's map keyed by the conflist's name."""
    if isinstance(value, dict):
        value = value.get(conf.name) or value.get(conf.network) or []
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise CniError(INVALID_CONFIG, "runtimeConfig.aliases must be a list of names")
    return list(dict.fromkeys(value))


def port_spec(mapping: Any) -> str:
    """One portMappings entry as a pontoon `-p` spec: an IPv6 hostIP in
    brackets (`[::1]:8080:80/tcp`); without hostIP, published on 0.0.0.0 and
    `::`, as the `-p` spec without HOST_IP is."""
    if not isinstance(mapping, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig.portMappings entries must be objects")
    host_port, container_port = mapping.get("hostPort"), mapping.get("containerPort")
    for value in (host_port, container_port):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise CniError(INVALID_CONFIG, f"invalid port mapping {json.dumps(mapping)}")
    proto = str(mapping.get("protocol") or "tcp").lower()
    host_ip = str(mapping.get("hostIP") or "")
    return f"{_host_ip_prefix(host_ip)}{host_port}:{container_port}/{proto}"


def _host_ip_prefix(host_ip: str) -> str:
    if not host_ip:
        return ""
    bad = f"invalid hostIP {host_ip!r} in a port mapping"
    if "%" in host_ip:  # a zone index: a host IP is global, as `-p` says
        raise CniError(INVALID_CONFIG, bad)
    try:
        addr = ipaddress.ip_address(host_ip)
    except ValueError:
        raise CniError(INVALID_CONFIG, bad) from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            raise CniError(INVALID_CONFIG, f"{bad}: use the IPv4 address {addr.ipv4_mapped}")
        return f"[{addr}]:"
    return f"{addr}:"
