"""The resolver's wire-level fast path (pontoon.dns.server.fast_answer),
checked against dnspython's reading of the same bytes."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from pontoon.dns.server import EDNS_PAYLOAD, View, fast_answer

VIEW = View(
    names={"web": ["10.0.0.2", "10.0.0.3"], "db": ["10.0.0.4"]},
    reverse={},
    upstreams=[],
    external=True,
)


def ask(name: str, rdtype: str = "A", **edns) -> tuple[dns.message.Message, bytes | None]:
    query = dns.message.make_query(name, rdtype, **edns)
    wire = fast_answer(query.to_wire(), VIEW)
    return query, wire


def test_plain_a_query_is_answered_like_a_dns_server():
    query, wire = ask("web")
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id and reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.AA and reply.flags & dns.flags.RD
    assert sorted(rr.address for rr in reply.answer[0]) == ["10.0.0.2", "10.0.0.3"]
    assert reply.edns < 0  # none asked, none given


def test_aaaa_of_a_known_name_is_an_empty_answer():
    _, wire = ask("DB", "AAAA")  # names are case-insensitive
    reply = dns.message.from_wire(wire)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


@pytest.mark.parametrize("name, rdtype", [("nobody", "A"), ("web", "MX"), ("web.example", "A")])
def test_everything_else_takes_the_general_path(name, rdtype):
    assert ask(name, rdtype)[1] is None


def test_edns_queries_are_answered_with_an_opt_record():
    # What Go's resolver and c-ares send: EDNS(0), a payload size, no options.
    _, wire = ask("web", use_edns=0, payload=1232)
    reply = dns.message.from_wire(wire)
    assert reply.edns == 0 and reply.payload == EDNS_PAYLOAD
    assert len(reply.answer[0]) == 2


def test_edns_options_such_as_a_cookie_are_ignored():
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    _, wire = ask("db", use_edns=0, payload=4096, options=[cookie])
    reply = dns.message.from_wire(wire)
    assert [rr.address for rr in reply.answer[0]] == ["10.0.0.4"] and reply.options == ()


def test_unknown_edns_version_goes_to_the_general_path():
    assert ask("web", use_edns=1)[1] is None


@pytest.mark.parametrize(
    "wire",
    [
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web",  # name runs off the end
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03web\x00\x00\x01\x00\x01\x00",
        b"\x12\x34\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01",  # response
    ],
)
def test_malformed_or_odd_messages_are_left_to_the_general_path(wire):
    assert fast_answer(wire, VIEW) is None


def test_forwarded_reply_too_big_in_any_section_is_truncated_not_an_error(monkeypatch):
    # Found by tests/fuzz/test_dns_fuzz.py: an upstream reply whose authority
    # and additional records alone overflow 512 bytes raised TooBig (the
    # asker got FORMERR) instead of an empty answer with TC set.
    import asyncio

    import dns.name
    import dns.rrset

    from pontoon.dns import server

    async def forward(query, servers):
        reply = dns.message.make_response(query)
        owner = dns.name.from_text("pad.example.")
        names = [f"ns{i}.example." for i in range(40)]
        reply.authority.append(dns.rrset.from_text_list(owner, 60, "IN", "NS", names))
        return reply

    monkeypatch.setattr(server.upstream, "forward", forward)
    resolver = server.Resolver(lambda cid: View({}, {}, ["192.0.2.53"], external=True))
    query = dns.message.make_query("elsewhere.example", "A")
    reply = dns.message.from_wire(asyncio.run(resolver.answer("c", query.to_wire())))
    assert reply.id == query.id and reply.flags & dns.flags.TC
    assert reply.answer == reply.authority == reply.additional == []
