"""What a lab, a test run or a benchmark may change on the machine: nothing.

`machine_state` reads what they could leave behind — links and nftables
tables of the machine's own network namespace, and, for the names and paths
a run marks as its own, named network namespaces, mounts, processes and the
cgroups of engine hosts. A run takes it before and after; `changes` says
what differs. Marks keep two runs on one machine (a developer's tests and a
benchmark) from blaming each other.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pontoon.lab.engines import CGROUP_ROOT

State = dict[str, set[str]]


def _lines(*argv: str) -> list[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()


def machine_state(netns_prefixes: Sequence[str], marks: Sequence[str] = ()) -> State:
    """Root-namespace links and nft tables; named namespaces and engine-host
    cgroups whose names start with one of `netns_prefixes`; mounts and
    processes whose path or command line contains one of `marks`."""
    prefixes = tuple(netns_prefixes)
    links = {line.split(":")[1].strip().split("@")[0] for line in _lines("ip", "-o", "link")}
    netns = {line.split()[0] for line in _lines("ip", "netns", "list") if line.strip()}
    return {
        "links": links,
        "nft tables": set(_lines("nft", "list", "tables")),
        "named netns": {name for name in netns if name.startswith(prefixes)},
        "mounts": _marked_mounts(marks),
        "processes": _marked_processes(marks),
        "cgroups": {
            str(path)
            for prefix in prefixes
            for path in CGROUP_ROOT.glob(f"*/pontoon-lab-{prefix}*")
        },
    }


def _marked_mounts(marks: Sequence[str]) -> set[str]:
    if not marks:
        return set()
    points = (line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines())
    return {point for point in points if any(mark in point for mark in marks)}


def _marked_processes(marks: Sequence[str]) -> set[str]:
    found: set[str] = set()
    if not marks:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            if any(mark in command for mark in marks):
                found.add(f"{entry} {command}")
    return found


def changes(before: State, after: State) -> list[str]:
    """One line per kind of thing added or removed."""
    lines = []
    for kind, old in before.items():
        added, removed = after[kind] - old, old - after[kind]
        if added:
            lines.append(f"{kind} added: {sorted(added)}")
        if removed:
            lines.append(f"{kind} removed: {sorted(removed)}")
    return lines
