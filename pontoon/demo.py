"""`make demo`: the tour, replayed on throwaway hosts of this machine.

Everything runs inside network namespaces made for the occasion (a host and
an "outside" machine wired to it) and is removed at the end, also on ^C.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

from pontoon.lab import SimHost, connect_hosts

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def say(text: str) -> None:
    print(f"\n{BOLD}# {text}{RESET}", flush=True)


def show(host: SimHost, *args: str, check: bool = True) -> str:
    print(f"{GREEN}$ pontoon {shlex.join(args)}{RESET}", flush=True)
    proc = host.cli(*args, check=False)
    out = proc.stdout + proc.stderr
    print(out.rstrip() if out.strip() else f"{DIM}(no output){RESET}", flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{RED}demo step failed{RESET}")
    return proc.stdout


def on_host(host: SimHost, *args: str) -> str:
    print(f"{GREEN}[{host.name}]$ {shlex.join(args)}{RESET}", flush=True)
    out = host.sh(*args, check=False)
    print((out.stdout + out.stderr).rstrip(), flush=True)
    return out.stdout


def check(label: str, ok: bool) -> bool:
    mark = f"{GREEN}ok{RESET}" if ok else f"{RED}FAILED{RESET}"
    print(f"  {label}: {mark}", flush=True)
    return ok


def bridge_tour(host: SimHost) -> list[bool]:
    results = []
    say("A user network: a bridge, a subnet, a gateway (SPEC §5)")
    show(host, "network", "create", "--subnet", "10.50.0.0/24", "web")
    show(host, "network", "ls")
    say("Two containers on it; c2 fetches a page from c1 over the bridge")
    show(
        host,
        "run",
        "-d",
        "--name",
        "c1",
        "--net",
        "web",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
    )
    out = show(
        host, "run", "--rm", "--name", "c2", "--net", "web", "--", "sh", "-c",
        "for i in $(seq 50); do curl -sf http://10.50.0.2/ | head -4 && exit; sleep .1; done",
    )  # fmt: skip
    results.append(check("c2 reached c1's web server", "<html" in out))
    say("What the seed dug out by hand: sandbox, both veth ends, ifindexes")
    show(host, "inspect", "c1")
    show(host, "exec", "c1", "ip", "addr", "show", "eth0")
    on_host(host, "ip", "-br", "link", "show", "master", host_bridge(host, "web"))
    say("Outbound traffic is masqueraded: the outside sees the host's address")
    out = show(host, "run", "--rm", "--name", "c3", "--", "ping", "-c1", "-W2", "198.51.100.2")
    results.append(check("default-bridge container reached the outside", " 0% packet loss" in out))
    say("Networks are isolated from each other")
    show(host, "network", "create", "--subnet", "10.60.0.0/24", "other")
    show(host, "run", "-d", "--name", "o1", "--net", "other", "--", "sleep", "infinity")
    proc = host.cli("exec", "o1", "ping", "-c1", "-W1", "10.50.0.2", check=False)
    print(f"{GREEN}$ pontoon exec o1 ping -c1 -W1 10.50.0.2{RESET}\n{proc.stdout.strip()}")
    results.append(check("o1 (other) cannot reach c1 (web)", proc.returncode != 0))
    say("The firewall: one nftables table, per-network state in sets and maps")
    on_host(host, "nft", "list", "table", "ip", "pontoon")
    say("Bad input: one line, exit 1, nothing left behind")
    show(host, "network", "create", "--subnet", "10.50.0.128/25", "clash", check=False)
    return results


def host_bridge(host: SimHost, network: str) -> str:
    import json

    return json.loads(host.cli("network", "inspect", network).stdout)[0]["Bridge"]


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("make demo needs root (it builds network namespaces)")
    tag = uuid.uuid4().hex[:6]
    work = Path("/tmp/pontoon-demo")
    host = SimHost(f"ptd-host-{tag}", work / f"host-{tag}")
    outside = SimHost(f"ptd-out-{tag}", work / f"out-{tag}")
    results: list[bool] = []
    started = time.monotonic()
    # Cleanup must run on ^C, kill and a closed pipe alike.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        say("Building a simulated host and an outside machine (network namespaces)")
        host.create()
        outside.create()
        connect_hosts(host, outside, "198.51.100.1/24", "198.51.100.2/24")
        host.sh("ip", "route", "add", "default", "via", "198.51.100.2")
        host.start_daemon()
        print(f"pontoond running in {host.name}, API at {host.socket}")
        results += bridge_tour(host)
    finally:
        host.destroy()
        outside.destroy()
        say("Cleaned up: containers, daemons and namespaces are gone")
    passed = sum(results)
    print(
        f"\n{BOLD}{passed}/{len(results)} checks passed in {time.monotonic() - started:.1f}s{RESET}"
    )
    if passed != len(results):
        raise SystemExit(1)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        # Output went to a closed pipe (`make demo | head`): cleanup already ran.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        raise SystemExit(1) from None
