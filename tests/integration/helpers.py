"""Helpers shared by the integration tests."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pontoon.lab import SimHost, connect_hosts

OUTSIDE_NET = "198.51.100"  # TEST-NET-2: only ever inside our namespaces
HOST_ADDR = f"{OUTSIDE_NET}.1"
OUTSIDE_ADDR = f"{OUTSIDE_NET}.2"

# Answers every TCP connection with the address the client came from.
ECHO_PEER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7000)); s.listen(16)\n"
    "while True:\n"
    "    c, a = s.accept(); c.sendall(a[0].encode() + b'\\n'); c.close()\n"
)

# Retry a TCP fetch from inside a container until the server is up.
CURL_RETRY = (
    'for i in $(seq 100); do out=$(curl -s --max-time 1 "$1") && '
    'printf "%s" "$out" && exit 0; sleep 0.1; done; exit 1'
)


def add_outside(make_host: Callable[..., SimHost], host: SimHost) -> SimHost:
    """An 'outside' machine wired to `host`, which routes to it by default."""
    outside = make_host(start=False)
    connect_hosts(host, outside, f"{HOST_ADDR}/24", f"{OUTSIDE_ADDR}/24")
    host.sh("ip", "route", "add", "default", "via", OUTSIDE_ADDR)
    return outside


def fetch(host: SimHost, container: str, url: str) -> str:
    return host.cli("exec", container, "sh", "-c", CURL_RETRY, "fetch", url).stdout


def can_ping(host: SimHost, container: str, addr: str) -> bool:
    proc = host.cli("exec", container, "ping", "-c1", "-W1", addr, check=False)
    return proc.returncode == 0


def inspect(host: SimHost, name: str) -> dict:
    return host.cli_json("inspect", name)[0]


def ip_of(host: SimHost, container: str, network: str) -> str:
    return inspect(host, container)["NetworkSettings"]["Networks"][network]["IPAddress"]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def nft_state(host: SimHost) -> list[str]:
    """The ruleset as a sorted list of objects: equal rulesets compare equal
    whatever order a rebuild listed them in."""
    items = json.loads(host.sh("nft", "-j", "list", "ruleset").stdout)["nftables"]
    out = []
    for item in items:
        for body in item.values():
            if isinstance(body, dict):
                body.pop("handle", None)
                if isinstance(body.get("elem"), list):
                    body["elem"] = sorted(body["elem"], key=json.dumps)
        out.append(json.dumps(item, sort_keys=True))
    return sorted(o for o in out if '"metainfo"' not in o)


def snapshot(host: SimHost) -> dict[str, object]:
    """Everything a failed command must leave untouched."""
    sandboxes = host.exec_root / "netns"
    db = sqlite3.connect(host.root / "pontoon.db")
    try:
        kv = sorted(db.execute("SELECT key, value FROM kv").fetchall())
    finally:
        db.close()
    containers = host.root / "containers"
    return {
        # Names and bridge ports only: carrier flags and IPv6 link-local
        # addresses settle asynchronously after a veth comes up.
        "links": sorted(
            (f[1].rstrip(":"), f[f.index("master") + 1] if "master" in f else "")
            for f in map(str.split, host.sh("ip", "-o", "link").stdout.splitlines())
        ),
        "addresses": sorted(
            (f[1], f[3])
            for f in map(str.split, host.sh("ip", "-o", "-4", "addr").stdout.splitlines())
        ),
        "addresses6": sorted(
            (f[1], f[3])
            for f in map(
                str.split,
                host.sh("ip", "-o", "-6", "addr", "show", "scope", "global").stdout.splitlines(),
            )
        ),
        # Without its linkdown flag: a bridge's carrier settles asynchronously too.
        "routes": host.sh("ip", "route").stdout.replace(" linkdown", ""),
        "routes6": [
            line.replace(" linkdown", "")
            for line in host.sh("ip", "-6", "route").stdout.splitlines()
            if not line.startswith(("fe80", "multicast", "ff00"))
        ],
        "nft": nft_state(host),
        "sandboxes": sorted(p.name for p in sandboxes.iterdir()) if sandboxes.is_dir() else [],
        "store": kv,
        "container dirs": sorted(p.name for p in containers.iterdir())
        if containers.is_dir()
        else [],
    }


def in_ns(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command in the network namespace pinned at `path`."""
    return subprocess.run(
        ["nsenter", f"--net={path}", "--", *args], capture_output=True, text=True, check=check
    )


def resolve(path: Path, name: str) -> list[str]:
    """Ask the namespace's 127.0.0.11 (its owner would write it into resolv.conf)."""
    code = (
        "import sys, dns.message, dns.query\n"
        "q = dns.message.make_query(sys.argv[1], 'A')\n"
        "r = dns.query.udp(q, '127.0.0.11', timeout=2)\n"
        "print(' '.join(i.address for rr in r.answer for i in rr))\n"
    )
    return in_ns(path, sys.executable, "-c", code, name).stdout.split()
