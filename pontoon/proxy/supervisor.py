"""The supervisor: owns the desired mappings, keeps N workers serving them.

- It holds one reference to every published socket for as long as the
  mapping exists, so a worker's death never closes a port: TCP connections
  queue in the backlog meanwhile and the other workers take them.
- Workers are `python -m pontoon.proxy.worker` children, each with a
  SEQPACKET socketpair as its channel and watched through a pidfd. A worker
  that exits is reaped and replaced at once; the replacement receives its
  whole share of the desired mappings in one batch before anything else
  (one channel, in order), so the supervisor's state and every worker's
  agree without a lock. Replacements back off after a crash loop.
- Fan-out: TCP mappings go to every worker; a UDP mapping goes to one worker,
  chosen by a stable hash of its id, so its flows stay in one process.
- Requests to workers are sent synchronously (in the order the desired
  state changes) and their replies awaited; a worker's replies come back in
  the order of its requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pontoon.proxy import wire

log = logging.getLogger("pontoon.proxy.supervisor")

WORKER_TIMEOUT = 5.0  # a worker this slow to answer is treated as gone
CRASH_WINDOW = 10.0  # more than CRASH_LIMIT restarts of a slot in this many seconds...
CRASH_LIMIT = 5
CRASH_BACKOFF = 1.0  # ... and the next one waits this long
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CHANNEL_BUFFER = 16 << 20
SO_SNDBUFFORCE = 32  # not exported by Python; root may exceed wmem_max with it


class WorkerGone(Exception):
    pass


@dataclasses.dataclass
class Desired:
    """A mapping as the daemon asked for it, with our reference to its socket."""

    id: str
    proto: str
    sock: socket.socket
    backend_ip: str
    backend_port: int

    def item(self) -> dict[str, Any]:
        return {"id": self.id, "proto": self.proto, "backend_ip": self.backend_ip,
                "backend_port": self.backend_port}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        host, port = self.sock.getsockname()[:2]
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {"proto": self.proto, "backend_ip": self.backend_ip,
                "backend_port": self.backend_port, "listen": listen}  # fmt: skip


@dataclasses.dataclass
class WorkerProcess:
    slot: int
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    pidfd: int
    pending: collections.deque[asyncio.Future[dict[str, Any]]] = dataclasses.field(
        default_factory=collections.deque
    )
    alive: bool = True


@dataclasses.dataclass
class WorkerOptions:
    udp_timeout: float = 30.0
    udp_max_flows: int = 4096
    accept: str = "exclusive"
    log_level: str = "info"


def owner(mapping_id: str, workers: int) -> int:
    """The worker slot serving a UDP mapping (stable across restarts)."""
    return zlib.crc32(mapping_id.encode()) % workers


class Supervisor:
    def __init__(self, workers: int, options: WorkerOptions) -> None:
        self.size = max(1, workers)
        self.options = options
        self.desired: dict[str, Desired] = {}
        self.workers: list[WorkerProcess | None] = [None] * self.size
        self.restarts = 0
        self.loop = asyncio.get_running_loop()
        self._stopping = False
        self._peek = bytearray(1)
        self._crashes: list[collections.deque[float]] = [
            collections.deque(maxlen=CRASH_LIMIT) for _ in range(self.size)
        ]

    # Workers -------------------------------------------------------------

    def start(self) -> None:
        for slot in range(self.size):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        if self._stopping:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        o = self.options
        cmd = [sys.executable, "-m", "pontoon.proxy.worker",
               "--channel-fd", str(theirs.fileno()), "--parent", str(os.getpid()),
               "--udp-timeout", str(o.udp_timeout), "--udp-max-flows", str(o.udp_max_flows),
               "--accept", o.accept, "--log-level", o.log_level]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")])
        )
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()], cwd="/", env=env
            )
        except OSError as exc:
            log.error("cannot start worker %d: %s; retrying", slot, exc)
            ours.close()
            self.loop.call_later(CRASH_BACKOFF, self._spawn, slot)
            return
        finally:
            theirs.close()
        ours.settimeout(WORKER_TIMEOUT)  # for sends; replies are read when readable
        for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
            # Room for a whole share of mappings while the new worker boots.
            with contextlib.suppress(OSError):
                ours.setsockopt(socket.SOL_SOCKET, option, CHANNEL_BUFFER)
                break
        worker = WorkerProcess(slot, proc, ours, os.pidfd_open(proc.pid))
        self.workers[slot] = worker
        self.loop.add_reader(worker.pidfd, self._on_exit, worker)
        self.loop.add_reader(ours.fileno(), self._on_reply, worker)
        share = self._share(slot, self.desired.values())
        if share:  # before anything else on this channel
            self._post(worker, "add", share).add_done_callback(_log_failure)
        log.info("worker %d started (pid %d, %d mappings)", slot, proc.pid, len(share))

    def _share(self, slot: int, mappings: Iterable[Desired]) -> list[Desired]:
        return [d for d in mappings if d.proto == "tcp" or owner(d.id, self.size) == slot]

    def _on_exit(self, worker: WorkerProcess) -> None:
        self._retire(worker)
        status = worker.proc.wait()
        if self._stopping:
            return
        self.restarts += 1
        crashes = self._crashes[worker.slot]
        now = time.monotonic()
        crashes.append(now)
        looping = len(crashes) == CRASH_LIMIT and now - crashes[0] < CRASH_WINDOW
        log.warning("worker %d (pid %d) exited with status %s; replacing it%s",
                    worker.slot, worker.proc.pid, status,
                    f" in {CRASH_BACKOFF:g}s" if looping else "")  # fmt: skip
        if looping:
            self.loop.call_later(CRASH_BACKOFF, self._spawn, worker.slot)
        else:
            self._spawn(worker.slot)

    def _retire(self, worker: WorkerProcess) -> None:
        if not worker.alive:
            return
        worker.alive = False
        self.loop.remove_reader(worker.pidfd)
        self.loop.remove_reader(worker.channel.fileno())
        os.close(worker.pidfd)
        worker.channel.close()
        while worker.pending:
            future = worker.pending.popleft()
            if not future.done():
                future.set_exception(WorkerGone(f"worker {worker.slot} is gone"))
        if self.workers[worker.slot] is worker:
            self.workers[worker.slot] = None

    def _on_reply(self, worker: WorkerProcess) -> None:
        try:
            # Peek at the real size first (MSG_TRUNC on SEQPACKET): a stats
            # reply for many mappings is large.
            size = worker.channel.recv_into(self._peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            data = worker.channel.recv(size) if size else b""
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # it exited or is exiting: the pidfd will say so
            self.loop.remove_reader(worker.channel.fileno())
            return
        if not worker.pending:
            log.warning("worker %d: a reply nobody asked for", worker.slot)
            return
        future = worker.pending.popleft()
        try:
            reply = decode(data)
        except ValueError:
            reply = {"ok": False, "error": f"worker {worker.slot}: unreadable reply"}
        if not future.done():
            future.set_result(reply)

    def _post(
        self, worker: WorkerProcess, op: str, mappings: Sequence[Desired] = (), **extra: Any
    ) -> asyncio.Future[dict[str, Any]]:
        """Send one request to a worker now; the future gets its reply."""
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        request: dict[str, Any] = {"op": op, **extra}
        fds: list[int] = []
        if op == "add":
            request["mappings"] = [d.item() for d in mappings]
            fds = [d.sock.fileno() for d in mappings]
        try:
            wire.send(worker.channel, request, fds)
        except OSError as exc:  # dead, or wedged for WORKER_TIMEOUT: replace it
            log.warning("worker %d: cannot send (%s); killing it", worker.slot, exc)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
            future.set_exception(WorkerGone(str(exc)))
            return future
        worker.pending.append(future)
        return future

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w is not None and w.alive]

    # The daemon's requests -----------------------------------------------

    async def add(self, mappings: list[Desired]) -> None:
        replaced = []
        for d in mappings:
            old = self.desired.get(d.id)
            if old is not None:
                replaced.append(old)
            self.desired[d.id] = d
        futures = []
        for worker in self.live():
            share = self._share(worker.slot, mappings)
            if share:
                futures.append(self._post(worker, "add", share))
        try:
            await self._gather(futures)
        finally:
            for old in replaced:
                old.sock.close()

    async def remove(self, ids: list[str]) -> list[str]:
        gone = [self.desired.pop(i) for i in dict.fromkeys(ids) if i in self.desired]
        if gone:
            removed = [d.id for d in gone]
            futures = [self._post(w, "remove", ids=removed) for w in self.live()]
            try:
                await self._gather(futures)
            finally:
                for d in gone:  # after the workers closed theirs: the port is closed now
                    d.sock.close()
        return [d.id for d in gone]

    async def stats(self) -> dict[str, dict[str, int]]:
        replies = await self._gather([self._post(w, "stats") for w in self.live()])
        totals: dict[str, dict[str, int]] = {}
        for reply in replies:
            for mapping_id, counters in reply.get("stats", {}).items():
                into = totals.setdefault(mapping_id, dict.fromkeys(counters, 0))
                for key, value in counters.items():
                    into[key] = into.get(key, 0) + value
        zero = dict.fromkeys(("connections_total", "connections_active", "bytes_in",
                              "bytes_out", "udp_flows", "connect_failures"), 0)  # fmt: skip
        return {mid: totals.get(mid, dict(zero)) for mid in self.desired}

    def listing(self) -> dict[str, dict[str, Any]]:
        return {mid: d.describe() for mid, d in self.desired.items()}

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "mappings": len(self.desired),
                "workers": [w.proc.pid for w in self.live()],
                "worker_restarts": self.restarts}  # fmt: skip

    async def _gather(self, futures: list[asyncio.Future[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The workers' replies; a gone or silent worker counts for nothing
        (its replacement gets the desired state), a refusal is an error."""
        if not futures:
            return []
        done, _ = await asyncio.wait(futures, timeout=WORKER_TIMEOUT)
        replies, errors = [], []
        for future in futures:
            if future not in done:
                continue
            if future.exception() is not None:
                continue  # WorkerGone
            reply = future.result()
            if reply.get("ok"):
                replies.append(reply)
            else:
                errors.append(str(reply.get("error")))
        if errors:
            raise wire.RequestError(errors[0])
        return replies

    async def close(self) -> None:
        """Stop every worker (they end their connections), then let go of the sockets."""
        self._stopping = True
        workers = self.live()
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(worker.pidfd, signal.SIGTERM)
        for worker in workers:
            try:
                await asyncio.to_thread(worker.proc.wait, WORKER_TIMEOUT)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            self._retire(worker)
        for d in self.desired.values():
            d.sock.close()
        self.desired.clear()


def _log_failure(future: asyncio.Future[dict[str, Any]]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        log.warning("restoring a worker's mappings: %s", exc)
    elif not future.result().get("ok"):
        log.warning("restoring a worker's mappings: %s", future.result().get("error"))


def decode(data: bytes) -> dict[str, Any]:
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ValueError("not an object")
    return reply
