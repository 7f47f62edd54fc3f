"""Shared pieces of the network benchmarks (portmap.py, dns.py, overlay.py).

Two halves:

- the orchestration side, imported by the benchmarks: a `Session` that owns
  every throwaway host (`ptb2-*` network namespaces, pontoon labs named
  `b<hex>`) and process it starts, removes them in `finally` (also on Ctrl-C
  or SIGTERM) and checks that the machine's own namespace looks as before;
  iperf3 and load-tool runners; CPU pinning; result tables with goals;
- small load tools, run as `python bench/_common_net.py TOOL ...` inside a
  namespace or a container (containers see the host's filesystem): a TCP
  greeting/echo server, a connection-rate client, a request/response client,
  DNS load and latency generators, an ICMP convergence prober and a firewall
  add/remove timer. Each prints one JSON object and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from pontoon.lab.leaks import State, changes, machine_state  # noqa: E402

PREFIX = "ptb2-"
WORK = Path("/tmp/ptb2-bench")
TOOL = Path(__file__).resolve()
PY = sys.executable  # the venv's interpreter: containers see the same file


def log(message: str) -> None:
    """Progress goes to stderr: stdout is for results."""
    print(message, file=sys.stderr, flush=True)


# ============================================================== orchestration


def run(argv: list[str], timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_netns(netns: str | Path, argv: list[str]) -> list[str]:
    """argv run in a network namespace (a path or a /run/netns name)."""
    path = netns if str(netns).startswith("/") else f"/run/netns/{netns}"
    return ["nsenter", f"--net={path}", "--", *argv]


def tool_argv(*args: str) -> list[str]:
    return [PY, str(TOOL), *args]


def tool_json(argv: list[str], timeout: float = 120) -> dict[str, Any]:
    """Run a load tool (argv already wrapped for its namespace); its JSON."""
    out = run(argv, timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def raise_nofile(target: int = 1 << 16) -> None:
    """Children (daemons) inherit our limit: 10,000 reserved ports need more
    than the usual 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, target)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def root_snapshot() -> State:
    """What we must leave as we found it."""
    return machine_state((PREFIX, "ptl-"), (str(WORK),))


def _sigterm(*_: object) -> None:
    sys.exit(143)


class Session:
    """Owns everything a benchmark makes; `with Session() as s:` removes it all."""

    def __init__(self) -> None:
        self.hosts: list[Any] = []  # SimHost
        self.labs: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.cleanups: list[Callable[[], None]] = []
        self.before: dict[str, set[str]] = {}
        self.leaks: list[str] = []
        self.tag = uuid.uuid4().hex[:4]

    def __enter__(self) -> Session:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _sigterm)
        raise_nofile()
        self.before = root_snapshot()
        WORK.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        # Ctrl-C during clean-up must not leave half of it undone.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.close()
        finally:
            signal.signal(signal.SIGINT, old)

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()
        for host in reversed(self.hosts):
            with contextlib.suppress(Exception):
                host.destroy()
        self.hosts.clear()
        for name in reversed(self.labs):
            self.lab_down(name)
        self._sweep_work()
        self.leaks = changes(self.before, root_snapshot())
        for leak in self.leaks:
            log(f"WARNING: the root namespace changed: {leak}")

    def _sweep_work(self) -> None:
        """Safety net: mounts (sandbox directories) and work directories our
        hosts may have left under WORK."""
        from common import mounts_under

        for point in mounts_under(WORK):
            if Path(point).relative_to(WORK).parts[0].endswith(f"-{self.tag}"):
                run(["umount", "-l", point], check=False)
        for path in WORK.glob(f"{PREFIX}*-{self.tag}"):
            shutil.rmtree(path, ignore_errors=True)

    # hosts ----------------------------------------------------------------

    def host(self, role: str, *daemon_args: str, start: bool = True) -> Any:
        """A fresh simulated host `ptb2-<role>-<tag>`, with a pontoond unless
        start=False (an 'outside' machine)."""
        from pontoon.lab import SimHost

        name = f"{PREFIX}{role}-{self.tag}"
        host = SimHost(name, WORK / name)
        self.hosts.append(host)
        host.create()
        tune_netns(name)
        if start:
            host.start_daemon(*daemon_args)
        return host

    def drop_host(self, host: Any) -> None:
        """Destroy one host now (and forget it)."""
        if host in self.hosts:
            self.hosts.remove(host)
        host.destroy()

    def lab(
        self, hosts: int, subnet: str, daemon_args: list[str] | None = None, **opts: Any
    ) -> Any:
        """`opts`: cluster.up's keywords (ipv6_underlay=True, ...)."""
        from pontoon.lab import cluster

        name = "b" + uuid.uuid4().hex[:5]
        self.labs.append(name)
        state = cluster.up(name, hosts, subnet, daemon_args, **opts)
        for h in state.hosts:
            tune_netns(h.netns)
        return state

    def lab_down(self, name: str) -> None:
        from pontoon.lab import cluster

        with contextlib.suppress(Exception):
            cluster.down(name)
        if name in self.labs:
            self.labs.remove(name)

    # processes ------------------------------------------------------------

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        stop(proc)
        if proc in self.procs:
            self.procs.remove(proc)


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End a child we started, by its PID only: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def tune_netns(netns: str) -> None:
    """Client-side sysctls of one of *our* namespaces: many short connections
    may reuse TIME_WAIT ports. Never applied to the root namespace."""
    assert netns.startswith((PREFIX, "ptl-b")), netns
    for key, value in (
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "45000 65000"),
    ):
        run(in_netns(netns, ["sysctl", "-qw", f"{key}={value}"]), check=False)


# ------------------------------------------------------------ processes & CPU


def pids_in_netns(path: str | Path) -> list[int]:
    """Every process whose network namespace is the one pinned at `path`."""
    try:
        want = os.stat(path).st_ino
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == want:
                    found.append(int(entry))
    return found


def pin(pids: list[int], cpus: str) -> None:
    """Set the CPU affinity of every thread of these processes."""
    for pid in pids:
        run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=False)


def all_cpus() -> str:
    return f"0-{(os.cpu_count() or 1) - 1}"


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_percent(pids: list[int], seconds: float) -> dict[int, float]:
    """CPU% of each process over a window (100 = one core)."""
    hz = os.sysconf("SC_CLK_TCK")
    start = {pid: cpu_ticks(pid) for pid in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {pid: 100.0 * (cpu_ticks(pid) - start[pid]) / hz / elapsed for pid in pids}


class CpuMeter:
    """CPU% of some processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start_ticks: dict[int, int] = {}
        self.t0 = 0.0

    def start(self) -> None:
        self.start_ticks = {pid: cpu_ticks(pid) for pid in self.pids}
        self.t0 = time.monotonic()

    def stop(self) -> float:
        """Summed CPU% (100 = one core)."""
        hz = os.sysconf("SC_CLK_TCK")
        elapsed = time.monotonic() - self.t0
        ticks = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                ticks += cpu_ticks(pid) - self.start_ticks[pid]
        return 100.0 * ticks / hz / elapsed


def status_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages divided among their users."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------- iperf3


def iperf3_gbps(prefix: list[str], addr: str, port: int, seconds: float, streams: int) -> float:
    """Throughput of an iperf3 client (argv prefix puts it where it runs)."""
    argv = [*prefix, "iperf3", "-c", addr, "-p", str(port), "-t", f"{seconds:g}",
            "-P", str(streams), "-O", "1", "-J"]  # fmt: skip
    for attempt in range(3):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            data = json.loads(proc.stdout)
            if "error" not in data:
                return data["end"]["sum_received"]["bits_per_second"] / 1e9
            err = data["error"]
        except (ValueError, KeyError):
            err = proc.stderr.strip() or proc.stdout[-200:]
        log(f"  iperf3 to {addr}:{port} failed ({err}); retry {attempt + 1}")
        time.sleep(1)
    raise RuntimeError(f"iperf3 to {addr}:{port} kept failing: {err}")


def wait_tcp(prefix: list[str], addr: str, port: int, timeout: float = 10.0) -> None:
    """Wait until addr:port accepts connections (seen from where prefix runs)."""
    code = (
        "import socket,sys,time\n"
        "d=time.monotonic()+float(sys.argv[3])\n"
        "while True:\n"
        "  try: socket.create_connection((sys.argv[1],int(sys.argv[2])),0.5).close(); break\n"
        "  except OSError:\n"
        "    if time.monotonic()>d: sys.exit(1)\n"
        "    time.sleep(0.05)\n"
    )
    run([*prefix, PY, "-c", code, addr, str(port), str(timeout)], timeout=timeout + 10)


# ------------------------------------------------------------------ results


@dataclasses.dataclass
class Goal:
    op: str  # ">=" or "<="
    value: float  # a ratio ours/peer, or an absolute bound

    def met(self, x: float) -> bool:
        return x >= self.value if self.op == ">=" else x <= self.value

    def text(self, unit: str = "x") -> str:
        op = "≥" if self.op == ">=" else "≤"
        return f"{op}{fmt(self.value)}{unit}"


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**MISSED**")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclasses.dataclass
class Comparison:
    """One metric, us beside the peer, with the goal on ours/peer."""

    metric: str
    unit: str
    ours: float
    peer: float
    goal: Goal | None = None
    ours_runs: list[float] = dataclasses.field(default_factory=list)
    peer_runs: list[float] = dataclasses.field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ours / self.peer if self.peer else float("nan")

    @property
    def ok(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.ratio)

    def row(self) -> list[str]:
        goal = self.goal.text() if self.goal else "—"
        return [self.metric, fmt(self.ours) + spread(self.ours_runs),
                fmt(self.peer) + spread(self.peer_runs), self.unit,
                f"{self.ratio:.2f}x", goal, verdict(self.ok)]  # fmt: skip


def spread(runs: list[float]) -> str:
    """' (min..max)' of several runs, nothing for one."""
    return f" ({fmt(min(runs))}..{fmt(max(runs))})" if len(runs) > 1 else ""


def comparison_table(ours: str, peer: str, rows: list[Comparison]) -> str:
    headers = ["metric", ours, peer, "unit", "ratio", "goal", "verdict"]
    return markdown_table(headers, [r.row() for r in rows])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value really measured."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def machine_line() -> str:
    from common import machine_info

    info = machine_info()
    return (
        f"{info['date']}; nproc {info['nproc']}, RAM {info['ram']}, kernel {info['kernel']}, "
        f"Debian {info['debian']}, Python {info['python']}, load average at start "
        f"{info['loadavg']}"
    )


def report_header(title: str, script: str, quick: bool = False) -> str:
    """The report's heading: machine, revision and how to run it again."""
    from common import source_revision

    command = f".venv/bin/python bench/{script}" + (" --quick" if quick else "")
    return (
        f"{title}\n\n- Machine: {machine_line()}\n- pontoon: {source_revision(REPO / 'pontoon')}\n"
        f"- Reproduce: `{command}`\n"
    )


def bench_args(
    doc: str,
    argv: list[str] | None,
    only: str | None = None,
    only_help: str = "",
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """--quick for every benchmark, --only SECTIONS for those that have them,
    and what `extra` adds for one benchmark alone."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    if only is not None:
        parser.add_argument("--only", default=only, help=only_help)
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def print_report(
    header: str, body: str, goals: list[list[str]], started: float, session: Session
) -> int:
    """The report on stdout: header, sections, goal table, run time, and a
    warning (exit status 1) if the root namespace changed."""
    print(header)
    print(body)
    print("**Goals**\n")
    print(markdown_table(["section", "metric", "measured", "goal", "verdict"], goals))
    print(f"\nTook {time.monotonic() - started:.0f} s.")
    if session.leaks:
        print("\nWARNING: the root namespace changed: " + "; ".join(session.leaks))
        return 1
    return 0


# ================================================================ load tools


def _tool_serve(args: argparse.Namespace) -> dict[str, Any]:
    """TCP servers: on each --greet port, send one byte to every client and
    close; on each --echo port, echo bytes back. Runs until killed."""
    threads = [threading.Thread(target=_greet_loop, args=(p,), daemon=True) for p in args.greet]
    threads += [threading.Thread(target=_echo_accept, args=(p,), daemon=True) for p in args.echo]
    for t in threads:
        t.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return {}


def _listener(port: int) -> socket.socket:
    """Both families on one socket (`::`, v6only off), so the same server
    answers the IPv4 and the IPv6 benchmarks; IPv4 alone where IPv6 is off."""
    try:
        s = socket.socket(socket.AF_INET6)
    except OSError:
        return _bound(socket.socket(), ("0.0.0.0", port))
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        return _bound(s, ("::", port))
    except OSError:
        s.close()
        return _bound(socket.socket(), ("0.0.0.0", port))


def _bound(s: socket.socket, where: tuple[str, int]) -> socket.socket:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(where)
    s.listen(4096)
    return s


def family_of(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _greet_loop(port: int) -> None:
    s = _listener(port)
    while True:
        try:
            c, _ = s.accept()
        except OSError:
            continue
        with contextlib.suppress(OSError):
            c.send(b"x")
        c.close()


def _echo_accept(port: int) -> None:
    s = _listener(port)
    while True:
        c, _ = s.accept()
        threading.Thread(target=_echo, args=(c,), daemon=True).start()


def _echo(c: socket.socket) -> None:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with c:
        while True:
            try:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)
            except OSError:
                return


LINGER_RESET = struct.pack("ii", 1, 0)


def _connect_worker(addr: str, port: int, seconds: float, out: Any) -> None:
    """connect, read the server's greeting byte, close; count for `seconds`."""
    done = errors = 0
    deadline = time.monotonic() + seconds
    target = (addr, port)
    family = family_of(addr)
    while time.monotonic() < deadline:
        s = socket.socket(family)
        s.settimeout(2.0)
        # Close with a reset: no TIME_WAIT on either side, so reused client
        # ports never meet an old connection (the tool is the same for both
        # sides of every comparison).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        try:
            s.connect(target)
            if s.recv(1) == b"x":
                done += 1
            else:
                errors += 1
        except OSError:
            errors += 1
            time.sleep(0.001)
        finally:
            s.close()
    os.write(out, struct.pack("qq", done, errors))


def _tool_connrate(args: argparse.Namespace) -> dict[str, Any]:
    """Connection rate with --procs parallel clients (forked)."""
    pipes, children = [], []
    t0 = time.monotonic()
    for _ in range(args.procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                _connect_worker(args.addr, args.port, args.seconds, w)
            finally:
                os._exit(0)
        os.close(w)
        pipes.append(r)
        children.append(pid)
    done = errors = 0
    for r, pid in zip(pipes, children, strict=True):
        data = os.read(r, 16)
        os.close(r)
        os.waitpid(pid, 0)
        if len(data) == 16:
            d, e = struct.unpack("qq", data)
            done, errors = done + d, errors + e
    elapsed = time.monotonic() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rate": done / elapsed, "connections": done, "errors": errors, "seconds": elapsed,
            "client_cpu": usage.ru_utime + usage.ru_stime}  # fmt: skip


def _tool_rr(args: argparse.Namespace) -> dict[str, Any]:
    """1-byte request/response transactions on one connection, serially."""
    s = socket.create_connection((args.addr, args.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send, recv = s.send, s.recv
    for _ in range(200):  # warm up
        send(b"x")
        recv(1)
    n = 0
    deadline = time.monotonic() + args.seconds
    t0 = time.monotonic()
    while True:
        for _ in range(100):
            send(b"x")
            if not recv(1):
                raise RuntimeError("the echo server closed the connection")
        n += 100
        if time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - t0
    s.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"rate": n / elapsed, "transactions": n, "seconds": elapsed,
            "client_cpu": usage.ru_utime + usage.ru_stime}  # fmt: skip


def _dns_queries(names: list[str], qtype: str = "A") -> list[bytes]:
    """Wire-format queries of `qtype` (ID 0, RD) for each name."""
    import dns.message

    return [dns.message.make_query(n, qtype).to_wire() for n in names]


def _with_id(wire: bytes, qid: int) -> bytes:
    return struct.pack(">H", qid) + wire[2:]


def _tool_dnsqps(args: argparse.Namespace) -> dict[str, Any]:
    """Answers per second with --inflight queries outstanding at all times."""
    queries = _dns_queries(args.names.split(","), args.qtype)
    s = socket.socket(family_of(args.server), socket.SOCK_DGRAM)
    s.connect((args.server, args.port))
    s.setblocking(False)
    answered = lost = sent = 0
    outstanding: dict[int, float] = {}
    qid = 0
    poller = select.poll()
    poller.register(s, select.POLLIN)
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        while len(outstanding) < args.inflight:
            qid = (qid + 1) & 0xFFFF
            s.send(_with_id(queries[qid % len(queries)], qid))
            outstanding[qid] = now
            sent += 1
        if not poller.poll(100):
            lost += len(outstanding)  # nothing for 100 ms: count them lost, go on
            outstanding.clear()
            continue
        while True:
            try:
                reply = s.recv(4096)
            except BlockingIOError:
                break
            rid = struct.unpack(">H", reply[:2])[0]
            if outstanding.pop(rid, None) is not None and reply[3] & 0x0F == 0:
                answered += 1
    elapsed = time.monotonic() - t0
    return {"qps": answered / elapsed, "answered": answered, "sent": sent, "lost": lost}


def _tool_dnslat(args: argparse.Namespace) -> dict[str, Any]:
    """Latency of serial queries, one at a time (µs)."""
    queries = _dns_queries(args.names.split(","), args.qtype)
    s = socket.socket(family_of(args.server), socket.SOCK_DGRAM)
    s.connect((args.server, args.port))
    s.settimeout(1.0)
    lat: list[float] = []
    failures = 0
    for i in range(args.count + 50):
        qid = i & 0xFFFF
        t0 = time.perf_counter()
        s.send(_with_id(queries[i % len(queries)], qid))
        try:
            while True:
                reply = s.recv(4096)
                if struct.unpack(">H", reply[:2])[0] == qid:
                    break
        except TimeoutError:
            failures += 1
            continue
        if i >= 50:  # the first 50 warm up
            lat.append((time.perf_counter() - t0) * 1e6)
    return {"p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99),
            "max_us": max(lat), "n": len(lat), "failures": failures}  # fmt: skip


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header), ident, seq)


def _probe_one(sock: socket.socket, addr: str, interval: float, timeout: float) -> float | None:
    """Ping `addr` every `interval` until a reply; CLOCK_MONOTONIC of it."""
    ident = os.getpid() & 0xFFFF
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        seq = (seq + 1) & 0xFFFF
        with contextlib.suppress(OSError):  # EHOSTUNREACH while ARP fails
            sock.sendto(_echo_request(ident, seq), (addr, 0))
        until = time.monotonic() + interval
        while (left := until - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            packet, (src, _) = sock.recvfrom(2048)
            ihl = (packet[0] & 0x0F) * 4
            kind, _, _, rid, _ = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
            if src == addr and kind == 0 and rid == ident:
                return time.monotonic()
    return None


def _tool_icmpprobe(args: argparse.Namespace) -> dict[str, Any]:
    """Line protocol on stdin/stdout: for each address read, ping it every
    --interval-ms until it answers and print `ADDR MONOTONIC` (or `ADDR -`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("ready", flush=True)
    for line in sys.stdin:
        addr = line.strip()
        if not addr:
            continue
        when = _probe_one(sock, addr, args.interval_ms / 1000, args.timeout)
        print(f"{addr} {when if when is not None else '-'}", flush=True)
    return {}


def _tool_fwadd(args: argparse.Namespace) -> dict[str, Any]:
    """Time publishing and unpublishing one port directly in the firewall
    backend the daemon uses (run inside the host's namespace)."""
    from pontoon.firewall import create_firewall
    from pontoon.firewall.base import PortRule

    fw = create_firewall(args.backend, False)
    adds, removes = [], []
    for i in range(args.count):
        rule = PortRule("0.0.0.0", "tcp", args.port + i, args.cip, 9, args.bridge)
        t0 = time.perf_counter()
        fw.add_ports([rule])
        t1 = time.perf_counter()
        fw.remove_ports([rule])
        t2 = time.perf_counter()
        adds.append((t1 - t0) * 1000)
        removes.append((t2 - t1) * 1000)
    return {"add_ms": adds, "remove_ms": removes}


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def parse_tool_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="_common_net.py", description="benchmark load tools")
    sub = p.add_subparsers(dest="tool", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--greet", type=_ports, default=[])
    s.add_argument("--echo", type=_ports, default=[])
    for name in ("connrate", "rr"):
        s = sub.add_parser(name)
        s.add_argument("--addr", required=True)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--seconds", type=float, default=3.0)
        s.add_argument("--procs", type=int, default=1)
    for name in ("dnsqps", "dnslat"):
        s = sub.add_parser(name)
        s.add_argument("--server", required=True)
        s.add_argument("--port", type=int, default=53)
        s.add_argument("--names", required=True, help="comma-separated")
        s.add_argument("--seconds", type=float, default=3.0)
        s.add_argument("--inflight", type=int, default=16)
        s.add_argument("--count", type=int, default=2000)
        s.add_argument("--qtype", default="A", help="A or AAAA")
    s = sub.add_parser("icmpprobe")
    s.add_argument("--interval-ms", type=float, default=2.0)
    s.add_argument("--timeout", type=float, default=5.0)
    s = sub.add_parser("fwadd")
    s.add_argument("--backend", choices=["nftables", "iptables"], required=True)
    s.add_argument("--bridge", required=True)
    s.add_argument("--cip", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=20)
    return p.parse_args(argv)


TOOLS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "serve": _tool_serve,
    "connrate": _tool_connrate,
    "rr": _tool_rr,
    "dnsqps": _tool_dnsqps,
    "dnslat": _tool_dnslat,
    "icmpprobe": _tool_icmpprobe,
    "fwadd": _tool_fwadd,
}


def tool_main(argv: list[str]) -> int:
    # bench/dns.py would shadow dnspython's `dns` package: drop bench/ from the path.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    args = parse_tool_args(argv)
    if args.tool == "serve":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    result = TOOLS[args.tool](args)
    if result:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(tool_main(sys.argv[1:]))
