"""The embedded resolver, listening on 127.0.0.11:53 inside each sandbox.

Docker's embedded DNS and aardvark-dns, in one asyncio component of the
daemon: for every container on a user-defined network the daemon opens a UDP
and a TCP socket inside the container's namespace (so the asker is known from
the socket it used) and serves them all from its event loop. Names are looked
up in the daemon's live view of endpoints, so a new or removed container is
seen by the next query.

Rules (Docker's): a name (container name, hostname, short ID or alias)
resolves to the addresses of the endpoint on a network the asker shares
with it, A for IPv4 and AAAA for IPv6 (an empty answer when it has none of
that family); PTR for those addresses (in-addr.arpa and ip6.arpa) gives the
name; everything else goes upstream, except from a
container whose networks are all --internal, which gets REFUSED (no way out,
and no DNS tunnel either).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from pontoon.core import addresses
from pontoon.dns import upstream
from pontoon.sandbox import netns

log = logging.getLogger(__name__)

LISTEN_ADDR = "127.0.0.11"
TTL = 600
MAX_INFLIGHT = 64  # upstream queries per container; beyond that, drop (flood guard)
MAX_TCP_CLIENTS = 16


# Address records by family: (rdtype, record type name, packed length).
RECORD_TYPES = {4: (dns.rdatatype.A, "A", 4), 6: (dns.rdatatype.AAAA, "AAAA", 16)}
FAMILY_OF_QTYPE = {int(rdtype): family for family, (rdtype, _, _) in RECORD_TYPES.items()}


@dataclass
class View:
    """What one asking container may resolve."""

    names: dict[str, list[str]]  # lowercased name -> addresses, both families
    reverse: dict[str, str]  # address -> name
    upstreams: list[str]
    external: bool  # False when every network is --internal
    # (name, qtype) -> packed addresses of that family, for the fast path.
    packed: dict[tuple[str, int], list[bytes]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.packed = {}
        for name, addrs in self.names.items():
            for family, (rdtype, _, _) in RECORD_TYPES.items():
                self.packed[(name, int(rdtype))] = [
                    socket.inet_pton(addresses.socket_family(family), a)
                    for a in addrs
                    if addresses.family_of(a) == family
                ]

    def of_family(self, name: str, family: int) -> list[str]:
        return [a for a in self.names.get(name, []) if addresses.family_of(a) == family]


@dataclass
class Listener:
    udp: _UdpReader
    tcp: asyncio.Server
    inflight: int = 0
    tcp_clients: set[asyncio.Task[None]] = field(default_factory=set)


def build_reply(query: dns.message.Message, view: View) -> dns.message.Message | None:
    """A local answer, or None when the query must go upstream."""
    if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
        reply = dns.message.make_response(query)
        reply.set_rcode(
            dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR
        )
        return reply
    question = query.question[0]
    qname = question.name.to_text(omit_final_dot=True).lower()
    if question.rdclass != dns.rdataclass.IN:
        return None
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA | dns.flags.RA
    if question.rdtype == dns.rdatatype.PTR:
        addr = _ptr_address(qname)
        if addr is not None and addr in view.reverse:
            target = dns.name.from_text(view.reverse[addr])
            reply.answer.append(
                dns.rrset.from_text(question.name, TTL, "IN", "PTR", target.to_text())
            )
            return reply
        return None
    if qname not in view.names:
        return None
    for family, (rdtype, type_name, _) in RECORD_TYPES.items():
        addrs = view.of_family(qname, family)
        if addrs and question.rdtype in (rdtype, dns.rdatatype.ANY):
            reply.answer.append(
                dns.rrset.from_text_list(question.name, TTL, "IN", type_name, addrs)
            )
    # Other types, or a family the name has no address of: an empty NOERROR answer.
    return reply


# type, class IN, TTL, rdlength: what precedes each address in an answer.
RECORD_TAILS = {
    int(rdtype): struct.pack(">HHIH", int(rdtype), 1, TTL, size)
    for rdtype, _, size in RECORD_TYPES.values()
}
EDNS_PAYLOAD = 1232  # what we announce (the 2020 DNS flag day's size)
OPT_RECORD = b"\x00" + struct.pack(">HHIH", 41, EDNS_PAYLOAD, 0, 0)  # root, OPT, no options


def _edns_payload(wire: bytes, pos: int) -> int | None:
    """The asker's UDP payload size from the one OPT record at `pos`, the rest
    of the message; None unless it is exactly that (EDNS version 0; options,
    such as a client cookie, are ignored as RFC 6891 lets a server do)."""
    if len(wire) < pos + 11 or wire[pos] != 0:
        return None
    rtype, payload, _ext_rcode, version, _flags, rdlen = struct.unpack_from(
        ">HHBBHH", wire, pos + 1
    )
    if rtype != 41 or version != 0 or pos + 11 + rdlen != len(wire):
        return None
    return max(512, min(payload, 4096))


def fast_answer(wire: bytes, view: View) -> bytes | None:
    """The common case without dnspython: one plain question, with or without
    an EDNS(0) OPT record (Go, c-ares and dig send one), for an A or AAAA
    record of a known name. Anything else returns None and takes the general
    path. Several times cheaper per query, so the resolver keeps up with a
    container hammering it."""
    if len(wire) < 17:
        return None
    qid, flags, qd, an, ns, ar = struct.unpack_from(">HHHHHH", wire)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # QR, opcode: a plain query only
        return None
    labels = []
    pos = 12
    while True:
        length = wire[pos]
        if length == 0:
            break
        if length >= 64 or pos + 1 + length >= len(wire):
            return None  # compression or garbage in a question: the slow path decides
        labels.append(wire[pos + 1 : pos + 1 + length])
        pos += 1 + length
    end = pos + 5
    if end > len(wire):
        return None
    max_size = 512
    if ar:
        payload = _edns_payload(wire, end)
        if payload is None:
            return None
        max_size = payload
    elif end != len(wire):
        return None
    qtype, qclass = struct.unpack_from(">HH", wire, pos + 1)
    if qclass != 1 or qtype not in RECORD_TAILS:
        return None
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    addrs = view.packed.get((name, qtype))
    if addrs is None:
        return None
    tail = RECORD_TAILS[qtype]
    answers = b"".join(b"\xc0\x0c" + tail + packed for packed in addrs)
    opt = OPT_RECORD if ar else b""
    if end + len(answers) + len(opt) > max_size:
        return None  # the general path truncates
    # QR, AA, RA, and the asker's RD; NOERROR (no records of this family: empty).
    out_flags = 0x8000 | 0x0400 | 0x0080 | (flags & 0x0100)
    count = len(addrs)
    header = struct.pack(">HHHHHH", qid, out_flags, 1, count, 0, 1 if ar else 0)
    return header + wire[12:end] + answers + opt


def _ptr_address(qname: str) -> str | None:
    """The address a PTR name stands for: in-addr.arpa (four reversed decimal
    labels) or ip6.arpa (32 reversed nibbles); None for anything else."""
    try:
        if qname.endswith(".in-addr.arpa"):
            parts = qname.removesuffix(".in-addr.arpa").split(".")
            if len(parts) == 4:
                return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        elif qname.endswith(".ip6.arpa"):
            nibbles = qname.removesuffix(".ip6.arpa").split(".")
            if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
                return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
    except ValueError:
        return None
    return None


def formerr(wire: bytes) -> bytes | None:
    """FORMERR for a message whose header parses; None (drop) otherwise."""
    if len(wire) < 12:
        return None
    qid, flags = struct.unpack(">HH", wire[:4])
    if flags & 0x8000:  # a response: never answer those
        return None
    return struct.pack(">HHHHHH", qid, 0x8000 | (flags & 0x7900) | dns.rcode.FORMERR, 0, 0, 0, 0)


class Resolver:
    def __init__(self, view_for: Callable[[str], View | None]) -> None:
        self.view_for = view_for  # container id -> what it may resolve
        self.listeners: dict[str, Listener] = {}
        self.counters: Counter[str] = Counter()  # outcome -> queries, for metrics

    async def answer(self, cid: str, wire: bytes, tcp: bool = False) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self.counters["malformed"] += 1
            return formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        # UDP answers fit 512 bytes or the EDNS size the asker announced.
        max_size = (
            65535 if tcp else (max(512, min(query.payload, 4096)) if query.edns >= 0 else 512)
        )
        view = self.view_for(cid)
        if view is None:
            return None
        reply = build_reply(query, view)
        self.counters["local" if reply is not None else "forwarded"] += 1
        if reply is None:
            if not view.external or not view.upstreams:
                reply = dns.message.make_response(query)
                reply.set_rcode(dns.rcode.REFUSED if not view.external else dns.rcode.SERVFAIL)
            else:
                listener = self.listeners.get(cid)
                if listener is not None and listener.inflight >= MAX_INFLIGHT:
                    return None
                if listener is not None:
                    listener.inflight += 1
                try:
                    reply = await upstream.forward(query, view.upstreams)
                finally:
                    if listener is not None:
                        listener.inflight -= 1
                reply.id = query.id
        try:
            return reply.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            # Every section goes, not just the answer: an upstream's authority
            # and additional records alone can overflow 512 bytes.
            reply.flags |= dns.flags.TC
            for section in (reply.answer, reply.authority, reply.additional):
                section.clear()
            return reply.to_wire(max_size=max_size)

    # listening -----------------------------------------------------------

    async def start(self, cid: str, sandbox: Path) -> None:
        if cid in self.listeners:
            return
        udp_sock, tcp_sock = await asyncio.to_thread(netns.run_in, sandbox, _open_sockets)
        reader = _UdpReader(self, cid, udp_sock)
        server = await asyncio.start_server(lambda r, w: self._serve_tcp(cid, r, w), sock=tcp_sock)
        self.listeners[cid] = Listener(reader, server)

    async def stop(self, cid: str) -> None:
        listener = self.listeners.pop(cid, None)
        if listener is None:
            return
        listener.udp.close()
        listener.tcp.close()
        for task in list(listener.tcp_clients):
            task.cancel()

    async def close(self) -> None:
        for cid in list(self.listeners):
            await self.stop(cid)

    async def _serve_tcp(
        self, cid: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        listener = self.listeners.get(cid)
        task = asyncio.current_task()
        if listener is None or task is None or len(listener.tcp_clients) >= MAX_TCP_CLIENTS:
            writer.close()
            return
        listener.tcp_clients.add(task)
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), timeout=10)
                wire = await reader.readexactly(struct.unpack(">H", header)[0])
                out = await self.answer(cid, wire, tcp=True)
                if out is None:
                    break
                writer.write(struct.pack(">H", len(out)) + out)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            listener.tcp_clients.discard(task)
            writer.close()


class _UdpReader:
    """UDP without an asyncio transport: one wake-up drains every datagram
    waiting (up to a batch), and known names are answered right there, with no
    task per query. Only the rest (upstream, PTR, errors) becomes a task."""

    BATCH = 64

    def __init__(self, resolver: Resolver, cid: str, sock: socket.socket) -> None:
        self.resolver = resolver
        self.cid = cid
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._ready)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _ready(self) -> None:
        view = self.resolver.view_for(self.cid)
        for _ in range(self.BATCH):
            try:
                data, addr = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                out = fast_answer(data, view) if view is not None else None
            except Exception:  # a datagram it misreads: the general path decides
                out = None
            if out is None:
                self.loop.create_task(self._reply(data, addr))
                continue
            self.resolver.counters["local"] += 1
            self._send(out, addr)

    def _send(self, out: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # a full buffer drops, as UDP may
            self.sock.sendto(out, addr)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            out = await self.resolver.answer(self.cid, data)
        except Exception:
            log.exception("dns: answering %s failed", self.cid[:12])
            out = formerr(data)
        if out is not None and self.sock.fileno() >= 0:
            self._send(out, addr)


def _open_sockets() -> tuple[socket.socket, socket.socket]:
    """Run inside the sandbox: the resolver's UDP and TCP sockets, on a random
    port of 127.0.0.11 that a port rewrite exposes as port 53.

    Port 53 itself stays free for the container: a DNS server of its own on
    0.0.0.0:53 must be able to bind (Docker does the same)."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((LISTEN_ADDR, 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((LISTEN_ADDR, port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        udp.setblocking(False)
        tcp.setblocking(False)
        _redirect_port_53(port)
        return udp, tcp
    raise OSError("no port of 127.0.0.11 is free for both UDP and TCP")


def _redirect_port_53(port: int) -> None:
    """Inside the sandbox: 127.0.0.11:53 <-> 127.0.0.11:port, by a stateless
    port rewrite (pontoon/firewall/nft/sandbox.py says why)."""
    from pontoon.firewall.nft.sandbox import redirect_dns

    redirect_dns(LISTEN_ADDR, port)
