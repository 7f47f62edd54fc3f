"""A proxy worker: one process, one event loop, a share of the traffic.

Started by the supervisor (`pontoon.proxy.supervisor`) with one end of a
SEQPACKET socketpair as its channel; it serves exactly what the supervisor
tells it over that channel (the framing of `pontoon.proxy.wire`) and nothing
else, and exits when the channel closes or the supervisor dies
(PR_SET_PDEATHSIG): a worker must never outlive the supervisor, or it would
keep host ports bound that a new proxy needs.

Requests (the supervisor has validated them; replies are {"ok": ...}):
    {"op": "add", "mappings": [{id, proto, backend_ip, backend_port}]} + one fd each
    {"op": "remove", "ids": [...]}
    {"op": "stats"} -> {"stats": {id: counters}}

Every worker serves every TCP mapping: the listening socket is one open file
shared by all, and each connection wakes one idle worker (EPOLLEXCLUSIVE).
With plain epoll a new connection would wake every worker and all but one
would find nothing to accept; EPOLLEXCLUSIVE wakes one that sits in
epoll_wait (a busy worker is skipped). A worker runs on its own small epoll
loop (`evloop`), not asyncio: per connection, asyncio's bookkeeping cost
more than the kernel's work. A UDP
mapping is served by one worker only (the supervisor picks it), so each of
its flows lives in one process from its first datagram to its expiry.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from pontoon.proxy.evloop import Loop
from pontoon.proxy.mapping import Backend, Counters, Mapping
from pontoon.proxy.tcp import TcpMapping
from pontoon.proxy.udp import DEFAULT_MAX_FLOWS, UdpMapping
from pontoon.proxy.wire import MAX_FDS, MAX_PACKET, Assembler, RequestError

log = logging.getLogger("pontoon.proxy.worker")

PR_SET_PDEATHSIG = 1
REPLY_BUFFER = 16 << 20  # a stats reply for many mappings is one packet
SO_SNDBUFFORCE = 32  # not exported by Python; root may exceed wmem_max with it


class Worker:
    def __init__(
        self,
        loop: Loop,
        channel: socket.socket,
        udp_timeout: float = 30.0,
        udp_max_flows: int = DEFAULT_MAX_FLOWS,
        exclusive: bool = True,
    ) -> None:
        self.channel = channel
        self.udp_timeout = udp_timeout
        self.udp_max_flows = udp_max_flows
        self.exclusive = exclusive
        self.mappings: dict[str, Mapping] = {}
        self.loop = loop
        self._assembler = Assembler()
        # A range shares its backend: one object, its address parsed once.
        self._backends: dict[tuple[str, int], Backend] = {}

    def start(self) -> None:
        self.channel.setblocking(False)
        for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                self.channel.setsockopt(socket.SOL_SOCKET, option, REPLY_BUFFER)
                break
        self.loop.add_reader(self.channel.fileno(), self._on_message)

    def _on_message(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(
                self.channel, MAX_PACKET, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data and not fds:  # the supervisor is gone
            self.loop.remove_reader(self.channel.fileno())
            self.loop.stop()
            return
        try:
            complete = self._assembler.feed(data, fds)
            if complete is None:
                return
            reply = {"ok": True, **self.handle(*complete)}
        except RequestError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("request failed")
            reply = {"ok": False, "error": f"internal error: {exc}"}
        self.channel.send(json.dumps(reply, separators=(",", ":")).encode())

    def handle(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = request.get("op")
        if op == "add":
            return self._add(request.get("mappings") or [], fds)
        for fd in fds:
            os.close(fd)
        if op == "remove":
            return self._remove(request.get("ids") or [])
        if op == "stats":
            return {"stats": {mid: m.stats() for mid, m in self.mappings.items()}}
        if op == "ping":
            return {"pid": os.getpid()}
        raise RequestError(f"unknown op {op!r}")

    def _add(self, items: list[dict[str, Any]], fds: list[int]) -> dict[str, Any]:
        if len(items) != len(fds):
            for fd in fds:
                os.close(fd)
            raise RequestError(f"{len(fds)} fds for {len(items)} mappings")
        failed = []
        for item, fd in zip(items, fds, strict=True):
            try:
                self._add_one(item, socket.socket(fileno=fd))
            except (OSError, ValueError) as exc:
                failed.append(f"{item.get('id')}: {exc}")
        if failed:
            raise RequestError("cannot serve " + "; ".join(failed))
        return {}

    def _add_one(self, item: dict[str, Any], sock: socket.socket) -> None:
        mapping_id = item["id"]
        key = (item["backend_ip"], item["backend_port"])
        backend = self._backends.get(key) or self._backends.setdefault(key, Backend(*key))
        try:
            mapping: Mapping
            if item["proto"] == "tcp":
                tcp = TcpMapping(mapping_id, sock, backend, Counters(), self.loop)
                tcp.start(exclusive=self.exclusive)
                mapping = tcp
            else:
                mapping = UdpMapping(
                    mapping_id,
                    sock,
                    backend,
                    Counters(),
                    self.loop,
                    self.udp_timeout,
                    self.udp_max_flows,
                )
                mapping.start()
        except BaseException:
            sock.close()
            raise
        old = self.mappings.get(mapping_id)
        if old is not None:
            mapping.take_over(old)
        self.mappings[mapping_id] = mapping

    def _remove(self, ids: list[str]) -> dict[str, Any]:
        for mapping_id in ids:
            mapping = self.mappings.pop(mapping_id, None)
            if mapping is not None:
                mapping.close()
        return {}

    def close(self) -> None:
        for mapping in self.mappings.values():
            mapping.close()
        self.mappings.clear()


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the supervisor dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died before the prctl
        sys.exit(1)


def serve(args: argparse.Namespace) -> int:
    loop = Loop()
    try:
        channel = socket.socket(fileno=args.channel_fd)
        worker = Worker(
            loop, channel, args.udp_timeout, args.udp_max_flows, args.accept == "exclusive"
        )
        worker.start()
        loop.stop_on_signals(signal.SIGTERM, signal.SIGINT)
        loop.run()
        worker.close()
    finally:
        loop.close()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pontoon.proxy.worker")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--udp-timeout", type=float, default=30.0)
    parser.add_argument("--udp-max-flows", type=int, default=DEFAULT_MAX_FLOWS)
    parser.add_argument("--accept", choices=["exclusive", "all"], default="exclusive")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}]: %(message)s",
        stream=sys.stderr,
    )
    from pontoon.proxy.__main__ import raise_fd_limit

    raise_fd_limit()
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
