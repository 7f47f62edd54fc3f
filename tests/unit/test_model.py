"""Records and name checks of pontoon.model."""

from __future__ import annotations

import json

import pytest

from pontoon.errors import InvalidArgument
from pontoon.model import (
    CREATING,
    Container,
    Endpoint,
    Network,
    NetworkRequest,
    PortMapping,
    check_hostname,
    check_name,
    new_id,
)

# ------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "0", "web-1", "my_net.v2", "A" * 64])
def test_check_name_accepts_valid_names(name):
    assert check_name("network", name) == name


@pytest.mark.parametrize("name", ["", "-a", "_a", ".a", "a b", "a/b", "a:b", "é", "A" * 65])
def test_check_name_rejects_invalid_names(name):
    with pytest.raises(InvalidArgument, match="invalid container name"):
        check_name("container", name)


def test_check_name_rejects_a_trailing_newline():
    with pytest.raises(InvalidArgument):
        check_name("container", "web\n")


@pytest.mark.parametrize("name", ["a", "web", "web-1", "a" * 63, "0abc"])
def test_check_hostname_accepts_dns_labels(name):
    assert check_hostname(name) == name


@pytest.mark.parametrize("name", ["", "-web", "web-", "we_b", "web.example", "a" * 64])
def test_check_hostname_rejects_non_labels(name):
    with pytest.raises(InvalidArgument, match="invalid hostname"):
        check_hostname(name)


def test_check_hostname_rejects_a_trailing_newline():
    with pytest.raises(InvalidArgument):
        check_hostname("web\n")


def test_new_id_is_64_hex_characters_and_unique():
    a, b = new_id(), new_id()
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != b


# ----------------------------------------------------------------- records


def make_container() -> Container:
    return Container(
        id="c" * 64,
        name="web",
        hostname="web",
        command=["sleep", "1"],
        env=["A=1"],
        networks=[NetworkRequest("n1", "10.0.0.5", ["db"]), NetworkRequest("n2")],
        endpoints={"n1": "e1"},
        ports=[PortMapping("0.0.0.0", 8080, 80), PortMapping("127.0.0.1", 53, 53, "udp")],
        dns=["192.0.2.1"],
        exit_code=None,
        created="2024-01-01T00:00:00.000000+00:00",
    )


def test_container_round_trips_through_json():
    c = make_container()
    assert Container.loads(c.dumps()) == c


def test_container_round_trip_rebuilds_nested_records():
    c = Container.loads(make_container().dumps())
    assert all(isinstance(n, NetworkRequest) for n in c.networks)
    assert all(isinstance(p, PortMapping) for p in c.ports)
    assert c.ports[1].proto == "udp"


def test_container_from_dict_accepts_nested_records_as_objects():
    c = make_container()
    assert Container.from_dict(dict(vars(c))) == c


def test_unknown_keys_are_ignored_at_every_level():
    data = json.loads(make_container().dumps())
    data["future_field"] = 1
    data["networks"][0]["future_field"] = 2
    data["ports"][0]["future_field"] = 3
    assert Container.from_dict(data) == make_container()


def test_missing_optional_fields_take_defaults():
    c = Container.loads('{"id": "x", "name": "n", "hostname": "h", "command": ["true"]}')
    assert (c.networks, c.ports, c.state, c.exit_code) == ([], [], CREATING, None)


def test_dumps_is_sorted_json():
    text = Network(id="n", name="net", driver="bridge").dumps()
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_network_round_trips_through_json():
    net = Network(
        id="n",
        name="net",
        driver="bridge",
        subnet="10.0.0.0/24",
        gateway="10.0.0.1",
        internal=True,
        options={"mtu": "1400"},
        mtu=1400,
    )
    assert Network.loads(net.dumps()) == net


def test_endpoint_round_trips_through_json():
    ep = Endpoint(
        id="e",
        network_id="n",
        container_id="c",
        container_name="web",
        ifname="eth0",
        ip="10.0.0.2",
        mac="02:42:0a:00:00:02",
        prefixlen=24,
        aliases=["db"],
        default_route=True,
    )
    assert Endpoint.loads(ep.dumps()) == ep
