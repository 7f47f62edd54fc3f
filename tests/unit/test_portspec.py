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
    # Two per port (0.0.0.0 and ::): the limit is per family.
    assert len(portspec.parse_all(["1-65535"])) == 2 * 65535
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
    assert len(portspec.parse_all(specs)) == 2 + 2 * 2


def test_the_whole_port_range_published_one_to_one() -> None:
    # The clash check scanned every earlier request: this took ~20 minutes
    # of the daemon's event loop. Now a look-up per request.
    requests = portspec.parse_all(["1-65535:1-65535/udp"])
    assert len(requests) == 2 * 65535 and requests[-1].host_port == 65535


# -- IPv6 (issue 13) -------------------------------------------------------------


def test_no_host_ip_publishes_on_both_families_one_pair_per_port() -> None:
    assert portspec.parse("8080-8081:80-81") == [
        portspec.PortRequest("0.0.0.0", 8080, 80, "tcp"),
        portspec.PortRequest("::", 8080, 80, "tcp", implicit=True),
        portspec.PortRequest("0.0.0.0", 8081, 81, "tcp"),
        portspec.PortRequest("::", 8081, 81, "tcp", implicit=True),
    ]
    assert [r.host_ip for r in portspec.parse("80/udp")] == ["0.0.0.0", "::"]


@pytest.mark.parametrize(
    ("spec", "host_ip", "host_port"),
    [
        ("[::1]:8080:80", "::1", 8080),
        ("[::]:8080:80", "::", 8080),
        ("[2001:DB8::0001]:8080:80", "2001:db8::1", 8080),  # canonical form
        ("[fd00::5]::80", "fd00::5", 0),  # ephemeral
        ("::1:8080:80", "::1", 8080),  # Docker: the last two fields are ports
        ("2001:db8::7:9000:80", "2001:db8::7", 9000),
        ("0.0.0.0:8080:80", "0.0.0.0", 8080),  # IPv4 only
        ("[10.0.0.1]:8080:80", "10.0.0.1", 8080),  # brackets on IPv4, as Docker
    ],
)
def test_host_ips_of_both_families(spec: str, host_ip: str, host_port: int) -> None:
    (req,) = portspec.parse(spec)
    assert (req.host_ip, req.host_port, req.container_port, req.implicit) == (
        host_ip,
        host_port,
        80,
        False,
    )


@pytest.mark.parametrize(
    "spec",
    [
        "[::1:8080:80",  # no closing bracket
        "[]:8080:80",
        "[::1]8080:80",  # no colon after ]
        "[::1]:80",  # one port field
        "[::1]:8080:80:90",
        "::1]:8080:80",
        "[::1]:[8080]:80",
        "[fe80::1%eth0]:8080:80",  # zone index
        "[::ffff:10.0.0.1]:8080:80",  # IPv4-mapped: use the IPv4 address
        "[nope]:8080:80",
        "fd00::zz:8080:80",
        "1.2.3:8080:80",
    ],
)
def test_malformed_host_ips_are_one_clear_error(spec: str) -> None:
    with pytest.raises(InvalidArgument, match=r"invalid (host IP|port)"):
        portspec.parse(spec)


@pytest.mark.parametrize(
    "specs",
    [
        ["8080:80", "[::]:8080:81"],
        ["8080:80", "[::1]:8080:81"],
        ["[::1]:8080:80", "[::1]:8080:81"],
        ["[::]:8080:80", "[fd00::1]:8080:81"],
    ],
)
def test_ipv6_host_port_published_twice_is_refused(specs: list[str]) -> None:
    with pytest.raises(InvalidArgument, match="published twice"):
        portspec.parse_all(specs)


def test_families_do_not_clash() -> None:
    specs = ["0.0.0.0:8080:80", "[::]:8080:81", "127.0.0.1:9090:90", "[::1]:9090:91"]
    assert len(portspec.parse_all(specs)) == 4


def test_implicit_twins_are_found_again_in_stored_rows() -> None:
    reqs = portspec.parse_all(["8080:80", "[::]:9090:90"])
    rows = [(r.host_ip, r.host_port, r.container_port, r.proto) for r in reqs]
    assert portspec.requests_of(rows) == reqs
