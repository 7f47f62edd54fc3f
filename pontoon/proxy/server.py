"""The userland proxy process: one per host, serving every published port.

Design:
- The daemon reserves a host port by binding a socket before any firewall
  rule exists, then hands that very socket to this process over the control
  socket (SCM_RIGHTS). The proxy never binds host ports itself, so it needs
  no privilege to do so and a port can never be taken between reservation
  and use.
- The proxy outlives daemon restarts: mappings live here, in memory, and a
  restarted daemon reconciles with `list` (and re-`add`s what is missing).
  Re-adding an id replaces its listener; live connections/flows are kept when
  the backend is unchanged, ended when it changed.
- Control socket: AF_UNIX SOCK_SEQPACKET, mode 0600. One JSON object per
  packet each way, so there is no framing code and a file descriptor arrives
  with exactly the request it belongs to. Any number of daemon connections,
  one after another or at once; a client going away changes nothing.
- A lock file (PATH.lock, flock) makes the proxy a singleton per control
  path: whoever holds the lock may replace a stale socket file.
- Everything (control, TCP, UDP) runs as callbacks on one asyncio loop.

Requests (replies carry "ok": true, or "ok": false and "error"):
    {"op": "add", "id", "proto": "tcp"|"udp", "backend_ip", "backend_port"} + one fd
    {"op": "remove", "id"}  -> {"removed": bool}   (an unknown id is not an error)
    {"op": "list"}          -> {"mappings": {id: {proto, backend_ip, backend_port, listen}}}
    {"op": "stats"}         -> {"stats": {id: {connections_total, connections_active,
                                bytes_in, bytes_out, udp_flows, connect_failures}}}
    {"op": "ping"}          -> {"pid", "mappings"}
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pontoon.proxy.mapping import Backend, Counters, Mapping
from pontoon.proxy.tcp import TcpMapping
from pontoon.proxy.udp import DEFAULT_MAX_FLOWS, UdpMapping

log = logging.getLogger("pontoon.proxy")

MAX_REQUEST = 64 * 1024
MAX_FDS = 4  # room for a few, so a bad request's extra fds are received and closed
REPLY_BUFFER = 16 << 20  # a SEQPACKET reply must fit the send buffer (big `list`s)
SO_SNDBUFFORCE = 32  # not exported by Python; root may exceed wmem_max with it
MAX_ID = 256


class RequestError(Exception):
    """A request we refuse; its message goes back to the client."""


class AlreadyRunning(Exception):
    pass


class ProxyServer:
    def __init__(
        self,
        control_path: Path,
        udp_timeout: float = 30.0,
        udp_max_flows: int = DEFAULT_MAX_FLOWS,
    ) -> None:
        self.control_path = control_path
        self.udp_timeout = udp_timeout
        self.udp_max_flows = udp_max_flows
        self.mappings: dict[str, Mapping] = {}
        self.loop = asyncio.get_running_loop()
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._inode: int | None = None
        self._clients: set[socket.socket] = set()
        self._ops: dict[str, Callable[[dict[str, Any], list[int]], dict[str, Any]]] = {
            "add": self._add,
            "remove": self._remove,
            "list": self._list,
            "stats": self._stats,
            "ping": self._ping,
        }

    # Control socket ----------------------------------------------------

    def start(self) -> None:
        path = self.control_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AlreadyRunning(f"another proxy holds {path}.lock") from None
        path.unlink(missing_ok=True)  # stale: its owner no longer holds the lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
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
        self._clients.add(conn)
        self.loop.add_reader(conn.fileno(), self._on_control_message, conn)

    def _on_control_message(self, conn: socket.socket) -> None:
        try:
            msg, fds, flags, _ = socket.recv_fds(
                conn, MAX_REQUEST, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return
        except OSError:
            self._drop_client(conn)
            return
        if not msg and not fds:  # the client hung up
            self._drop_client(conn)
            return
        if flags & socket.MSG_TRUNC:
            reply = self._refuse(fds, f"request larger than {MAX_REQUEST} bytes")
        elif flags & socket.MSG_CTRUNC:
            reply = self._refuse(fds, f"more than {MAX_FDS} file descriptors")
        else:
            reply = self.handle(msg, fds)
        self._send(conn, reply)

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
        self._clients.discard(conn)
        conn.close()

    @staticmethod
    def _refuse(fds: list[int], error: str) -> dict[str, Any]:
        for fd in fds:
            os.close(fd)
        return {"ok": False, "error": error}

    def close(self) -> None:
        """Exit path: stop serving the control socket and every mapping."""
        for conn in list(self._clients):
            self._drop_client(conn)
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            with contextlib.suppress(OSError):
                if self.control_path.stat().st_ino == self._inode:
                    self.control_path.unlink()
        for mapping in self.mappings.values():
            mapping.close()
        self.mappings.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    # Requests ----------------------------------------------------------

    def handle(self, msg: bytes, fds: list[int]) -> dict[str, Any]:
        """Answer one request. Takes ownership of `fds`: whatever the request
        does not keep is closed, so a bad request leaks nothing."""
        fds = list(fds)
        try:
            request = json.loads(msg)
            if not isinstance(request, dict):
                raise RequestError("a request must be a JSON object")
            op = request.get("op")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise RequestError(f"unknown op {op!r}")
            if fds and op != "add":
                raise RequestError(f"op {op!r} takes no file descriptor")
            return {"ok": True, **handler(request, fds)}
        except (ValueError, RequestError) as exc:  # JSONDecodeError is a ValueError
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("request failed")
            return {"ok": False, "error": f"internal error: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)

    def _add(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        mapping_id = _id(request)
        proto = request.get("proto")
        if proto not in ("tcp", "udp"):
            raise RequestError(f"invalid proto {proto!r}: use tcp or udp")
        backend = Backend(_ip(request.get("backend_ip")), _port(request.get("backend_port")))
        if len(fds) != 1:
            raise RequestError(f"add takes exactly one socket fd, got {len(fds)}")
        sock = _adopt_socket(fds.pop(), proto)
        mapping = self._new_mapping(mapping_id, proto, sock, backend)
        old = self.mappings.get(mapping_id)
        if old is not None:
            mapping.take_over(old)
        self.mappings[mapping_id] = mapping
        log.info(
            "%s: %s %s -> %s:%d%s",
            mapping_id,
            proto,
            mapping.listen,
            backend.ip,
            backend.port,
            " (replaced)" if old else "",
        )
        return {}

    def _new_mapping(
        self, mapping_id: str, proto: str, sock: socket.socket, backend: Backend
    ) -> Mapping:
        try:
            mapping: Mapping
            if proto == "tcp":
                mapping = TcpMapping(mapping_id, sock, backend, Counters())
            else:
                mapping = UdpMapping(
                    mapping_id, sock, backend, Counters(), self.udp_timeout, self.udp_max_flows
                )
            mapping.start()
        except (OSError, ValueError) as exc:
            sock.close()
            raise RequestError(f"cannot serve the socket: {exc}") from None
        return mapping

    def _remove(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        mapping = self.mappings.pop(_id(request), None)
        if mapping is not None:
            mapping.close()
            log.info("%s: removed", mapping.id)
        return {"removed": mapping is not None}

    def _list(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"mappings": {mid: m.describe() for mid, m in self.mappings.items()}}

    def _stats(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"stats": {mid: m.stats() for mid, m in self.mappings.items()}}

    def _ping(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"pid": os.getpid(), "mappings": len(self.mappings)}


# Validation ------------------------------------------------------------


def _id(request: dict[str, Any]) -> str:
    value = request.get("id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise RequestError(f"invalid id {value!r}: a non-empty string of at most {MAX_ID}")
    return value


def _ip(value: Any) -> str:
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


def _adopt_socket(fd: int, proto: str) -> socket.socket:
    """Wrap a received fd; refuse (and close) anything but a bound IP socket
    of the announced protocol."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise RequestError(f"the fd is not a socket: {exc.strerror}") from None
    try:
        want = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        want_proto = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise RequestError(f"the socket is not an IP socket ({sock.family.name})")
        if sock.type != want or sock.proto not in (0, want_proto):
            raise RequestError(f"the socket is not a {proto} socket")
        if sock.getsockname()[1] == 0:
            raise RequestError("the socket is not bound to a port")
    except BaseException:
        sock.close()
        raise
    return sock


# Process ---------------------------------------------------------------


async def run(control_path: Path, udp_timeout: float, udp_max_flows: int) -> int:
    server = ProxyServer(control_path, udp_timeout, udp_max_flows)
    try:
        server.start()
    except (AlreadyRunning, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("proxy ready on %s (pid %d)", control_path, os.getpid())
    await stop.wait()
    log.info("stopping: closing %d mappings", len(server.mappings))
    server.close()
    return 0
