"""TCP forwarding: accept, connect to the backend, splice bytes both ways.

Design:
- Everything runs on the one asyncio loop with `add_reader`/`add_writer`
  callbacks; there is no thread and no coroutine per connection, only a few
  small `__slots__` objects, so thousands of connections cost little memory.
- Bytes never enter Python: each direction moves them socket -> pipe ->
  socket with `os.splice` (SPLICE_F_MOVE | SPLICE_F_NONBLOCK). Pipes come from
  a pool and go back as soon as they are empty, so only connections with
  bytes in flight hold one: an idle connection is two fds. A pipe starts at
  the kernel's default size and grows to 1 MiB (F_SETPIPE_SZ, if allowed) the
  first time it fills up, so chatty traffic keeps small pipes and bulk
  transfers get big ones.
- Flow control is the pipe: a direction stops reading its source while its
  pipe is full and waits for its destination to become writable while the
  pipe holds bytes. Registrations change only on these transitions, and a
  wake-up splices a few rounds while the destination keeps up.
- Half-close: EOF from one side, once the pipe is drained, becomes
  shutdown(SHUT_WR) on the other side; the connection closes when both
  directions are done. Any error (reset, broken pipe) closes both sides with
  an RST (SO_LINGER 0) so the peer learns promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct

from pontoon.proxy import wakeup
from pontoon.proxy.mapping import Backend, Counters, Mapping

log = logging.getLogger("pontoon.proxy.tcp")

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
BIG_PIPE = 1 << 20
LISTEN_BACKLOG = 4096  # capped by net.core.somaxconn
ACCEPT_BATCH = 64  # accepts per wake-up, so one busy port cannot starve the others
ACCEPT_PAUSE = 0.1  # out of fds: stop accepting that long instead of spinning
# The kernel gives up connecting to a silent backend after this many SYN
# retransmissions (1+2+4+8 s: ~15 s), so no timer per connection is needed.
CONNECT_SYN_RETRIES = 3
READ_ROUNDS = 8  # splice rounds per wake-up
SMALL_READ = 4096  # a read this short ends the wake-up's rounds
IDLE_PIPES = 64  # empty pipes kept for reuse
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
LINGER_RESET = struct.pack("ii", 1, 0)


def _default_pipe_size() -> int:
    r, w = os.pipe()
    try:
        return fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)


DEFAULT_PIPE = _default_pipe_size()


class TcpMapping(Mapping):
    proto = "tcp"

    def __init__(
        self, mapping_id: str, sock: socket.socket, backend: Backend, counters: Counters
    ) -> None:
        super().__init__(mapping_id, sock, backend, counters)
        self.conns: set[TcpConnection] = set()
        self._accepting = False
        self._resume: asyncio.TimerHandle | None = None  # while accepting is paused

    def start(self, exclusive: bool = False) -> None:
        """Serve the socket; `exclusive`: other workers watch it too, and
        one idle worker is to be woken per connection, not all."""
        # listen() on an already listening socket only updates the backlog.
        self.sock.listen(LISTEN_BACKLOG)
        self.sock.setblocking(False)
        if exclusive:
            wakeup.EXCLUSIVE.add(self.sock.fileno())
        self._set_accepting(True)

    def _set_accepting(self, on: bool) -> None:
        if on and not self._accepting:
            self.loop.add_reader(self.sock.fileno(), self._on_accept)
        elif not on and self._accepting:
            self.loop.remove_reader(self.sock.fileno())
        self._accepting = on

    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    log.warning("%s: cannot accept (%s); pausing", self.id, exc.strerror)
                    self._pause_accepting()
                return
            conn = TcpConnection(self, client)
            self.conns.add(conn)
            self.counters.connections_total += 1
            self.counters.connections_active += 1
            conn.start()

    def _pause_accepting(self) -> None:
        self._set_accepting(False)
        self._resume = self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        self._set_accepting(True)

    def forget(self, conn: TcpConnection) -> None:
        self.conns.discard(conn)
        self.counters.connections_active -= 1

    def _stop_listening(self) -> None:
        self._set_accepting(False)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        wakeup.EXCLUSIVE.discard(self.sock.fileno())  # before the number is free again
        self.sock.close()

    def close(self) -> None:
        self._stop_listening()
        for conn in list(self.conns):
            conn.close(reset=True)

    def take_over(self, old: Mapping) -> None:
        assert isinstance(old, TcpMapping)
        old._stop_listening()
        if old.backend != self.backend:
            old.close()
            return
        self.counters = old.counters
        self.conns = old.conns
        for conn in self.conns:
            conn.mapping = self


class TcpConnection:
    """One client connection and its backend connection."""

    __slots__ = ("b2c", "backend", "c2b", "client", "closed", "connecting", "mapping")

    def __init__(self, mapping: TcpMapping, client: socket.socket) -> None:
        self.mapping = mapping
        self.client = client
        self.backend: socket.socket | None = None
        self.c2b: _Direction | None = None
        self.b2c: _Direction | None = None
        self.connecting = False
        self.closed = False

    def start(self) -> None:
        loop = self.mapping.loop
        try:
            self.client.setblocking(False)
            self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Born non-blocking: one ioctl less per connection.
            kind = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
            self.backend = socket.socket(self.mapping.backend.family, kind)
            self.backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, CONNECT_SYN_RETRIES)
            err = self.backend.connect_ex(self.mapping.backend.address)
        except OSError as exc:
            self._connect_failed(exc.errno or errno.EIO)
            return
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(err)
            return
        loop.add_writer(self.backend.fileno(), self._on_connected)
        self.connecting = True

    def _on_connected(self) -> None:
        assert self.backend is not None
        self.mapping.loop.remove_writer(self.backend.fileno())
        self.connecting = False
        err = self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(err)
            return
        self.c2b = _Direction(self, self.client, self.backend, inbound=True)
        self.b2c = _Direction(self, self.backend, self.client, inbound=False)
        self.c2b.update()
        self.b2c.update()

    def _connect_failed(self, err: int) -> None:
        log.debug(
            "%s: backend %s: %s", self.mapping.id, self.mapping.backend.address, os.strerror(err)
        )
        self.mapping.counters.connect_failures += 1
        # A plain close, like docker-proxy: the client sees the connection end.
        self.close()

    def count(self, inbound: bool, n: int) -> None:
        if inbound:
            self.mapping.counters.bytes_in += n
        else:
            self.mapping.counters.bytes_out += n

    def abort(self, exc: OSError) -> None:
        log.debug("%s: connection error: %s", self.mapping.id, exc)
        self.close(reset=True)

    def direction_done(self, d: _Direction) -> None:
        try:
            d.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.abort(exc)
            return
        d.done = True
        if self.c2b and self.c2b.done and self.b2c and self.b2c.done:
            self.close()

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for d in (self.c2b, self.b2c):
            if d is not None:
                d.release()
        socks = [self.client] if self.backend is None else [self.client, self.backend]
        if self.connecting:
            assert self.backend is not None
            self.mapping.loop.remove_writer(self.backend.fileno())
        for sock in socks:
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            sock.close()
        self.mapping.forget(self)


class _Pipe:
    __slots__ = ("cap", "grown", "rfd", "wfd")

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.cap = DEFAULT_PIPE
        self.grown = False

    def grow(self) -> bool:
        """Once per pipe: to 1 MiB if pipe-max-size and the user's quota allow."""
        if self.grown:
            return False
        self.grown = True
        try:
            self.cap = fcntl.fcntl(self.wfd, fcntl.F_SETPIPE_SZ, BIG_PIPE)
        except OSError:
            return False
        return True

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


class PipePool:
    """Empty pipes for reuse (as HAProxy does): a direction holds a pipe only
    while bytes are in flight, so an idle connection costs two fds, not six,
    and no pipe buffers."""

    def __init__(self, keep: int = IDLE_PIPES) -> None:
        self.keep = keep
        self.free: list[_Pipe] = []

    def get(self) -> _Pipe:
        return self.free.pop() if self.free else _Pipe()

    def put(self, pipe: _Pipe) -> None:
        if len(self.free) < self.keep:
            self.free.append(pipe)  # LIFO: the warm (grown) pipes come back first
        else:
            pipe.close()


POOL = PipePool()


class _Direction:
    """One way of a connection: src socket -> pipe -> dst socket."""

    __slots__ = (
        "conn",
        "done",
        "dst",
        "dst_fd",
        "eof",
        "full",
        "inbound",
        "pending",
        "pipe",
        "reading",
        "src_fd",
        "writing",
    )

    def __init__(
        self, conn: TcpConnection, src: socket.socket, dst: socket.socket, inbound: bool
    ) -> None:
        self.conn = conn
        self.dst = dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.inbound = inbound
        self.pipe: _Pipe | None = None  # from POOL while pending > 0
        self.pending = 0  # bytes in the pipe
        self.full = False  # the pipe cannot take more until dst drains it
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False

    def on_readable(self) -> None:
        # A few rounds per wake-up: with a fast destination the pipe drains at
        # once, and going back to the event loop between chunks costs more
        # than the splices themselves. A small read is a message, not a
        # stream: the socket is most likely empty, and asking again would
        # only fail with EAGAIN (a syscall and a Python exception per
        # request/response); the level-triggered loop calls back if not.
        for _ in range(READ_ROUNDS):
            n = self._read_once()
            if n < 0:
                return
            self.flush()
            if self.pending or self.conn.closed or self.eof or n < SMALL_READ:
                return

    def _read_once(self) -> int:
        """Splice what src has into the pipe: the bytes read, 0 at EOF, -1 if
        there was nothing (or the connection failed)."""
        try:
            if self.pipe is None:
                self.pipe = POOL.get()
            pipe = self.pipe
            n = os.splice(self.src_fd, pipe.wfd, pipe.cap - self.pending, flags=SPLICE_FLAGS)
        except BlockingIOError:
            if self.pending:
                # EAGAIN with bytes in the pipe may mean "pipe full" (it fills
                # by slots, not bytes): stop reading or the loop would spin.
                self._pipe_full()
                self.update()
            else:
                self._put_pipe()
            return -1
        except OSError as exc:  # a reset, or out of fds for a pipe
            self.conn.abort(exc)
            return -1
        if n == 0:
            self.eof = True
        else:
            self.pending += n
            self.conn.count(self.inbound, n)
            if self.pending >= pipe.cap:
                self._pipe_full()
        return n

    def _pipe_full(self) -> None:
        assert self.pipe is not None
        if not self.pipe.grow():
            self.full = True

    def _put_pipe(self) -> None:
        if self.pipe is not None:
            POOL.put(self.pipe)
            self.pipe = None

    def flush(self) -> None:
        while self.pending:
            assert self.pipe is not None
            try:
                n = os.splice(self.pipe.rfd, self.dst_fd, self.pending, flags=SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError as exc:
                self.conn.abort(exc)
                return
            if n == 0:
                break
            self.pending -= n
            self.full = False
        if not self.pending:
            self._put_pipe()
            if self.eof:
                self.update()
                self.conn.direction_done(self)
                return
        self.update()

    def update(self) -> None:
        """(Un)register callbacks to match the state: read while the pipe has
        room and src has not ended; wait for dst while the pipe holds bytes."""
        loop = self.conn.mapping.loop
        want_read = not self.eof and not self.full
        if want_read != self.reading:
            if want_read:
                loop.add_reader(self.src_fd, self.on_readable)
            else:
                loop.remove_reader(self.src_fd)
            self.reading = want_read
        want_write = self.pending > 0
        if want_write != self.writing:
            if want_write:
                loop.add_writer(self.dst_fd, self.flush)
            else:
                loop.remove_writer(self.dst_fd)
            self.writing = want_write

    def release(self) -> None:
        loop = self.conn.mapping.loop
        if self.reading:
            loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            loop.remove_writer(self.dst_fd)
            self.writing = False
        if self.pipe is not None:
            if self.pending:
                self.pipe.close()  # holds bytes nobody will read
            else:
                POOL.put(self.pipe)
            self.pipe = None
