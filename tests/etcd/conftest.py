"""Fixtures for the etcd store tests.

Each test module runs its own single-node etcd on 127.0.0.1 (free ports, data
in tmp_path), stopped by PID at teardown whatever happened. Tests are `async
def`, run by the hook below in a fresh event loop each: gRPC channels belong
to the loop that made them, so a store is opened and closed inside its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pontoon.lab.etcd import ETCD_BIN, EtcdServer, free_tcp_port
from pontoon.store.etcd import EtcdStore

TEST_TIMEOUT = 30.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**args), TEST_TIMEOUT))
    return True


def new_server(data_dir: Path) -> EtcdServer:
    if not os.path.exists(ETCD_BIN):
        pytest.skip(f"{ETCD_BIN} is not installed (Debian package etcd-server)")
    return EtcdServer(data_dir, "127.0.0.1", free_tcp_port(), free_tcp_port())


@contextlib.contextmanager
def running(server: EtcdServer) -> Iterator[EtcdServer]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole module; tests keep apart by key prefix."""
    with running(new_server(tmp_path_factory.mktemp("etcd") / "data")) as server:
        yield server


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of the test's own, for tests that pause or stop it."""
    with running(new_server(tmp_path / "etcd")) as server:
        yield server


StoreOpener = Callable[..., contextlib.AbstractAsyncContextManager[EtcdStore]]


@pytest.fixture
def open_store(etcd_server: EtcdServer) -> StoreOpener:
    """open_store(**kwargs): an EtcdStore on the module's etcd under a prefix
    of the test's own (every store of one test shares it)."""
    return store_opener([(etcd_server.host, etcd_server.client_port)])


def store_opener(endpoints: list[tuple[str, int]], prefix: str | None = None) -> StoreOpener:
    prefix = prefix or "/t" + uuid.uuid4().hex[:12]

    @contextlib.asynccontextmanager
    async def opener(**kwargs: Any) -> AsyncIterator[EtcdStore]:
        store = EtcdStore(endpoints, kwargs.pop("prefix", prefix), **kwargs)
        try:
            yield store
        finally:
            await store.close()

    return opener
