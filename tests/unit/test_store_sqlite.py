"""The embedded SQLite store: etcd-like revisions, transactions and watches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pontoon.store import Compacted, Compare, Delete, Event, Put
from pontoon.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "state" / "pontoon.db")
    yield s
    asyncio.run(s.close())


def run(coro):
    return asyncio.run(coro)


def revision(store: SQLiteStore) -> int:
    return run(store.list_prefix("/"))[1]


# ------------------------------------------------------------ get/put/delete


def test_get_absent_key_is_none(store):
    assert run(store.get("/a")) is None


def test_new_store_is_at_revision_zero(store):
    assert revision(store) == 0


def test_put_then_get(store):
    run(store.put("/a", '{"x": 1}'))
    kv = run(store.get("/a"))
    assert (kv.key, kv.value) == ("/a", '{"x": 1}')
    assert kv.create_revision == kv.mod_revision == revision(store) == 1


def test_overwrite_keeps_create_revision_and_bumps_mod_revision(store):
    run(store.put("/a", "1"))
    run(store.put("/a", "2"))
    kv = run(store.get("/a"))
    assert (kv.value, kv.create_revision, kv.mod_revision) == ("2", 1, 2)


def test_revisions_increase_across_keys(store):
    run(store.put("/a", "1"))
    run(store.put("/b", "1"))
    assert run(store.get("/a")).mod_revision < run(store.get("/b")).mod_revision


def test_delete_removes_the_key(store):
    run(store.put("/a", "1"))
    run(store.delete("/a"))
    assert run(store.get("/a")) is None


def test_delete_of_absent_key_is_not_an_error(store):
    run(store.delete("/nothing"))


def test_create_absent_key_succeeds(store):
    assert run(store.create("/a", "1")) is True
    assert run(store.get("/a")).value == "1"


def test_create_existing_key_fails_and_keeps_the_value(store):
    run(store.put("/a", "1"))
    assert run(store.create("/a", "2")) is False
    assert run(store.get("/a")).value == "1"


def test_create_after_delete_succeeds(store):
    run(store.put("/a", "1"))
    run(store.delete("/a"))
    assert run(store.create("/a", "2")) is True


# ---------------------------------------------------------------------- txn


def test_txn_applies_when_mod_revision_matches(store):
    run(store.put("/a", "1"))
    rev = run(store.get("/a")).mod_revision
    assert run(store.txn([Compare("/a", rev)], [Put("/a", "2")])) is True
    assert run(store.get("/a")).value == "2"


def test_txn_fails_when_mod_revision_differs(store):
    run(store.put("/a", "1"))
    run(store.put("/a", "2"))
    assert run(store.txn([Compare("/a", 1)], [Put("/a", "3")])) is False
    assert run(store.get("/a")).value == "2"


def test_txn_compare_zero_means_absent(store):
    assert run(store.txn([Compare("/a", 0)], [Put("/a", "1")])) is True
    assert run(store.txn([Compare("/a", 0)], [Put("/a", "2")])) is False


def test_txn_compare_on_absent_key_with_nonzero_revision_fails(store):
    assert run(store.txn([Compare("/a", 1)], [Put("/b", "1")])) is False
    assert run(store.get("/b")) is None


def test_failed_txn_applies_none_of_its_ops(store):
    run(store.put("/guard", "1"))
    ops = [Put("/x", "1"), Delete("/guard")]
    assert run(store.txn([Compare("/x", 0), Compare("/guard", 99)], ops)) is False
    assert run(store.get("/x")) is None
    assert run(store.get("/guard")).value == "1"


def test_failed_txn_does_not_bump_the_revision(store):
    run(store.put("/a", "1"))
    run(store.txn([Compare("/a", 0)], [Put("/a", "2")]))
    assert revision(store) == 1


def test_txn_ops_share_one_revision(store):
    run(store.put("/old", "1"))
    run(store.txn([], [Put("/a", "1"), Put("/b", "1"), Delete("/old")]))
    assert run(store.get("/a")).mod_revision == run(store.get("/b")).mod_revision == 2
    assert revision(store) == 2


def test_later_op_in_a_txn_wins(store):
    run(store.txn([], [Put("/a", "1"), Delete("/a"), Put("/b", "1"), Put("/b", "2")]))
    assert run(store.get("/a")) is None
    assert run(store.get("/b")).value == "2"


# -------------------------------------------------------------- list_prefix


def test_list_prefix_is_ordered_by_key(store):
    for k in ("/n/c", "/n/a", "/n/b"):
        run(store.put(k, k))
    kvs, _ = run(store.list_prefix("/n/"))
    assert [kv.key for kv in kvs] == ["/n/a", "/n/b", "/n/c"]


def test_list_prefix_stays_within_the_prefix(store):
    for k in ("/n", "/n/", "/n/a", "/n/a/deep", "/na/x", "/m/a", "/o"):
        run(store.put(k, "v"))
    kvs, _ = run(store.list_prefix("/n/"))
    assert [kv.key for kv in kvs] == ["/n/", "/n/a", "/n/a/deep"]


def test_list_prefix_is_a_plain_string_prefix(store):
    run(store.put("/ipam/n1/10.0.0.2", "a"))
    run(store.put("/ipam/n10/10.0.0.2", "b"))
    kvs, _ = run(store.list_prefix("/ipam/n1"))
    assert len(kvs) == 2


def test_list_prefix_reports_the_store_revision(store):
    run(store.put("/n/a", "1"))
    run(store.put("/other", "1"))
    assert run(store.list_prefix("/n/"))[1] == 2


def test_list_prefix_of_nothing_is_empty(store):
    assert run(store.list_prefix("/none/")) == ([], 0)


def test_list_prefix_includes_keys_with_supplementary_characters(store):
    run(store.put("/n/\U0001f600", "1"))
    kvs, _ = run(store.list_prefix("/n/"))
    assert [kv.key for kv in kvs] == ["/n/\U0001f600"]


def test_values_returns_values_in_key_order(store):
    run(store.put("/n/b", "B"))
    run(store.put("/n/a", "A"))
    run(store.put("/x", "X"))
    assert run(store.values("/n/")) == ["A", "B"]


def test_state_survives_reopening_the_file(tmp_path):
    db = tmp_path / "pontoon.db"
    first = SQLiteStore(db)
    run(first.put("/a", "1"))
    run(first.close())
    second = SQLiteStore(db)
    run(second.put("/b", "1"))
    assert run(second.get("/a")).value == "1"
    assert run(second.get("/b")).mod_revision == 2
    run(second.close())


# -------------------------------------------------------------------- watch


def collect_events(store: SQLiteStore, prefix: str, count: int, *writes) -> list[Event]:
    """Start a watch at the next revision, apply `writes` (store -> coroutine),
    and return the first `count` events."""

    async def scenario() -> list[Event]:
        _, rev = await store.list_prefix(prefix)
        events: list[Event] = []

        async def consume() -> None:
            async for event in store.watch(prefix, rev + 1):
                events.append(event)
                if len(events) == count:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)  # let the watch register
        for write in writes:
            await write(store)
        await asyncio.wait_for(task, timeout=2)
        return events

    return run(scenario())


def test_watch_reports_puts_and_deletes_under_the_prefix(store):
    events = collect_events(
        store,
        "/n/",
        2,
        lambda s: s.put("/n/a", "1"),
        lambda s: s.delete("/n/a"),
    )
    assert events == [Event("put", "/n/a", "1", 1), Event("delete", "/n/a", None, 2)]


def test_watch_ignores_keys_outside_the_prefix(store):
    events = collect_events(
        store,
        "/n/",
        1,
        lambda s: s.put("/m/a", "1"),
        lambda s: s.put("/na", "1"),
        lambda s: s.put("/n/b", "2"),
    )
    assert events == [Event("put", "/n/b", "2", 3)]


def test_watch_gets_no_event_for_failed_txn_or_absent_delete(store):
    events = collect_events(
        store,
        "/n/",
        1,
        lambda s: s.txn([Compare("/n/a", 5)], [Put("/n/a", "x")]),
        lambda s: s.delete("/n/ghost"),
        lambda s: s.put("/n/real", "1"),
    )
    assert [e.key for e in events] == ["/n/real"]


def test_watch_gets_every_op_of_a_txn_at_one_revision(store):
    events = collect_events(
        store, "/n/", 2, lambda s: s.txn([], [Put("/n/a", "1"), Put("/n/b", "2")])
    )
    assert [(e.key, e.revision) for e in events] == [("/n/a", 1), ("/n/b", 1)]


@pytest.mark.parametrize("start", [1, 2])
def test_watch_from_a_past_revision_raises_compacted(store, start):
    run(store.put("/n/a", "1"))
    run(store.put("/n/b", "1"))

    async def first_event() -> Event:
        return await anext(store.watch("/n/", start))

    with pytest.raises(Compacted):
        run(first_event())
