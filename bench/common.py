"""Helpers shared by the benchmarks: statistics, the measuring loop, safety checks.

Benchmarks never touch the machine's own (root) network namespace: they build
throwaway hosts as named namespaces `ptb-*` and check at the end that the root
namespace looks as it did before.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pontoon.lab.leaks import State, machine_state

PREFIX = "ptb-"
S = TypeVar("S")
H = TypeVar("H")


def log(message: str) -> None:
    """Progress goes to stderr: stdout is for results."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ statistics


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was really measured."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        mean = sum(values) / len(values) if values else math.nan
        return cls(len(values), percentile(values, 50), percentile(values, 99), mean)


# ------------------------------------------------------------ measuring loop


class Harness(Protocol[S, H]):
    """One way of giving a container its network. Only `up` and `down` are
    timed: `prepare` builds what `up` needs (names, JSON), `up` brings the
    container's network up and returns a handle, `down` tears it down again,
    `forget` drops bookkeeping the harness (not the tool) keeps."""

    def prepare(self, index: int) -> S: ...

    def up(self, spec: S) -> H: ...

    def down(self, handle: H) -> None: ...

    def forget(self, handle: H) -> None: ...


@dataclasses.dataclass
class SizeResult:
    """Timings of one tool with a given number of containers attached."""

    up_ms: list[float]
    down_ms: list[float]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"up_ms": self.up_ms, "down_ms": self.down_ms, **self.extra}


def timed_ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return (time.perf_counter() - start) * 1000, value


class Runner:
    """Drives one harness: keeps `size` background containers attached and
    times attach/detach cycles of one more. Used in process (pontoon API) and
    behind the worker's stdin/stdout protocol (everything measured inside a
    host namespace)."""

    def __init__(self, harness: Harness[Any, Any]) -> None:
        self.harness = harness
        self.attached: list[Any] = []
        self._next = 0

    def _index(self) -> int:
        self._next += 1
        return self._next

    def fill(self, size: int) -> float:
        """Attach background containers until `size` are; seconds taken."""
        h = self.harness
        start = time.perf_counter()
        while len(self.attached) < size:
            self.attached.append(h.up(h.prepare(self._index())))
        return time.perf_counter() - start

    def cycle(self, n: int) -> tuple[list[float], list[float]]:
        """Bring up and tear down one more container, n times: (up, down) ms."""
        h = self.harness
        ups, downs = [], []
        for _ in range(n):
            spec = h.prepare(self._index())
            up_ms, handle = timed_ms(lambda s=spec: h.up(s))
            down_ms, _ = timed_ms(lambda x=handle: h.down(x))
            h.forget(handle)
            ups.append(up_ms)
            downs.append(down_ms)
        return ups, downs


# ------------------------------------------------------------------- safety


def netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def inside_bench_host(netns_path: Path) -> bool:
    """True when this process runs in the namespace pinned at `netns_path`,
    one of ours (/run/netns/ptb-*). PID 1's namespace may be hidden from us,
    so the check is positive: be in the namespace we were told, never "not in
    the root one"."""
    if not netns_path.name.startswith(PREFIX):
        return False
    ours = netns_inode("/proc/self/ns/net")
    return ours is not None and ours == netns_inode(str(netns_path))


def root_state(workroot: Path) -> State:
    """What the benchmark must leave as it found it (its own mounts and
    processes are the ones under `workroot`)."""
    return machine_state((PREFIX,), (str(workroot),))


def mounts_under(directory: Path) -> list[str]:
    """Mount points below `directory`, deepest first."""
    prefix = str(directory.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all_under(directory: Path) -> int:
    """Lazily unmount every namespace file pinned below `directory`."""
    points = mounts_under(directory)
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return len(points)


def on_signals_clean_up() -> None:
    """Make SIGINT and SIGTERM unwind the stack, so every `finally` clean-up
    runs (SIGINT too when started in the background, where it is ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def stop_process(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    """End a child we started: SIGTERM, then SIGKILL, by its PID only."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ machine


def machine_info() -> dict[str, str]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = "?"
    return {
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
        "nproc": str(os.cpu_count()),
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "debian": debian,
        "python": platform.python_version(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def source_revision(package_dir: Path) -> str:
    """Which pontoon was measured: its directory, commit, and whether it had
    uncommitted changes."""
    git = ["git", "-C", str(package_dir)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return f"{package_dir} (not a git checkout)"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True
    ).stdout.strip()
    return f"{package_dir} at {head.stdout.strip()}" + (" + uncommitted changes" if dirty else "")


def dpkg_version(package: str) -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return proc.stdout.strip() or "?"
