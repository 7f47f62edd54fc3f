"""Exclusive wake-ups for listening sockets shared by the workers.

Every worker watches the same listening socket (one open file, its
descriptor passed to each). With plain epoll a new connection wakes every
worker and all but one find nothing to accept. EPOLLEXCLUSIVE wakes only one
worker that sits in epoll_wait (a busy worker is skipped, so the wake-up goes
to an idle one). asyncio's selector cannot ask for the flag, so the worker's
loop runs on EpollSelector whose epoll object adds it for the descriptors in
EXCLUSIVE. It must be the loop's own epoll: an inner epoll nested in the
loop's would be woken like any other waiter, with no exclusivity left.
"""

from __future__ import annotations

import select
import selectors
from typing import Any

# Listening sockets to register with EPOLLEXCLUSIVE (one loop per worker
# process, so one set per process).
EXCLUSIVE: set[int] = set()


class _Epoll:
    """A select.epoll that registers EXCLUSIVE fds with EPOLLEXCLUSIVE."""

    def __init__(self, epoll: select.epoll) -> None:
        self._epoll = epoll

    def register(self, fd: int, mask: int) -> None:
        if fd in EXCLUSIVE:
            mask |= select.EPOLLEXCLUSIVE
        self._epoll.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        if fd in EXCLUSIVE:  # EPOLL_CTL_MOD refuses an exclusive registration
            self._epoll.unregister(fd)
            self.register(fd, mask)
        else:
            self._epoll.modify(fd, mask)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._epoll, name)


class ExclusiveEpollSelector(selectors.EpollSelector):
    def __init__(self) -> None:
        super().__init__()
        self._selector = _Epoll(self._selector)  # type: ignore[has-type,arg-type]
