"""Pure helpers: driver options and name/ID lookup."""

from __future__ import annotations

import pytest

from pontoon.core.model import Network, NetworkSpec
from pontoon.drivers.bridge import bridge_name_option as _bridge_name_option
from pontoon.drivers.links import mtu_option
from pontoon.engine.state import find
from pontoon.errors import InvalidArgument, NotFound


def _mtu_option(options: dict[str, str], default: int = 1500) -> int:
    return mtu_option(NetworkSpec("n", options=options), default)


def _find(items: list[Network], ref: str, kind: str) -> Network:
    return find(items, ref, kind, lambda n: (n.name, n.id))


@pytest.mark.parametrize("key", ["com.docker.network.bridge.name", "bridge.name"])
def test_bridge_name_option_keys(key):
    assert _bridge_name_option({key: "br-web_1.0"}) == "br-web_1.0"


def test_bridge_name_option_absent_is_empty():
    assert _bridge_name_option({"mtu": "1400"}) == ""


@pytest.mark.parametrize("name", ["", "a" * 16, "br web", "br/x", 'br"x', "br:1"])
def test_bridge_name_option_rejects_invalid_names(name):
    with pytest.raises(InvalidArgument, match="invalid bridge name"):
        _bridge_name_option({"bridge.name": name})


@pytest.mark.parametrize("name", ["é" * 15, "brü", ".", ".."])
def test_bridge_name_option_rejects_names_the_kernel_refuses(name):
    with pytest.raises(InvalidArgument):
        _bridge_name_option({"bridge.name": name})


def test_mtu_defaults_to_1500():
    assert _mtu_option({}) == 1500


@pytest.mark.parametrize("key", ["com.docker.network.driver.mtu", "mtu"])
def test_mtu_option_keys(key):
    assert _mtu_option({key: "1400"}) == 1400


@pytest.mark.parametrize("value", ["67", "65536", "0"])
def test_mtu_out_of_range_is_rejected(value):
    with pytest.raises(InvalidArgument, match="must be 68-65535"):
        _mtu_option({"mtu": value})


def test_mtu_must_be_an_integer():
    with pytest.raises(InvalidArgument, match="invalid MTU 'big'"):
        _mtu_option({"mtu": "big"})


NETS = [
    Network(id="abc123" + "0" * 58, name="front", driver="bridge"),
    Network(id="abc456" + "0" * 58, name="back", driver="bridge"),
]


def test_find_by_name():
    assert _find(NETS, "back", "network") is NETS[1]


def test_find_by_full_id():
    assert _find(NETS, NETS[0].id, "network") is NETS[0]


def test_find_by_unique_id_prefix():
    assert _find(NETS, "abc4", "network") is NETS[1]


def test_find_ambiguous_id_prefix_is_invalid():
    with pytest.raises(InvalidArgument, match="network ID prefix abc is ambiguous"):
        _find(NETS, "abc", "network")


def test_find_ignores_id_prefixes_shorter_than_3():
    with pytest.raises(NotFound, match="no such network: ab"):
        _find(NETS, "ab", "network")


def test_find_unknown_is_not_found():
    with pytest.raises(NotFound, match="no such network: nope"):
        _find(NETS, "nope", "network")
