"""Fixtures of the in-process harnesses: one event loop per module, and an
engine over a real SQLite store whose kernel side is never reached (each
harness replaces the engine calls it drives with fakes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pontoon.daemon.config import DaemonConfig
from pontoon.engine.engine import Engine
from pontoon.store.sqlite import SQLiteStore


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def offline_engine(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> Iterator[Engine]:
    cfg = DaemonConfig(root=tmp_path / "root", exec_root=tmp_path / "run")
    store = SQLiteStore(cfg.db_path)
    yield Engine(cfg, store, SimpleNamespace(ipr=None))  # type: ignore[arg-type]
    loop.run_until_complete(store.close())
