"""TCP forwarding: accept, connect to the backend, splice bytes both ways.

Design:
- Everything runs on the worker's event loop (`evloop`) with one handler per
  descriptor that gets the epoll event mask; there is no thread and no
  coroutine per connection, only a few small `__slots__` objects, so
  thousands of connections cost little memory. Each socket is registered
  once, its mask changed only when what it waits for changes, and dropped
  from epoll by closing it (no EPOLL_CTL_DEL): a short connection costs
  three epoll_ctl calls.
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
- The backend's connect is not waited for: both sockets are watched for
  reading at once (a socket still connecting is neither readable nor
  writable), bytes from the client wait in the pipe until the backend is
  writable, and an error on the backend before it has been seen connected
  is a failed connect.
- Half-close: EOF from one side, once the pipe is drained, becomes
  shutdown(SHUT_WR) on the other side; the connection closes when both
  directions are done. Any error (reset, broken pipe) closes both sides with
  an RST (SO_LINGER 0) so the peer learns promptly.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import struct

from pontoon.proxy.evloop import Handler, Loop, Timer
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
# Small messages are copied through this (one loop, one thread: shared).
COPY_BUFFER = bytearray(64 * 1024)
COPY_VIEW = memoryview(COPY_BUFFER)
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
LINGER_RESET = struct.pack("ii", 1, 0)

IN, OUT, ERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR
# EPOLLRDHUP: the peer's FIN is queued, so after the data one more read
# gets the EOF at once instead of after another wake-up.
READ = IN | select.EPOLLRDHUP
READABLE = IN | select.EPOLLHUP | select.EPOLLRDHUP
SOL_TCP, SOCK_STREAM = socket.IPPROTO_TCP, socket.SOCK_STREAM


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
        self,
        mapping_id: str,
        sock: socket.socket,
        backend: Backend,
        counters: Counters,
        loop: Loop,
    ) -> None:
        super().__init__(mapping_id, sock, backend, counters, loop)
        self.conns: set[TcpConnection] = set()
        self._accepting = False
        self._exclusive = False
        self._family = int(sock.family)  # socket.family builds an enum per call
        self._resume: Timer | None = None  # while accepting is paused

    def start(self, exclusive: bool = False) -> None:
        """Serve the socket; `exclusive`: other workers watch it too, and
        one idle worker is to be woken per connection, not all."""
        # listen() on an already listening socket only updates the backlog.
        self.sock.listen(LISTEN_BACKLOG)
        self.sock.setblocking(False)
        # Accepted sockets inherit it (Linux): once per port, not per connection.
        self.sock.setsockopt(SOL_TCP, socket.TCP_NODELAY, 1)
        self._exclusive = exclusive
        self._set_accepting(True)

    def _set_accepting(self, on: bool) -> None:
        if on and not self._accepting:
            self.loop.watch(self.sock.fileno(), IN, self._on_accept, exclusive=self._exclusive)
        elif not on and self._accepting:
            # Unregister, never just forget: the other workers keep the
            # open file alive, and with it this epoll's registration.
            self.loop.unwatch(self.sock.fileno())
        self._accepting = on

    def _on_accept(self, _events: int) -> None:
        # The fd alone: no socket.socket built (in Python) and thrown away.
        accept = self.sock._accept  # type: ignore[attr-defined]
        family = self._family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, _ = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    log.warning("%s: cannot accept (%s); pausing", self.id, exc.strerror)
                    self._pause_accepting()
                return
            conn = TcpConnection(self, _socket.socket(family, SOCK_STREAM, 0, fd))
            self.conns.add(conn)
            counters = self.counters
            counters.connections_total += 1
            counters.connections_active += 1
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

    __slots__ = (
        "b2c",
        "backend",
        "bfd",
        "bmask",
        "c2b",
        "cfd",
        "client",
        "closed",
        "cmask",
        "connecting",
        "mapping",
    )

    def __init__(self, mapping: TcpMapping, client: _socket.socket) -> None:
        self.mapping = mapping
        self.client = client
        self.cfd = client.fileno()
        self.backend: _socket.socket | None = None
        self.bfd = -1
        self.c2b: _Direction | None = None
        self.b2c: _Direction | None = None
        self.cmask = self.bmask = 0  # registered in epoll while non-zero
        self.connecting = False  # until the backend has been seen connected
        self.closed = False

    def start(self) -> None:
        backend_address = self.mapping.backend
        try:
            self.client.setblocking(False)
            # Born non-blocking: one ioctl less per connection.
            backend = _socket.socket(backend_address.family, SOCK_STREAM | socket.SOCK_NONBLOCK)
            self.backend = backend
            backend.setsockopt(SOL_TCP, socket.TCP_NODELAY, 1)
            backend.setsockopt(SOL_TCP, socket.TCP_SYNCNT, CONNECT_SYN_RETRIES)
            err = backend.connect_ex(backend_address.address)
        except OSError as exc:
            self._connect_failed(exc.errno or errno.EIO)
            return
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(err)
            return
        self.connecting = err != 0
        self.bfd = backend.fileno()
        self.c2b = _Direction(self, self.client, backend, inbound=True)
        self.b2c = _Direction(self, backend, self.client, inbound=False)
        self.sync()

    def sync(self) -> None:
        """Bring both registrations in line with what the directions want."""
        c2b, b2c = self.c2b, self.b2c
        assert c2b is not None and b2c is not None
        cmask = (READ if c2b.reading else 0) | (OUT if b2c.writing else 0)
        bmask = (READ if b2c.reading else 0) | (OUT if c2b.writing else 0)
        if cmask != self.cmask:
            self._register(self.cfd, self.cmask, cmask, self._on_client)
            self.cmask = cmask
        if bmask != self.bmask:
            self._register(self.bfd, self.bmask, bmask, self._on_backend)
            self.bmask = bmask

    def _register(self, fd: int, old: int, new: int, handler: Handler) -> None:
        loop = self.mapping.loop
        if not old:
            loop.watch(fd, new, handler)
        elif not new:
            # Out of epoll, not a zero mask: EPOLLHUP is reported whatever
            # the mask, and would spin the loop.
            loop.unwatch(fd)
        else:
            loop.modify(fd, new)

    def _on_client(self, events: int) -> None:
        c2b, b2c = self.c2b, self.b2c
        assert c2b is not None and b2c is not None
        if events & ERR:
            self.close(reset=True, dead=self.client)
            return
        if events & OUT and b2c.writing:
            b2c.flush()
        if events & READABLE and c2b.reading and not self.closed:
            c2b.on_readable(events)

    def _on_backend(self, events: int) -> None:
        c2b, b2c = self.c2b, self.b2c
        assert c2b is not None and b2c is not None
        if events & ERR:
            if self.connecting:
                assert self.backend is not None
                err = self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self._connect_failed(err or errno.ECONNREFUSED)
            else:
                self.close(reset=True, dead=self.backend)
            return
        self.connecting = False
        if events & OUT and c2b.writing:
            c2b.flush()
        if events & READABLE and b2c.reading and not self.closed:
            b2c.on_readable(events)

    def _connect_failed(self, err: int) -> None:
        log.debug(
            "%s: backend %s: %s", self.mapping.id, self.mapping.backend.address, os.strerror(err)
        )
        self.mapping.counters.connect_failures += 1
        # A plain close, like docker-proxy: the client sees the connection end.
        self.close()

    def abort(self, exc: OSError, backend: bool) -> None:
        """An error on one side (`backend` or the client): reset both."""
        if backend and self.connecting:
            self._connect_failed(exc.errno or errno.EIO)
            return
        log.debug("%s: connection error: %s", self.mapping.id, exc)
        self.close(reset=True, dead=self.backend if backend else self.client)

    def direction_done(self, d: _Direction) -> None:
        try:
            d.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.abort(exc, backend=d.inbound)
            return
        d.done = True
        if self.c2b and self.c2b.done and self.b2c and self.b2c.done:
            self.close()

    def close(self, reset: bool = False, dead: _socket.socket | None = None) -> None:
        """`reset`: end both sides with an RST, except the `dead` one (it
        failed: reset by its peer, or no longer connected)."""
        if self.closed:
            return
        self.closed = True
        for d in (self.c2b, self.b2c):
            if d is not None:
                d.release()
        loop = self.mapping.loop
        for sock, registered in ((self.client, self.cmask), (self.backend, self.bmask)):
            if sock is None:
                continue
            if registered:
                loop.forget(sock.fileno())  # the close takes it out of epoll
            if reset and sock is not dead:
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
        "copying",
        "done",
        "dst",
        "dst_fd",
        "eof",
        "full",
        "held",
        "inbound",
        "pending",
        "pipe",
        "reading",
        "src",
        "src_fd",
        "writing",
    )

    def __init__(
        self, conn: TcpConnection, src: _socket.socket, dst: _socket.socket, inbound: bool
    ) -> None:
        self.conn = conn
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.inbound = inbound
        self.copying = True  # recv/send until a read says "stream"
        self.held: bytes | None = None  # copied, not yet taken by dst
        self.pipe: _Pipe | None = None  # from POOL while pending > 0
        self.pending = 0  # bytes in the pipe, or held
        self.full = False  # the pipe cannot take more until dst drains it
        self.eof = False
        self.done = False
        self.reading = True  # what the connection's registrations ask for
        self.writing = False

    def on_readable(self, events: int) -> None:
        # A few rounds per wake-up: with a fast destination the pipe drains at
        # once, and going back to the event loop between chunks costs more
        # than the splices themselves. A small read is a message, not a
        # stream: the socket is most likely empty, and asking again would
        # only fail with EAGAIN (a syscall and a Python exception per
        # request/response); the level-triggered loop calls back if not.
        # Unless the peer's FIN is queued (EPOLLRDHUP): then the next read
        # ends the direction now rather than after another wake-up.
        for _ in range(READ_ROUNDS):
            n = self._copy_once() if self.copying else self._read_once()
            if n < 0:
                return
            self.flush()
            if self.pending or self.conn.closed or self.eof:
                return
            if n < SMALL_READ and not events & select.EPOLLRDHUP:
                return

    def _copy_once(self) -> int:
        """Small messages: recv and send through one shared buffer, cheaper
        than two splices for a few bytes. A read of SMALL_READ or more is a
        stream: later reads splice. What dst does not take at once is held
        (and reading stops) until dst is writable."""
        try:
            n = self.src.recv_into(COPY_BUFFER)
        except BlockingIOError:
            return -1
        except OSError as exc:
            self.conn.abort(exc, backend=not self.inbound)
            return -1
        if n == 0:
            self.eof = True
            return 0
        counters = self.conn.mapping.counters
        if self.inbound:
            counters.bytes_in += n
        else:
            counters.bytes_out += n
        if n >= SMALL_READ:
            self.copying = False
        try:
            sent = self.dst.send(COPY_VIEW[:n])
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.conn.abort(exc, backend=self.inbound)
            return -1
        if sent < n:
            self.held = bytes(COPY_VIEW[sent:n])
            self.pending = n - sent
            self.full = True
        return n

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
            self.conn.abort(exc, backend=not self.inbound)
            return -1
        if n == 0:
            self.eof = True
        else:
            self.pending += n
            counters = self.conn.mapping.counters
            if self.inbound:
                counters.bytes_in += n
            else:
                counters.bytes_out += n
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
        if self.held is not None:
            self._flush_held()
            if self.conn.closed:
                return
        while self.pending and self.pipe is not None:
            try:
                n = os.splice(self.pipe.rfd, self.dst_fd, self.pending, flags=SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError as exc:
                self.conn.abort(exc, backend=self.inbound)
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

    def _flush_held(self) -> None:
        assert self.held is not None
        try:
            sent = self.dst.send(self.held)
        except BlockingIOError:
            return
        except OSError as exc:
            self.conn.abort(exc, backend=self.inbound)
            return
        if sent < len(self.held):
            self.held = self.held[sent:]
        else:
            self.held = None
            self.full = False
        self.pending -= sent

    def update(self) -> None:
        """Read while the pipe has room and src has not ended; wait for dst
        while the pipe holds bytes."""
        reading = not self.eof and not self.full
        writing = self.pending > 0
        if (reading != self.reading or writing != self.writing) and not self.conn.closed:
            self.reading, self.writing = reading, writing
            self.conn.sync()

    def release(self) -> None:
        self.reading = self.writing = False
        self.held = None
        if self.pipe is not None:
            if self.pending:
                self.pipe.close()  # holds bytes nobody will read
            else:
                POOL.put(self.pipe)
            self.pipe = None
