"""A Store wrapper that times every operation, for the metrics endpoint."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pontoon.store.base import Compare, Delete, Event, KeyValue, Put, Store


class TimedStore(Store):
    def __init__(self, inner: Store, name: str) -> None:
        self.inner = inner
        self.name = name
        self.count = 0
        self.seconds = 0.0
        self.errors = 0
        self.max_seconds = 0.0

    def __getattr__(self, attr: str) -> Any:
        # Backend extras (leases on etcd) pass straight through.
        return getattr(self.inner, attr)

    async def _timed(self, coro: Any) -> Any:
        start = time.perf_counter()
        try:
            return await coro
        except Exception:
            self.errors += 1
            raise
        finally:
            took = time.perf_counter() - start
            self.count += 1
            self.seconds += took
            self.max_seconds = max(self.max_seconds, took)

    async def get(self, key: str) -> KeyValue | None:
        return await self._timed(self.inner.get(key))

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._timed(self.inner.list_prefix(prefix))

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        return await self._timed(self.inner.txn(compares, ops))

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        return self.inner.watch(prefix, start_revision)

    async def close(self) -> None:
        await self.inner.close()
