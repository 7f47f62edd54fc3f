"""The daemon's side of the userland proxy: start it, hand it sockets.

Synchronous on purpose: every call is one request and one reply over a
local SEQPACKET socket with a short timeout, so the daemon simply runs them
in a worker thread (`asyncio.to_thread`). A client serializes its requests
with a lock and may be shared by threads. `add_many`/`remove_many` take a
whole batch (a 1,000-port range) in one round trip; `round_trips` counts them.

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
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pontoon.errors import PontoonError
from pontoon.proxy import wire
from pontoon.util import last_line

log = logging.getLogger("pontoon.proxy.client")

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


MappingSpec = tuple[str, str, "socket.socket | int", str, int]  # id, proto, sock, ip, port


class ProxyClient:
    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock: socket.socket | None = sock
        self._path = path
        self._lock = threading.Lock()
        self._peek = bytearray(1)
        self.round_trips = 0  # requests answered or attempted: one per call
        self._legacy: bool | None = None  # a release-1 proxy: one mapping a request

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
        client = cls(sock, os.fspath(path))
        # Which protocol it speaks, asked once (not counted as a round trip).
        client._legacy = "workers" not in client.info()
        client.round_trips = 0
        return client

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
        self.add_many([(id, proto, sock, backend_ip, backend_port)])

    def add_many(self, mappings: Sequence[MappingSpec]) -> None:
        """`add` for many (id, proto, sock, backend_ip, backend_port) in one
        round trip; all or nothing: one bad item refuses the whole batch."""
        if not mappings:
            return
        if self.legacy():
            for mapping_id, proto, sock, ip, port in mappings:
                fd = sock if isinstance(sock, int) else sock.fileno()
                self.request({"op": "add", "id": mapping_id, "proto": proto,
                              "backend_ip": ip, "backend_port": port}, [fd])  # fmt: skip
            return
        items, fds = [], []
        for mapping_id, proto, sock, ip, port in mappings:
            items.append({"id": mapping_id, "proto": proto, "backend_ip": ip,
                          "backend_port": port})  # fmt: skip
            fds.append(sock if isinstance(sock, int) else sock.fileno())
        self.request({"op": "add", "mappings": items}, fds)

    def remove(self, id: str) -> bool:
        """Close the mapping's listener and connections; False if there was none."""
        return id in self.remove_many([id])

    def remove_many(self, ids: Sequence[str]) -> list[str]:
        """`remove` for many ids in one round trip; returns the ids that existed."""
        if not ids:
            return []
        if self.legacy():
            return [i for i in ids if self.request({"op": "remove", "id": i})["removed"]]
        return list(self.request({"op": "remove", "ids": list(ids)})["removed"])

    def legacy(self) -> bool:
        """Whether this is release 1's single-process proxy, which outlived the
        daemon across an upgrade: it keeps serving its ports, spoken to one
        mapping a request, until it is restarted (then as the new proxy)."""
        return bool(self._legacy)

    def list(self) -> dict[str, dict[str, Any]]:
        """{id: {"proto", "backend_ip", "backend_port", "listen": "ip:port"}}"""
        return self.request({"op": "list"})["mappings"]

    def stats(self) -> dict[str, dict[str, int]]:
        """{id: {"connections_total", "connections_active", "bytes_in", "bytes_out",
        "udp_flows", "connect_failures"}}"""
        return self.request({"op": "stats"})["stats"]

    def ping(self) -> int:
        """The proxy's (supervisor's) pid."""
        return int(self.info()["pid"])

    def info(self) -> dict[str, Any]:
        """{"pid", "mappings", "workers": [pids], "worker_restarts"}"""
        return self.request({"op": "ping"})

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
        with self._lock:
            if self._sock is None:
                raise ProxyUnavailable(f"connection to the userland proxy at {self._path} closed")
            self.round_trips += 1
            try:
                wire.send(self._sock, request, fds)  # several packets for a big batch
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
    workers: int | None = None,
    accept_wakeup: str | None = None,
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
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if accept_wakeup is not None:
        cmd += ["--accept-wakeup", accept_wakeup]
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
    """The daemon's handle on the proxy.

    Starts it on first use; when a request finds it gone, starts it again and
    retries once. A watcher thread notices the proxy's exit at once (a pidfd
    on the supervisor) and brings it back without waiting for a request: it
    waits until the dead proxy's workers have let go of the host ports,
    starts a new proxy and calls `on_restart`. The proxy then has no
    mappings; the daemon owns the desired ones and hands them again from that
    callback (it runs on the watcher thread: schedule, do not block)."""

    def __init__(
        self,
        control_path: Path,
        log_path: Path,
        *,
        workers: int | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.control_path = control_path
        self.log_path = log_path
        self.workers = workers
        self.on_restart = on_restart
        self.proxy_restarts = 0
        self._client: ProxyClient | None = None
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._watcher: threading.Thread | None = None
        self._closed = False

    def _call(self, method: str, *args: Any) -> Any:
        replaced = False
        try:
            with self._lock:
                for attempt in (1, 2):
                    if self._client is None:
                        replaced |= self._connect()
                    try:
                        return getattr(self._client, method)(*args)
                    except ProxyUnavailable:
                        self._drop_client()
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")
        finally:
            if replaced:  # a request found it dead before the watcher did
                self._restarted()

    def _connect(self) -> bool:
        """Connect (starting a proxy if none runs); True if this replaced a
        proxy that died. Under the lock."""
        client = ensure_running(self.control_path, self.log_path, workers=self.workers)
        try:
            pid = client.ping()
        except ProxyError:
            client.close()
            raise
        self._client = client
        if pid == self._pid:
            return False
        replaced = self._pid is not None
        self._watch(pid)
        return replaced

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # Watching --------------------------------------------------------------

    def _watch(self, pid: int) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._pid = pid
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # already gone: the next request starts another
            self._pidfd = None
            self._drop_client()
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch_loop, name="proxy-watcher", daemon=True
            )
            self._watcher.start()
        else:
            os.write(self._wake_w, b"x")  # watch the new pidfd

    def _watch_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                pid, pidfd = self._pid, self._pidfd
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            if pidfd is not None:
                poller.register(pidfd, select.POLLIN)
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if pidfd is not None and pidfd in ready and pid is not None:
                self._bring_back(pid)

    def _bring_back(self, pid: int) -> None:
        log.warning("the userland proxy (pid %d) is gone; starting a new one", pid)
        _reap()
        _wait_group_gone(pid)  # its workers hold the host ports until they exit
        with self._lock:
            if self._closed or self._pid != pid:
                return  # closing, or a request replaced it already (and said so)
            self._drop_client()
            try:
                self._connect()
            except ProxyError as exc:
                log.error("cannot start the userland proxy again: %s", exc)
                if self._pidfd is not None:
                    os.close(self._pidfd)
                self._pidfd = None  # the next request tries again
        self._restarted()

    def _restarted(self) -> None:
        self.proxy_restarts += 1
        if self.on_restart is not None:
            try:
                self.on_restart()
            except Exception:
                log.exception("restoring the proxy's mappings")

    def close(self) -> None:
        """Stop watching (the proxy keeps running: it outlives the daemon)."""
        with self._lock:
            self._closed = True
            self._drop_client()
            os.write(self._wake_w, b"x")
        if self._watcher is not None:
            self._watcher.join(2)
        with self._lock:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    # The API ---------------------------------------------------------------

    def add(self, mapping_id: str, proto: str, sock: socket.socket, ip: str, port: int) -> None:
        self._call("add", mapping_id, proto, sock, ip, port)

    def add_many(self, mappings: Sequence[MappingSpec]) -> None:
        self._call("add_many", mappings)

    def remove(self, mapping_id: str) -> None:
        self._call("remove", mapping_id)

    def remove_many(self, ids: Sequence[str]) -> list[str]:
        return self._call("remove_many", ids)

    def list(self) -> dict[str, dict[str, Any]]:
        return self._call("list")

    def stats(self) -> dict[str, dict[str, int]]:
        return self._call("stats")

    def restarts(self) -> dict[str, int]:
        """Restarts seen: of the whole proxy (by this daemon), and of workers
        (by the running supervisor)."""
        workers = int(self._call("info").get("worker_restarts", 0))
        return {"proxy": self.proxy_restarts, "worker": workers}


def _wait_group_gone(pgid: int, timeout: float = 2.0) -> None:
    """Until no live process is left in the dead supervisor's process group
    (it leads its own session, its workers are in it and die with it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_members(pgid):
        time.sleep(0.01)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members
