"""The Store contract, run against both backends: the embedded SQLite store
and etcd must agree on everything the daemon relies on.

Revisions are compared relatively: a fresh etcd starts at revision 1 and the
module's etcd is shared by its tests, the SQLite store starts at 0."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pontoon.store import Compare, Delete, Event, Put, Store
from pontoon.store.etcd import LeasedPut
from pontoon.store.sqlite import SQLiteStore
from tests.etcd.conftest import store_opener

Opener = Callable[[], contextlib.AbstractAsyncContextManager[Store]]


@pytest.fixture(params=["sqlite", "etcd"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "etcd":
        server = request.getfixturevalue("etcd_server")
        return store_opener([(server.host, server.client_port)])

    @contextlib.asynccontextmanager
    async def open_sqlite() -> AsyncIterator[Store]:
        store = SQLiteStore(tmp_path / "state" / "pontoon.db")
        try:
            yield store
        finally:
            await store.close()

    return open_sqlite


async def revision(store: Store) -> int:
    return (await store.list_prefix("/"))[1]


# ------------------------------------------------------------ get/put/delete


async def test_get_absent_key_is_none(opener):
    async with opener() as s:
        assert await s.get("/a") is None


async def test_put_then_get(opener):
    async with opener() as s:
        await s.put("/a", '{"x": 1}')
        kv = await s.get("/a")
        assert (kv.key, kv.value) == ("/a", '{"x": 1}')
        assert kv.create_revision == kv.mod_revision == await revision(s)


async def test_overwrite_keeps_create_revision_and_bumps_mod_revision(opener):
    async with opener() as s:
        await s.put("/a", "1")
        first = await s.get("/a")
        await s.put("/a", "2")
        kv = await s.get("/a")
        assert kv.value == "2"
        assert kv.create_revision == first.create_revision
        assert kv.mod_revision == first.mod_revision + 1


async def test_revisions_increase_across_keys(opener):
    async with opener() as s:
        await s.put("/a", "1")
        await s.put("/b", "1")
        assert (await s.get("/a")).mod_revision < (await s.get("/b")).mod_revision


async def test_delete_removes_the_key(opener):
    async with opener() as s:
        await s.put("/a", "1")
        await s.delete("/a")
        assert await s.get("/a") is None


async def test_delete_of_absent_key_is_not_an_error(opener):
    async with opener() as s:
        await s.delete("/nothing")


async def test_create_absent_key_succeeds(opener):
    async with opener() as s:
        assert await s.create("/a", "1") is True
        assert (await s.get("/a")).value == "1"


async def test_create_existing_key_fails_and_keeps_the_value(opener):
    async with opener() as s:
        await s.put("/a", "1")
        assert await s.create("/a", "2") is False
        assert (await s.get("/a")).value == "1"


async def test_create_after_delete_succeeds(opener):
    async with opener() as s:
        await s.put("/a", "1")
        await s.delete("/a")
        assert await s.create("/a", "2") is True


# ---------------------------------------------------------------------- txn


async def test_txn_applies_when_mod_revision_matches(opener):
    async with opener() as s:
        await s.put("/a", "1")
        rev = (await s.get("/a")).mod_revision
        assert await s.txn([Compare("/a", rev)], [Put("/a", "2")]) is True
        assert (await s.get("/a")).value == "2"


async def test_txn_fails_when_mod_revision_differs(opener):
    async with opener() as s:
        await s.put("/a", "1")
        old = (await s.get("/a")).mod_revision
        await s.put("/a", "2")
        assert await s.txn([Compare("/a", old)], [Put("/a", "3")]) is False
        assert (await s.get("/a")).value == "2"


async def test_txn_compare_zero_means_absent(opener):
    async with opener() as s:
        assert await s.txn([Compare("/a", 0)], [Put("/a", "1")]) is True
        assert await s.txn([Compare("/a", 0)], [Put("/a", "2")]) is False


async def test_txn_compare_on_absent_key_with_nonzero_revision_fails(opener):
    async with opener() as s:
        await s.put("/other", "1")
        rev = await revision(s)
        assert await s.txn([Compare("/a", rev)], [Put("/b", "1")]) is False
        assert await s.get("/b") is None


async def test_failed_txn_applies_none_of_its_ops(opener):
    async with opener() as s:
        await s.put("/guard", "1")
        ops = [Put("/x", "1"), Delete("/guard")]
        assert await s.txn([Compare("/x", 0), Compare("/guard", 10**9)], ops) is False
        assert await s.get("/x") is None
        assert (await s.get("/guard")).value == "1"


async def test_failed_txn_does_not_bump_the_revision(opener):
    async with opener() as s:
        await s.put("/a", "1")
        before = await revision(s)
        await s.txn([Compare("/a", 0)], [Put("/a", "2")])
        assert await revision(s) == before


async def test_txn_ops_share_one_revision(opener):
    async with opener() as s:
        await s.put("/old", "1")
        before = await revision(s)
        await s.txn([], [Put("/a", "1"), Put("/b", "1"), Delete("/old")])
        after = await revision(s)
        assert after == before + 1
        assert (await s.get("/a")).mod_revision == (await s.get("/b")).mod_revision == after


async def test_later_op_in_a_txn_wins(opener):
    async with opener() as s:
        await s.txn([], [Put("/a", "1"), Delete("/a"), Put("/b", "1"), Put("/b", "2")])
        assert await s.get("/a") is None
        assert (await s.get("/b")).value == "2"


async def test_leased_put_is_a_put(opener):
    """On SQLite the lease is ignored; on etcd lease 0 means "no lease"."""
    async with opener() as s:
        await s.txn([], [LeasedPut("/a", "1", 0)])
        assert (await s.get("/a")).value == "1"


# -------------------------------------------------------------- list_prefix


async def test_list_prefix_is_ordered_by_key(opener):
    async with opener() as s:
        for k in ("/n/c", "/n/a", "/n/b"):
            await s.put(k, k)
        kvs, _ = await s.list_prefix("/n/")
        assert [kv.key for kv in kvs] == ["/n/a", "/n/b", "/n/c"]


async def test_list_prefix_stays_within_the_prefix(opener):
    async with opener() as s:
        for k in ("/n", "/n/", "/n/a", "/n/a/deep", "/na/x", "/m/a", "/o"):
            await s.put(k, "v")
        kvs, _ = await s.list_prefix("/n/")
        assert [kv.key for kv in kvs] == ["/n/", "/n/a", "/n/a/deep"]


async def test_list_prefix_is_a_plain_string_prefix(opener):
    async with opener() as s:
        await s.put("/ipam/n1/10.0.0.2", "a")
        await s.put("/ipam/n10/10.0.0.2", "b")
        kvs, _ = await s.list_prefix("/ipam/n1")
        assert len(kvs) == 2


async def test_list_prefix_reports_the_store_revision(opener):
    async with opener() as s:
        await s.put("/n/a", "1")
        await s.put("/other", "1")
        _, rev = await s.list_prefix("/n/")
        assert rev == (await s.get("/other")).mod_revision


async def test_list_prefix_of_nothing_is_empty(opener):
    async with opener() as s:
        kvs, rev = await s.list_prefix("/none/")
        assert kvs == []
        assert rev >= 0


async def test_list_prefix_includes_keys_with_supplementary_characters(opener):
    async with opener() as s:
        await s.put("/n/\U0001f600", "1")
        kvs, _ = await s.list_prefix("/n/")
        assert [kv.key for kv in kvs] == ["/n/\U0001f600"]


async def test_values_returns_values_in_key_order(opener):
    async with opener() as s:
        await s.put("/n/b", "B")
        await s.put("/n/a", "A")
        await s.put("/x", "X")
        assert await s.values("/n/") == ["A", "B"]


# -------------------------------------------------------------------- watch


async def collect_events(
    store: Store, prefix: str, count: int, *writes: Callable[[Store], Awaitable[object]]
) -> tuple[int, list[Event]]:
    """Watch from the revision after a listing, apply `writes`, return that
    listing revision and the first `count` events."""
    _, rev = await store.list_prefix(prefix)
    events: list[Event] = []

    async def consume() -> None:
        async for event in store.watch(prefix, rev + 1):
            events.append(event)
            if len(events) == count:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # let the embedded store's watch register
    for write in writes:
        await write(store)
    await asyncio.wait_for(task, timeout=5)
    return rev, events


async def test_watch_reports_puts_and_deletes_under_the_prefix(opener):
    async with opener() as s:
        rev, events = await collect_events(
            s, "/n/", 2, lambda s: s.put("/n/a", "1"), lambda s: s.delete("/n/a")
        )
        assert events == [
            Event("put", "/n/a", "1", rev + 1),
            Event("delete", "/n/a", None, rev + 2),
        ]


async def test_watch_ignores_keys_outside_the_prefix(opener):
    async with opener() as s:
        rev, events = await collect_events(
            s,
            "/n/",
            1,
            lambda s: s.put("/m/a", "1"),
            lambda s: s.put("/na", "1"),
            lambda s: s.put("/n/b", "2"),
        )
        assert events == [Event("put", "/n/b", "2", rev + 3)]


async def test_watch_gets_no_event_for_failed_txn_or_absent_delete(opener):
    async with opener() as s:
        _, events = await collect_events(
            s,
            "/n/",
            1,
            lambda s: s.txn([Compare("/n/a", 10**9)], [Put("/n/a", "x")]),
            lambda s: s.delete("/n/ghost"),
            lambda s: s.put("/n/real", "1"),
        )
        assert [e.key for e in events] == ["/n/real"]


async def test_watch_gets_every_op_of_a_txn_at_one_revision(opener):
    async with opener() as s:
        rev, events = await collect_events(
            s, "/n/", 2, lambda s: s.txn([], [Put("/n/a", "1"), Put("/n/b", "2")])
        )
        assert [(e.key, e.revision) for e in events] == [("/n/a", rev + 1), ("/n/b", rev + 1)]
