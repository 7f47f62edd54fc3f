"""etcd unreachable: operations fail fast with Unavailable, never hang, and
work again once etcd is back; several endpoints fail over."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from pontoon.errors import Unavailable
from pontoon.lab.etcd import EtcdServer, free_tcp_port
from pontoon.store import Compare, Put
from pontoon.store.etcd import EtcdStore
from tests.etcd.conftest import store_opener


def endpoint(server: EtcdServer) -> tuple[str, int]:
    return server.host, server.client_port


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    """A port that accepts TCP connections (into the backlog) and never
    answers: what a hung etcd member looks like to a client."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()


# ----------------------------------------------------------- one member down


async def test_paused_etcd_makes_get_fail_within_the_timeout(own_etcd: EtcdServer):
    async with store_opener([endpoint(own_etcd)])() as s:
        await s.put("/a", "1")
        own_etcd.pause()
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable, match=r"unreachable: get /a: .*no answer"):
                await s.get("/a")
            assert 2.5 < time.monotonic() - started < 4
        finally:
            own_etcd.resume()
        assert (await s.get("/a")).value == "1"


async def test_every_operation_is_bounded_while_etcd_is_paused(own_etcd: EtcdServer):
    async with store_opener([endpoint(own_etcd)])(timeout=0.5) as s:
        await s.put("/a", "1")
        own_etcd.pause()
        try:
            for op in (
                s.get("/a"),
                s.list_prefix("/"),
                s.put("/a", "2"),
                s.txn([Compare("/a", 0)], [Put("/a", "3")]),
                s.grant_lease(10),
                s.keepalive(1),
                anext(s.watch("/", 1)),
            ):
                started = time.monotonic()
                with pytest.raises(Unavailable):
                    await op
                assert time.monotonic() - started < 1.0
        finally:
            own_etcd.resume()
        assert await s.create("/b", "1") is True


async def test_stopped_etcd_fails_fast_and_a_restart_is_picked_up(own_etcd: EtcdServer):
    async with store_opener([endpoint(own_etcd)])() as s:
        await s.put("/a", "1")
        own_etcd.stop()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="connection refused"):
            await s.get("/a")
        assert time.monotonic() - started < 1
        await asyncio.to_thread(own_etcd.start)
        assert (await s.get("/a")).value == "1"


async def test_a_watch_raises_unavailable_when_etcd_stops(own_etcd: EtcdServer):
    async with store_opener([endpoint(own_etcd)])() as s:
        _, rev = await s.list_prefix("/")
        watch = s.watch("/", rev + 1)
        first = asyncio.create_task(anext(watch))
        await s.put("/a", "1")
        assert (await first).key == "/a"
        await asyncio.to_thread(own_etcd.stop)
        with pytest.raises(Unavailable, match="watch /"):
            await asyncio.wait_for(anext(watch), 3)
        # The caller re-lists and watches again once etcd is back.
        await asyncio.to_thread(own_etcd.start)
        kvs, rev = await s.list_prefix("/")
        assert [kv.key for kv in kvs] == ["/a"]
        watch = s.watch("/", rev + 1)
        nxt = asyncio.create_task(anext(watch))
        await s.put("/b", "2")
        assert (await asyncio.wait_for(nxt, 3)).key == "/b"
        await watch.aclose()


async def test_a_quiet_watch_notices_a_hung_etcd(own_etcd: EtcdServer):
    async with store_opener([endpoint(own_etcd)])(timeout=1.0, probe_interval=0.5) as s:
        _, rev = await s.list_prefix("/")
        watch = s.watch("/", rev + 1)
        pending = asyncio.create_task(anext(watch))
        await asyncio.sleep(0.7)  # one probe succeeds
        assert not pending.done()
        own_etcd.pause()
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="no answer"):
                await asyncio.wait_for(pending, 4)
            assert time.monotonic() - started < 2.5
        finally:
            own_etcd.resume()


# --------------------------------------------------------- several endpoints


async def test_a_dead_first_endpoint_fails_over_to_the_second(etcd_server: EtcdServer):
    dead = ("127.0.0.1", free_tcp_port())
    async with store_opener([dead, endpoint(etcd_server)])() as s:
        started = time.monotonic()
        await s.put("/a", "1")
        assert time.monotonic() - started < 1
        assert s.endpoint == endpoint(etcd_server)
        assert (await s.get("/a")).value == "1"
        assert [e.key async for e in _first(s.watch("/", 1), 1)] == ["/a"]


async def test_a_hung_first_endpoint_fails_over_within_the_timeout(
    etcd_server: EtcdServer, black_hole: tuple[str, int]
):
    async with store_opener([black_hole, endpoint(etcd_server)])(timeout=2.0) as s:
        started = time.monotonic()
        assert await s.create("/a", "1") is True
        assert 0.9 < time.monotonic() - started < 2.0
        assert s.endpoint == endpoint(etcd_server)
        started = time.monotonic()
        assert (await s.get("/a")).value == "1"  # stays on the member that answers
        assert time.monotonic() - started < 0.5


async def test_all_endpoints_down_names_each_of_them(black_hole: tuple[str, int]):
    dead = ("127.0.0.1", free_tcp_port())
    store = EtcdStore([dead, black_hole], timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await store.get("/a")
        assert time.monotonic() - started < 1.5
        message = str(info.value)
        assert f"127.0.0.1:{dead[1]}: connection refused" in message
        assert f"127.0.0.1:{black_hole[1]}: no answer within" in message
    finally:
        await store.close()


async def test_a_closed_store_refuses_operations():
    store = EtcdStore([("127.0.0.1", free_tcp_port())])
    await store.close()
    with pytest.raises(Unavailable, match="closed"):
        await store.get("/a")


async def _first(events, count):
    n = 0
    async for event in events:
        yield event
        n += 1
        if n == count:
            await events.aclose()
            return
