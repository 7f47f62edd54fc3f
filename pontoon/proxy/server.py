"""The userland proxy's supervisor process: control socket and requests.

Design:
- The daemon reserves a host port by binding a socket before any firewall
  rule exists, then hands that very socket to this process over the control
  socket (SCM_RIGHTS). The proxy never binds host ports itself, so it needs
  no privilege to do so and a port can never be taken between reservation
  and use.
- One supervisor (this process) and N workers (`worker.py`), one process
  tree per host. The supervisor keeps the desired mappings and a reference
  to every socket, fans requests out to the workers and sums their answers;
  it carries no traffic (`supervisor.py`).
- The proxy outlives daemon restarts: mappings live here, in memory, and a
  restarted daemon reconciles with `list` (and re-`add`s what is missing).
  Re-adding an id replaces its listener; live connections/flows are kept when
  the backend is unchanged, ended when it changed.
- Control socket: AF_UNIX SOCK_SEQPACKET, mode 0600. One JSON object per
  packet each way; a batch too large for one packet is split over several
  (`wire.py`) and answered once. Any number of daemon connections, one after
  another or at once; a client going away changes nothing.
- A lock file (PATH.lock, flock) makes the proxy a singleton per control
  path: whoever holds the lock may replace a stale socket file.

Requests (replies carry "ok": true, or "ok": false and "error"):
    {"op": "add", "mappings": [{id, proto: "tcp"|"udp", backend_ip, backend_port}]}
        + one fd per mapping, in order; all or nothing: one bad item refuses the batch
    {"op": "remove", "ids": [...]}  -> {"removed": [ids that existed]}
    {"op": "list"}          -> {"mappings": {id: {proto, backend_ip, backend_port, listen}}}
    {"op": "stats"}         -> {"stats": {id: {connections_total, connections_active,
                                bytes_in, bytes_out, udp_flows, connect_failures}}}
                               summed over the workers
    {"op": "ping"}          -> {"pid", "mappings", "workers": [pids], "worker_restarts"}
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import ipaddress
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pontoon.proxy import wire
from pontoon.proxy.supervisor import Desired, Supervisor, WorkerOptions
from pontoon.proxy.tcp import LISTEN_BACKLOG
from pontoon.proxy.wire import MAX_FDS, MAX_PACKET, RequestError

log = logging.getLogger("pontoon.proxy")

REPLY_BUFFER = 16 << 20  # a SEQPACKET reply must fit the send buffer (big `list`s)
SO_SNDBUFFORCE = 32  # not exported by Python; root may exceed wmem_max with it
MAX_ID = 256
ORPHAN_CHECK_SECONDS = 2.0  # how often we look for our control socket


class AlreadyRunning(Exception):
    pass


Handler = Callable[[dict[str, Any], list[int]], Awaitable[dict[str, Any]]]


class ProxyServer:
    def __init__(self, control_path: Path, supervisor: Supervisor) -> None:
        self.control_path = control_path
        self.supervisor = supervisor
        self.loop = asyncio.get_running_loop()
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._inode: int | None = None
        self._clients: dict[socket.socket, wire.Assembler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ops: dict[str, Handler] = {
            "add": self._add,
            "remove": self._remove,
            "list": self._list,
            "stats": self._stats,
            "ping": self._ping,
        }

    # Control socket ----------------------------------------------------

    def take_lock(self) -> None:
        path = self.control_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AlreadyRunning(f"another proxy holds {path}.lock") from None

    def start(self) -> None:
        path = self.control_path
        path.unlink(missing_ok=True)  # stale: its owner no longer holds the lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # never a moment with a wider mode
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._inode = path.stat().st_ino
        sock.listen(64)
        sock.setblocking(False)
        self._listener = sock
        self.loop.add_reader(sock.fileno(), self._on_control_accept)

    def reachable(self) -> bool:
        """Whether our control socket is still the one at control_path. Once
        it was removed (its host's run directory deleted) or replaced, no
        daemon can ever reach us again: the mappings are nobody's."""
        try:
            return self.control_path.stat().st_ino == self._inode
        except OSError:
            return False

    def _on_control_accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, option, REPLY_BUFFER)
                break
        self._clients[conn] = wire.Assembler()
        self.loop.add_reader(conn.fileno(), self._on_control_message, conn)

    def _on_control_message(self, conn: socket.socket) -> None:
        try:
            msg, fds, flags, _ = socket.recv_fds(conn, MAX_PACKET, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError:
            self._drop_client(conn)
            return
        if not msg and not fds:  # the client hung up
            self._drop_client(conn)
            return
        assembler = self._clients[conn]
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            assembler.reset()
            too_many = f"more than {MAX_FDS} file descriptors in one packet"
            too_long = f"a packet larger than {MAX_PACKET} bytes"
            self._send(conn, self._refuse(fds, too_long if flags & socket.MSG_TRUNC else too_many))
            return
        try:
            complete = assembler.feed(msg, fds)
        except RequestError as exc:
            self._send(conn, {"ok": False, "error": str(exc)})
            return
        if complete is None:
            return
        # One request at a time per client: stop reading it until this one is answered.
        self.loop.remove_reader(conn.fileno())
        task = self.loop.create_task(self._answer(conn, *complete))
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        reply = await self.handle(request, fds)
        if conn in self._clients:
            self._send(conn, reply)
        if conn in self._clients:
            self.loop.add_reader(conn.fileno(), self._on_control_message, conn)

    def _send(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        data = json.dumps(reply, separators=(",", ":")).encode()
        try:
            conn.send(data)
            return
        except OSError as exc:
            too_big = exc.errno == errno.EMSGSIZE
        if too_big:  # say so rather than leave the client waiting
            with contextlib.suppress(OSError):
                conn.send(b'{"ok":false,"error":"reply too large"}')
                return
        self._drop_client(conn)  # not reading its replies, or gone

    def _drop_client(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn.fileno())
        assembler = self._clients.pop(conn, None)
        if assembler is not None:
            assembler.reset()
        conn.close()

    @staticmethod
    def _refuse(fds: list[int], error: str) -> dict[str, Any]:
        wire.close_all(fds)
        return {"ok": False, "error": error}

    async def close(self) -> None:
        """Exit path: stop serving the control socket, the workers and every mapping."""
        for conn in list(self._clients):
            self._drop_client(conn)
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            with contextlib.suppress(OSError):
                if self.control_path.stat().st_ino == self._inode:
                    self.control_path.unlink()
        await self.supervisor.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    # Requests ----------------------------------------------------------

    async def handle(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Answer one request. Takes ownership of `fds`: whatever the request
        does not keep is closed, so a bad request leaks nothing."""
        fds = list(fds)
        try:
            op = request.get("op")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise RequestError(f"unknown op {op!r}")
            if fds and op != "add":
                raise RequestError(f"op {op!r} takes no file descriptor")
            return {"ok": True, **await handler(request, fds)}
        except (ValueError, RequestError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("request failed")
            return {"ok": False, "error": f"internal error: {exc}"}
        finally:
            wire.close_all(fds)

    async def _add(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        items = request.get("mappings")
        if not isinstance(items, list) or not items:
            raise RequestError("add takes a non-empty list of mappings")
        if len(items) != len(fds):
            raise RequestError(f"add takes one socket fd per mapping: {len(fds)} for {len(items)}")
        parsed = [_item(item) for item in items]  # all valid, or nothing is taken
        if len({mid for mid, _, _, _ in parsed}) != len(parsed):
            raise RequestError("the same id twice in one batch")
        socks: list[socket.socket] = []
        try:
            for i, ((mapping_id, proto, _, _), fd) in enumerate(zip(parsed, fds, strict=True)):
                fds[i] = -1  # _adopt_socket owns it now, whatever happens
                socks.append(_adopt_socket(fd, proto, mapping_id))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        finally:
            fds[:] = [fd for fd in fds if fd >= 0]
        mappings = [
            Desired(mid, proto, sock, ip, port)
            for (mid, proto, ip, port), sock in zip(parsed, socks, strict=True)
        ]
        await self.supervisor.add(mappings)
        if len(mappings) == 1 or log.isEnabledFor(logging.DEBUG):  # not 1,000 lines per range
            for d in mappings:
                log.info("%s: %s %s -> %s:%d", d.id, d.proto, d.describe()["listen"],
                         d.backend_ip, d.backend_port)  # fmt: skip
        else:
            log.info("added %d mappings (%s ... %s)", len(mappings), mappings[0].id,
                     mappings[-1].id)  # fmt: skip
        return {}

    async def _remove(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        ids = request.get("ids")
        if not isinstance(ids, list) or not ids:
            raise RequestError("remove takes a non-empty list of ids")
        removed = await self.supervisor.remove([_id(i) for i in ids])
        if len(removed) == 1 or log.isEnabledFor(logging.DEBUG):
            for mapping_id in removed:
                log.info("%s: removed", mapping_id)
        elif removed:
            log.info("removed %d mappings (%s ... %s)", len(removed), removed[0], removed[-1])
        return {"removed": removed}

    async def _list(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"mappings": self.supervisor.listing()}

    async def _stats(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"stats": await self.supervisor.stats()}

    async def _ping(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return self.supervisor.info()


# Validation ------------------------------------------------------------


def _item(item: Any) -> tuple[str, str, str, int]:
    """(id, proto, backend_ip, backend_port) of one mapping of an add."""
    if not isinstance(item, dict):
        raise RequestError("a mapping must be a JSON object")
    mapping_id = _id(item.get("id"))
    proto = item.get("proto")
    if proto not in ("tcp", "udp"):
        raise RequestError(f"{mapping_id}: invalid proto {proto!r}: use tcp or udp")
    try:
        return mapping_id, proto, _ip(item.get("backend_ip")), _port(item.get("backend_port"))
    except RequestError as exc:
        raise RequestError(f"{mapping_id}: {exc}") from None


def _id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise RequestError(f"invalid id {value!r}: a non-empty string of at most {MAX_ID}")
    return value


def _ip(value: Any) -> str:
    # A batch names the same few backends again and again: parse each once.
    return _parse_ip(value) if isinstance(value, str) else _parse_ip.__wrapped__(value)


@functools.lru_cache(maxsize=1024)
def _parse_ip(value: Any) -> str:
    try:
        if not isinstance(value, str):  # ip_address() would take an int
            raise ValueError
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise RequestError(f"invalid backend_ip {value!r}") from None


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RequestError(f"invalid backend_port {value!r}: an integer 1-65535")
    return value


def _adopt_socket(fd: int, proto: str, mapping_id: str) -> socket.socket:
    """Wrap a received fd; refuse (and close) anything but a bound IP socket
    of the announced protocol. A TCP socket listens from here on, so
    connections queue even while no worker serves it yet."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise RequestError(f"{mapping_id}: the fd is not a socket: {exc.strerror}") from None
    try:
        want = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        want_proto = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise RequestError(f"{mapping_id}: not an IP socket ({sock.family.name})")
        if sock.type != want or sock.proto not in (0, want_proto):
            raise RequestError(f"{mapping_id}: the socket is not a {proto} socket")
        if sock.getsockname()[1] == 0:
            raise RequestError(f"{mapping_id}: the socket is not bound to a port")
        if proto == "tcp":
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


# Process ---------------------------------------------------------------


async def run(control_path: Path, workers: int, options: WorkerOptions) -> int:
    supervisor = Supervisor(workers, options)
    server = ProxyServer(control_path, supervisor)
    try:
        server.take_lock()  # before starting workers: a second proxy starts none
        server.start()
    except (AlreadyRunning, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    supervisor.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("proxy ready on %s (pid %d, %d workers)", control_path, os.getpid(), supervisor.size)
    watch = asyncio.create_task(_exit_when_unreachable(server, stop))
    await stop.wait()
    watch.cancel()
    log.info("stopping: closing %d mappings", len(supervisor.desired))
    await server.close()
    return 0


async def _exit_when_unreachable(server: ProxyServer, stop: asyncio.Event) -> None:
    """The proxy outlives its daemon on purpose, but not its host: a proxy
    whose control socket is gone would hold its ports forever."""
    while not stop.is_set():
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)
        if not server.reachable():
            log.warning("control socket %s is gone: exiting", server.control_path)
            stop.set()
