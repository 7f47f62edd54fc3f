"""Port-mapping benchmark (issue 3): pontoon beside docker-proxy and plain routing.

Everything runs on throwaway hosts (`ptb2-*` network namespaces, one
pontoond each) and an "outside" namespace wired to them; nothing touches the
machine's own namespace. A container `srv` runs `iperf3 -s` (5201), a
greeting server for the connection rate (7000: one byte, then close) and an
echo server for request/response (7001).

  (a) userland proxy, client in the host namespace to 127.0.0.1:PORT (the
      path pontoon's proxy serves in --userland-proxy=true mode): our proxy
      (a supervisor and one worker per CPU) vs docker-proxy run standalone on
      the same host, for iperf3 1 and 4 streams, connection rate and 1-byte
      request/response rate, unpinned, in many short alternating rounds.
      Then the workers' accept wake-ups: EPOLLEXCLUSIVE (the default) vs
      waking every worker, a second proxy serving the same container.
  (b) RSS of our proxy (supervisor and workers) serving N published ports vs
      N docker-proxy processes; publishing and unpublishing N ports in the
      proxy (one batched round trip each) and as a whole `run -p`.
  (c) kernel DNAT (--userland-proxy=false), client in the outside namespace
      to HOST:PORT, vs the same client reaching the container over a route
      (rounds of 3 s: two kernel paths, no proxy scheduling to sample).
  (d) connection rate through the last-added of 10,000 mappings vs with one,
      nftables (maps) beside iptables (a linear DNAT chain), and the time to
      add one mapping.
  (a6) (a) over IPv6 (issue 13): `-p [::1]:PORT:...` on a dual-stack network,
      client to [::1]:PORT, our proxy vs docker-proxy `-host-ip ::1` to the
      container's IPv6 address; no variants, no (b).
  (c6) (c) over IPv6: outside → [HOST6]:PORT (kernel DNAT of `-p PORT:...`
      on a dual-stack network) vs the container's IPv6 address routed.

Usage: .venv/bin/python bench/portmap.py [--quick] [--only a,c,d,a6,c6] [--baseline REF]
       [--variants all,one] [--ab-only] [--rounds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common_net import (
    PY,
    TOOL,
    WORK,
    Comparison,
    Goal,
    Session,
    all_cpus,
    bench_args,
    comparison_table,
    fmt,
    in_netns,
    iperf3_gbps,
    log,
    markdown_table,
    median,
    percentile,
    pin,
    print_report,
    pss_kb,
    report_header,
    run,
    status_kb,
    tool_argv,
    tool_json,
    verdict,
    wait_tcp,
)

HOST_ADDR, OUTSIDE_ADDR = "198.51.100.1", "198.51.100.2"  # TEST-NET-2, namespaces only
HOST6, OUTSIDE6 = "2001:db8:77::1", "2001:db8:77::2"  # documentation prefix, the same
SUBNET = "10.77.0.0/24"
SUBNET6 = "fd00:77:1::/64"  # (a6), (c6): the dual-stack `front`
IPERF, GREET, ECHO = 5201, 7000, 7001
OURS_BASE, DOCKER_BASE = 15000, 25000  # host port = base + container port - 5000
RSS_OURS_BASE, RSS_DOCKER_BASE = 20000, 40000
BULK_BASE = 20000  # 10,000 bulk host ports 20000-29999, below the ephemeral range
TARGET_PORT = 17000
# (d) uses the default network: containers there get no embedded resolver,
# whose per-container nftables context aborts a daemon holding >1024 fds.
SCALE_NET = "bridge"

GOAL_THROUGHPUT = Goal(">=", 1.1)
GOAL_CONNRATE = Goal(">=", 1.3)
GOAL_RR = Goal(">=", 1.0)
GOAL_RSS = Goal("<=", 0.05)
GOAL_PUBLISH_MS = 100.0  # a 1,000-port range into the proxy
GOAL_KERNEL = Goal(">=", 0.95)
GOAL_PROXY6 = Goal(">=", 1.0)  # issue 13: IPv6 through our proxy vs docker-proxy
GOAL_SCALE = Goal(">=", 0.95)
GOAL_ADD_MS = 10.0


@dataclasses.dataclass(frozen=True)
class Params:
    iperf_seconds: float
    rate_seconds: float
    reps: int
    conn_procs: int
    rss_ports: int
    bulk_containers: int
    bulk_ports: int
    fw_cycles: int
    run_cycles: int
    busy_rm: bool  # time one `rm -f` with a full conntrack table (~10 s)


# Many short rounds: on 2 shared vCPUs one long round says more about the
# neighbours than about us.
FULL = Params(2, 1, 9, 4, 1000, 10, 1000, 20, 10, True)
# (c)/(c6): the kernel paths need no view of the proxy's scheduling, and 1-2 s
# rounds swung by ±10 % between two paths doing the same work (7 quiet runs
# of (c6) connection rates: 0.90-1.07x); 3 s rounds narrow each side's range.
KERNEL_ROUND_SECONDS = 3.0
QUICK = Params(1, 1, 2, 4, 1000, 1, 1000, 10, 3, False)
PUBLISH_ROUNDS = 7
BENCH_PORTS = 30000  # 30000-30999: the batch timing's own mappings
REPO = Path(__file__).resolve().parent.parent


def docker_proxy_path() -> str:
    local = Path(__file__).resolve().parent.parent / ".bench" / "docker-proxy"
    for path in (str(local), "/usr/sbin/docker-proxy", "/usr/libexec/docker/docker-proxy"):
        if Path(path).exists():
            return path
    found = shutil.which("docker-proxy")
    if not found:
        raise SystemExit("docker-proxy not found: apt-get install docker.io")
    return found


# ------------------------------------------------------------------ topology


def server_command(*extra_greet: int) -> list[str]:
    greet = ",".join(str(p) for p in (GREET, *extra_greet))
    serve = f"{PY} {TOOL} serve --greet {greet} --echo {ECHO}"
    return ["/bin/sh", "-c", f"iperf3 -s -p {IPERF} >/dev/null 2>&1 & exec {serve}"]


def published(base: int) -> list[str]:
    return [f"{base + port - 5000}:{port}" for port in (IPERF, GREET, ECHO)]


def host_ports(base: int) -> list[int]:
    return [base + port - 5000 for port in (IPERF, GREET, ECHO)]


def inspect(host: Any, name: str) -> dict[str, Any]:
    return host.cli_json("inspect", name)[0]


def container_ip(host: Any, name: str, network: str = "front", family: int = 4) -> str:
    field = "GlobalIPv6Address" if family == 6 else "IPAddress"
    return inspect(host, name)["NetworkSettings"]["Networks"][network][field]


def start_server(
    host: Any, name: str = "srv", publish: list[str] | None = None, family: int = 4
) -> str:
    """The server container; returns its address of `family` once all
    servers answer on it."""
    args = ["run", "-d", "--name", name, "--net", "front"]
    for spec in publish or []:
        args += ["-p", spec]
    host.cli(*args, "--", *server_command())
    cip = container_ip(host, name, family=family)
    for port in (IPERF, GREET, ECHO):
        wait_tcp(in_netns(host.name, []), cip, port)
    return cip


def make_host(session: Session, role: str, *daemon_args: str, family: int = 4) -> Any:
    """A host with the network `front`: IPv4, or dual-stack for family 6."""
    host = session.host(role, *daemon_args)
    six = ["--ipv6", "--subnet", SUBNET6] if family == 6 else []
    host.cli("network", "create", "--subnet", SUBNET, *six, "front")
    return host


def add_outside(session: Session, host: Any, role: str) -> Any:
    """An outside machine on a veth to `host`, routing the container subnet
    via the host only when asked (see route_to_containers)."""
    from pontoon.lab import connect_hosts

    outside = session.host(role, start=False)
    connect_hosts(host, outside, f"{HOST_ADDR}/24", f"{OUTSIDE_ADDR}/24")
    host.sh("ip", "route", "add", "default", "via", OUTSIDE_ADDR)
    # IPv6 on the same link, without duplicate-address detection's wait.
    host.sh("ip", "-6", "addr", "add", f"{HOST6}/64", "dev", "eth0", "nodad")
    outside.sh("ip", "-6", "addr", "add", f"{OUTSIDE6}/64", "dev", "eth0", "nodad")
    return outside


def proxy_pid(host: Any) -> int:
    """The proxy's supervisor."""
    out = run(["pgrep", "-f", f"pontoon.proxy --control {host.exec_root}/"], check=False)
    pids = [int(p) for p in out.split()]
    if len(pids) != 1:
        raise RuntimeError(f"expected one pontoon proxy for {host.name}, found {pids}")
    return pids[0]


def proxy_tree(supervisor: int) -> list[int]:
    """The supervisor and its workers."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [supervisor, *(int(pid) for pid in children)]


# Hands `count` sockets bound to host_ip:first.. to a proxy in one add_many,
# or removes them in one remove_many; prints the call's time and round trips.
PROXY_BATCH = r"""
import json, resource, socket, sys, time
sys.path.insert(0, sys.argv[1])
from pontoon.proxy.client import ProxyClient
control, op, host_ip, first, count, backend = sys.argv[2:8]
first, count = int(first), int(count)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ip, ports = backend.split(":", 1)
ports = [int(p) for p in ports.split(",")]
ids = [f"bench/{first + i}" for i in range(count)]
client = ProxyClient.connect(control, timeout=30)
socks = []
if op == "add":
    for i in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host_ip, first + i))
        socks.append(s)
    batch = [(ids[i], "tcp", socks[i], ip, ports[i % len(ports)]) for i in range(count)]
    t0 = time.perf_counter()
    client.add_many(batch)
else:
    t0 = time.perf_counter()
    client.remove_many(ids)
ms = (time.perf_counter() - t0) * 1000
print(json.dumps({"ms": ms, "round_trips": client.round_trips}))
"""


def proxy_batch(host: Any, control: str, op: str, first: int, count: int, backend: str) -> float:
    """One batched add or remove straight to a proxy, in the host's namespace: ms."""
    argv = [PY, "-c", PROXY_BATCH, str(REPO), control, op, "127.0.0.1", str(first), str(count),
            backend]  # fmt: skip
    result = tool_json(in_netns(host.name, argv))
    if result["round_trips"] != 1:
        raise RuntimeError(f"{op} of {count} took {result['round_trips']} round trips")
    return float(result["ms"])


# --------------------------------------------------------------- measurements


@dataclasses.dataclass
class Path4:
    """Where a client runs and the three endpoints it uses."""

    prefix: list[str]
    addr: str
    iperf: int
    greet: int
    echo: int


def connrate(prefix: list[str], addr: str, port: int, p: Params) -> float:
    """Connections per second from p.conn_procs clients (see _common_net)."""
    argv = tool_argv("connrate", "--addr", addr, "--port", str(port),
                     "--seconds", str(p.rate_seconds), "--procs", str(p.conn_procs))  # fmt: skip
    result = tool_json([*prefix, *argv])
    if result["errors"]:
        log(f"  connrate {addr}:{port}: {result['errors']} errors")
    return float(result["rate"])


def measure_once(path: Path4, p: Params, metrics: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "tput1" in metrics:
        out["tput1"] = iperf3_gbps(path.prefix, path.addr, path.iperf, p.iperf_seconds, 1)
    if "tput4" in metrics:
        out["tput4"] = iperf3_gbps(path.prefix, path.addr, path.iperf, p.iperf_seconds, 4)
    if "conn" in metrics:
        out["conn"] = connrate(path.prefix, path.addr, path.greet, p)
    if "rr" in metrics:
        argv = tool_argv("rr", "--addr", path.addr, "--port", str(path.echo),
                         "--seconds", str(p.rate_seconds))  # fmt: skip
        out["rr"] = tool_json([*path.prefix, *argv])["rate"]
    return out


Runs = dict[str, list[float]]  # metric -> one value per round


def measure_pair(a: Path4, b: Path4, p: Params, metrics: list[str]) -> tuple[Runs, Runs]:
    """p.reps rounds of both sides, alternating which goes first."""
    runs_a: Runs = {m: [] for m in metrics}
    runs_b: Runs = {m: [] for m in metrics}
    for rep in range(p.reps):
        order = [(a, runs_a), (b, runs_b)] if rep % 2 == 0 else [(b, runs_b), (a, runs_a)]
        for path, sink in order:
            for metric, value in measure_once(path, p, metrics).items():
                sink[metric].append(value)
    return runs_a, runs_b


METRIC_ROWS = {
    "tput1": ("iperf3 1 stream", "Gbit/s", GOAL_THROUGHPUT),
    "tput4": ("iperf3 4 streams", "Gbit/s", GOAL_THROUGHPUT),
    "conn": ("connection rate", "conn/s", GOAL_CONNRATE),
    "rr": ("1-byte request/response", "trans/s", GOAL_RR),
}


def comparisons(ours: Runs, peer: Runs, goals: dict[str, Goal]) -> list[Comparison]:
    """Medians side by side; the tables show each side's range too."""
    rows = []
    for key, values in ours.items():
        label, unit, _ = METRIC_ROWS[key]
        rows.append(Comparison(label, unit, median(values), median(peer[key]), goals.get(key),
                               values, peer[key]))  # fmt: skip
    return rows


# ------------------------------------------------------ (a) proxy vs docker


def start_docker_proxies(
    session: Session, host: Any, specs: list[tuple[str, int, str, int]]
) -> list[Any]:
    """One docker-proxy per (host ip, host port, container ip, container port).
    fd 3 must be open: docker-proxy reports readiness on it and closes it.
    Each in a session of its own, as the daemon's proxy is (and as under
    dockerd): with autogroup scheduling, a proxy in the load clients' session
    shares their scheduling group, which alone was worth ~1.5x connections
    per second on the busy VM (see docs/benchmarks.md)."""
    binary = docker_proxy_path()
    procs = []
    log_path = WORK / f"docker-proxy-{host.name}.log"
    errors = open(log_path, "ab")  # noqa: SIM115 (closed at the end of the session)
    session.cleanups += [errors.close, lambda: log_path.unlink(missing_ok=True)]
    for host_ip, host_port, cip, cport in specs:
        cmd = (f"exec 3>/dev/null; exec {binary} -proto tcp -host-ip {host_ip} "
               f"-host-port {host_port} -container-ip {cip} -container-port {cport}")  # fmt: skip
        procs.append(session.spawn(in_netns(host.name, ["/bin/sh", "-c", cmd]), stderr=errors,
                                   start_new_session=True))  # fmt: skip
    return procs


@dataclasses.dataclass(frozen=True)
class AOptions:
    baseline: str | None  # a git ref whose proxy the daemon's is compared with
    variants: list[str]  # of VARIANTS
    ab_only: bool  # no docker-proxy and no (b): only our proxies side by side


def section_a(
    session: Session, p: Params, out: list[str], opts: AOptions
) -> tuple[dict[str, list[Comparison]], list[list[str]]]:
    log("(a) userland proxy vs docker-proxy")
    host = make_host(session, "pm")
    cip = start_server(host, publish=published(OURS_BASE))
    if opts.ab_only:
        section_variants(session, host, cip, p, out, opts)
        session.drop_host(host)
        return {}, []
    goals = {k: v[2] for k, v in METRIC_ROWS.items()}
    results = {"unpinned": proxy_vs_docker(session, host, cip, "127.0.0.1", p, goals, out)}
    section_variants(session, host, cip, p, out, opts)
    extra = section_b(session, host, cip, p, out, results)
    session.drop_host(host)
    return results, extra


def proxy_vs_docker(
    session: Session,
    host: Any,
    cip: str,
    listen: str,
    p: Params,
    goals: dict[str, Goal],
    out: list[str],
    section: str = "(a)",
) -> list[Comparison]:
    """The daemon's proxy (already serving `listen`:host_ports(OURS_BASE))
    beside docker-proxies on `listen`:host_ports(DOCKER_BASE) to the same
    container address `cip`, alternating rounds."""
    specs = [(listen, DOCKER_BASE + port - 5000, cip, port) for port in (IPERF, GREET, ECHO)]
    dprocs = start_docker_proxies(session, host, specs)
    where = in_netns(host.name, [])
    for _, port, _, _ in specs:
        wait_tcp(where, listen, port)
    ppid = proxy_pid(host)
    tree = proxy_tree(ppid)
    pin([*tree, *(d.pid for d in dprocs)], all_cpus())
    ours = Path4(where, listen, *host_ports(OURS_BASE))
    docker = Path4(where, listen, *host_ports(DOCKER_BASE))
    load = load_average()
    m_ours, m_docker = measure_pair(ours, docker, p, ["tput1", "tput4", "conn", "rr"])
    rows = comparisons(m_ours, m_docker, goals)
    shown = f"[{listen}]" if ":" in listen else listen
    out.append(
        f"**{section} userland proxy, host → {shown}:PORT → container {cip}, unpinned** "
        f"(median of {p.reps} alternating rounds, range in brackets; supervisor pid {ppid}, "
        f"{len(tree) - 1} workers; load average {load} before, {load_average()} after)\n"
    )
    out.append(comparison_table("pontoon proxy", "docker-proxy", rows) + "\n")
    for proc in dprocs:
        session.stop(proc)
    return rows


def section_a6(session: Session, p: Params, out: list[str]) -> list[Comparison]:
    """(a) over IPv6: [::1]:PORT, both proxies to the container's IPv6 address."""
    log("(a6) userland proxy vs docker-proxy over IPv6 ([::1]:PORT)")
    host = make_host(session, "pm6", family=6)
    publish = [f"[::1]:{spec}" for spec in published(OURS_BASE)]
    cip6 = start_server(host, publish=publish, family=6)
    goals = {k: GOAL_PROXY6 for k in METRIC_ROWS}
    rows = proxy_vs_docker(session, host, cip6, "::1", p, goals, out, "(a6)")
    session.drop_host(host)
    return rows


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# Other proxies of ours beside the daemon's: name -> (flags, what it is).
VARIANTS = {
    "all": (["--accept-wakeup", "all"], "a proxy waking every worker (`--accept-wakeup all`)"),
    "one": (["--workers", "1"], "a proxy with one worker (`--workers 1`)"),
}


def checkout_baseline(session: Session, ref: str) -> tuple[str, Path]:
    """pontoon/ at git `ref`, extracted under WORK until the session ends:
    (short revision, folder)."""
    rev = run(["git", "-C", str(REPO), "rev-parse", "--short", ref]).strip()
    root = WORK / f"baseline-{rev}-{session.tag}"
    root.mkdir(parents=True)
    session.cleanups.append(lambda: shutil.rmtree(root, ignore_errors=True))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "pontoon"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return rev, root


def section_variants(
    session: Session, host: Any, cip: str, p: Params, out: list[str], opts: AOptions
) -> None:
    """The daemon's proxy (one worker per CPU, EPOLLEXCLUSIVE) beside other
    proxies of ours, each serving the same container: one waking every
    worker per connection, one with a single worker, and the proxy of
    another revision (--baseline); alternating rounds."""
    where = in_netns(host.name, [])
    daemons = Path4(where, "127.0.0.1", *host_ports(OURS_BASE))
    variants = [(name, *VARIANTS[name], REPO, ["conn", "rr"]) for name in opts.variants]
    if opts.baseline:
        rev, root = checkout_baseline(session, opts.baseline)
        what = f"the proxy at {rev} (`--baseline {opts.baseline}`)"
        variants.append((rev, [], what, root, ["tput1", "conn", "rr"]))
    for k, (name, flags, what, root, metrics) in enumerate(variants, start=1):
        log(f"  the daemon's proxy vs {what}")
        control = WORK / f"{name}-{host.name}.sock"
        argv = [PY, "-m", "pontoon.proxy", "--control", str(control), *flags,
                "--log-level", "warning"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(root)}
        # Its own session, like the daemon's proxy: the same scheduling group.
        proc = session.spawn(in_netns(host.name, argv), cwd=str(root), env=env,
                             start_new_session=True)  # fmt: skip
        for path in (control, control.with_name(control.name + ".lock")):
            session.cleanups.append(lambda path=path: path.unlink(missing_ok=True))
        deadline = time.monotonic() + 10
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ports = [OURS_BASE + 1000 * k + port - 5000 for port in (IPERF, GREET, ECHO)]
        for port, cport in zip(ports, (IPERF, GREET, ECHO), strict=True):
            proxy_batch(host, str(control), "add", port, 1, f"{cip}:{cport}")
        other = Path4(where, "127.0.0.1", *ports)
        load = load_average()
        m_ours, m_other = measure_pair(daemons, other, p, metrics)
        rows = comparisons(m_ours, m_other, {})
        out.append(
            f"**(a) the daemon's proxy (one worker per CPU, EPOLLEXCLUSIVE: one idle worker "
            f"woken per connection) vs {what}**, same container, {p.reps} alternating rounds "
            f"(load average {load} before, {load_average()} after)\n"
        )
        out.append(comparison_table("daemon's proxy", name, rows) + "\n")
        session.stop(proc)


# ------------------------------------------------------------------- (b) RSS


def section_b(
    session: Session,
    host: Any,
    cip: str,
    p: Params,
    out: list[str],
    results: dict[str, list[Comparison]],
) -> list[list[str]]:
    log(f"(b) RSS with {p.rss_ports} published ports")
    ppid = proxy_pid(host)
    n = p.rss_ports
    before_kb = sum(status_kb(pid) for pid in proxy_tree(ppid))
    t0 = time.perf_counter()
    first, last = RSS_OURS_BASE, RSS_OURS_BASE + n - 1
    host.cli("run", "-d", "--name", "many", "--net", "front",
             "-p", f"{first}-{last}:{first}-{last}", "--", "sleep", "infinity")  # fmt: skip
    run_s = time.perf_counter() - t0
    tree = proxy_tree(ppid)
    ours_rss = sum(status_kb(pid) for pid in tree)
    ours_pss = sum(pss_kb(pid) for pid in tree)
    many_ip = container_ip(host, "many")
    specs = [("0.0.0.0", RSS_DOCKER_BASE + i, many_ip, first + i) for i in range(n)]
    t0 = time.perf_counter()
    dprocs = start_docker_proxies(session, host, specs)
    listening = wait_listening(host, RSS_DOCKER_BASE, n)
    start_s = time.perf_counter() - t0
    docker_rss = sum(status_kb(d.pid) for d in dprocs)
    docker_pss = sum(pss_kb(d.pid) for d in dprocs)
    one_rss = status_kb(dprocs[0].pid)
    stop_all(session, dprocs)
    rows = [
        Comparison(f"RSS, {n} ports (VmRSS)", "MiB", ours_rss / 1024, docker_rss / 1024, GOAL_RSS),
        Comparison(
            f"PSS, {n} ports (shared pages split)", "MiB", ours_pss / 1024, docker_pss / 1024
        ),
    ]
    results["rss"] = rows
    adds, removes = publish_rounds(host, cip, n)
    out.append(f"**(b) memory for {n} published TCP ports**: our proxy ({len(tree) - 1} "
               f"workers and the supervisor, summed) vs {n} docker-proxy processes "
               f"({listening} listening)\n")  # fmt: skip
    out.append(comparison_table("pontoon proxy", f"{n} docker-proxy", rows) + "\n")
    out.append(
        f"pontoon proxy RSS with 3 mappings: {before_kb / 1024:.1f} MiB; `run -d -p "
        f"{first}-{last}:{first}-{last}` (container start included) took {run_s:.2f} s. "
        f"Straight to the proxy, {PUBLISH_ROUNDS} rounds: `add_many` of {n} sockets "
        f"{fmt(median(adds))} ms ({fmt(min(adds))}..{fmt(max(adds))}), `remove_many` "
        f"{fmt(median(removes))} ms ({fmt(min(removes))}..{fmt(max(removes))}), one round trip "
        f"each. One docker-proxy: {one_rss / 1024:.1f} MiB VmRSS; starting {n} took "
        f"{start_s:.1f} s.\n"
    )
    add_ms = median(adds)
    return [["(b)", f"publish {n} ports in the proxy (p50, one round trip)", f"{add_ms:.0f} ms",
             f"≤{GOAL_PUBLISH_MS:g} ms", verdict(add_ms <= GOAL_PUBLISH_MS)]]  # fmt: skip


def publish_rounds(host: Any, cip: str, n: int) -> tuple[list[float], list[float]]:
    """Batched add and remove of n ports in the daemon's proxy: ms per round."""
    control = str(host.exec_root / "proxy.sock")
    adds, removes = [], []
    for _ in range(PUBLISH_ROUNDS):
        adds.append(proxy_batch(host, control, "add", BENCH_PORTS, n, f"{cip}:{GREET}"))
        removes.append(proxy_batch(host, control, "remove", BENCH_PORTS, n, f"{cip}:{GREET}"))
    return adds, removes


def wait_listening(host: Any, base: int, n: int, timeout: float = 60.0) -> int:
    """How many of ports base..base+n-1 listen in the host namespace (waits
    until all do, or timeout)."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        lines = host.sh("ss", "-Htln").stdout.splitlines()
        ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in lines if line.strip()}
        count = sum(1 for port in range(base, base + n) if port in ports)
        if count == n:
            return count
        time.sleep(0.2)
    log(f"  only {count} of {n} docker-proxy ports listen")
    return count


def stop_all(session: Session, procs: list[Any]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        session.stop(proc)


# ------------------------------------------------------------ (c) kernel NAT


def section_c(session: Session, p: Params, out: list[str], family: int = 4) -> list[Comparison]:
    """(c), or (c6) over IPv6: the same container, published with `-p PORT:...`
    on a dual-stack network, reached at the host's IPv6 address."""
    section, six = ("(c6)", "6") if family == 6 else ("(c)", "")
    log(f"{section} kernel DNAT vs plain routing")
    host = make_host(session, f"pk{six}", "--userland-proxy=false", family=family)
    outside = add_outside(session, host, f"po{six}")
    if family == 6:
        outside.sh("ip", "-6", "route", "add", SUBNET6, "via", HOST6)
    else:
        outside.sh("ip", "route", "add", SUBNET, "via", HOST_ADDR)
    host_addr = HOST6 if family == 6 else HOST_ADDR
    cip = start_server(host, publish=published(OURS_BASE), family=family)
    prefix = in_netns(outside.name, [])
    wait_tcp(prefix, host_addr, host_ports(OURS_BASE)[1])
    dnat = Path4(prefix, host_addr, *host_ports(OURS_BASE))
    routed = Path4(prefix, cip, IPERF, GREET, ECHO)
    metrics = ["tput1", "tput4", "conn", "rr"]
    longer = dataclasses.replace(
        p,
        rate_seconds=max(p.rate_seconds, KERNEL_ROUND_SECONDS),
        iperf_seconds=max(p.iperf_seconds, KERNEL_ROUND_SECONDS),
    )
    m_dnat, m_routed = measure_pair(dnat, routed, longer, metrics)
    goals = {"tput1": GOAL_KERNEL, "tput4": GOAL_KERNEL, "conn": GOAL_KERNEL}
    rows = comparisons(m_dnat, m_routed, goals)
    shown = f"[{host_addr}]" if family == 6 else host_addr
    out.append(
        f"**{section} kernel DNAT (--userland-proxy=false), outside → {shown}:PORT vs outside "
        f"→ container {cip} routed via the host** (median of {p.reps} alternating rounds of "
        f"{longer.rate_seconds:g} s, range in brackets; load average {load_average()} after)\n"
    )
    out.append(comparison_table("DNAT", "routed", rows) + "\n")
    session.drop_host(outside)
    session.drop_host(host)
    return rows


# ------------------------------------------------------- (d) 10,000 mappings


def conntrack_count(host: Any) -> int:
    out = host.sh("conntrack", "-C", check=False).stdout.strip()
    return int(out) if out.isdigit() else -1


def flush_conntrack(host: Any) -> None:
    """Empty the conntrack table of one of our hosts (never the machine's)."""
    assert host.name.startswith("ptb2-")
    host.sh("conntrack", "-F", check=False)


@dataclasses.dataclass
class ScaleHost:
    """A kernel-mode host with `mappings` published ports, the target last."""

    host: Any
    outside: Any
    backend: str
    mappings: int = 0
    bulk_s: float = 0.0
    rates: list[float] = dataclasses.field(default_factory=list)
    fw_add_ms: float = 0.0
    fw_remove_ms: float = 0.0
    run_ms: float = 0.0
    rm_ms: float = 0.0

    @property
    def conn(self) -> float:
        return median(self.rates)


def scale_host(session: Session, backend: str, role: str, bulk: int, p: Params) -> ScaleHost:
    host = session.host(role, "--userland-proxy=false", "--firewall-backend", backend)
    sh = ScaleHost(host, add_outside(session, host, "o" + role), backend)
    if bulk:
        sh.mappings, sh.bulk_s = add_bulk(host, bulk, p.bulk_ports)
        log(f"  {backend}: {sh.mappings} mappings in {sh.bulk_s:.1f} s")
    host.cli("run", "-d", "--name", "tgt", "--net", SCALE_NET, "-p", f"{TARGET_PORT}:{GREET}",
             "--", *server_command())  # fmt: skip
    sh.mappings += 1
    wait_tcp(in_netns(sh.outside.name, []), HOST_ADDR, TARGET_PORT)
    return sh


def add_bulk(host: Any, containers: int, ports: int) -> tuple[int, float]:
    """`containers` containers publishing `ports` ports each: (mappings, seconds)."""
    t0 = time.perf_counter()
    made = 0
    for k in range(containers):
        first = BULK_BASE + k * ports
        last = first + ports - 1
        proc = host.cli("run", "-d", "--name", f"bulk{k}", "--net", SCALE_NET,
                        "-p", f"{first}-{last}:{first}-{last}", "--", "sleep", "infinity",
                        check=False, timeout=300)  # fmt: skip
        if proc.returncode != 0:
            log(f"  bulk{k} failed: {proc.stderr.strip()}")
            break
        made += ports
    return made, time.perf_counter() - t0


def measure_rate(sh: ScaleHost, p: Params) -> None:
    flush_conntrack(sh.host)
    sh.rates.append(connrate(in_netns(sh.outside.name, []), HOST_ADDR, TARGET_PORT, p))


def measure_adds(sh: ScaleHost, p: Params) -> None:
    """One more mapping: in the firewall backend directly, and `run -p`/`rm`."""
    flush_conntrack(sh.host)
    cycles = p.fw_cycles if sh.backend == "nftables" else min(p.fw_cycles, 5)
    fw = tool_json(in_netns(sh.host.name, tool_argv(
        "fwadd", "--backend", sh.backend, "--bridge", "pontoon0", "--cip", "172.17.255.250",
        "--port", "18000", "--count", str(cycles))), timeout=600)  # fmt: skip
    sh.fw_add_ms = percentile(fw["add_ms"], 50)
    sh.fw_remove_ms = percentile(fw["remove_ms"], 50)
    runs, rms = run_rm_cycles(sh.host, p.run_cycles if sh.backend == "nftables" else 3)
    sh.run_ms, sh.rm_ms = percentile(runs, 50), percentile(rms, 50)


def run_rm_cycles(host: Any, n: int) -> tuple[list[float], list[float]]:
    """`run -d -p` and `rm -f` of a one-port container, timed from the CLI."""
    runs, rms = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        host.cli("run", "-d", "--name", "cyc", "--net", SCALE_NET, "-p", "19000:80",
                 "--", "sleep", "infinity")  # fmt: skip
        t1 = time.perf_counter()
        host.cli("rm", "-f", "cyc")
        t2 = time.perf_counter()
        runs.append((t1 - t0) * 1000)
        rms.append((t2 - t1) * 1000)
    return runs, rms


@dataclasses.dataclass
class BusyRm:
    """`rm -f` of the target right after a connection test, the host's
    conntrack table as the test left it."""

    entries: int
    seconds: float
    error: str  # what a failed `rm -f` said (it is then retried)


def busy_rm(sh: ScaleHost, p: Params) -> BusyRm:
    connrate(in_netns(sh.outside.name, []), HOST_ADDR, TARGET_PORT, p)
    entries = conntrack_count(sh.host)
    t0 = time.perf_counter()
    proc = sh.host.cli("rm", "-f", "tgt", timeout=300, check=False)
    seconds = time.perf_counter() - t0
    error = proc.stderr.strip() if proc.returncode else ""
    if error:
        log(f"  rm -f tgt failed: {error}")
        sh.host.cli("rm", "-f", "tgt", timeout=300, check=False)
    return BusyRm(entries, seconds, error)


@dataclasses.dataclass
class ScaleResult:
    small: ScaleHost
    big: ScaleHost
    busy: BusyRm | None

    @property
    def ratio(self) -> float:
        return self.big.conn / self.small.conn


def scale_backend(session: Session, backend: str, p: Params) -> ScaleResult:
    """Two identical hosts, one with 1 mapping and one with the bulk plus the
    target, measured in alternation so that load from elsewhere hits both."""
    log(f"(d) {p.bulk_containers * p.bulk_ports} mappings, {backend}")
    small = scale_host(session, backend, f"s{backend[:2]}", 0, p)
    big = scale_host(session, backend, f"b{backend[:2]}", p.bulk_containers, p)
    for rep in range(p.reps * 2):
        for sh in (small, big) if rep % 2 == 0 else (big, small):
            measure_rate(sh, p)
    for sh in (small, big):
        measure_adds(sh, p)
    busy = busy_rm(small, p) if p.busy_rm else None
    for sh in (small, big):
        session.drop_host(sh.outside)
        session.drop_host(sh.host)
    return ScaleResult(small, big, busy)


def section_d(session: Session, p: Params, out: list[str]) -> list[list[str]]:
    results = [scale_backend(session, backend, p) for backend in ("nftables", "iptables")]
    out.append(scale_tables(results))
    r = results[0]
    add = r.big.fw_add_ms
    return [
        ["(d)", f"conn rate at {r.big.mappings:,} mappings vs 1 (nftables)", f"{r.ratio:.2f}x",
         GOAL_SCALE.text(), verdict(GOAL_SCALE.met(r.ratio))],
        ["(d)", f"add one mapping at {r.big.mappings:,} (nftables, p50)", f"{add:.2f} ms",
         f"≤{GOAL_ADD_MS:g} ms", verdict(add <= GOAL_ADD_MS)],
    ]  # fmt: skip


def scale_tables(results: list[ScaleResult]) -> str:
    rows, notes = [], []
    for r in results:
        for sh in (r.small, r.big):
            is_big = sh is r.big
            nft = r.small.backend == "nftables"
            rows.append([
                sh.backend, f"{sh.mappings:,}", fmt(sh.conn),
                f"{sh.conn / r.small.conn:.2f}x",
                verdict(GOAL_SCALE.met(r.ratio)) if is_big and nft else "—",
                fmt(sh.fw_add_ms), fmt(sh.fw_remove_ms),
                verdict(sh.fw_add_ms <= GOAL_ADD_MS) if nft else "—",
                fmt(sh.run_ms), fmt(sh.rm_ms),
            ])  # fmt: skip
        note = f"- {r.small.backend}: publishing {r.big.mappings - 1:,} ports took "
        note += f"{r.big.bulk_s:.1f} s"
        if (b := r.busy) is not None:
            failed = f", and **failed**: `{b.error}`" if b.error else ""
            note += (
                f"; `rm -f` of the target right after a connection test, with {b.entries:,} "
                f"entries in the host's conntrack table, took {b.seconds:.1f} s (vs "
                f"{r.small.rm_ms:.0f} ms p50 with the table flushed){failed}"
            )
        notes.append(note + ".")
    headers = ["backend", "mappings", "conn/s, outside → HOST:PORT", "vs 1 mapping",
               f"goal {GOAL_SCALE.text()}", "firewall add p50 ms", "firewall remove p50 ms",
               f"goal add ≤{GOAL_ADD_MS:g} ms", "`run -d -p` p50 ms",
               "`rm -f` p50 ms"]  # fmt: skip
    return (
        "**(d) mapping count, kernel mode**: two identical hosts, one with the target "
        "mapping alone, one with the bulk and then the target (the last-added mapping), "
        "measured in alternation (median of the rounds); time to add one more mapping in "
        "the firewall backend directly (the daemon's own code, in the host's namespace) and "
        "as a whole `run -d -p` / `rm -f` through the CLI (conntrack table flushed first)\n\n"
        + markdown_table(headers, rows)
        + "\n\n"
        + "\n".join(notes)
        + "\n"
    )


def goal_rows(section: str, rows: list[Comparison]) -> list[list[str]]:
    return [
        [section, c.metric, f"{c.ratio:.2f}x", c.goal.text(), verdict(c.ok)]
        for c in rows
        if c.goal is not None
    ]


T = TypeVar("T")


def guarded(section: str, out: list[str], fn: Callable[[], T], default: T) -> T:
    """Run one section; a failure is reported and the next section still runs."""
    try:
        return fn()
    except Exception as exc:
        log(traceback.format_exc())
        out.append(f"**({section}) failed**: `{str(exc).splitlines()[0]}`\n")
        return default


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", metavar="REF",
                        help="(a): also compare the daemon's proxy with the proxy at git REF "
                             "(its pontoon/ checked out into a temporary folder), same "
                             "container, alternating rounds")  # fmt: skip
    parser.add_argument("--variants", default="all,one",
                        help="(a): the other proxies to compare with the daemon's: all "
                             "(--accept-wakeup all), one (--workers 1); '' for none")  # fmt: skip
    parser.add_argument("--ab-only", action="store_true",
                        help="(a): only the comparisons with other proxies of ours (no "
                             "docker-proxy, no (b)): for measuring a change")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 9)")


def main(argv: list[str] | None = None) -> int:
    args = bench_args(__doc__, argv, only="a,c,d,a6,c6",
                      only_help="sections: a (includes b), c, d, and over IPv6 a6, c6",
                      extra=add_options)  # fmt: skip
    p = QUICK if args.quick else FULL
    if args.rounds:
        p = dataclasses.replace(p, reps=args.rounds)
    opts = AOptions(args.baseline, [v for v in args.variants.split(",") if v], args.ab_only)
    sections = set(args.only.split(","))
    out: list[str] = []
    goals: list[list[str]] = []
    header = report_header("### Port mapping (issues 3, 13 and 14)", "portmap.py", args.quick)
    t0 = time.monotonic()
    with Session() as session:
        if "a" in sections:
            results, extra = guarded("a", out, lambda: section_a(session, p, out, opts), ({}, []))
            for mode, rows in results.items():
                goals += goal_rows(f"(a) {mode}" if mode != "rss" else "(b)", rows)
            goals += extra
        if "c" in sections:
            goals += goal_rows("(c)", guarded("c", out, lambda: section_c(session, p, out), []))
        if "d" in sections:
            goals += guarded("d", out, lambda: section_d(session, p, out), [])
        if "a6" in sections:
            goals += goal_rows("(a6)", guarded("a6", out, lambda: section_a6(session, p, out), []))
        if "c6" in sections:
            rows = guarded("c6", out, lambda: section_c(session, p, out, family=6), [])
            goals += goal_rows("(c6)", rows)
    return print_report(header, "\n".join(out), goals, t0, session)


if __name__ == "__main__":
    sys.exit(main())
