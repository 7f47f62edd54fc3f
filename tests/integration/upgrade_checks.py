"""What the upgrade tests measure: traffic that must never stop, reports that
must say the same, and a host that must be left clean (issue 10, item 5)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pontoon.lab import SimHost

# Runs until its stdin closes: every round sends one request per probe
# ("tcp:IP:PORT" / "udp:IP:PORT"), counts answers and failures (a reply that
# is not the test server's "peer=..." is a failure too), rewrites a status
# file after each round and prints the final counts as JSON.
LOOP = r"""
import json, os, socket, sys, threading, time
status_path, probes = sys.argv[1], sys.argv[2:]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
counts = {p: {"ok": 0, "fail": 0, "errors": []} for p in probes}
def once(probe):
    proto, host, port = probe.split(":")
    family = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family) as s:
        s.settimeout(2)
        s.connect((host, int(port)))
        s.send(b"x")
        data = s.recv(100)
    if not data.startswith(b"peer="):
        raise OSError(f"unexpected reply {data!r}")
while not stop.is_set():
    for p in probes:
        try:
            once(p)
            counts[p]["ok"] += 1
        except OSError as exc:
            counts[p]["fail"] += 1
            if len(counts[p]["errors"]) < 5:
                counts[p]["errors"].append(f"{time.time():.3f} {exc!r}")
    with open(status_path + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(status_path + ".tmp", status_path)
    stop.wait(0.05)
print(json.dumps(counts))
"""


class TrafficLoop:
    """A LOOP process in some network namespace, started and ended by us."""

    def __init__(self, name: str, netns: str | Path, probes: list[str], status: Path) -> None:
        self.name = name
        self.status = status
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", "--", sys.executable, "-c", LOOP, str(status), *probes],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def counts(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}

    def successes(self) -> dict[str, int]:
        return {probe: c["ok"] for probe, c in self.counts().items()}

    def stop(self) -> dict[str, dict[str, Any]]:
        out, _ = self.proc.communicate(input="", timeout=15)  # EOF on stdin: stop
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class PingLoop:
    """`ping -i 0.1 TARGET` inside a container (its network and mount
    namespaces: a name resolves through the container's resolv.conf), until
    we stop it."""

    def __init__(self, name: str, container_pid: int, target: str, output: Path) -> None:
        self.name = name
        self.output = output
        with open(output, "w") as out:
            self.proc = subprocess.Popen(
                ["nsenter", "-t", str(container_pid), "-n", "-m", "--",
                 "ping", "-n", "-i", "0.1", target],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip

    def replies(self) -> list[int]:
        """The icmp_seq of every reply so far."""
        text = self.output.read_text(errors="replace")
        return [int(m) for m in re.findall(r"bytes from .* icmp_seq=(\d+)", text)]

    def successes(self) -> dict[str, int]:
        return {"ping": len(self.replies())}

    def stop(self) -> dict[str, dict[str, Any]]:
        """Every echo request up to the last answered one was answered (the
        one in flight when we stop is no loss): the ping never stopped."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        seqs = sorted(set(self.replies()))
        missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs)) if seqs else ["all"]
        errors = [f"no reply to icmp_seq {missing[:20]}"] if missing else []
        return {"ping": {"ok": len(seqs), "fail": len(missing), "errors": errors}}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_all_answered(loops: Iterable[TrafficLoop | PingLoop], more_than: dict[str, dict[str, int]],
                      rounds: int = 5, timeout: float = 30.0) -> None:  # fmt: skip
    """Every probe of every loop got `rounds` more answers than `more_than`
    (a snapshot of `successes()` by loop name)."""
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        pending = [
            f"{loop.name} {probe}"
            for loop in loops
            for probe, ok in (loop.successes() or {"(no status yet)": -1}).items()
            if ok < more_than.get(loop.name, {}).get(probe, 0) + rounds
        ]
        if not pending:
            return
        time.sleep(0.1)
    raise AssertionError(f"no answers for {pending} within {timeout:g}s")


class TrafficInterrupted(AssertionError):
    """A request or a ping failed while the daemons changed release."""


def assert_no_failures(results: dict[str, dict[str, dict[str, Any]]], when: str = "") -> None:
    """No failed request; `when` (the switch's times) goes into the message,
    to set against the time stamps of the errors."""
    failed = {
        f"{loop} {probe}": c for loop, r in results.items() for probe, c in r.items() if c["fail"]
    }
    if failed:
        raise TrafficInterrupted(
            f"requests failed across the upgrade ({when}): {failed}\nall: {results}"
        )


# Comparing what the old and the new release report --------------------------


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Where `new` does not say what `old` said. Every key of an old object
    must be in the new one with the same value (recursively); keys only the
    new release has are ignored; lists must be equal element by element."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [f"{path or '.'}: {old!r} became {new!r}"]
        found = []
        for key, value in old.items():
            if key not in new:
                found.append(f"{path}.{key}: missing (was {value!r})")
            else:
                found += differences(value, new[key], f"{path}.{key}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [d for i, (o, n) in pairs for d in differences(o, n, f"{path}[{i}]")]
    return [] if old == new else [f"{path or '.'}: {old!r} became {new!r}"]


def by_key(items: list[dict[str, Any]], key: str = "Name") -> dict[str, dict[str, Any]]:
    """A listing keyed by name: the order of a listing is not a promise."""
    return {item[key]: item for item in items}


# What is left on a host ------------------------------------------------------

_HEX_ID = re.compile(r"\b[0-9a-f]{12,64}\b")


def store_rows(root: Path) -> list[tuple[str, ...]]:
    """Every row of every table of every SQLite database under --root, as
    text: whatever the layout of the new release's store, what it keeps
    about a removed object shows up here."""
    rows: list[tuple[str, ...]] = []
    for path in sorted(root.glob("**/*.db")):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for row in db.execute(f'SELECT * FROM "{table}"'):  # names from sqlite_master
                    rows.append((path.name, table, *map(str, row)))
        finally:
            db.close()
    return rows


def store_keys(root: Path) -> list[str]:
    """The first column (the key) of every row, with IDs masked: two stores
    holding the same kinds of records compare equal."""
    return sorted(_HEX_ID.sub("<id>", "/".join(row[:3])) for row in store_rows(root))


def ip_pattern(ip: str) -> re.Pattern[str]:
    """`ip` as a whole address: 10.61.0.2 is not found in 10.61.0.20."""
    return re.compile(rf"(?<![\d.]){re.escape(ip)}(?![\d])")


def id_pattern(object_id: str) -> re.Pattern[str]:
    """An object ID in full or in its 12-character short form (sandbox and
    device names are made of it)."""
    return re.compile(rf"(?<![0-9a-f]){re.escape(object_id[:12])}")


def mentions(texts: Iterable[str], patterns: Iterable[re.Pattern[str] | str]) -> list[str]:
    """Which of `patterns` (plain strings match as they are) occur in which
    of `texts`."""
    compiled = [re.compile(re.escape(p)) if isinstance(p, str) else p for p in patterns]
    return [f"{p.pattern!r} in {t[:300]!r}" for t in texts for p in compiled if p.search(t)]


def links(host: SimHost) -> list[tuple[str, str]]:
    """(name, master) of every link in the host namespace."""
    out = []
    for fields in map(str.split, host.sh("ip", "-o", "link").stdout.splitlines()):
        master = fields[fields.index("master") + 1] if "master" in fields else ""
        out.append((fields[1].rstrip(":").split("@")[0], master))
    return sorted(out)


def sandbox_mounts(host: SimHost) -> list[str]:
    sandboxes = str(host.exec_root / "netns") + "/"
    with open("/proc/self/mounts") as f:
        return [m.split()[1] for m in f if m.split()[1].startswith(sandboxes)]


def alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return False


def release_of(pid: int) -> str:
    """The PYTHONPATH process `pid` (a daemon) was started with: the release
    it runs ("" = this tree)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [e[len(b"PYTHONPATH=") :] for e in environ if e.startswith(b"PYTHONPATH=")]
    return os.fsdecode(found[0]) if found else ""
