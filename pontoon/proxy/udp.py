"""UDP forwarding: one connected backend socket per client flow.

Design:
- The handed-over socket gets IP_PKTINFO (IPv4) or IPV6_RECVPKTINFO (IPv6;
  a dual-stack `::` socket gets both, as its IPv4 clients arrive through the
  IPv4 path), so every datagram tells which local address the client sent
  it to. A flow is keyed on (client IP, client
  port, that local address) and owns a UDP socket connected to the backend:
  the backend sees one stable peer per client, and its replies come back on
  that socket already demultiplexed.
- Replies go out of the published socket with sendmsg() and an IP_PKTINFO
  or IPV6_PKTINFO ancillary message naming that local address as the source
  (IPV6_PKTINFO with an IPv4-mapped address for an IPv4 client of a
  dual-stack socket: the kernel turns it into IPv4's). On a multi-homed
  host (or a socket bound to 0.0.0.0) the client thus hears back from the
  address it talked to; without it the kernel would pick a source by route
  and a connected client would drop the reply.
- Flows sit in an OrderedDict in least-recently-used order (moved to the end
  on traffic either way): expiry pops idle flows from the front on a periodic
  sweep, and the per-mapping cap evicts the oldest. No timer per flow.
- Datagrams pass through one preallocated buffer (single-threaded loop).
"""

from __future__ import annotations

import collections
import logging
import socket
import struct

from pontoon.proxy.evloop import Loop, Timer
from pontoon.proxy.mapping import Backend, Counters, Mapping

log = logging.getLogger("pontoon.proxy.udp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # not exported by Python 3.11
PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
PKTINFO6 = struct.Struct("=16si")  # struct in6_pktinfo: addr, ifindex
ANCILLARY_SPACE = socket.CMSG_SPACE(PKTINFO.size) + socket.CMSG_SPACE(PKTINFO6.size)
BATCH = 64  # datagrams per wake-up
DEFAULT_MAX_FLOWS = 4096

_buf = bytearray(65536)
_view = memoryview(_buf)

FlowKey = tuple[str, int, str]
Cmsg = tuple[int, int, bytes]


def enable_packet_info(sock: socket.socket) -> None:
    """Ask the kernel to tell, per datagram, the local address it was sent to."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            return
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def local_address(ancdata: list[Cmsg], family: socket.AddressFamily) -> str | None:
    """The local address a datagram was sent to, from its packet info, in the
    receiving socket's family (IPv4-mapped on a dual-stack socket)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= PKTINFO.size:
            # ipi_spec_dst: the destination for unicast, the interface's
            # address for broadcast; the right source for a reply either way.
            _, spec_dst, _ = PKTINFO.unpack_from(data)
            address = socket.inet_ntoa(spec_dst)
            return f"::ffff:{address}" if family == socket.AF_INET6 else address
        v6 = level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
        if v6 and len(data) >= PKTINFO6.size:
            return socket.inet_ntop(socket.AF_INET6, PKTINFO6.unpack_from(data)[0])
    return None


def source_message(local: str) -> Cmsg:
    """The ancillary message that makes a reply leave from `local`."""
    if ":" in local:
        addr = socket.inet_pton(socket.AF_INET6, local)
        return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, PKTINFO6.pack(addr, 0))
    return (socket.IPPROTO_IP, IP_PKTINFO, PKTINFO.pack(0, socket.inet_aton(local), bytes(4)))


class UdpMapping(Mapping):
    proto = "udp"

    def __init__(
        self,
        mapping_id: str,
        sock: socket.socket,
        backend: Backend,
        counters: Counters,
        loop: Loop,
        timeout: float,
        max_flows: int = DEFAULT_MAX_FLOWS,
    ) -> None:
        super().__init__(mapping_id, sock, backend, counters, loop)
        self.timeout = timeout
        self.max_flows = max_flows
        self.flows: collections.OrderedDict[FlowKey, UdpFlow] = collections.OrderedDict()
        self._bound_ip: str = sock.getsockname()[0]
        self._sweeper: Timer | None = None
        self._listening = False

    def start(self) -> None:
        enable_packet_info(self.sock)
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._on_datagram)
        self._listening = True
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        interval = min(max(self.timeout / 4, 0.05), 5.0)
        self._sweeper = self.loop.call_later(interval, self._sweep)

    def _on_datagram(self) -> None:
        for _ in range(BATCH):
            try:
                n, ancdata, _, client = self.sock.recvmsg_into([_buf], ANCILLARY_SPACE)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. a queued ICMP error
                log.debug("%s: receive: %s", self.id, exc)
                continue
            local = local_address(ancdata, self.sock.family) or self._bound_ip
            flow = self._flow((client[0], client[1], local), client)
            if flow is not None:
                flow.to_backend(_view[:n])

    def _flow(self, key: FlowKey, client: tuple[str, int]) -> UdpFlow | None:
        flow = self.flows.get(key)
        if flow is not None:
            self.flows.move_to_end(key)
            return flow
        if len(self.flows) >= self.max_flows:
            _, oldest = self.flows.popitem(last=False)
            oldest.close()
        try:
            flow = UdpFlow(self, key, client)
        except OSError as exc:
            log.warning("%s: cannot open a flow to %s: %s", self.id, self.backend.address, exc)
            self.counters.connect_failures += 1
            return None
        self.flows[key] = flow
        self.counters.connections_total += 1
        self.counters.connections_active = len(self.flows)
        return flow

    def touch(self, flow: UdpFlow) -> None:
        flow.last = self.loop.time()
        self.flows.move_to_end(flow.key)

    def reply(self, flow: UdpFlow, data: memoryview) -> None:
        try:
            self.sock.sendmsg([data], [flow.pktinfo], 0, flow.client)
        except OSError as exc:  # full buffer or unreachable: UDP may drop
            log.debug("%s: reply to %s: %s", self.id, flow.client, exc)
            return
        self.counters.bytes_out += len(data)
        self.touch(flow)

    def _sweep(self) -> None:
        deadline = self.loop.time() - self.timeout
        while self.flows:
            key, flow = next(iter(self.flows.items()))
            if flow.last > deadline:
                break
            del self.flows[key]
            flow.close()
        self.counters.connections_active = len(self.flows)
        self._schedule_sweep()

    def _stop_listening(self) -> None:
        if self._listening:
            self.loop.remove_reader(self.sock.fileno())
            self._listening = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.sock.close()

    def close(self) -> None:
        self._stop_listening()
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()
        self.counters.connections_active = 0

    def take_over(self, old: Mapping) -> None:
        assert isinstance(old, UdpMapping)
        old._stop_listening()
        if old.backend != self.backend:
            old.close()
            return
        self.counters = old.counters
        self.flows = old.flows
        for flow in self.flows.values():
            flow.mapping = self

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["udp_flows"] = len(self.flows)
        return out


class UdpFlow:
    """One client's datagrams to and from the backend."""

    __slots__ = ("client", "key", "last", "mapping", "pktinfo", "sock")

    def __init__(self, mapping: UdpMapping, key: FlowKey, client: tuple[str, int]) -> None:
        self.mapping = mapping
        self.key = key
        self.client = client
        self.last = mapping.loop.time()
        self.pktinfo = source_message(key[2])
        self.sock = socket.socket(mapping.backend.family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect(mapping.backend.address)
            mapping.loop.add_reader(self.sock.fileno(), self._on_reply)
        except BaseException:
            self.sock.close()
            raise

    def to_backend(self, data: memoryview) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:  # ECONNREFUSED from an earlier ICMP, full buffer
            log.debug("%s: to backend: %s", self.mapping.id, exc)
            return
        self.mapping.counters.bytes_in += len(data)
        self.mapping.touch(self)

    def _on_reply(self) -> None:
        for _ in range(BATCH):
            try:
                n = self.sock.recv_into(_buf)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP port unreachable from the backend
                log.debug("%s: from backend: %s", self.mapping.id, exc)
                continue
            self.mapping.reply(self, _view[:n])

    def close(self) -> None:
        self.mapping.loop.remove_reader(self.sock.fileno())
        self.sock.close()
