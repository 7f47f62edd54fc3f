"""Leases: how a host's keys disappear when the host stops renewing them."""

from __future__ import annotations

import asyncio
import time

import pytest

from pontoon.store import Compare, Event
from pontoon.store.etcd import LeasedPut, LeaseExpired


async def test_an_expired_lease_deletes_its_keys_and_watchers_see_it(open_store):
    async with open_store() as host, open_store() as observer:
        lease = await host.grant_lease(2)
        await host.put_with_lease("/hosts/h1", "alive", lease)
        await host.put("/hosts/h2", "no lease")
        _, rev = await observer.list_prefix("/hosts/")
        started = time.monotonic()
        event = await asyncio.wait_for(anext(observer.watch("/hosts/", rev + 1)), 6)
        assert (event.kind, event.key, event.value) == ("delete", "/hosts/h1", None)
        assert 1.5 < time.monotonic() - started < 5
        assert await observer.get("/hosts/h1") is None
        assert (await observer.get("/hosts/h2")).value == "no lease"


async def test_keepalive_keeps_the_keys(open_store):
    async with open_store() as s:
        lease = await s.grant_lease(2)
        await s.put_with_lease("/hosts/h1", "alive", lease)
        for _ in range(6):
            assert await s.keepalive(lease) == 2
            await asyncio.sleep(0.5)
        assert (await s.get("/hosts/h1")).value == "alive"


async def test_revoke_deletes_now_and_ends_the_lease(open_store):
    async with open_store() as s:
        lease = await s.grant_lease(60)
        await s.put_with_lease("/hosts/h1", "alive", lease)
        await s.revoke_lease(lease)
        assert await s.get("/hosts/h1") is None
        await s.revoke_lease(lease)  # twice is fine
        with pytest.raises(LeaseExpired):
            await s.keepalive(lease)
        with pytest.raises(LeaseExpired):
            await s.put_with_lease("/hosts/h1", "again", lease)


async def test_a_leased_put_in_a_conditional_txn(open_store):
    async with open_store() as s:
        lease = await s.grant_lease(60)
        ok = await s.txn([Compare("/hosts/h1", 0)], [LeasedPut("/hosts/h1", "a", lease)])
        assert ok is True
        assert not await s.txn([Compare("/hosts/h1", 0)], [LeasedPut("/hosts/h1", "b", lease)])
        _, rev = await s.list_prefix("/hosts/")
        await s.revoke_lease(lease)
        assert await anext(s.watch("/hosts/", rev + 1)) == Event(
            "delete", "/hosts/h1", None, rev + 1
        )
