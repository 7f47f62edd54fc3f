"""The store interface every backend implements."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Sequence


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # "put" or "delete"
    key: str
    value: str | None
    revision: int


@dataclasses.dataclass(frozen=True)
class Compare:
    """Holds when `key`'s mod revision equals `mod_revision`; 0 means "absent"."""

    key: str
    mod_revision: int


@dataclasses.dataclass(frozen=True)
class Put:
    key: str
    value: str


@dataclasses.dataclass(frozen=True)
class Delete:
    key: str


class Compacted(Exception):
    """A watch cannot resume from the asked revision: re-list and start again."""


class Store(abc.ABC):
    """Keys are '/'-separated paths; values are JSON text."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under `prefix` and the store revision they were read at."""

    @abc.abstractmethod
    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        """Apply `ops` atomically if every compare holds; False when one does not."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Changes under `prefix` from `start_revision` on. Raises Compacted when
        the backend no longer has that revision."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def put(self, key: str, value: str) -> None:
        await self.txn([], [Put(key, value)])

    async def delete(self, key: str) -> None:
        await self.txn([], [Delete(key)])

    async def create(self, key: str, value: str) -> bool:
        """Put only if absent; False when the key already exists."""
        return await self.txn([Compare(key, 0)], [Put(key, value)])

    async def values(self, prefix: str) -> list[str]:
        kvs, _ = await self.list_prefix(prefix)
        return [kv.value for kv in kvs]
