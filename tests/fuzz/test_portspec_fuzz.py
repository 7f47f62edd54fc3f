"""Fuzzing `-p` specs (pontoon/portmap/spec.py): any text is either a list of
well-formed port requests or an InvalidArgument, never another exception; a
well-formed spec parses to exactly what it says."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from pontoon.errors import InvalidArgument
from pontoon.portmap import spec as portspec
from tests.fuzz.budget import fuzz_settings, run_for

# Characters the grammar cares about, beside arbitrary text: the harness
# reaches the interesting branches far more often with them.
GRAMMAR = st.sampled_from(
    [*"0123456789:-/.", "tcp", "udp", "sctp", "TCP", "65535", "0", "[", "]", "::1", "fd00::", "%"]
)
SPEC_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(GRAMMAR, max_size=16).map("".join),
    st.lists(st.one_of(GRAMMAR, st.characters()), max_size=16).map("".join),
)
PORT = st.integers(1, 65535)


def check_well_formed(requests: list[portspec.PortRequest]) -> None:
    for req in requests:
        assert 1 <= req.container_port <= 65535
        assert req.host_port == 0 or 1 <= req.host_port <= 65535
        assert req.proto in portspec.PROTOCOLS
        assert str(ipaddress.ip_address(req.host_ip)) == req.host_ip
        assert req.implicit == (req.host_ip == portspec.ANY6 and req.implicit)


@fuzz_settings()
@given(SPEC_TEXT)
def parse_any_text(text: str) -> None:
    try:
        requests = portspec.parse(text)
    except InvalidArgument as exc:
        assert "\n" not in exc.message
        return
    assert requests
    check_well_formed(requests)


@fuzz_settings()
@given(st.lists(SPEC_TEXT, max_size=4))
def parse_all_of_any_text(specs: list[str]) -> None:
    try:
        requests = portspec.parse_all(specs)
    except InvalidArgument:
        return
    check_well_formed(requests)
    host_ports = [(r.proto, r.family, r.host_port) for r in requests if r.host_port]
    assert len(host_ports) == len(set(host_ports)), "a host port published twice"


@st.composite
def valid_specs(draw: st.DrawFn) -> tuple[str, list[portspec.PortRequest]]:
    """A spec built from its parts, with the requests it must parse to."""
    c_lo = draw(PORT)
    length = draw(st.integers(0, min(20, 65535 - c_lo)))
    proto = draw(st.sampled_from(["", "tcp", "udp", "sctp", "UDP"]))
    host_ip = draw(
        st.one_of(
            st.just(""),
            st.ip_addresses(v=4).map(str),
            st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str),
        )
    )
    host_lo = draw(st.one_of(st.just(0), st.integers(1, 65535 - length)))
    c_part = f"{c_lo}-{c_lo + length}" if length else str(c_lo)
    h_part = (f"{host_lo}-{host_lo + length}" if length else str(host_lo)) if host_lo else ""
    text = c_part
    if h_part or host_ip:
        text = f"{h_part}:{text}"
    if host_ip:
        text = f"[{host_ip}]:{text}" if ":" in host_ip else f"{host_ip}:{text}"
    if proto:
        text = f"{text}/{proto}"
    hosts = [(host_ip, False)] if host_ip else [(portspec.ANY, False), (portspec.ANY6, True)]
    want = [
        portspec.PortRequest(
            ip, host_lo + i if host_lo else 0, c_lo + i, proto.lower() or "tcp", implicit
        )
        for i in range(length + 1)
        for ip, implicit in hosts
    ]
    return text, want


@fuzz_settings()
@given(valid_specs())
def parse_valid_spec(case: tuple[str, list[portspec.PortRequest]]) -> None:
    text, want = case
    assert portspec.parse(text) == want


def test_any_text_is_requests_or_invalid_argument() -> None:
    run_for(parse_any_text)


def test_any_spec_list_is_requests_or_invalid_argument() -> None:
    run_for(parse_all_of_any_text)


def test_valid_specs_parse_to_what_they_say() -> None:
    run_for(parse_valid_spec)
