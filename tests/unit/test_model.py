"""Records, their schema upgrades and name checks of pontoon.core.model."""

from __future__ import annotations

import json

import pytest

from pontoon.core.model import (
    CREATING,
    READY,
    Attachment,
    Container,
    Network,
    NetworkRequest,
    Owner,
    Peer,
    PortMapping,
    Subnet,
    check_hostname,
    check_name,
    new_id,
)
from pontoon.errors import InvalidArgument

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
        attachments={"n1": "e1"},
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
    c = Container.loads(
        '{"id": "x", "name": "n", "hostname": "h", "command": ["true"], "schema": 2}'
    )
    assert (c.networks, c.ports, c.state, c.exit_code) == ([], [], CREATING, None)


def test_dumps_is_sorted_json():
    text = Network(id="n", name="net", driver="bridge").dumps()
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_network_round_trips_through_json():
    net = Network(
        id="n",
        name="net",
        driver="bridge",
        subnets=[Subnet("10.0.0.0/24", "10.0.0.1"), Subnet("fd00::/64", "fd00::1")],
        internal=True,
        options={"mtu": "1400"},
        mtu=1400,
    )
    assert Network.loads(net.dumps()) == net


def test_network_keeps_release_1_fields_for_older_hosts():
    net = Network(id="n", name="net", driver="overlay", subnets=[Subnet("10.0.0.0/24", "10.0.0.1")])
    data = json.loads(net.dumps())
    assert (data["subnet"], data["gateway"], data["schema"]) == ("10.0.0.0/24", "10.0.0.1", 2)


RELEASE_1_NETWORK = {
    "id": "n", "name": "web", "driver": "bridge", "scope": "local", "subnet": "10.50.0.0/24",
    "gateway": "10.50.0.1", "ip_range": "10.50.0.128/25", "internal": False, "options": {},
    "bridge": "pt-aaaaaaaaaaaa", "mtu": 1500, "vni": 0, "created": "x", "status": "ready",
    "default": False, "icc": True, "gateway_bridge": False,
}  # fmt: skip


def test_release_1_network_upgrades_to_a_subnet_list():
    net = Network.from_dict(dict(RELEASE_1_NETWORK))
    assert net.subnets == [Subnet("10.50.0.0/24", "10.50.0.1", "10.50.0.128/25")]
    assert net.schema == 2 and net.subnet_for(6) is None


RELEASE_1_ENDPOINT = {
    "id": "e" * 64, "network_id": "n", "container_id": "c" * 64, "container_name": "web",
    "ifname": "eth0", "ip": "10.50.0.2", "mac": "02:42:0a:32:00:02", "prefixlen": 24,
    "gateway": "10.50.0.1", "host_ifname": "vetheeeeeeeeeee", "aliases": ["db"],
    "default_route": True, "dns_names": ["web", "db"], "host": "", "vtep": "",
}  # fmt: skip


def test_release_1_endpoint_becomes_a_pontoon_attachment():
    att = Attachment.from_endpoint(dict(RELEASE_1_ENDPOINT), "/run/pontoon/netns/cccccccccccc")
    assert att.owner == Owner("pontoon", "c" * 64, "web")
    assert att.addresses == ["10.50.0.2/24"] and att.gateways == ["10.50.0.1"]
    assert (att.ips, att.status, att.netns) == (
        ["10.50.0.2"],
        READY,
        "/run/pontoon/netns/cccccccccccc",
    )
    assert Attachment.loads(att.dumps()) == att


def test_release_1_container_upgrades_endpoints_to_attachments():
    c = Container.from_dict({"id": "x", "name": "n", "hostname": "h", "command": ["true"],
                             "endpoints": {"n1": "e1"}})  # fmt: skip
    assert (c.attachments, c.schema) == ({"n1": "e1"}, 2)


def test_peer_reads_a_release_1_endpoint_record():
    peer = Peer.from_dict({**RELEASE_1_ENDPOINT, "host": "h2", "vtep": "10.10.0.12"})
    assert (peer.ips, peer.name, peer.vtep) == (["10.50.0.2"], "web", "10.10.0.12")


def test_peer_written_today_is_readable_as_a_release_1_endpoint():
    att = Attachment(id="e", network_id="n", owner=Owner("cni", "k", "pod"), netns="/x",
                     ifname="eth0", addresses=["10.0.0.7/24"], mac="02:42:0a:00:00:07")  # fmt: skip
    data = json.loads(Peer.of(att).dumps())
    assert (data["ip"], data["prefixlen"], data["container_name"]) == ("10.0.0.7", 24, "pod")
