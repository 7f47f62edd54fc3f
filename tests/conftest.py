"""Shared fixtures. Integration tests build throwaway hosts (network
namespaces named ptt-<run>*) and the session fails if anything they made is left.

Every names this run makes carries RUN, so that two test sessions on one machine
(a developer's and a helper's) never blame each other for what they made."""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pontoon.lab import SimHost
from pontoon.lab.engines import EngineHost
from pontoon.lab.leaks import State, changes, machine_state

RUN = uuid.uuid4().hex[:3]
PREFIX = f"ptt-{RUN}"
LAB_PREFIX = f"ptl-t{RUN}"  # labs made by tests are named t<RUN><n>
WORKDIR = Path("/tmp/pontoon-tests")
_labs = itertools.count()


def _root_state() -> State:
    return machine_state((PREFIX, LAB_PREFIX), (f"{WORKDIR}/{PREFIX}", f"/run/pontoon-lab/t{RUN}"))


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._pontoon_before = _root_state()  # type: ignore[attr-defined]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "integration" in item.keywords:
        item.config._pontoon_integration = True  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_pontoon_before", None)
    # Only a session that built hosts can have leaked them (and a unit-only run
    # beside another session's integration tests must not blame itself).
    ran = getattr(session.config, "_pontoon_integration", False)
    if before is None or os.geteuid() != 0 or not ran:
        return
    leaks = changes(before, _root_state())
    if leaks:
        print("\nLEAK CHECK FAILED: the tests changed the machine:")
        for line in leaks:
            print(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def new_host_name() -> str:
    return PREFIX + uuid.uuid4().hex[:5]


def new_lab_name() -> str:
    """`t` + RUN + a counter: at most 6 characters, unique within the run."""
    return f"t{RUN}{next(_labs):02d}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.when == "call":
        item._pontoon_failed = report.failed  # type: ignore[attr-defined]
    return report


def _print_logs(host: SimHost) -> None:
    """A failed test's hosts: the tails of their daemon's and proxy's logs
    (pytest shows them under "Captured stdout teardown")."""
    for log in (host.log, host.exec_root / "proxy.log"):
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-60:]
            print(f"--- {host.name}: {log.name} (last {len(lines)} lines)")
            print("\n".join(lines))


@pytest.fixture
def make_host(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Factory: make_host(start=True, *daemon_args) -> SimHost, all destroyed at teardown."""
    made: list[SimHost] = []

    def factory(*daemon_args: str, start: bool = True, via: str = "nsenter") -> SimHost:
        name = new_host_name()
        host = SimHost(name, WORKDIR / name)
        made.append(host)
        host.create()
        if start:
            host.start_daemon(*daemon_args, via=via)
        return host

    yield factory
    if getattr(request.node, "_pontoon_failed", False):
        for host in made:
            _print_logs(host)
    for host in reversed(made):
        host.destroy()


@pytest.fixture
def make_engine_host(
    request: pytest.FixtureRequest, make_host: Callable[..., SimHost]
) -> Iterator[Callable[..., EngineHost]]:
    """Factory: make_engine_host(*daemon_args, start=True) -> EngineHost, a
    host with its own mount namespace for container engines (its pontoond
    runs in both namespaces); engines and containers destroyed at teardown,
    before the host itself."""
    made: list[EngineHost] = []

    def factory(*daemon_args: str, start: bool = True) -> EngineHost:
        engines = EngineHost(make_host(start=False)).create()
        made.append(engines)
        if start:
            engines.host.start_daemon(*daemon_args)
        return engines

    yield factory
    if getattr(request.node, "_pontoon_failed", False):
        for engines in made:
            for log in ("dockerd.log", "containerd.log"):
                if (engines.dir / log).exists():
                    print(f"--- {engines.host.name}: {log}\n{engines.log_tail(log)}")
    for engines in reversed(made):
        engines.destroy()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def foreign_ns() -> Iterator[Callable[..., Any]]:
    """foreign_ns(host, name): a network namespace made with unshare(1), as a
    container runtime would, pinned at a file of the host's work directory;
    unmounted and removed at teardown."""
    made: list[Path] = []

    def make(host: SimHost, name: str) -> Path:
        path = host.workdir / f"ns-{name}"
        path.touch()
        subprocess.run(["unshare", f"--net={path}", "true"], check=True)
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        path.unlink(missing_ok=True)
