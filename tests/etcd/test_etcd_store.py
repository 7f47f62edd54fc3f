"""etcd-only behaviour: the key prefix, paged listing, big transactions,
concurrent creates from two clients, and watches resuming from history."""

from __future__ import annotations

import asyncio

import pytest

from pontoon.errors import PontoonError
from pontoon.lab.etcd import EtcdServer
from pontoon.store import Compacted, Compare, Delete, Event, Put
from pontoon.store import etcd as etcd_module
from pontoon.store.etcd import EtcdStore

# ------------------------------------------------------------------- prefix


async def test_keys_are_stored_under_the_prefix(open_store, etcd_server: EtcdServer):
    async with open_store(prefix="/p1/deep") as s:
        await s.put("/networks/a", "1")
    out = etcd_server.etcdctl("get", "--prefix", "/p1/", "--print-value-only=false")
    assert out.stdout.split() == ["/p1/deep/networks/a", "1"]


async def test_stores_with_other_prefixes_do_not_see_each_other(open_store):
    async with open_store(prefix="/pa") as a, open_store(prefix="/pa2") as b:
        await a.put("/k", "a")
        await b.put("/k", "b")
        assert (await a.get("/k")).value == "a"
        assert [kv.value for kv in (await a.list_prefix(""))[0]] == ["a"]
        assert [kv.key for kv in (await b.list_prefix("/"))[0]] == ["/k"]


async def test_keys_must_start_with_a_slash(open_store):
    async with open_store() as s:
        with pytest.raises(ValueError, match="must start with '/'"):
            await s.put("k", "1")


def test_prefix_is_checked():
    for bad in ("pontoon", "/pontoon/"):
        with pytest.raises(ValueError, match="prefix"):
            EtcdStore([("127.0.0.1", 2379)], bad)


# ------------------------------------------------------------------ listing


async def test_list_is_paged_at_one_revision(open_store, monkeypatch):
    monkeypatch.setattr(etcd_module, "PAGE_SIZE", 2)
    async with open_store() as s:
        await s.txn([], [Put(f"/n/{i}", str(i)) for i in range(5)])
        kvs, rev = await s.list_prefix("/n/")
        assert [kv.value for kv in kvs] == ["0", "1", "2", "3", "4"]
        assert rev == kvs[0].mod_revision


async def test_list_revision_then_watch_misses_nothing(open_store):
    async with open_store() as s:
        await s.put("/n/a", "1")
        _, rev = await s.list_prefix("/n/")
        await s.put("/n/b", "2")  # after the listing, before the watch
        event = await anext(s.watch("/n/", rev + 1))
        assert event == Event("put", "/n/b", "2", rev + 1)


# ------------------------------------------------------------- transactions


async def test_unconditional_deletes_beyond_etcds_limit_are_split(open_store):
    """...in chunks applied last-first: the leading key (the record owning the
    rest) goes last, so a failure midway leaves it to retry from."""
    keys = ["/networks/n1"] + [f"/ipam/n1/{j:03}" for j in range(299)]
    async with open_store() as s:
        for i in range(0, 300, 100):
            await s.txn([], [Put(k, "x") for k in keys[i : i + 100]])
        _, rev = await s.list_prefix("/")
        assert await s.txn([], [Delete(k) for k in keys]) is True
        assert await s.list_prefix("/ipam/") == ([], rev + 3)
        assert await s.get("/networks/n1") is None
        deleted_at: dict[str, int] = {}
        async for event in s.watch("/", rev + 1):
            deleted_at[event.key] = event.revision
            if len(deleted_at) == len(keys):
                break
        assert deleted_at["/networks/n1"] == rev + 3
        assert deleted_at["/ipam/n1/298"] == rev + 1


async def test_a_conditional_txn_beyond_etcds_limit_is_refused(open_store):
    async with open_store() as s:
        ops = [Put(f"/k/{j}", "x") for j in range(200)]
        with pytest.raises(PontoonError, match="limit of 128"):
            await s.txn([Compare("/k/0", 0)], ops)
        assert await s.values("/k/") == []


async def test_two_clients_racing_creates_make_each_key_once(open_store):
    keys = [f"/ipam/net/10.0.{i // 250}.{i % 250}" for i in range(100)]
    async with open_store() as a, open_store() as b:

        async def claim(store: EtcdStore, owner: str, key: str) -> tuple[str, str, bool]:
            return key, owner, await store.create(key, owner)

        claims = [claim(a, "a", k) for k in keys] + [claim(b, "b", k) for k in keys]
        results = await asyncio.gather(*claims)  # 200 creates in flight at once
        winners: dict[str, list[str]] = {k: [] for k in keys}
        for key, owner, won in results:
            if won:
                winners[key].append(owner)
        assert all(len(w) == 1 for w in winners.values()), winners
        stored = {kv.key: kv.value for kv in (await a.list_prefix("/ipam/net/"))[0]}
        assert stored == {k: w[0] for k, w in winners.items()}


# -------------------------------------------------------------------- watch


async def test_watch_resumes_from_a_known_revision(open_store):
    async with open_store() as s:
        await s.put("/n/a", "1")
        await s.put("/n/b", "2")
        resume_at = (await s.get("/n/b")).mod_revision
        await s.delete("/n/a")
        await s.put("/n/c", "3")
        events = []
        async for event in s.watch("/n/", resume_at):
            events.append(event)
            if len(events) == 3:
                break
        assert events == [
            Event("put", "/n/b", "2", resume_at),
            Event("delete", "/n/a", None, resume_at + 1),
            Event("put", "/n/c", "3", resume_at + 2),
        ]


async def test_watch_from_a_compacted_revision_raises_compacted(
    open_store, etcd_server: EtcdServer
):
    async with open_store() as s:
        await s.put("/n/a", "1")
        await s.put("/n/a", "2")
        old = (await s.get("/n/a")).mod_revision - 1
        await s.put("/n/a", "3")
        compact_at = (await s.get("/n/a")).mod_revision
        out = etcd_server.etcdctl("compact", str(compact_at))
        assert out.returncode == 0, out.stderr
        with pytest.raises(Compacted):
            await anext(s.watch("/n/", old))
        # The compaction revision itself is still there.
        assert await anext(s.watch("/n/", compact_at)) == Event("put", "/n/a", "3", compact_at)


async def test_a_broken_off_watch_cancels_its_etcd_watcher(open_store):
    async with open_store() as s:
        for i in range(3):
            await s.put("/n/a", str(i))
            watch = s.watch("/n/", (await s.get("/n/a")).mod_revision)
            assert (await anext(watch)).value == str(i)
            await watch.aclose()
        assert (await s.get("/n/a")).value == "2"
