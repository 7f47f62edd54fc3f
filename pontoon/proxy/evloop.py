"""The workers' event loop: epoll, a dict of fd -> handler, and timers.

asyncio costs a worker more than the kernel does for a short connection:
every `add_reader`/`remove_reader` builds a Handle and a SelectorKey and
each wake-up goes through `_run_once`'s ready queue. The proxy's workers need
none of that (no coroutines, no futures), so they run on this loop instead: a
handler is a plain callable that gets the epoll event mask, registered once
per descriptor, with the mask changed in place when what it waits for
changes. The supervisor stays on asyncio.

Descriptors registered with `exclusive=True` (listening sockets shared by
the workers) get EPOLLEXCLUSIVE: one idle worker is woken per connection,
not all of them (see `worker`).

A descriptor that is about to be closed may be `forget`-ten instead of
unregistered: closing the last reference removes it from epoll in the
kernel, one epoll_ctl less. Events already fetched for it in the current
batch are dropped, so a number reused within the batch never gets an event
meant for the descriptor before it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pontoon.proxy.evloop")

Handler = Callable[[int], None]
IN, OUT = select.EPOLLIN, select.EPOLLOUT
MAX_EVENTS = 256


class Timer:
    """A callback due at `when` (monotonic); cancel() before it runs."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._stale: set[int] = set()  # forgotten during the current batch
        self._stopping = False
        self._wakeup_r = self._wakeup_w = -1

    time = staticmethod(time.monotonic)

    # Descriptors -----------------------------------------------------------

    def watch(self, fd: int, events: int, handler: Handler, exclusive: bool = False) -> None:
        if exclusive:
            events |= select.EPOLLEXCLUSIVE
        self._epoll.register(fd, events)
        self.handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def unwatch(self, fd: int) -> None:
        """Stop watching a descriptor that stays open."""
        self._epoll.unregister(fd)
        self.forget(fd)

    def forget(self, fd: int) -> None:
        """Drop the handler of a descriptor about to be closed (closing it
        removes it from epoll)."""
        del self.handlers[fd]
        self._stale.add(fd)

    # The subset of asyncio's loop that the UDP mappings, the listening
    # sockets and the control channel use.

    def add_reader(self, fd: int, callback: Callable[..., None], *args: Any) -> None:
        self.watch(fd, IN, lambda _events: callback(*args))

    def remove_reader(self, fd: int) -> None:
        if fd in self.handlers:
            self.unwatch(fd)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    # Running ---------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True

    def stop_on_signals(self, *signals: int) -> None:
        """Stop the loop on these signals. The handler only sets a flag; the
        wake-up descriptor gets epoll out of its wait."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r, self._wakeup_w = r, w
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self.add_reader(r, self._drain_wakeup)
        for sig in signals:
            signal.signal(sig, lambda *_: self.stop())

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 64):
                pass
        except BlockingIOError:
            pass

    def run(self) -> None:
        poll = self._epoll.poll
        handlers = self.handlers
        stale = self._stale
        while not self._stopping:
            events = poll(self._timeout(), MAX_EVENTS)
            stale.clear()
            for fd, mask in events:
                if stale and fd in stale:
                    continue
                handler = handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler(mask)
                except Exception:  # one connection's bug must not end the worker
                    log.exception("handler for fd %d failed", fd)
            if self._timers:
                self._run_timers()

    def _timeout(self) -> float:
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if not timers:
            return -1
        return max(timers[0][0] - time.monotonic(), 0.0)

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            try:
                timer.callback(*timer.args)
            except Exception:
                log.exception("timer %r failed", timer.callback)

    def close(self) -> None:
        self._epoll.close()
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(-1)  # before its descriptor number is free again
        for fd in (self._wakeup_r, self._wakeup_w):
            if fd >= 0:
                os.close(fd)
