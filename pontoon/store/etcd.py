"""The cluster store: etcd v3 through the asyncio client aetcd.

Shape of the problem this module solves:

* aetcd talks to one `host:port`; `--cluster-store` may list several members.
  We keep one aetcd client at a time and move to the next member when the
  current one refuses or does not answer, retrying the operation once per
  member.
* etcd being down must never hang the daemon: every operation has one time
  budget (default 3 s) shared by all the members tried, and ends with
  `Unavailable("cluster store unreachable: ...")` when it runs out.
* A client whose member failed is closed and replaced, never reused: its gRPC
  channel would otherwise sit in reconnect backoff (see `_drop`).
* Keys live under a prefix (`/pontoon` by default) so that one etcd can hold
  other data, or several pontoon clusters, side by side.

With TLS (Docker's `--cluster-store-opt kv.cacertfile=… kv.certfile=…
kv.keyfile=…`) every member is dialled over gRPC with TLS, showing our client
certificate; aetcd 1.0.0 dials only plaintext (martyanov/aetcd#37), so
`_TlsClient` opens the same stubs on a TLS channel. A certificate etcd refuses
fails every call at once, as a connection error: `check_access` tells that
case apart at start-up so the daemon stops with the reason, not retrying.

Writes retried on another member after a timeout may already have been applied
by the first one (etcd cannot tell us); a retried `create` then answers False
for a key it made itself. The values pontoon writes name their owner, so a
reconcile can recognise such keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc, watcher
from aetcd.utils import prefix_range_end

from pontoon.errors import NotFound, PontoonError, Unavailable
from pontoon.store.base import Compacted, Compare, Delete, Event, KeyValue, Put, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/pontoon"
DEFAULT_TIMEOUT = 3.0
# etcd's default --max-txn-ops: larger transactions are refused by the server.
MAX_TXN_OPS = 128
# Keys per range request when listing, so that huge prefixes never hit gRPC's
# message size limit; later pages are read at the first page's revision.
PAGE_SIZE = 1000
# The gRPC client refuses messages above 4 MiB by default; one watch response
# carries a whole transaction, which may be bigger.
CHANNEL_OPTIONS = {"grpc.max_receive_message_length": 64 * 1024 * 1024}

Endpoint = tuple[str, int]

_CONNECTION_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
_CONNECTION_ERRORS = (
    aetcd.ConnectionFailedError,
    aetcd.ConnectionTimeoutError,
    aetcd.WatchTimeoutError,
    TimeoutError,
    ConnectionError,
    grpc.aio.UsageError,  # the channel was closed under us by a failover
)
_LEASE_NOT_FOUND = "requested lease not found"


class LeaseExpired(NotFound):
    """The lease is gone (expired or revoked): the keys it held are deleted."""


@dataclasses.dataclass(frozen=True)
class LeasedPut(Put):
    """A Put whose key is deleted by etcd when `lease` expires (host liveness).

    Other stores take it as a plain Put: they serve a single host, whose
    liveness nobody else needs to know."""

    lease: int = 0


# ------------------------------------------------------------------ the URL


_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._~@:+=-]+$")


def parse_url(url: str) -> tuple[list[Endpoint], str]:
    """`etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]` -> (endpoints, prefix).

    PORT defaults to 2379 and PREFIX to /pontoon (a bare trailing "/" also means
    the default: pontoon never writes at the root of a shared etcd). IPv6 hosts
    go in brackets: `etcd://[fd00::1]:2379`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "etcd":
        raise ValueError(f"cluster store URL {url!r} must start with etcd://")
    if any(c in rest for c in "?#@ \t"):
        raise ValueError(
            f"cluster store URL {url!r}: query strings, credentials and spaces are not supported"
        )
    hosts, _, path = rest.partition("/")
    if not hosts:
        raise ValueError(f"cluster store URL {url!r} names no etcd endpoint")
    endpoints = [_parse_endpoint(url, item) for item in hosts.split(",")]
    return endpoints, _parse_prefix(url, path)


def _parse_endpoint(url: str, item: str) -> Endpoint:
    if not item:
        raise ValueError(f"cluster store URL {url!r} has an empty endpoint (stray comma?)")
    if item.startswith("["):
        host, bracket, port = item[1:].partition("]")
        if not bracket or not _is_ipv6(host) or (port and not port.startswith(":")):
            raise ValueError(f"cluster store URL {url!r}: bad IPv6 endpoint {item!r}")
        port = port[1:]
    elif item.count(":") > 1:
        raise ValueError(
            f"cluster store URL {url!r}: put IPv6 addresses in brackets, as [{item}]:2379"
        )
    else:
        host, _, port = item.partition(":")
        if not _HOST_RE.match(host):
            raise ValueError(f"cluster store URL {url!r}: bad host {host!r}")
    if item.endswith(":"):
        raise ValueError(f"cluster store URL {url!r}: endpoint {item!r} has an empty port")
    return host, _parse_port(url, port) if port else DEFAULT_PORT


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_port(url: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"cluster store URL {url!r}: port {text!r} is not a number in 1-65535")
    return int(text)


def _parse_prefix(url: str, path: str) -> str:
    parts = path.rstrip("/").split("/") if path.rstrip("/") else []
    for part in parts:
        if not _PREFIX_RE.match(part):
            raise ValueError(
                f"cluster store URL {url!r}: bad prefix segment {part!r} "
                "(letters, digits and ._~@:+=- only, no empty segments)"
            )
    return "/" + "/".join(parts) if parts else DEFAULT_PREFIX


# ------------------------------------------------------------------ TLS


STORE_OPTS = ("kv.cacertfile", "kv.certfile", "kv.keyfile")
# What a TLS failure becomes in our errors (see _tls_reason).
REFUSED_US = "etcd refused our client certificate"
NOT_SIGNED = "etcd's certificate is not signed by kv.cacertfile"
HANDSHAKE = "TLS handshake with etcd failed"


@dataclasses.dataclass(frozen=True)
class StoreTls:
    """TLS to etcd: the CA that signs the members, and our client certificate
    and key (PEM bytes, read once at start-up; None: no client certificate)."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    cert_path: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


def parse_store_opts(opts: Sequence[str]) -> StoreTls | None:
    """Docker's `--cluster-store-opt KEY=VALUE` flags -> TLS settings.

    kv.cacertfile alone: the members are verified, we show no certificate
    (an etcd with --client-cert-auth then refuses us); kv.certfile and
    kv.keyfile go together. Files are read now, so a missing one is a flag
    error naming it."""
    values: dict[str, str] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key not in STORE_OPTS:
            raise ValueError(
                f"unsupported --cluster-store-opt {key!r}: pontoon knows {', '.join(STORE_OPTS)}"
            )
        if not sep or not value:
            raise ValueError(f"--cluster-store-opt {key} needs a file: {key}=FILE")
        values[key] = value
    if not values:
        return None
    if "kv.cacertfile" not in values:
        raise ValueError("--cluster-store-opt kv.certfile/kv.keyfile need kv.cacertfile too")
    if ("kv.certfile" in values) != ("kv.keyfile" in values):
        raise ValueError("--cluster-store-opt kv.certfile and kv.keyfile go together")
    cert = values.get("kv.certfile")
    if cert is not None:
        check_certificate_dates(cert, _read(values, "kv.certfile"))
    return StoreTls(
        _read(values, "kv.cacertfile"),
        _read(values, "kv.certfile") if cert else None,
        _read(values, "kv.keyfile") if cert else None,
        cert or "",
    )


def _read(values: dict[str, str], key: str) -> bytes:
    path = Path(values[key])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--cluster-store-opt {key}={path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"--cluster-store-opt {key}={path}: not a PEM file")
    return data


def check_certificate_dates(path: str, pem: bytes) -> None:
    """An expired (or not yet valid) client certificate is our mistake to
    name, before etcd refuses it without saying why."""
    import datetime

    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"--cluster-store-opt kv.certfile={path}: {exc}") from None
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise ValueError(
            f"--cluster-store-opt kv.certfile={path}: the certificate expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if cert.not_valid_before_utc > now:
        raise ValueError(
            f"--cluster-store-opt kv.certfile={path}: the certificate is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


class _TlsClient(aetcd.Client):
    """aetcd's client on a TLS channel: aetcd.Client.connect's stubs, made on
    `grpc.aio.secure_channel` (no await in between: no concurrent connect
    can see half of them). No username/password: the certificate is the
    identity."""

    def __init__(self, host: str, port: int, tls: StoreTls, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._credentials = tls.credentials()

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        self.channel = grpc.aio.secure_channel(
            target, self._credentials, options=list(self._options.items())
        )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------ the store


class EtcdStore(Store):
    """The Store interface over an etcd v3 cluster, with member failover.

    `probe_interval`: a watch that has been quiet that long checks its member
    still answers, so a hung (not just closed) connection is noticed too."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        probe_interval: float = 5.0,
        tls: StoreTls | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"store prefix {prefix!r} must start and not end with '/'")
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.tls = tls
        self._index = 0
        self._client: aetcd.Client | None = None
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> EtcdStore:
        endpoints, prefix = parse_url(url)
        return cls(endpoints, prefix, **kwargs)

    @property
    def endpoint(self) -> Endpoint:
        """The member operations go to now."""
        return self.endpoints[self._index]

    # key mapping ---------------------------------------------------------

    def _key(self, key: str) -> bytes:
        if not key.startswith("/"):
            raise ValueError(f"store key {key!r} must start with '/'")
        return (self.prefix + key).encode()

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        """[start, end) of the keys starting with `prefix`, within our prefix."""
        start = (self.prefix + (prefix or "/")).encode()
        return start, prefix_range_end(start)

    def _unkey(self, raw: bytes) -> str:
        return raw.decode()[len(self.prefix) :]

    def _kv(self, kv: Any) -> KeyValue:
        return KeyValue(self._unkey(kv.key), kv.value.decode(), kv.create_revision, kv.mod_revision)

    # connection handling ----------------------------------------------------

    def _current(self) -> tuple[aetcd.Client, int]:
        if self._closed:
            raise Unavailable("cluster store unreachable: the client is closed")
        if self._client is None:
            host, port = self.endpoints[self._index]
            if self.tls is None:
                self._client = aetcd.Client(
                    host, port, timeout=self.timeout, options=CHANNEL_OPTIONS
                )
            else:
                self._client = _TlsClient(
                    host, port, self.tls, timeout=self.timeout, options=CHANNEL_OPTIONS
                )
        return self._client, self._index

    def _drop(self, client: aetcd.Client, index: int) -> None:
        """Forget a client whose member failed and move to the next member.

        Closed, not kept: a gRPC channel that lost its server retries with
        growing backoff (up to two minutes) and fails calls fast meanwhile, so
        it could miss the moment etcd is back; a new channel connects now."""
        if self._client is client:
            self._client = None
            self._index = (index + 1) % len(self.endpoints)
            log.info("cluster store: leaving %s", format_endpoint(self.endpoints[index]))
        task = asyncio.get_running_loop().create_task(_close_quietly(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _call(self, what: str, op: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run `op` on the current member, failing over to the next ones.

        Each member is tried at most once; all share `timeout`, split evenly
        between the members not tried yet so a hung first member leaves time
        for the others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        failures: list[str] = []
        for attempt in range(len(self.endpoints)):
            client, index = self._current()
            budget = (deadline - loop.time()) / (len(self.endpoints) - attempt)
            try:
                async with asyncio.timeout(budget):
                    return await op(client)
            except asyncio.CancelledError:
                # A concurrent failure closed this client's channel, which
                # cancels every call in flight on it. Unless we ourselves are
                # being cancelled, that is a connection failure like any other.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                failures.append(f"{format_endpoint(self.endpoints[index])}: channel closed")
                self._drop(client, index)
            except Exception as exc:
                if not _is_connection_error(exc) and self._client is client:
                    raise _translate(exc, what) from exc
                failures.append(f"{format_endpoint(self.endpoints[index])}: {_reason(exc, budget)}")
                self._drop(client, index)
        raise Unavailable(f"cluster store unreachable: {what}: {'; '.join(failures)}")

    async def check_access(self) -> None:
        """One read, within the time budget, for start-up: raises
        PontoonError when TLS failed (etcd refused our certificate, or we its),
        which no retry mends. Any other trouble (etcd down) is left to the
        callers' retries, as without TLS."""
        try:
            await self.get("/")
        except Unavailable as exc:
            where = ", ".join(format_endpoint(e) for e in self.endpoints)
            if REFUSED_US in exc.message:
                cert = self.tls.cert_path if self.tls and self.tls.cert_path else "none given"
                raise PontoonError(
                    f"etcd at {where} refused our client certificate ({cert}): missing, "
                    "expired, or not signed by a CA it trusts"
                ) from None
            if NOT_SIGNED in exc.message or HANDSHAKE in exc.message:
                reason = exc.message.split(": ", 3)[-1]  # past "…unreachable: get /: HOST:"
                raise PontoonError(f"TLS to etcd at {where} failed: {reason}") from None

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client)
        if self._closing:
            await asyncio.wait(self._closing, timeout=self.timeout)

    # reads ------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        raw = self._key(key)
        result = await self._call(f"get {key}", lambda c: c.get(raw))
        return self._kv(result) if result is not None else None

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        start, end = self._range(prefix)
        kvs, revision = await self._call(
            f"list {prefix}", lambda c: self._range_pages(c, start, end)
        )
        return [self._kv(kv) for kv in kvs], revision

    async def _range_pages(
        self, client: aetcd.Client, start: bytes, end: bytes
    ) -> tuple[list[Any], int]:
        """All keys in [start, end), page by page, every page at the revision
        of the first so the result is one consistent snapshot. Should etcd
        compact that revision between two pages, the listing starts over."""
        await client.connect()
        while True:
            try:
                return await self._range_at_one_revision(client, start, end)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise

    async def _range_at_one_revision(
        self, client: aetcd.Client, start: bytes, end: bytes
    ) -> tuple[list[Any], int]:
        kvs: list[Any] = []
        revision = 0
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=PAGE_SIZE, revision=revision)
            response = await client.kvstub.Range(
                request, timeout=self.timeout, metadata=client.metadata
            )
            revision = revision or response.header.revision
            kvs.extend(response.kvs)
            if not response.more or not response.kvs:
                return kvs, revision
            start = response.kvs[-1].key + b"\0"

    # writes -----------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        ops = _last_op_per_key(ops)
        if len(ops) > MAX_TXN_OPS:
            return await self._big_txn(compares, ops)
        checks = [(self._key(cmp.key), cmp.mod_revision) for cmp in compares]
        writes = [(self._key(op.key), op) for op in ops]
        return await self._call("transaction", lambda c: self._txn(c, checks, writes))

    @staticmethod
    async def _txn(
        client: aetcd.Client,
        checks: list[tuple[bytes, int]],
        writes: list[tuple[bytes, Put | Delete]],
    ) -> bool:
        """Compare(key, 0) is "never created or deleted since": create_revision
        == 0; any other revision must be the key's mod_revision."""
        t = client.transactions
        compares = [
            t.create(key) == 0 if revision == 0 else t.mod(key) == revision
            for key, revision in checks
        ]
        requests = [
            t.put(key, op.value.encode(), lease=getattr(op, "lease", 0) or None)
            if isinstance(op, Put)
            else t.delete(key)
            for key, op in writes
        ]
        # aetcd quirk: failure=None crashes in _ops_to_requests; pass [].
        succeeded, _ = await client.transaction(compares, requests, [])
        return bool(succeeded)

    async def _big_txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        """etcd refuses more than 128 ops per transaction. An unconditional
        batch of deletes (a network and its addresses, say) is split: deletes
        are idempotent, so after a failure the caller simply deletes again.
        Chunks go last-first: callers name the record that owns the rest
        first, and it goes only once the rest is gone, so a failure midway
        leaves something to retry the removal from. Anything else cannot be
        split without losing atomicity."""
        if compares or not all(isinstance(op, Delete) for op in ops):
            raise PontoonError(
                f"cluster store: a transaction of {len(ops)} operations exceeds etcd's "
                f"limit of {MAX_TXN_OPS}"
            )
        starts = range(0, len(ops), MAX_TXN_OPS)
        for i in reversed(starts):
            await self.txn([], ops[i : i + MAX_TXN_OPS])
        return True

    # leases -----------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; keys put with it vanish when it expires."""
        lease = await self._call("grant lease", lambda c: c.lease(ttl))
        return int(lease.id)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; returns its TTL. LeaseExpired if it is gone."""
        reply = await self._call("keep lease alive", lambda c: c.refresh_lease(lease_id))
        if reply is None or reply.TTL <= 0:
            raise LeaseExpired(f"lease {lease_id:x} has expired")
        return int(reply.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        """End the lease now, deleting its keys. A lease already gone is fine."""
        with contextlib.suppress(LeaseExpired):
            await self._call("revoke lease", lambda c: c.revoke_lease(lease_id))

    async def put_with_lease(self, key: str, value: str, lease_id: int) -> None:
        await self.txn([], [LeasedPut(key, value, lease_id)])

    # watch ------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Events under `prefix` from `start_revision` (inclusive) on, in order.

        Raises Compacted when etcd no longer has `start_revision`, Unavailable
        when the stream breaks or the member stops answering: the caller
        re-lists and watches again from the listed revision + 1."""
        start, end = self._range(prefix)
        client, index, handle = await self._call(
            f"watch {prefix}", lambda c: self._open_watch(c, start, end, start_revision)
        )
        queue: asyncio.Queue[Any] = asyncio.Queue()
        pump = asyncio.get_running_loop().create_task(_pump(handle, queue))
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.probe_interval)
                except TimeoutError:
                    await self._probe(client, index, prefix)
                    continue
                if isinstance(item, aetcd.Event):
                    yield self._event(item)
                else:
                    raise self._watch_failure(client, index, prefix, item)
        finally:
            pump.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handle.cancel(), 1)

    async def _open_watch(
        self, client: aetcd.Client, start: bytes, end: bytes, start_revision: int
    ) -> tuple[aetcd.Client, int, Any]:
        index = self._index  # _call made `client` from it just before calling us
        handle = await client.watch(
            start, range_end=end, start_revision=start_revision if start_revision > 0 else None
        )
        return client, index, handle

    def _event(self, event: Any) -> Event:
        kv = event.kv
        if event.kind == aetcd.EventKind.DELETE:
            return Event("delete", self._unkey(kv.key), None, kv.mod_revision)
        return Event("put", self._unkey(kv.key), kv.value.decode(), kv.mod_revision)

    async def _probe(self, client: aetcd.Client, index: int, prefix: str) -> None:
        """A quiet watch asks its member for a key: a linearizable read needs
        a live member in a cluster with quorum, the same that feeds watches."""
        try:
            async with asyncio.timeout(self.timeout):
                await client.get(self._key("/"))
        except Exception as exc:
            self._drop(client, index)
            raise Unavailable(
                f"cluster store unreachable: watch {prefix}: {_reason(exc, self.timeout)}"
            ) from exc

    def _watch_failure(
        self, client: aetcd.Client, index: int, prefix: str, item: BaseException | None
    ) -> Exception:
        if isinstance(item, aetcd.RevisionCompactedError):
            return Compacted(f"watch {prefix}: {item}")
        self._drop(client, index)
        why = "stream ended" if item is None else _reason(item, self.timeout)
        return Unavailable(
            f"cluster store unreachable: watch {prefix} on "
            f"{format_endpoint(self.endpoints[index])}: {why}"
        )


# ------------------------------------------------------------------ helpers


async def _pump(handle: Any, queue: asyncio.Queue[Any]) -> None:
    """Move aetcd's watch events to a queue. Its iterator is an async
    generator: timing out a wait on it would close it, a queue read is safe.
    None marks the end of the stream (aetcd ends it silently on close)."""
    try:
        async for event in handle:
            queue.put_nowait(event)
    except Exception as exc:
        queue.put_nowait(exc)
    else:
        queue.put_nowait(None)


async def _close_quietly(client: aetcd.Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 2)


def _last_op_per_key(ops: Sequence[Put | Delete]) -> list[Put | Delete]:
    """etcd refuses a transaction naming one key twice; the last op on a key
    decides its final state, which is what the embedded store ends with."""
    last = {op.key: op for op in ops}
    return [op for op in ops if last[op.key] is op]


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _CONNECTION_CODES
    cause = exc.__cause__
    return isinstance(cause, grpc.aio.AioRpcError) and cause.code() in _CONNECTION_CODES


def _reason(exc: BaseException, budget: float) -> str:
    if isinstance(exc, TimeoutError | aetcd.ConnectionTimeoutError | aetcd.WatchTimeoutError):
        return f"no answer within {budget:.1f}s"
    text = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return _tls_reason(text) or text or type(exc).__name__


def _tls_reason(text: str) -> str | None:
    """gRPC's words for a TLS failure, in ours. etcd refusing our certificate
    reaches us after the handshake, as an alert we cannot decrypt
    (TSI_DATA_CORRUPTED); our refusing etcd's is a failed handshake."""
    if "TSI_DATA_CORRUPTED" in text:
        return f"{REFUSED_US} (missing, expired, or not signed by a CA it trusts)"
    _, found, rest = text.partition("CERTIFICATE_VERIFY_FAILED")
    if found:
        detail = rest.strip(": ").removesuffix(": OK")
        return NOT_SIGNED + (f" ({detail})" if detail else "")
    if "handshake failed" in text.lower() or "TSI_" in text:
        return f"{HANDSHAKE}: {text}"
    return None


def _translate(exc: Exception, what: str) -> Exception:
    """Errors etcd answered with (not connection trouble) -> pontoon errors."""
    if isinstance(exc, aetcd.RevisionCompactedError):
        return Compacted(f"{what}: {exc}")
    text = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    if _LEASE_NOT_FOUND in text:
        return LeaseExpired(f"cluster store: {what}: the lease has expired")
    return PontoonError(f"cluster store: {what}: {text}")
