"""mac_for: Docker-style MAC addresses derived from an address."""

from __future__ import annotations

import pytest

from pontoon.core.addresses import mac_for


def test_mac_is_02_42_followed_by_the_address():
    assert mac_for("172.17.0.2") == "02:42:ac:11:00:02"


def test_mac_is_lowercase_zero_padded_hex():
    assert mac_for("10.255.1.10") == "02:42:0a:ff:01:0a"


def test_mac_is_locally_administered_unicast():
    first = int(mac_for("192.168.1.1").split(":")[0], 16)
    assert first & 0b10 and not first & 0b01


def test_mac_differs_per_address():
    assert mac_for("10.0.0.2") != mac_for("10.0.0.3")


def test_ipv6_mac_comes_from_the_last_four_bytes():
    assert mac_for("fd00::a:b0c:d0e") == "02:42:0b:0c:0d:0e"


@pytest.mark.parametrize("bad", ["", "10.0.0", "fd00::zz"])
def test_mac_rejects_non_addresses(bad):
    with pytest.raises(ValueError):
        mac_for(bad)
