"""`-p` specs: regressions the fuzzer (tests/fuzz/test_portspec_fuzz.py) found."""

from __future__ import annotations

import pytest

from pontoon.errors import InvalidArgument
from pontoon.portmap import spec as portspec


def test_plain_spec() -> None:
    assert portspec.parse("127.0.0.1:8080-8081:80-81/UDP") == [
        portspec.PortRequest("127.0.0.1", 8080, 80, "udp"),
        portspec.PortRequest("127.0.0.1", 8081, 81, "udp"),
    ]


@pytest.mark.parametrize("text", ["²", "80:²", "١٢", "8080:٨٠"])
def test_non_ascii_digits_are_invalid_ports(text: str) -> None:
    # '²'.isdigit() is true but int('²') raised ValueError (a 500 from the API).
    with pytest.raises(InvalidArgument, match="invalid port"):
        portspec.parse(text)


def test_thousands_of_digits_are_out_of_range_not_a_crash() -> None:
    # int() refuses strings past 4300 digits with ValueError.
    with pytest.raises(InvalidArgument, match="must be 1-65535"):
        portspec.parse("9" * 5000)


def test_leading_zeros_still_read() -> None:
    assert portspec.parse("00080")[0].container_port == 80


def test_too_many_port_requests_are_refused_before_expanding_them() -> None:
    assert len(portspec.parse_all(["1-65535"])) == 65535
    with pytest.raises(InvalidArgument, match="too many ports"):
        portspec.parse_all(["1-65535", "1-65535/udp"])


@pytest.mark.parametrize(
    "specs",
    [
        ["80:80", "80:81"],
        ["80:80", "127.0.0.1:80:81"],
        ["127.0.0.1:80:80", "80:81"],
        ["127.0.0.1:80:80", "127.0.0.1:80:81"],
        ["1000-1010:1000-1010", "1005:22"],
    ],
)
def test_a_host_port_published_twice_is_refused(specs: list[str]) -> None:
    with pytest.raises(InvalidArgument, match="published twice"):
        portspec.parse_all(specs)


def test_same_port_on_two_host_addresses_or_protocols_is_fine() -> None:
    specs = ["127.0.0.1:80:80", "127.0.0.2:80:81", "80:80/udp", "80:80/sctp"]
    assert len(portspec.parse_all(specs)) == 4


def test_the_whole_port_range_published_one_to_one() -> None:
    # The clash check scanned every earlier request: this took ~20 minutes
    # of the daemon's event loop. Now a look-up per request.
    requests = portspec.parse_all(["1-65535:1-65535/udp"])
    assert len(requests) == 65535 and requests[-1].host_port == 65535
