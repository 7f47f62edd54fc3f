"""The workers' epoll loop on its own: handlers get the event mask, timers
run in order and can be cancelled, a forgotten descriptor's pending events
are dropped (its number may be reused within the batch), signals stop it."""

from __future__ import annotations

import os
import select
import signal
import socket

from pontoon.proxy.evloop import IN, Loop


def test_handler_gets_the_mask_and_modify_changes_it() -> None:
    loop = Loop()
    a, b = socket.socketpair()
    seen: list[int] = []

    def on_event(events: int) -> None:
        seen.append(events)
        if len(seen) == 1:
            loop.modify(a.fileno(), select.EPOLLOUT)
        else:
            loop.stop()

    try:
        b.send(b"x")
        loop.watch(a.fileno(), IN, on_event)
        loop.run()
        assert seen[0] & IN and not seen[0] & select.EPOLLOUT
        assert seen[1] & select.EPOLLOUT and not seen[1] & IN
    finally:
        loop.close()
        a.close()
        b.close()


def test_timers_in_order_and_cancel() -> None:
    loop = Loop()
    ran: list[str] = []
    try:
        loop.call_later(0.03, ran.append, "late")
        loop.call_later(0.01, ran.append, "early")
        loop.call_later(0.02, ran.append, "cancelled").cancel()
        loop.call_later(0.05, loop.stop)
        loop.run()
        assert ran == ["early", "late"]
    finally:
        loop.close()


def test_forgotten_descriptor_gets_no_stale_event() -> None:
    """Two readable sockets in one batch: the first handler closes the
    second and puts a new socket on its number; the batch's event for the
    old one must not reach the new handler."""
    loop = Loop()
    pairs = [socket.socketpair() for _ in range(2)]
    calls: list[str] = []
    keep: list[socket.socket] = []

    def closing_both(name: str) -> None:
        calls.append(name)
        for a, _ in pairs:
            loop.forget(a.fileno())
            a.close()
        fresh, other = socket.socketpair()  # likely on the freed numbers
        keep.extend((fresh, other))
        loop.watch(fresh.fileno(), IN, lambda _e: calls.append("fresh"))
        loop.watch(other.fileno(), IN, lambda _e: calls.append("fresh"))
        loop.call_later(0.05, loop.stop)

    try:
        for _, b in pairs:
            b.send(b"x")
        loop.watch(pairs[0][0].fileno(), IN, lambda _e: closing_both("first"))
        loop.watch(pairs[1][0].fileno(), IN, lambda _e: closing_both("second"))
        loop.run()
        # Whichever ran first, the other's event was dropped, and the new
        # (never written to) socket got none.
        assert calls in (["first"], ["second"])
    finally:
        loop.close()
        for a, b in pairs:
            a.close()
            b.close()
        for s in keep:
            s.close()


def test_stop_on_signal() -> None:
    loop = Loop()
    old = signal.getsignal(signal.SIGUSR1)
    try:
        loop.stop_on_signals(signal.SIGUSR1)
        loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
        loop.run()  # returns: the signal stopped it
    finally:
        signal.signal(signal.SIGUSR1, old)
        signal.set_wakeup_fd(-1)
        loop.close()
