"""Fuzzing the Docker remote network and IPAM driver (pontoon/frontends/docker/):
the pure parsers of protocol.py with any JSON and with dockerd's payloads
broken in a few places, and every route of the real aiohttp plugin app
(plugin.py) on aiohttp's test server, the engine replaced by fakes that check
what they are handed and never touch the kernel.

What must hold: a parser raises InvalidArgument (one line) or returns well
typed values; a route answers 200 or 400 with one JSON line, and a refusal is
Docker's error shape (`Err` for NetworkDriver.*, `Error` for IpamDriver.*)
from a check, never from the catch-all for bugs; no call hangs."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, note
from hypothesis import strategies as st

from pontoon.core.model import Network, NetworkSpec, Owner, Subnet
from pontoon.engine.attachments import AttachRequest
from pontoon.engine.engine import Engine
from pontoon.errors import InvalidArgument
from pontoon.frontends.docker import protocol
from pontoon.frontends.docker.plugin import DockerNetwork, DockerPlugin, Endpoint, Pool
from pontoon.frontends.fields import MAC_RE
from pontoon.portmap.spec import PortRequest
from tests.fuzz.api_requests import ANY_JSON, RAW_BODIES, usually
from tests.fuzz.budget import fuzz_settings, run_for
from tests.fuzz.mutate import mutated
from tests.unit.test_docker_protocol import CREATE_ENDPOINT, CREATE_NETWORK, EID, NID

NET = "n" * 64  # the pontoon network behind NID
ATT = "a" * 64  # the endpoint EID's attachment
POOL = "10.90.0.0/24"
POOL_ID = protocol.pool_id(POOL)
POOL6 = "fd00:90::/64"  # the network's other family
GATEWAY_REQUEST = {
    "PoolID": POOL_ID,
    "Address": "",
    "Options": {protocol.REQUEST_ADDRESS_TYPE: protocol.GATEWAY_ADDRESS},
}
POOL_REQUEST = {
    "AddressSpace": "pontoon",
    "Pool": "10.91.0.0/16",
    "SubPool": "10.91.5.0/24",
    "Options": {protocol.NETWORK_OPTION: NET},
    "V6": False,
}
PORT_OPTIONS = {
    protocol.PORT_MAP: [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 17, "Port": 53, "HostIP": "127.0.0.1", "HostPort": 0, "HostPortEnd": 0},
        {"Proto": 6, "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080},
    ]
}
# Well-formed payloads of every route, as dockerd 20.10 sends them.
PAYLOADS: dict[str, dict[str, Any]] = {
    "/Plugin.Activate": {},
    "/NetworkDriver.GetCapabilities": {},
    "/NetworkDriver.CreateNetwork": {
        **CREATE_NETWORK,
        "NetworkID": "c" * 64,
        "Options": {protocol.GENERIC: {"mtu": "1400"}, protocol.ENABLE_IPV6: True},
        "IPv4Data": [
            {"Pool": "10.91.0.0/16", "Gateway": "10.91.0.1/16", "AuxAddresses": {"a": "10.91.0.5"}}
        ],
        "IPv6Data": [
            {
                "Pool": "fd00:91::/64",
                "Gateway": "fd00:91::1/64",
                "AuxAddresses": {"b": "fd00:91::5"},
            }
        ],
    },
    "/NetworkDriver.DeleteNetwork": {"NetworkID": NID},
    "/NetworkDriver.CreateEndpoint": {
        **CREATE_ENDPOINT,
        "EndpointID": "e" * 64,
        "Interface": {"Address": "10.90.0.2/24", "AddressIPv6": "fd00:90::2/64", "MacAddress": ""},
    },
    "/NetworkDriver.EndpointOperInfo": {"NetworkID": NID, "EndpointID": EID},
    "/NetworkDriver.DeleteEndpoint": {"NetworkID": NID, "EndpointID": EID},
    "/NetworkDriver.Join": {
        "NetworkID": NID,
        "EndpointID": EID,
        "SandboxKey": "/var/run/docker/netns/0123456789ab",
        "Options": {},
    },
    "/NetworkDriver.Leave": {"NetworkID": NID, "EndpointID": EID},
    "/NetworkDriver.ProgramExternalConnectivity": {
        "NetworkID": NID,
        "EndpointID": EID,
        "Options": PORT_OPTIONS,
    },
    "/NetworkDriver.RevokeExternalConnectivity": {"NetworkID": NID, "EndpointID": EID},
    "/NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {}},
    "/NetworkDriver.DiscoverDelete": {"DiscoveryType": 1, "DiscoveryData": {}},
    "/NetworkDriver.AllocateNetwork": {"NetworkID": NID, "Options": {}},
    "/NetworkDriver.FreeNetwork": {"NetworkID": NID},
    "/IpamDriver.GetCapabilities": {},
    "/IpamDriver.GetDefaultAddressSpaces": {},
    "/IpamDriver.RequestPool": POOL_REQUEST,
    "/IpamDriver.ReleasePool": {"PoolID": POOL_ID},
    "/IpamDriver.RequestAddress": {"PoolID": POOL_ID, "Address": "10.90.0.7", "Options": {}},
    "/IpamDriver.RequestPool?v6": {"AddressSpace": "pontoon", "Pool": "", "V6": True},
    "/IpamDriver.ReleaseAddress": {"PoolID": POOL_ID, "Address": "10.90.0.7"},
}
# Values that reach each check: near misses of the real ones, and anything.
NEAR = st.sampled_from(
    [NID, EID, NET, "", "x", POOL, POOL_ID, "pontoon:", "pontoon:10.90.0.0/33",
     protocol.pool_id(POOL6), "10.90.0.300", "10.90.0.1/24", "fd00::1/64", "02:42:0a:5a:00:09",
     "02:42", "a\nb", "a\0b", 6, 132, 0, -1, 65536, 2**70, 1e300, True, None, [], {}]
)  # fmt: skip
BROKEN = st.one_of(NEAR, ANY_JSON)


def payloads(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    return mutated(st.just(base), BROKEN)


def one_line(message: Any) -> bool:
    return isinstance(message, str) and "\n" not in message and "\r" not in message


def refused_well(exc: InvalidArgument) -> None:
    assert one_line(exc.message) and 400 <= exc.status < 500, exc.message


# -- the parsers ---------------------------------------------------------------------


def check_network_create(data: Any) -> None:
    try:
        req = protocol.network_create(data, "docker-x")
    except InvalidArgument as exc:
        return refused_well(exc)
    assert isinstance(req.network_id, str) and req.network_id
    assert isinstance(req.spec.driver, str) and isinstance(req.existing, str)
    assert isinstance(req.spec.internal, bool)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in req.spec.options.items())
    assert [ipaddress.ip_network(p).version for p in req.pools] in ([4], [4, 6])
    assert [s.subnet for s in req.spec.subnets] == list(req.pools)
    assert req.spec.ipv6 == (len(req.pools) == 2)
    for sub in req.spec.subnets:
        assert sub.gateway == "" or ipaddress.ip_address(sub.gateway) in ipaddress.ip_network(
            sub.subnet
        )
    for aux in req.aux:
        assert any(ipaddress.ip_address(aux) in ipaddress.ip_network(p) for p in req.pools)


def check_endpoint_create(data: Any) -> None:
    try:
        req = protocol.endpoint_create(data)
    except InvalidArgument as exc:
        return refused_well(exc)
    assert req.network_id and req.endpoint_id
    ipaddress.IPv4Interface(req.address)
    assert req.address6 == "" or ipaddress.IPv6Interface(req.address6)
    assert req.mac == "" or MAC_RE.fullmatch(req.mac), req.mac


def check_pool_request(data: Any) -> None:
    try:
        req = protocol.pool_request(data)
    except InvalidArgument as exc:
        return refused_well(exc)
    assert req.family in (4, 6)
    assert req.pool == "" or ipaddress.ip_network(req.pool).version == req.family
    assert req.sub_pool == "" or ipaddress.ip_network(req.sub_pool).subnet_of(
        ipaddress.ip_network(req.pool)  # type: ignore[arg-type]
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in req.options.items())


def check_port_requests(options: Any) -> None:
    try:
        ports = protocol.port_requests(options)
    except InvalidArgument as exc:
        return refused_well(exc)
    for port in ports:
        assert isinstance(port, PortRequest)
        assert ipaddress.ip_address(port.host_ip).version == port.family
        assert not port.implicit or port.host_ip == "::"
        assert 0 <= port.host_port <= 65535 and 1 <= port.container_port <= 65535, port
        assert port.proto in protocol.PROTOCOLS.values()


def check_gateway(pool: Any, asked: Any) -> None:
    try:
        gateway = protocol.gateway_for(pool, asked)
    except InvalidArgument as exc:
        return refused_well(exc)
    assert ipaddress.ip_address(gateway) in ipaddress.ip_network(pool, strict=False)


def check_pool_id(value: str) -> None:
    try:
        pool, sub_pool = protocol.parse_pool_id(value)
    except InvalidArgument as exc:
        return refused_well(exc)
    assert isinstance(pool, str) and isinstance(sub_pool, str)


PARSERS = [
    (check_network_create, CREATE_NETWORK),
    (check_endpoint_create, CREATE_ENDPOINT),
    (check_pool_request, POOL_REQUEST),
    (check_port_requests, PORT_OPTIONS),
    (protocol.is_gateway_request, GATEWAY_REQUEST),
]


def test_parsers_refuse_or_return_well_typed_values() -> None:
    @fuzz_settings(batch=300)
    @given(st.data())
    def parse(data: st.DataObject) -> None:
        check, base = data.draw(st.sampled_from(PARSERS))
        value = data.draw(st.one_of(payloads(base), ANY_JSON, st.dictionaries(
            st.sampled_from(sorted(base) or ["x"]), BROKEN, max_size=4)))  # fmt: skip
        note(f"{check.__name__}({value!r})")
        if not isinstance(value, dict):
            value = {"Options": value}  # the plugin hands only objects to the parsers
        check(value)

    run_for(parse)


def test_pool_ids_and_gateways_refuse_or_return_well_typed_values() -> None:
    cidrs = st.one_of(
        st.sampled_from([POOL, "10.0.0.0/32", "10.0.0.0/31", "0.0.0.0/0", "::/0", "x", ""]),
        st.text(max_size=20),
    )
    hosts = st.one_of(st.sampled_from(["", "10.90.0.1", "10.90.0.255", "::1", "x"]), st.text())

    @fuzz_settings(batch=300)
    @given(cidrs, hosts, st.text(max_size=40))
    def parse(pool: str, asked: str, pool_id: str) -> None:
        note(f"{pool=} {asked=} {pool_id=}")
        check_pool_id(pool_id)
        check_pool_id(protocol.POOL_PREFIX + pool_id)
        check_gateway(pool, asked)

    run_for(parse)


# -- the plugin's routes -----------------------------------------------------------


def strings(*values: Any) -> bool:
    return all(isinstance(v, str) for v in values)


class Fakes:
    """The engine's calls, as the plugin makes them."""

    async def check_network(self, spec: NetworkSpec, also_taken: Any = ()) -> list[Any]:
        assert strings(spec.name, spec.driver) and isinstance(spec.internal, bool)
        assert all(strings(k, v) for k, v in spec.options.items())
        for sub in spec.subnets:
            assert strings(sub.subnet, sub.gateway, sub.ip_range)
            ipaddress.ip_network(sub.subnet)
        assert all(isinstance(t, str) for t in also_taken)
        return [SimpleNamespace(subnet=ipaddress.ip_network("10.99.0.0/24"))]

    async def create_network(self, spec: NetworkSpec) -> Network:
        await self.check_network(spec)
        return Network(id="d" * 64, name=spec.name, driver=spec.driver)

    async def reserve_address(self, network: str, holder: str, family: int, ip: str = "") -> str:
        assert strings(network, holder, ip) and family in (4, 6)
        return "10.90.0.7/24" if family == 4 else "fd00:90::7/64"

    async def release_reserved(self, network: str, holder: str, ip: str) -> None:
        assert strings(network, holder, ip)

    async def attach(self, req: AttachRequest) -> Any:
        assert strings(req.network, req.netns, req.ifname, req.mac, req.reserved_by)
        assert req.netns and len(req.ifname) <= 15
        assert isinstance(req.owner, Owner) and strings(req.owner.id, req.owner.name)
        assert req.mac == "" or MAC_RE.fullmatch(req.mac), req.mac
        assert [ipaddress.ip_address(ip).version for ip in req.ips] in ([4], [4, 6])
        att = SimpleNamespace(id=ATT, gateways=["10.90.0.1"])
        return SimpleNamespace(attachments=[att])

    async def publish_ports(self, att_ref: str, requests: list[PortRequest]) -> None:
        assert isinstance(att_ref, str)
        check_port_requests({protocol.PORT_MAP: [
            {"Proto": {v: k for k, v in protocol.PROTOCOLS.items()}[r.proto], "Port":
             r.container_port, "HostIP": r.host_ip, "HostPort": r.host_port} for r in requests
        ]})  # fmt: skip

    async def refs(self, *refs: Any, **flags: Any) -> None:
        assert strings(*refs)


@pytest.fixture
def plugin(offline_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> DockerPlugin:
    engine = offline_engine
    fakes = Fakes()
    for name in ["check_network", "create_network", "reserve_address", "release_reserved",
                 "attach", "publish_ports"]:  # fmt: skip
        monkeypatch.setattr(engine, name, getattr(fakes, name))
    for name in ["remove_network", "detach", "unpublish_ports"]:
        monkeypatch.setattr(engine, name, fakes.refs)
    # Docker's chain in the host firewall: never touched from a test.
    monkeypatch.setattr("pontoon.frontends.docker.firewall.ensure_docker_user", lambda: None)
    return DockerPlugin(engine, dockerd=None)


def reset(plugin: DockerPlugin) -> None:
    """A network, a pool, and an endpoint that has joined: each call finds
    something to act on."""
    state = plugin.engine.state
    state.networks.clear()
    state.networks[NET] = Network(
        id=NET,
        name="web",
        driver="bridge",
        subnets=[Subnet(POOL, "10.90.0.1"), Subnet(POOL6, "fd00:90::1")],
        status="ready",
    )
    state.attachments.clear()
    state.attachments[ATT] = SimpleNamespace(  # type: ignore[assignment]
        id=ATT, network_id=NET, ips=["10.90.0.2"], owner=Owner("docker", "0123", "c")
    )
    plugin.networks = {NID: DockerNetwork(NID, NET, "web")}
    plugin.pools = {"10.91.0.0/16": Pool("10.91.0.0/16", "", docker_network="")}
    plugin.endpoints = {EID: Endpoint(NID, EID, "10.90.0.2/24", "02:42:0a:5a:00:02", 0.0, ATT)}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes | None, str]:
    path = draw(st.sampled_from(sorted(PAYLOADS)))
    raw = st.one_of(RAW_BODIES, st.sampled_from([None, b"", b"null", b"{}"]))
    body = draw(usually(payloads(PAYLOADS[path]).map(lambda v: json.dumps(v).encode()), raw, 3))
    content_type = draw(st.sampled_from(
        [protocol.CONTENT_TYPE, "application/json", "text/plain; charset=bogus-x", ""]
    ))  # fmt: skip
    return path, body, content_type


def check_reply(path: str, status: int, text: str) -> None:
    assert status in (200, 400), (status, text)
    assert "\n" not in text.strip(), text
    reply = json.loads(text)
    assert isinstance(reply, dict), reply
    key, other = protocol.error_key(path), {"Err", "Error"} - {protocol.error_key(path)}
    assert not other & set(reply), reply
    if status != 200:
        assert set(reply) == {key}, reply
    if key in reply:
        assert one_line(reply[key]) and reply[key].startswith("pontoon: "), reply
        assert "internal error" not in reply[key], reply


def check_records(plugin: DockerPlugin) -> None:
    """What a call left behind is well formed (it is stored and later handed on)."""
    for ep in plugin.endpoints.values():
        ipaddress.IPv4Interface(ep.address)
        assert ep.address6 == "" or ipaddress.IPv6Interface(ep.address6)
        assert MAC_RE.fullmatch(ep.mac), ep.mac
        assert strings(ep.docker_network, ep.endpoint_id, ep.attachment)
    for pool in plugin.pools.values():
        ipaddress.ip_network(pool.pool)


async def call(client: TestClient, path: str, body: bytes | None, ctype: str) -> tuple[int, str]:
    headers = {"Content-Type": ctype} if ctype else {}
    resp = await client.post(path, data=body, headers=headers)
    return resp.status, (await resp.read()).decode()


def test_every_route_answers_docker_shapes(loop, plugin: DockerPlugin) -> None:
    client = TestClient(TestServer(plugin.app()), loop=loop)
    loop.run_until_complete(client.start_server())

    @fuzz_settings(batch=100)
    @given(requests())
    def request(req: tuple[str, bytes | None, str]) -> None:
        path, body, ctype = req
        note(f"POST {path} {ctype!r} {body[:300] if body else body!r}")
        reset(plugin)
        # Never hangs: a call waits on nothing here that does not answer.
        status, text = loop.run_until_complete(asyncio.wait_for(call(client, *req), 10))
        note(f"-> {status} {text}")
        check_reply(path, status, text)
        check_records(plugin)
        for task in list(plugin.creating.values()):  # the network made once named
            loop.run_until_complete(asyncio.wait_for(task, 10))

    try:
        run_for(request)
    finally:
        loop.run_until_complete(client.close())
