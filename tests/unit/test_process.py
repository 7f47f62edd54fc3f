"""Process identity helpers of the container runtime, on real local processes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pontoon.runtime import process


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child whose comm is `a) (b c`: spaces and parentheses, as in /proc/PID/stat."""
    tricky = tmp_path / "a) (b c"
    tricky.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(tricky), "30"])
    comm = Path(f"/proc/{proc.pid}/comm")
    deadline = time.monotonic() + 2
    # Popen returns when the exec began; the kernel renames the task a moment later.
    while comm.read_text() != "a) (b c\n" and time.monotonic() < deadline:
        time.sleep(0.001)
    yield proc
    proc.kill()
    proc.wait()


def ticks_since_boot() -> float:
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime * os.sysconf("SC_CLK_TCK")


def unused_pid() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def test_start_time_of_self_is_a_plausible_tick_count():
    started = process.start_time(os.getpid())
    assert isinstance(started, int)
    assert 0 < started <= ticks_since_boot() + 1


def test_start_time_is_stable():
    assert process.start_time(os.getpid()) == process.start_time(os.getpid())


def test_start_time_parses_comm_with_spaces_and_parentheses(sleeper):
    assert Path(f"/proc/{sleeper.pid}/comm").read_text() == "a) (b c\n"
    started = process.start_time(sleeper.pid)
    assert process.start_time(os.getpid()) <= started <= ticks_since_boot() + 1


def test_start_time_of_missing_process_is_none():
    assert process.start_time(unused_pid()) is None


def test_alive_for_self():
    assert process.alive(os.getpid(), process.start_time(os.getpid()))


def test_not_alive_when_start_time_differs():
    assert not process.alive(os.getpid(), process.start_time(os.getpid()) + 1)


@pytest.mark.parametrize("pid", [0, -1])
def test_not_alive_for_non_positive_pid(pid):
    assert not process.alive(pid, 0)


def test_not_alive_after_exit_and_reap(sleeper):
    started = process.start_time(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert not process.alive(sleeper.pid, started)


def test_children_lists_our_child(sleeper):
    assert sleeper.pid in process.children(os.getpid())


def test_children_of_a_childless_process_is_empty(sleeper):
    assert process.children(sleeper.pid) == []


def test_children_of_missing_process_is_empty():
    assert process.children(unused_pid()) == []


@pytest.mark.parametrize(("text", "code"), [("0\n", 0), ("137\n", 137), (" 3 ", 3)])
def test_read_exit_code(tmp_path, text, code):
    path = tmp_path / "exit"
    path.write_text(text)
    assert process.read_exit_code(path) == code


@pytest.mark.parametrize("text", ["", "\n", "oops\n"])
def test_read_exit_code_of_unparsable_file_is_none(tmp_path, text):
    path = tmp_path / "exit"
    path.write_text(text)
    assert process.read_exit_code(path) is None


def test_read_exit_code_of_missing_file_is_none(tmp_path):
    assert process.read_exit_code(tmp_path / "exit") is None
