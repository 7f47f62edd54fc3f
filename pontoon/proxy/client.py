"""The daemon's side of the userland proxy: start it, hand it sockets.

Synchronous on purpose: every call is one small request and one reply over a
local SEQPACKET socket with a short timeout, so the daemon simply runs them
in a worker thread (`asyncio.to_thread`). A client serializes its requests
with a lock and may be shared by threads.

Transport failures (proxy gone, timeout) raise ProxyUnavailable and close the
client: after a timeout a late reply could otherwise be read as the answer to
the next request. Reconnect with `ensure_running`. Refused requests raise
ProxyError with the proxy's message.

After a successful `add` the proxy holds its own reference to the socket; the
caller should close its copy, or the port stays bound (and, for TCP,
accepting into a backlog nobody serves) after a `remove`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pontoon.errors import PontoonError
from pontoon.util import last_line

DEFAULT_TIMEOUT = 5.0
SPAWN_TIMEOUT = 5.0
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding pontoon/

# Proxies this process started, so that they get reaped (no zombies) and
# `terminate` can wait for them properly.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ProxyError(PontoonError):
    """The proxy refused a request, or could not be started."""


class ProxyUnavailable(ProxyError):
    """No answer from the proxy: not running, gone, or too slow."""

    status = 503


class ProxyClient:
    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock: socket.socket | None = sock
        self._path = path
        self._lock = threading.Lock()
        self._peek = bytearray(1)

    @classmethod
    def connect(cls, path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> ProxyClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except OSError as exc:
            sock.close()
            raise ProxyUnavailable(
                f"cannot reach the userland proxy at {path}: {_why(exc)}"
            ) from None
        return cls(sock, os.fspath(path))

    # The API -------------------------------------------------------------

    def add(
        self,
        id: str,
        proto: str,
        sock: socket.socket | int,
        backend_ip: str,
        backend_port: int,
    ) -> None:
        """Serve `sock` (bound, listening or not) and forward it to the backend.
        An existing `id` is replaced (its traffic kept if the backend is the same)."""
        fd = sock if isinstance(sock, int) else sock.fileno()
        request = {
            "op": "add",
            "id": id,
            "proto": proto,
            "backend_ip": backend_ip,
            "backend_port": backend_port,
        }
        self.request(request, [fd])

    def remove(self, id: str) -> bool:
        """Close the mapping's listener and connections; False if there was none."""
        return bool(self.request({"op": "remove", "id": id})["removed"])

    def list(self) -> dict[str, dict[str, Any]]:
        """{id: {"proto", "backend_ip", "backend_port", "listen": "ip:port"}}"""
        return self.request({"op": "list"})["mappings"]

    def stats(self) -> dict[str, dict[str, int]]:
        """{id: {"connections_total", "connections_active", "bytes_in", "bytes_out",
        "udp_flows", "connect_failures"}}"""
        return self.request({"op": "stats"})["stats"]

    def ping(self) -> int:
        """The proxy's pid."""
        return int(self.request({"op": "ping"})["pid"])

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Transport -----------------------------------------------------------

    def request(self, request: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        """Send one request, return the reply; raise ProxyError if refused."""
        data = json.dumps(request).encode()
        with self._lock:
            if self._sock is None:
                raise ProxyUnavailable(f"connection to the userland proxy at {self._path} closed")
            try:
                if fds:
                    socket.send_fds(self._sock, [data], list(fds))
                else:
                    self._sock.send(data)
                raw = self._receive(self._sock)
            except OSError as exc:
                self._sock.close()
                self._sock = None
                raise ProxyUnavailable(f"userland proxy at {self._path}: {_why(exc)}") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise ProxyError(f"userland proxy: unreadable reply {raw[:80]!r}") from None
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise ProxyError(f"userland proxy: {error}")
        return reply

    def _receive(self, sock: socket.socket) -> bytes:
        # Peek at the packet's real size first (MSG_TRUNC on SEQPACKET): a
        # `list` reply can be large, and a short buffer would cut it off.
        size = sock.recv_into(self._peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        if size == 0:
            raise ConnectionResetError("the proxy closed the connection")
        return sock.recv(size)


# Process management ----------------------------------------------------------


def spawn(
    control_path: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    *,
    udp_timeout: float | None = None,
    udp_max_flows: int | None = None,
    log_level: str = "info",
    timeout: float = SPAWN_TIMEOUT,
) -> int:
    """Start a detached proxy (own session, survives its parent) and return
    its pid once it answers a ping."""
    _reap()
    control, log = Path(control_path), Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pontoon.proxy", "--control", str(control)]
    cmd += ["--log-level", log_level]
    if udp_timeout is not None:
        cmd += ["--udp-timeout", str(udp_timeout)]
    if udp_max_flows is not None:
        cmd += ["--udp-max-flows", str(udp_max_flows)]
    env = dict(os.environ)
    # Importable whatever the cwd ("/", so the proxy pins no directory).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            cmd, stdin=devnull, stdout=out, stderr=out, start_new_session=True, cwd="/", env=env
        )
    _children[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            _children.pop(proc.pid, None)
            raise ProxyError(
                f"the userland proxy exited at start (status {proc.returncode}): {last_line(log)}"
            )
        if _answers(control, proc.pid):
            return proc.pid
        if time.monotonic() > deadline:
            terminate(proc.pid)
            raise ProxyUnavailable(f"the userland proxy did not answer within {timeout:g}s")
        time.sleep(0.02)


def ensure_running(
    control_path: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    **spawn_options: Any,
) -> ProxyClient:
    """A client of the live proxy at `control_path`, starting one if needed."""
    with contextlib.suppress(ProxyError):
        return _connect_live(control_path, timeout)
    try:
        spawn(control_path, log_path, **spawn_options)
    except ProxyError:
        # Lost a race with another spawn? Then that one answers now.
        with contextlib.suppress(ProxyError):
            return _connect_live(control_path, timeout)
        raise
    return ProxyClient.connect(control_path, timeout)


def terminate(pid: int, timeout: float = 5.0) -> None:
    """Stop a proxy: SIGTERM, SIGKILL after `timeout`; reaped if ours."""
    proc = _children.pop(pid, None)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.02)


def _connect_live(path: str | os.PathLike[str], timeout: float) -> ProxyClient:
    client = ProxyClient.connect(path, timeout)
    try:
        client.ping()
    except ProxyError:
        client.close()
        raise
    return client


def _answers(control: Path, pid: int) -> bool:
    try:
        with ProxyClient.connect(control, timeout=0.5) as client:
            return client.ping() == pid
    except ProxyError:
        return False


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead already


def _why(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)


class DaemonProxy:
    """The daemon's handle on the proxy: starts it on first use and, when it
    vanished (killed, crashed), starts it again and retries once. The caller
    (reconciliation) re-adds what a new proxy does not know."""

    def __init__(self, control_path: Path, log_path: Path) -> None:
        self.control_path = control_path
        self.log_path = log_path
        self._client: ProxyClient | None = None
        self._lock = threading.Lock()

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            for attempt in (1, 2):
                if self._client is None:
                    self._client = ensure_running(self.control_path, self.log_path)
                try:
                    return getattr(self._client, method)(*args)
                except ProxyUnavailable:
                    self._client = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def add(self, mapping_id: str, proto: str, sock: socket.socket, ip: str, port: int) -> None:
        self._call("add", mapping_id, proto, sock, ip, port)

    def remove(self, mapping_id: str) -> None:
        self._call("remove", mapping_id)

    def list(self) -> dict[str, dict[str, Any]]:
        return self._call("list")

    def stats(self) -> dict[str, dict[str, int]]:
        return self._call("stats")
