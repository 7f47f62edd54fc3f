"""Docker's plugin payloads (shapes from moby/libnetwork docs/remote.md and
docs/ipam.md, values as dockerd 20.10 sends them) into pontoon's terms."""

from __future__ import annotations

import asyncio

import pytest

from pontoon.core.model import Subnet
from pontoon.errors import InvalidArgument
from pontoon.frontends.docker import protocol
from pontoon.frontends.docker.plugin import DockerNetwork
from pontoon.portmap.spec import PortRequest

NID = "3f7c1d9e2b4a" + "0" * 52
EID = "a1b2c3d4e5f6" + "1" * 52

CREATE_NETWORK = {
    "NetworkID": NID,
    "Options": {
        "com.docker.network.enable_ipv6": False,
        "com.docker.network.generic": {"pontoon.driver": "overlay", "mtu": "1400"},
    },
    "IPv4Data": [
        {
            "AddressSpace": "pontoon",
            "Pool": "10.90.0.0/24",
            "Gateway": "10.90.0.1/24",
            "AuxAddresses": None,
        }
    ],
    "IPv6Data": [],
}

CREATE_ENDPOINT = {
    "NetworkID": NID,
    "EndpointID": EID,
    "Interface": {"Address": "10.90.0.2/24", "AddressIPv6": "", "MacAddress": ""},
    "Options": {
        "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
        "com.docker.network.portmap": [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}
        ],
    },
}


def test_activate_lists_both_drivers() -> None:
    assert protocol.IMPLEMENTS == ["NetworkDriver", "IpamDriver"]


@pytest.mark.parametrize(
    ("path", "key"),
    [("/NetworkDriver.CreateNetwork", "Err"), ("/IpamDriver.RequestPool", "Error")],
)
def test_errors_use_each_driver_kind_field(path: str, key: str) -> None:
    assert protocol.error_reply(path, "subnet taken") == {key: "pontoon: subnet taken"}


def test_errors_are_one_line_whatever_they_quote() -> None:
    # A Join for EndpointID "a\nb" said "no endpoint a", newline, "b".
    reply = protocol.error_reply("/NetworkDriver.Join", "no endpoint a\nb\r")
    assert reply == {"Err": "pontoon: no endpoint a\\nb\\r"}


def test_pool_id_round_trip() -> None:
    assert protocol.parse_pool_id(protocol.pool_id("10.1.0.0/16")) == ("10.1.0.0/16", "")
    pid = protocol.pool_id("10.1.0.0/16", "10.1.5.0/24")
    assert protocol.parse_pool_id(pid) == ("10.1.0.0/16", "10.1.5.0/24")
    with pytest.raises(InvalidArgument):
        protocol.parse_pool_id("default/10.1.0.0/16")
    # IPv6 subnets have colons of their own.
    pid = protocol.pool_id("fd00:1::/64", "fd00:1::100/120")
    assert protocol.parse_pool_id(pid) == ("fd00:1::/64", "fd00:1::100/120")
    assert protocol.parse_pool_id(protocol.pool_id("fd00:1::/64")) == ("fd00:1::/64", "")


def test_pool_request() -> None:
    req = protocol.pool_request(
        {
            "AddressSpace": "pontoon",
            "Pool": "10.1.0.0/16",
            "SubPool": "10.1.5.0/24",
            "Options": {},
            "V6": False,
        }
    )
    assert (req.pool, req.sub_pool) == ("10.1.0.0/16", "10.1.5.0/24")
    assert protocol.pool_request({"AddressSpace": "pontoon", "V6": False}).pool == ""
    v6 = protocol.pool_request({"Pool": "fd00:1::/64", "SubPool": "fd00:1::/120", "V6": True})
    assert (v6.pool, v6.sub_pool, v6.family) == ("fd00:1::/64", "fd00:1::/120", 6)
    assert protocol.pool_request({"V6": True}).family == 6


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"Pool": "fd00::/64"}, "not an IPv4 subnet"),
        ({"Pool": "10.0.0.0/24", "V6": True}, "not an IPv6 subnet"),
        ({"SubPool": "10.0.0.0/25"}, "--ip-range needs --subnet"),
        ({"Pool": "10.0.0.0/24", "SubPool": "10.0.1.0/25"}, "not inside"),
        ({"Pool": "10.0.0.0/33"}, "invalid subnet"),
        ({"Pool": "10.0.0.0/24", "Options": {"color": "red"}}, "unknown IPAM option 'color'"),
    ],
)
def test_pool_request_refusals(payload: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        protocol.pool_request(payload)


def test_gateway_requests() -> None:
    gw = {
        "PoolID": "pontoon:10.1.0.0/24",
        "Address": "",
        "Options": {"RequestAddressType": "com.docker.network.gateway"},
    }
    assert protocol.is_gateway_request(gw)
    assert not protocol.is_gateway_request({"PoolID": "x", "Address": "", "Options": None})
    assert protocol.gateway_for("10.1.0.0/24", "") == "10.1.0.1"
    assert protocol.gateway_for("10.1.0.0/24", "10.1.0.254") == "10.1.0.254"
    with pytest.raises(InvalidArgument, match="not a usable address"):
        protocol.gateway_for("10.1.0.0/24", "10.1.0.255")
    assert protocol.with_prefix("10.1.0.1", "10.1.0.0/24") == "10.1.0.1/24"


def test_network_create() -> None:
    req = protocol.network_create(CREATE_NETWORK, "docker-3f7c1d9e2b4a")
    assert req.network_id == NID
    assert req.spec.driver == "overlay"
    assert req.spec.options == {"mtu": "1400"}
    assert req.spec.subnets == (Subnet("10.90.0.0/24", "10.90.0.1"),)
    assert not req.spec.internal and not req.spec.ipv6
    assert req.existing == "" and req.pools == ("10.90.0.0/24",) and req.aux == ()


def test_network_create_dual_stack_with_aux_addresses() -> None:
    data = {
        **CREATE_NETWORK,
        "Options": {"com.docker.network.enable_ipv6": True},
        "IPv4Data": [
            {
                "Pool": "10.90.0.0/24",
                "Gateway": "10.90.0.1/24",
                "AuxAddresses": {"router": "10.90.0.5/24"},
            }
        ],
        "IPv6Data": [
            {
                "Pool": "fd00:90::/64",
                "Gateway": "fd00:90::1/64",
                "AuxAddresses": {"r6": "fd00:90::5/64"},
            }
        ],
    }
    req = protocol.network_create(data, "x")
    assert req.spec.ipv6
    assert req.spec.subnets == (
        Subnet("10.90.0.0/24", "10.90.0.1"),
        Subnet("fd00:90::/64", "fd00:90::1"),
    )
    assert req.pools == ("10.90.0.0/24", "fd00:90::/64")
    assert req.aux == ("10.90.0.5", "fd00:90::5")


def test_network_create_internal_and_existing() -> None:
    data = {
        **CREATE_NETWORK,
        "Options": {
            "com.docker.network.internal": True,
            "com.docker.network.generic": {"pontoon.network": "abc123"},
        },
    }
    req = protocol.network_create(data, "x")
    assert req.spec.internal and req.spec.driver == "bridge"
    assert req.existing == "abc123" and req.spec.options == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"IPv6Data": [{"Pool": "10.1.0.0/24"}]}, "not an IPv6 subnet"),
        ({"IPv6Data": [{"Pool": "fd00::/64"}, {"Pool": "fd01::/64"}]}, "at most one"),
        ({"Options": {"com.docker.network.enable_ipv6": True}}, "IPv6 subnet"),
        ({"IPv4Data": []}, "exactly one"),
        (
            {"IPv4Data": [{"Pool": "10.0.0.0/24", "AuxAddresses": {"a": "10.0.1.5"}}]},
            "auxiliary address 10.0.1.5",
        ),
        (
            {
                "IPv4Data": [
                    {
                        "Pool": "10.0.0.0/24",
                        "Gateway": "10.0.0.1/24",
                        "AuxAddresses": {"a": "10.0.0.1"},
                    }
                ]
            },
            "is the gateway",
        ),
    ],
)
def test_network_create_refusals(change: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        protocol.network_create({**CREATE_NETWORK, **change}, "x")


def test_endpoint_create() -> None:
    req = protocol.endpoint_create(CREATE_ENDPOINT)
    assert (req.network_id, req.endpoint_id) == (NID, EID)
    assert req.address == "10.90.0.2/24" and req.mac == ""
    given = {
        **CREATE_ENDPOINT,
        "Interface": {"Address": "10.90.0.2/24", "MacAddress": "02:42:0A:5A:00:09"},
    }
    assert protocol.endpoint_create(given).mac == "02:42:0a:5a:00:09"
    with pytest.raises(InvalidArgument, match="--ipam-driver pontoon"):
        protocol.endpoint_create({**CREATE_ENDPOINT, "Interface": {}})
    dual = {**CREATE_ENDPOINT, "Interface": {"Address": "10.90.0.2/24",
            "AddressIPv6": "fd00:90::2/64"}}  # fmt: skip
    assert protocol.endpoint_create(dual).address6 == "fd00:90::2/64"
    bad = {
        **CREATE_ENDPOINT,
        "Interface": {"Address": "10.90.0.2/24", "AddressIPv6": "10.9.0.1/24"},
    }
    with pytest.raises(InvalidArgument, match="invalid endpoint address"):
        protocol.endpoint_create(bad)


def test_interface_name_fits_ifnamsiz() -> None:
    name = protocol.interface_name(EID)
    assert len(name) <= 15 and name == "vpta1b2c3d4e5f6"


def test_join_reply() -> None:
    assert protocol.join_reply("vptx", "10.90.0.1") == {
        "InterfaceName": {"SrcName": "vptx", "DstPrefix": "eth"},
        "Gateway": "10.90.0.1",
    }
    assert "Gateway" not in protocol.join_reply("vptx", "")
    # An overlay: no gateway, and no docker_gwbridge either (pontoon plugs its own).
    overlay = protocol.join_reply("vptx", "", own_gateway=True)
    assert overlay["DisableGatewayService"] is True and "Gateway" not in overlay
    dual = protocol.join_reply("vptx", "10.90.0.1", gateway6="fd00:90::1")
    assert dual["Gateway"] == "10.90.0.1" and dual["GatewayIPv6"] == "fd00:90::1"


def test_port_requests() -> None:
    options = {
        "com.docker.network.portmap": [
            # -p 8080:80: both families, the IPv6 one implicit (as pontoon's -p)
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            # -P: host port 0
            {"Proto": 6, "IP": "", "Port": 443, "HostIP": "", "HostPort": 0, "HostPortEnd": 0},
            # -p 127.0.0.1:5353:53/udp
            {
                "Proto": 17,
                "IP": "",
                "Port": 53,
                "HostIP": "127.0.0.1",
                "HostPort": 5353,
                "HostPortEnd": 5353,
            },
            # an explicit [::] twin of the first: the same binding
            {
                "Proto": 6,
                "IP": "",
                "Port": 80,
                "HostIP": "::",
                "HostPort": 8080,
                "HostPortEnd": 8080,
            },
            # -p [::1]:8081:80
            {"Proto": 6, "Port": 80, "HostIP": "::1", "HostPort": 8081, "HostPortEnd": 8081},
            # a duplicate
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        ]
    }
    assert protocol.port_requests(options) == [
        PortRequest("0.0.0.0", 8080, 80, "tcp"),
        PortRequest("::", 8080, 80, "tcp", implicit=True),
        PortRequest("0.0.0.0", 0, 443, "tcp"),
        PortRequest("::", 0, 443, "tcp", implicit=True),
        PortRequest("127.0.0.1", 5353, 53, "udp"),
        PortRequest("::1", 8081, 80, "tcp"),
    ]
    assert protocol.port_requests({}) == []


def test_port_requests_refusals() -> None:
    with pytest.raises(InvalidArgument, match="range"):
        protocol.port_requests(
            {
                "com.docker.network.portmap": [
                    {"Proto": 6, "Port": 80, "HostPort": 8000, "HostPortEnd": 8010}
                ]
            }
        )
    with pytest.raises(InvalidArgument, match="protocol"):
        protocol.port_requests({"com.docker.network.portmap": [{"Proto": 1, "Port": 80}]})


def test_shows_subnets_of_compares_dockerds_view_with_pontoons() -> None:
    from pontoon.core.model import Network

    net = Network(id="f" * 64, name="pontoon_gwbridge", driver="bridge",
                  subnets=[Subnet("172.19.0.0/16", "172.19.0.1"),
                           Subnet("fd50:6f6e:746f::/64", "fd50:6f6e:746f::1")])  # fmt: skip
    v4_only = {"IPAM": {"Config": [{"Subnet": "172.19.0.0/16", "Gateway": "172.19.0.1"}]}}
    assert not protocol.shows_subnets_of(v4_only, net)
    both = {"IPAM": {"Config": [*v4_only["IPAM"]["Config"], {"Subnet": "fd50:6f6e:746f:0::/64"}]}}
    assert protocol.shows_subnets_of(both, net)
    assert protocol.shows_subnets_of(protocol.docker_network_body(net), net)
    assert not protocol.shows_subnets_of({"IPAM": None}, net)


def test_docker_network_body_binds_to_the_pontoon_network() -> None:
    from pontoon.core.model import Network

    net = Network(
        id="f" * 64,
        name="net1",
        driver="overlay",
        subnets=[Subnet("10.201.1.0/24", "10.201.1.1", "10.201.1.128/25")],
    )
    body = protocol.docker_network_body(net)
    assert body["Name"] == "net1" and body["Driver"] == "pontoon"
    assert body["IPAM"] == {
        "Driver": "pontoon",
        "Config": [
            {"Subnet": "10.201.1.0/24", "Gateway": "10.201.1.1", "IPRange": "10.201.1.128/25"}
        ],
        "Options": {"pontoon.network": "f" * 64},
    }
    assert body["Options"] == {"pontoon.network": "f" * 64, "pontoon.driver": "overlay"}
    # What dockerd then sends back binds to it.
    pool = protocol.pool_request(
        {"Pool": "10.201.1.0/24", "SubPool": "10.201.1.128/25", "Options": body["IPAM"]["Options"]}
    )
    assert pool.options == {"pontoon.network": "f" * 64}
    created = protocol.network_create(
        {
            **CREATE_NETWORK,
            "Options": {"com.docker.network.generic": body["Options"]},
            "IPv4Data": [{"Pool": "10.201.1.0/24", "Gateway": "10.201.1.1/24"}],
        },
        "x",
    )
    assert created.existing == "f" * 64 and created.spec.driver == "overlay"


# -- regressions found by tests/fuzz/test_docker_plugin_fuzz.py: each a clear
# refusal now, where it was an AttributeError, TypeError or ValueError (an
# "internal error" to Docker) or a value handed on unchecked.

PORTMAP = "com.docker.network.portmap"


@pytest.mark.parametrize(
    "options",
    [
        "x",
        {PORTMAP: "3f7c"},
        {PORTMAP: ["x"]},
        {PORTMAP: [{"Proto": "abc", "Port": 80}]},
        {PORTMAP: [{"Proto": 1e300, "Port": 80}]},
        {PORTMAP: [{"Proto": 6}]},
        {PORTMAP: [{"Proto": 6, "Port": 2**70}]},
        {PORTMAP: [{"Proto": 6, "Port": 80, "HostPort": 70000}]},
        {PORTMAP: [{"Proto": 6, "Port": 80, "HostPort": -1}]},
        {PORTMAP: [{"Proto": 6, "Port": 80, "HostIP": 5}]},
    ],
)
def test_port_requests_refuse_malformed_bindings(options: object) -> None:
    with pytest.raises(InvalidArgument):
        protocol.port_requests(options)


@pytest.mark.parametrize(
    "change",
    [
        {"Options": "x"},
        {"Options": {"com.docker.network.generic": ["pontoon.driver"]}},
        {"IPv4Data": "10.0.0.0/24"},
        {"IPv4Data": ["10.0.0.0/24"]},
        {"IPv4Data": [{"Pool": "fd00::/64"}]},
        {"IPv4Data": [{"Pool": "10.0.0.0/24", "Gateway": "10.9.9.1/24"}]},
        {"IPv4Data": [{"Pool": "10.0.0.0/24", "Gateway": "x"}]},
    ],
)
def test_network_create_refuses_malformed_payloads(change: dict) -> None:
    with pytest.raises(InvalidArgument):
        protocol.network_create({**CREATE_NETWORK, **change}, "x")


@pytest.mark.parametrize(
    "iface",
    ["x", {"Address": "10.90.0.2/24", "MacAddress": "02:42"}, {"Address": "10.90.0.2/24",
     "MacAddress": "zz:42:0a:5a:00:09"}],
)  # fmt: skip
def test_endpoint_create_refuses_malformed_interfaces(iface: object) -> None:
    with pytest.raises(InvalidArgument):
        protocol.endpoint_create({**CREATE_ENDPOINT, "Interface": iface})


def test_pool_request_refuses_an_ipv6_range_of_an_ipv4_pool() -> None:
    with pytest.raises(InvalidArgument, match="not inside"):
        protocol.pool_request({"Pool": "10.91.0.0/16", "SubPool": "fd00::1/64"})


@pytest.mark.parametrize(
    ("path", "body", "content_type", "reply"),
    [
        # A bogus charset is not consulted (it raised LookupError: a 500 page).
        ("/Plugin.Activate", b"{}", "text/plain; charset=bogus-x", 200),
        ("/NetworkDriver.Leave", b"[" * 100_000, "application/json", "Err"),  # RecursionError
        ("/IpamDriver.ReleasePool", b"\xff\xfe{", "application/json", "Error"),
    ],
)
def test_plugin_bodies_are_answered_in_dockers_shape(
    path: str, body: bytes, content_type: str, reply: object
) -> None:
    from types import SimpleNamespace

    from aiohttp.test_utils import TestClient, TestServer

    from pontoon.frontends.docker.plugin import DockerPlugin

    async def post() -> tuple[int, dict]:
        plugin = DockerPlugin(SimpleNamespace(), None)  # type: ignore[arg-type]
        async with TestClient(TestServer(plugin.app())) as client:
            resp = await client.post(path, data=body, headers={"Content-Type": content_type})
            return resp.status, await resp.json(content_type=None)

    status, answer = asyncio.run(post())
    if reply == 200:
        assert status == 200 and answer == {"Implements": protocol.IMPLEMENTS}
    else:
        assert status == 400 and set(answer) == {reply}


def test_plugin_gateway_of_a_dual_stack_networks_ipv6_pool() -> None:
    """A gateway request for the IPv6 pool of a pontoon network asserted the
    network's IPv4 subnet was that pool (an "internal error")."""
    from types import SimpleNamespace

    from pontoon.core.model import Network
    from pontoon.frontends.docker.plugin import DockerPlugin

    net = Network(
        id="n" * 64,
        name="web",
        driver="bridge",
        subnets=[Subnet("10.90.0.0/24", "10.90.0.1"), Subnet("fd00:90::/64", "fd00:90::1")],
    )
    engine = SimpleNamespace(state=SimpleNamespace(networks={net.id: net}))
    plugin = DockerPlugin(engine, None)  # type: ignore[arg-type]
    assert plugin._gateway("fd00:90::/64", "") == "fd00:90::1/64"
    assert plugin._gateway("10.90.0.0/24", "") == "10.90.0.1/24"


def test_network_create_leaves_the_payload_as_it_was() -> None:
    import copy

    data = copy.deepcopy(CREATE_NETWORK)
    protocol.network_create(data, "x")
    assert data == CREATE_NETWORK


def test_a_docker_network_is_named_by_its_name_or_an_id_prefix():
    known = DockerNetwork("0123456789abcdef" * 4, "pontoon-id", "net1")
    assert known.is_ref("net1") and known.is_ref(known.docker_id)
    assert known.is_ref(known.docker_id[:12])
    assert not known.is_ref(known.docker_id[:11])  # too short to be unambiguous
    assert not known.is_ref("net2") and not known.is_ref("")
