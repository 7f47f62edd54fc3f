"""The embedded store: one SQLite file under --root.

Every write is one SQLite transaction that also bumps a global revision, so
the semantics match the etcd backend: a transaction either applies entirely or
not at all, and revisions order all changes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from pontoon.store.base import Compacted, Compare, Delete, Event, KeyValue, Put, Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
"""


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed daemon (WAL is fsynced at checkpoints); only a
        # power loss can drop the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._watchers: list[tuple[str, asyncio.Queue[Event]]] = []

    def _revision(self) -> int:
        return self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]

    async def get(self, key: str) -> KeyValue | None:
        row = self._db.execute(
            "SELECT key, value, create_rev, mod_rev FROM kv WHERE key=?", (key,)
        ).fetchone()
        return KeyValue(*row) if row else None

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        # Range scan on the primary key: prefix <= key < the next prefix.
        query = "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?"
        args: tuple[str, ...] = (prefix,)
        if prefix:
            query += " AND key < ?"
            args += (prefix[:-1] + chr(ord(prefix[-1]) + 1),)
        rows = self._db.execute(query + " ORDER BY key", args).fetchall()
        return [KeyValue(*r) for r in rows], self._revision()

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        db = self._db
        events: list[Event] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for cmp in compares:
                row = db.execute("SELECT mod_rev FROM kv WHERE key=?", (cmp.key,)).fetchone()
                if (row[0] if row else 0) != cmp.mod_revision:
                    db.execute("ROLLBACK")
                    return False
            if ops:
                rev = self._revision() + 1
                for op in ops:
                    if isinstance(op, Put):
                        db.execute(
                            "INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE "
                            "SET value=excluded.value, mod_rev=excluded.mod_rev",
                            (op.key, op.value, rev, rev),
                        )
                        events.append(Event("put", op.key, op.value, rev))
                    elif db.execute("DELETE FROM kv WHERE key=?", (op.key,)).rowcount:
                        events.append(Event("delete", op.key, None, rev))
                db.execute("UPDATE meta SET value=? WHERE name='revision'", (rev,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._notify(events)
        return True

    def _notify(self, events: list[Event]) -> None:
        for prefix, queue in self._watchers:
            for event in events:
                if event.key.startswith(prefix):
                    queue.put_nowait(event)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        # History is not kept: a watch can only start at the next revision.
        if start_revision <= self._revision():
            raise Compacted(f"revision {start_revision} is not kept by the embedded store")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(entry)

    async def close(self) -> None:
        self._db.close()
