"""Fuzzing the resolver's wire path (pontoon/dns/server.py): whatever bytes
arrive, `Resolver.answer` (the general path, UDP and TCP) and `fast_answer`
(the UDP fast path) never raise; an answer is a DNS response with the
query's ID that fits the size the asker can take; a response is never
answered; and where the fast path answers, the general path says the same.

Queries are random bytes, and dnspython-built queries (any qtype and class,
several questions, odd opcodes and flags, EDNS versions, payloads and
options) cut short or with bytes flipped. Upstream forwarding is replaced by
a fake answering from memory, sometimes with sections too big to fit."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pontoon.dns import server
from pontoon.dns.server import Resolver, View, fast_answer
from tests.fuzz.budget import fuzz_settings, run_for

KNOWN = {
    "web": ["10.0.0.2", "10.0.0.3"],
    "db": ["10.0.0.4"],
    "many": [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(60)],
}
VIEWS = {
    "open": View(KNOWN, {"10.0.0.2": "web", "10.0.0.4": "db"}, ["192.0.2.53"], external=True),
    "internal": View(KNOWN, {"10.0.0.2": "web"}, ["192.0.2.53"], external=False),
    "no-upstream": View(KNOWN, {}, [], external=True),
}

LABEL = st.one_of(
    st.sampled_from(["web", "WEB", "db", "many", "2", "0", "10", "in-addr", "arpa", "example"]),
    st.binary(min_size=1, max_size=63),
)
KNOWN_NAME = st.sampled_from(
    [
        "web",
        "WEB",
        "db",
        "many",
        "nobody",
        "2.0.0.10.in-addr.arpa",
        "4.0.0.10.in-addr.arpa",
        "9.9.10.in-addr.arpa",
    ]
)
NAME = st.lists(LABEL, min_size=0, max_size=6).map(
    lambda labels: dns.name.Name(
        [*(lb.encode() if isinstance(lb, str) else lb for lb in labels), b""]
    )
)
RDTYPE = st.one_of(
    st.sampled_from([1, 28, 12, 255, 41, 250, 251, 252, 5, 15, 16]), st.integers(0, 65535)
)
RDCLASS = st.one_of(st.sampled_from([1, 3, 254, 255]), st.integers(0, 65535))


def _valid_name(name: dns.name.Name) -> bool:
    return len(name.to_wire()) <= 255


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    """A query dnspython builds, then (maybe) mangled."""
    msg = dns.message.Message(id=draw(st.integers(0, 65535)))
    plain = draw(st.booleans())  # a name the view knows, asked plainly
    msg.flags = (
        dns.flags.RD
        if plain
        else draw(st.sampled_from([0, dns.flags.RD, dns.flags.QR | dns.flags.RD, dns.flags.TC]))
        | dns.opcode.to_flags(draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 15])))
    )
    for _ in range(1 if plain else draw(st.sampled_from([1, 1, 1, 0, 2]))):
        if plain:
            name = dns.name.from_text(draw(KNOWN_NAME))
            rdclass, rdtype = 1, draw(st.sampled_from([1, 28, 12, 255, 1, 28]))
        else:
            name, rdclass, rdtype = draw(NAME.filter(_valid_name)), draw(RDCLASS), draw(RDTYPE)
        msg.question.append(dns.rrset.RRset(name, rdclass, rdtype))
    if draw(st.booleans()):
        options = draw(
            st.lists(
                st.builds(dns.edns.GenericOption, st.integers(0, 65535), st.binary(max_size=16)),
                max_size=2,
            )
        )
        msg.use_edns(
            0 if plain else draw(st.integers(0, 255)),
            draw(st.integers(0, 0xFFFF).map(lambda f: f << 16 & 0xFFFF0000)),
            draw(st.integers(0, 65535)),
            options=options,
        )
    try:
        wire = msg.to_wire()
    except dns.exception.DNSException:
        wire = b""
    if draw(st.integers(0, 3)):  # mangled a quarter of the time
        return wire
    cut = draw(st.one_of(st.none(), st.integers(0, len(wire))))
    if cut is not None:
        wire = wire[:cut]
    for pos, value in draw(
        st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=3)
    ):
        if pos < len(wire):
            wire = wire[:pos] + bytes([value]) + wire[pos + 1 :]
    return wire


WIRE = st.one_of(queries(), st.binary(max_size=600))


class FakeUpstream:
    """Answers from memory; `big` pads every section past 512 bytes."""

    big = False

    async def forward(self, query: dns.message.Message, servers: list[str]) -> dns.message.Message:
        reply = dns.message.make_response(query)
        if self.big and query.question:
            owner = dns.name.from_text("pad.example.")
            reply.authority.append(
                dns.rrset.from_text_list(
                    owner, 60, "IN", "NS", [f"ns{i}.example." for i in range(40)]
                )
            )
            reply.additional.append(
                dns.rrset.from_text_list(owner, 60, "IN", "TXT", ['"' + "x" * 200 + '"'] * 4)
            )
        return reply


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def size_limit(wire: bytes, tcp: bool) -> int:
    """What the asker can take, read from its own message as dnspython reads it."""
    if tcp:
        return 65535
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        # dnspython may refuse only an EDNS option's contents, which a server
        # ignores (RFC 6891 6.1.2) while still honouring the payload size.
        query = _without_options(wire)
        if query is None:
            return 512
    return max(512, min(query.payload, 4096)) if query.edns >= 0 else 512


def _without_options(wire: bytes) -> dns.message.Message | None:
    """The query with its last record, when that is an OPT, emptied of options."""
    for at in range(12, len(wire) - 10):
        if wire[at : at + 3] != b"\x00\x00\x29":  # root name, type OPT
            continue
        (rdlength,) = struct.unpack_from(">H", wire, at + 9)
        if at + 11 + rdlength == len(wire):
            try:
                return dns.message.from_wire(wire[: at + 9] + b"\x00\x00")
            except dns.exception.DNSException:
                return None
    return None


def check_answer(wire: bytes, out: bytes | None, tcp: bool) -> None:
    if out is None:
        return
    assert len(wire) >= 12, "an answer to something without a header"
    assert not struct.unpack_from(">H", wire, 2)[0] & 0x8000, "a response was answered"
    assert out[:2] == wire[:2], "the answer does not carry the query's ID"
    assert len(out) <= size_limit(wire, tcp)
    reply = dns.message.from_wire(out)
    assert reply.flags & dns.flags.QR


def make_general_check(loop: asyncio.AbstractEventLoop, fake: FakeUpstream):
    resolver = Resolver(VIEWS.get)

    @fuzz_settings(batch=300)
    @given(WIRE, st.sampled_from(sorted(VIEWS)), st.booleans(), st.booleans())
    def general_path(wire: bytes, view: str, tcp: bool, big: bool) -> None:
        fake.big = big
        out = loop.run_until_complete(resolver.answer(view, wire, tcp=tcp))
        check_answer(wire, out, tcp)

    return general_path


@pytest.fixture
def fake_upstream(monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    fake = FakeUpstream()
    monkeypatch.setattr(server.upstream, "forward", fake.forward)
    return fake


def test_general_path_answers_any_bytes_without_raising(loop, fake_upstream) -> None:
    run_for(make_general_check(loop, fake_upstream))


def _rrs(msg: dns.message.Message) -> list[tuple[str, int, list[str]]]:
    return sorted((str(r.name).lower(), r.rdtype, sorted(map(str, r))) for r in msg.answer)


def test_fast_path_never_raises_and_agrees_with_the_general_path(loop, fake_upstream) -> None:
    resolver = Resolver(VIEWS.get)

    @fuzz_settings(batch=300)
    @given(WIRE, st.sampled_from(sorted(VIEWS)))
    def fast_path(wire: bytes, view: str) -> None:
        fast = fast_answer(wire, VIEWS[view])
        if fast is None:
            return
        check_answer(wire, fast, tcp=False)
        try:
            dns.message.from_wire(wire)
        except dns.exception.DNSException:
            # dnspython refuses only an EDNS option's contents (a client
            # subnet with a bad family, say); the fast path implements no
            # option and ignores them, as RFC 6891 6.1.2 lets a server do.
            return
        general = loop.run_until_complete(resolver.answer(view, wire))
        assert general is not None
        a, b = dns.message.from_wire(fast), dns.message.from_wire(general)
        assert (a.rcode(), a.flags, _rrs(a)) == (b.rcode(), b.flags, _rrs(b))

    run_for(fast_path)


class FakeWriter:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@st.composite
def tcp_streams(draw: st.DrawFn) -> bytes:
    """Length-prefixed messages, sometimes with a lying length, then junk."""
    stream = b""
    for wire in draw(st.lists(WIRE, max_size=3)):
        length = draw(st.one_of(st.just(len(wire)), st.integers(0, 65535)))
        stream += struct.pack(">H", length) + wire
    return stream + draw(st.binary(max_size=4))


def test_tcp_framing_of_any_stream(loop, fake_upstream) -> None:
    """`_serve_tcp` on any byte stream: ends cleanly, every frame it wrote is
    a length-prefixed response, and the connection is closed."""
    resolver = Resolver(VIEWS.get)

    async def serve(stream: bytes) -> FakeWriter:
        resolver.listeners["open"] = server.Listener(None, None)  # type: ignore[arg-type]
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        writer = FakeWriter()
        await resolver._serve_tcp("open", reader, writer)  # type: ignore[arg-type]
        return writer

    @fuzz_settings(batch=200)
    @given(tcp_streams())
    def tcp_path(stream: bytes) -> None:
        writer = loop.run_until_complete(serve(stream))
        assert writer.closed
        out = writer.data
        while out:
            (length,) = struct.unpack_from(">H", out)
            reply = dns.message.from_wire(out[2 : 2 + length])
            assert reply.flags & dns.flags.QR
            out = out[2 + length :]

    run_for(tcp_path)
