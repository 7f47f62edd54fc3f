"""A trace's far end: the host of a remote overlay endpoint watches the same
flow while the probe runs, so one trace shows both hosts' netfilter.

The hosts meet in the cluster store (the only channel they share):

    /trace/requests/<host>/<trace id>   what to watch: the flow match and the
                                        network (put by the tracing host, leased)
    /trace/results/<trace id>/<host>    {"state": "ready"}, then
                                        {"state": "done", "events": {...}}

The tracing host puts a request and waits until the remote host reports it
is watching, sends its probe, then deletes the request; the remote host stops
watching and puts what it saw. A remote host that does not answer in time
(down, cut off, an older pontoond) leaves the trace as it was: one host's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pontoon.errors import Unavailable
from pontoon.store import Compacted
from pontoon.trace.monitor import FlowMatch, Monitor, TraceEvent

if TYPE_CHECKING:
    from pontoon.daemon.cluster import ClusterAgent

log = logging.getLogger(__name__)

TRACE = "/trace/"
READY_TIMEOUT = 2.0  # the remote host starts its monitors in well under that
DONE_TIMEOUT = 3.0
POLL = 0.02
WATCH_LIMIT = 330.0  # a request nobody ends (tracing host died): stop anyway
RESULT_LIFETIME = 30.0  # a result nobody collects is deleted after that


def request_key(host: str, trace_id: str) -> str:
    return f"{TRACE}requests/{host}/{trace_id}"


def result_key(trace_id: str, host: str) -> str:
    return f"{TRACE}results/{trace_id}/{host}"


# The tracing host ------------------------------------------------------------


async def begin(
    agent: ClusterAgent, host: str, trace_id: str, match: FlowMatch, network_id: str
) -> bool:
    """Ask `host` to watch the flow; True once it does."""
    request = {"match": dataclasses.asdict(match), "network": network_id}
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kv = await agent.store.get(result_key(trace_id, host))
        if kv is not None:
            result = json.loads(kv.value)
            if result.get("state") == state:
                return result
        await asyncio.sleep(POLL)
    return None


# The remote host -------------------------------------------------------------


@dataclasses.dataclass
class _Watch:
    monitors: list[Monitor]
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
        for trace_id in list(self.watches):
            watch = self.watches.pop(trace_id)
            watch.expiry.cancel()
            for mon in watch.monitors:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(mon.stop)

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
        match = FlowMatch(**request["match"])
        monitors = [Monitor(match, None, f"remote host {self.agent.vtep}")]
        net = self.agent.svc.networks.get(request.get("network", ""))
        overlay = self.agent.svc.kernel.overlay
        if net is not None and overlay is not None and overlay.present(net):
            label = f"overlay {net.name} on {self.agent.vtep}"
            monitors.append(Monitor(match, overlay.namespace(net), label))
        started = []
        try:
            for mon in monitors:
                await asyncio.to_thread(mon.start)
                started.append(mon)
        except Exception:
            log.exception("remote trace %s: cannot watch", trace_id)
            for mon in started:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(mon.stop)
            return
        expiry = self._call_later(WATCH_LIMIT, lambda: self._stop(trace_id))
        self.watches[trace_id] = _Watch(started, expiry)
        await self._report(trace_id, {"state": "ready"})

    async def _stop(self, trace_id: str) -> None:
        watch = self.watches.pop(trace_id, None)
        if watch is None:
            return
        watch.expiry.cancel()
        events: dict[str, list[dict[str, object]]] = {}
        for mon in watch.monitors:
            try:
                events[mon.label] = [e.to_dict() for e in await asyncio.to_thread(mon.stop)]
            except Exception:
                log.exception("remote trace %s: stopping %s", trace_id, mon.label)
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
