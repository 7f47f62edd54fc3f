"""A trace's far end: the host of a remote overlay endpoint watches the same
flow while the probe runs, so one trace shows both hosts' netfilter.

The hosts meet in the cluster store (the only channel they share):

    /trace/requests/<host>/<trace id>   what to watch: the flow match (put by
                                        the tracing host, leased)
    /trace/results/<trace id>/<host>    {"state": "ready"}, then
                                        {"state": "done", "events": {...}}

The tracing host puts a request and waits until the remote host reports it
is watching, sends its probe, then deletes the request; the remote host stops
watching and puts what it saw. Only its host namespace is watched: that is
where the encapsulated flow meets netfilter (overlay namespaces have none).
A remote host that does not answer in time (down, cut off, an older
pontoond) leaves the trace as it was: one host's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pontoon.errors import Unavailable
from pontoon.store import Compacted
from pontoon.trace.monitor import FlowMatch, Monitor, TraceEvent

if TYPE_CHECKING:
    from pontoon.cluster.agent import ClusterAgent

log = logging.getLogger(__name__)

TRACE = "/trace/"
READY_TIMEOUT = 2.0  # the remote host starts its monitors in well under that
DONE_TIMEOUT = 3.0
WATCH_LIMIT = 330.0  # a request nobody ends (tracing host died): stop anyway
RESULT_LIFETIME = 30.0  # a result nobody collects is deleted after that


def request_key(host: str, trace_id: str) -> str:
    return f"{TRACE}requests/{host}/{trace_id}"


def result_key(trace_id: str, host: str) -> str:
    return f"{TRACE}results/{trace_id}/{host}"


# The tracing host ------------------------------------------------------------


async def begin(agent: ClusterAgent, host: str, trace_id: str, match: FlowMatch) -> bool:
    """Ask `host` to watch the flow; True once it does."""
    request = {"match": dataclasses.asdict(match)}
    try:
        await agent.put_leased(request_key(host, trace_id), json.dumps(request))
        return await _result(agent, trace_id, host, "ready", READY_TIMEOUT) is not None
    except Unavailable as exc:
        log.debug("remote trace on %s: %s", host[:12], exc)
        return False


async def end(agent: ClusterAgent, host: str, trace_id: str) -> dict[str, list[TraceEvent]]:
    """Stop the remote watch; what it saw, by namespace ({} if nothing came)."""
    try:
        await agent.store.delete(request_key(host, trace_id))
        done = await _result(agent, trace_id, host, "done", DONE_TIMEOUT)
        await agent.store.delete(result_key(trace_id, host))
    except Unavailable as exc:
        log.debug("remote trace on %s: %s", host[:12], exc)
        return {}
    if done is None:
        return {}
    return {
        label: [TraceEvent(**event) for event in events]
        for label, events in done.get("events", {}).items()
    }


async def cancel(agent: ClusterAgent, host: str, trace_id: str) -> None:
    """Withdraw a request `host` never took up (it may still see it later: it
    then starts and stops at once)."""
    with contextlib.suppress(Unavailable):
        await agent.store.delete(request_key(host, trace_id))


async def _result(
    agent: ClusterAgent, trace_id: str, host: str, state: str, timeout: float
) -> dict[str, Any] | None:
    """The far host's result once it reaches `state` (None after `timeout`):
    what is there now, then the store's watch from that revision on."""
    key = result_key(trace_id, host)

    def reached(value: str | None) -> dict[str, Any] | None:
        result = json.loads(value) if value else {}
        return result if result.get("state") == state else None

    async def wait() -> dict[str, Any] | None:
        kvs, revision = await agent.store.list_prefix(key)
        for kv in kvs:
            if kv.key == key and (result := reached(kv.value)):
                return result
        async with contextlib.aclosing(agent.store.watch(key, revision + 1)) as events:
            async for event in events:
                if event.key == key and event.kind == "put" and (result := reached(event.value)):
                    return result
        return None

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        return None


# The remote host -------------------------------------------------------------


@dataclasses.dataclass
class _Watch:
    monitor: Monitor
    expiry: asyncio.TimerHandle


class Responder:
    """Run by the cluster agent: watches this host's trace requests."""

    def __init__(self, agent: ClusterAgent) -> None:
        self.agent = agent
        self.prefix = f"{TRACE}requests/{agent.host_id}/"
        self.watches: dict[str, _Watch] = {}
        self._later: set[asyncio.Task[None]] = set()  # timers' tasks, kept referenced

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                # Requests put while we were not watching count too.
                pending, revision = await self.agent.store.list_prefix(self.prefix)
                for kv in pending:
                    await self._on_request(kv.key, kv.value)
                async for event in self.agent.store.watch(self.prefix, revision + 1):
                    put = event.kind == "put" and event.value is not None
                    await self._on_request(event.key, event.value if put else None)
                    backoff = 0.2
            except (Unavailable, Compacted) as exc:
                log.debug("trace requests watch interrupted: %s", exc)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    await self.close()
                    raise
            except Exception:
                log.exception("trace requests watch failed")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        for watch in self.watches.values():
            watch.expiry.cancel()
            with contextlib.suppress(Exception):  # the others must still stop
                await asyncio.to_thread(watch.monitor.stop)
        self.watches.clear()

    async def _on_request(self, key: str, value: str | None) -> None:
        """A request put (value) or withdrawn (None); a bad one is logged and
        skipped, never retried."""
        trace_id = key.rpartition("/")[2]
        try:
            if value is None:
                await self._stop(trace_id)
            else:
                await self._start(trace_id, json.loads(value))
        except Exception:
            log.exception("remote trace %s: request not handled", trace_id)

    async def _start(self, trace_id: str, request: dict[str, Any]) -> None:
        if trace_id in self.watches:
            return
        monitor = Monitor(FlowMatch(**request["match"]), None, f"remote host {self.agent.vtep}")
        try:
            await asyncio.to_thread(monitor.start)
        except Exception:
            with contextlib.suppress(Exception):  # its reader may be running already
                await asyncio.to_thread(monitor.stop)
            raise  # logged by _on_request
        expiry = self._call_later(WATCH_LIMIT, lambda: self._stop(trace_id))
        self.watches[trace_id] = _Watch(monitor, expiry)
        await self._report(trace_id, {"state": "ready"})

    async def _stop(self, trace_id: str) -> None:
        watch = self.watches.pop(trace_id, None)
        if watch is None:
            return
        watch.expiry.cancel()
        seen = await asyncio.to_thread(watch.monitor.stop)
        events = {watch.monitor.label: [e.to_dict() for e in seen]}
        await self._report(trace_id, {"state": "done", "events": events})
        self._call_later(RESULT_LIFETIME, lambda: self._forget(trace_id))

    def _call_later(
        self, delay: float, make: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.TimerHandle:
        def fire() -> None:
            task = asyncio.get_running_loop().create_task(make())
            self._later.add(task)
            task.add_done_callback(self._later.discard)

        return asyncio.get_running_loop().call_later(delay, fire)

    async def _report(self, trace_id: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(Unavailable):
            await self.agent.put_leased(
                result_key(trace_id, self.agent.host_id), json.dumps(result)
            )

    async def _forget(self, trace_id: str) -> None:
        with contextlib.suppress(Unavailable):
            await self.agent.store.delete(result_key(trace_id, self.agent.host_id))
