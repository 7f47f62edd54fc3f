"""Attach benchmark: time to bring a container's network up and to tear it down.

Side by side, in one run, each on a fresh simulated host (a `ptb-*` network
namespace; nothing touches the machine's own namespace):

  pontoon API   POST /containers/run of `sleep infinity`, DELETE ?force=1
                (the user-facing figure: includes starting and killing the
                container's processes);
  pontoon net   the network part alone, in process with the daemon's engine
                (netns.create + Engine.attach, Engine.detach_owner +
                netns.remove: what every front end calls);
  CNI bridge    /usr/lib/cni/bridge + host-local, ADD / DEL, plus creating and
                removing the namespace;
  netavark      /usr/lib/podman/netavark setup / teardown, plus the namespace.

Each is timed with 1, 100 and 500 containers already attached (--quick: 1 and
100, fewer iterations). The API runs alone, then the three network-only tools
run together, taking turns, so that load from elsewhere falls on them alike.
Prints markdown tables, the ratios and the goals. Method and results:
docs/benchmarks.md. Usage: .venv/bin/python bench/attach.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

# bench/ holds modules named like packages (dns.py shadows dnspython): keep it
# off the front of the path and find our helpers at its end.
HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.append(str(HERE))

from common import (  # noqa: E402
    PREFIX,
    Runner,
    SizeResult,
    Stats,
    dpkg_version,
    log,
    machine_info,
    on_signals_clean_up,
    root_state,
    rss_kb,
    source_revision,
    stop_process,
    unmount_all_under,
)

import pontoon  # noqa: E402
from pontoon.client import Client  # noqa: E402
from pontoon.lab import SimHost  # noqa: E402
from pontoon.lab.leaks import changes  # noqa: E402

WORKER = HERE / "_attach_worker.py"
CNI_BRIDGE = Path("/usr/lib/cni/bridge")
NETAVARK = Path("/usr/lib/podman/netavark")

API, NET, CNI, NETAVARK_TOOL = "pontoon API", "pontoon net", "CNI bridge", "netavark"
TOOLS = [API, NET, CNI, NETAVARK_TOOL]
WORKER_MODE = {NET: "pontoon", CNI: "cni", NETAVARK_TOOL: "netavark"}
SHORT = {API: "api", NET: "net", CNI: "cni", NETAVARK_TOOL: "nv"}

# Goals from the issue.
GOAL_VS_CNI = 1 / 3  # our p50 <= 1/3 of the CNI plugins' p50, at both sizes
GOAL_GROWTH = 1.5  # our p50 at the large size <= 1.5x our p50 at 1
GOAL_RSS_MB = 80  # pontoond RSS with 500 containers attached

CHUNK = 5  # cycles a tool runs before the next tool's turn


@dataclasses.dataclass
class ToolRun:
    sizes: dict[int, SizeResult] = dataclasses.field(default_factory=dict)
    error: str = ""


class ToolError(RuntimeError):
    """A tool (or its worker) failed: the message says how."""


class Driver(Protocol):
    """What the schedule needs of a contender: fill, cycle, close."""

    def fill(self, size: int) -> float: ...

    def cycle(self, n: int) -> tuple[list[float], list[float]]: ...

    def extra(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------- pontoon API


class ApiHarness:
    """Containers through the daemon's HTTP API, as `pontoon run -d` / `rm -f`."""

    def __init__(self, host: SimHost) -> None:
        self.client = Client(host.host_url)

    def prepare(self, index: int) -> dict[str, Any]:
        return {"Name": f"b{index}", "Cmd": ["sleep", "infinity"]}

    def up(self, spec: dict[str, Any]) -> str:
        return str(self.client.post("/containers/run", spec)["Id"])

    def down(self, cid: str) -> None:
        self.client.delete(f"/containers/{cid}", force="1")

    def forget(self, cid: str) -> None:
        pass


class ApiDriver(Runner):
    """The API harness, run from here against the host's pontoond."""

    def __init__(self, host: SimHost) -> None:
        host.start_daemon()
        self.pid = daemon_pid(host)
        self.idle_kb = rss_kb(self.pid)
        super().__init__(ApiHarness(host))

    def extra(self) -> dict[str, Any]:
        return {"rss_kb": rss_kb(self.pid), "rss_idle_kb": self.idle_kb}

    def close(self) -> None:
        pass


def daemon_pid(host: SimHost) -> int:
    pid = int((host.exec_root / "pontoond.pid").read_text())
    if b"pontoond" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        raise RuntimeError(f"pid {pid} is not pontoond")
    return pid


# ---------------------------------------------------------------- workers


class WorkerDriver:
    """bench/_attach_worker.py inside the host's namespace, over its pipes."""

    def __init__(self, tool: str, host: SimHost) -> None:
        cmd = [
            "nsenter", f"--net={host.netns}", "--",
            sys.executable, str(WORKER), WORKER_MODE[tool],
            "--host-netns", str(host.netns),
            "--workdir", str(host.workdir / "worker"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._answer()  # {"ready": true}

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise ToolError(f"worker exited with status {self.proc.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise ToolError(answer["error"])
        return answer

    def _ask(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def fill(self, size: int) -> float:
        return float(self._ask(op="fill", size=size)["fill_s"])

    def cycle(self, n: int) -> tuple[list[float], list[float]]:
        answer = self._ask(op="cycle", n=n)
        return answer["up_ms"], answer["down_ms"]

    def extra(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(60)  # clean-up of 500 sandboxes takes a moment
        stop_process(self.proc)


# --------------------------------------------------------------- schedule


@dataclasses.dataclass
class Contender:
    tool: str
    host: SimHost
    driver: Driver | None = None
    run: ToolRun = dataclasses.field(default_factory=ToolRun)

    @property
    def live(self) -> bool:
        return self.driver is not None and not self.run.error

    def fail(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, ToolError) else f"{type(exc).__name__}: {exc}"
        self.run.error = " ".join(text.split())[:400]  # one table cell
        log(f"{self.tool}: NOT MEASURED further: {self.run.error}")


def unavailable(tool: str) -> str:
    if tool == CNI and not CNI_BRIDGE.exists():
        return f"{CNI_BRIDGE} not installed (Debian package containernetworking-plugins)"
    if tool == NETAVARK_TOOL and not NETAVARK.exists():
        return f"{NETAVARK} not installed (Debian package netavark)"
    return ""


def start(c: Contender) -> None:
    if reason := unavailable(c.tool):
        c.run.error = reason
        return
    try:
        c.host.create()
        c.driver = ApiDriver(c.host) if c.tool == API else WorkerDriver(c.tool, c.host)
    except Exception as exc:  # a tool that cannot be driven is reported, not fatal
        c.fail(exc)


def stop(c: Contender) -> None:
    """Close the driver and destroy the host, whatever state they are in."""
    try:
        if c.driver is not None:
            c.driver.close()
    finally:
        host = c.host
        host.stop_daemon(signal.SIGKILL)
        host.kill_containers()
        unmount_all_under(host.workdir)
        host.destroy()


def step(c: Contender, action: Callable[[Driver], Any]) -> Any:
    """Run one action on a live contender; a failure takes it out of the run."""
    assert c.driver is not None
    try:
        return action(c.driver)
    except Exception as exc:
        c.fail(exc)
        return None


def measure_size(contenders: list[Contender], size: int, iterations: int, warmup: int) -> None:
    """Fill every contender to `size`, then time cycles in rounds of CHUNK,
    rotating who goes first, so that load from elsewhere on the machine
    falls on every tool alike."""
    fills: dict[str, float] = {}
    for c in contenders:
        if c.live:
            fills[c.tool] = step(c, lambda d: d.fill(size)) or 0.0
    for c in contenders:
        if c.live and warmup:
            step(c, lambda d: d.cycle(warmup))
    ups: dict[str, list[float]] = {c.tool: [] for c in contenders}
    downs: dict[str, list[float]] = {c.tool: [] for c in contenders}
    for first in range(0, iterations, CHUNK):
        n = min(CHUNK, iterations - first)
        k = (first // CHUNK) % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            if c.live and (got := step(c, lambda d, n=n: d.cycle(n))) is not None:
                ups[c.tool] += got[0]
                downs[c.tool] += got[1]
    for c in contenders:
        if c.live and (extra := step(c, lambda d: d.extra())) is not None:
            extra["fill_s"] = round(fills[c.tool], 3)
            c.run.sizes[size] = SizeResult(ups[c.tool], downs[c.tool], extra)
            log_size(c.tool, size, c.run.sizes[size])


def log_size(tool: str, size: int, r: SizeResult) -> None:
    up, down = Stats.of(r.up_ms), Stats.of(r.down_ms)
    log(
        f"  {tool:<12} @{size:<4} up p50 {up.p50:7.2f} p99 {up.p99:7.2f} ms | "
        f"down p50 {down.p50:7.2f} p99 {down.p99:7.2f} ms | fill {r.extra['fill_s']:6.1f} s"
    )


def run_group(
    tools: list[str], workroot: Path, sizes: list[int], iterations: int, warmup: int
) -> dict[str, ToolRun]:
    """Tools whose hosts are up at the same time, their cycles interleaved."""
    contenders = [
        Contender(t, SimHost(f"{PREFIX}{SHORT[t]}-{os.getpid()}", workroot / SHORT[t]))
        for t in tools
    ]
    try:
        for c in contenders:
            start(c)
        for size in sorted(sizes):
            log(f"{', '.join(tools)} with {size} attached: {iterations} cycles (+{warmup} warm-up)")
            measure_size(contenders, size, iterations, warmup)
    finally:
        for c in contenders:
            stop(c)
    return {c.tool: c.run for c in contenders}


def run_all(
    tools: list[str], workroot: Path, sizes: list[int], iterations: int, warmup: int
) -> dict[str, ToolRun]:
    """The API runs alone: each container's `unshare --mount` copies every
    mount of the machine, so the other tools' sandboxes would slow it down (and
    its containers would hold copies of theirs). The network-only tools make no
    mount namespaces and run together, interleaved."""
    runs: dict[str, ToolRun] = {}
    for group in ([API], [NET, CNI, NETAVARK_TOOL]):
        if chosen := [t for t in group if t in tools]:
            runs |= run_group(chosen, workroot, sizes, iterations, warmup)
    return runs


# ----------------------------------------------------------------- report


def p50(run: ToolRun | None, size: int, what: str = "up") -> float | None:
    if run is None or size not in run.sizes:
        return None
    r = run.sizes[size]
    return Stats.of(r.up_ms if what == "up" else r.down_ms).p50


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def timing_table(runs: dict[str, ToolRun], sizes: list[int]) -> list[str]:
    lines = [
        "| tool | attached | up p50 ms | up p99 ms | down p50 ms | down p99 ms | n |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tool, run in runs.items():
        for size in sizes:
            if size in run.sizes:
                r = run.sizes[size]
                up, down = Stats.of(r.up_ms), Stats.of(r.down_ms)
                lines.append(
                    f"| {tool} | {size} | {up.p50:.2f} | {up.p99:.2f} | "
                    f"{down.p50:.2f} | {down.p99:.2f} | {up.n} |"
                )
        if run.error:
            lines.append(f"| {tool} | - | not measured: {run.error} | | | | |")
    return lines


def ratio_table(runs: dict[str, ToolRun], sizes: list[int]) -> list[str]:
    lines = [
        "| ratio (p50) | " + " | ".join(f"@{s} up" for s in sizes) + " | "
        + " | ".join(f"@{s} down" for s in sizes) + " |",
        "|---|" + "---:|" * (2 * len(sizes)),
    ]  # fmt: skip
    for ours in (NET, API):
        for theirs in (CNI, NETAVARK_TOOL):
            cells = [
                fmt(ratio(p50(runs.get(ours), s, what), p50(runs.get(theirs), s, what)))
                for what in ("up", "down")
                for s in sizes
            ]
            lines.append(f"| {ours} / {theirs} | " + " | ".join(cells) + " |")
    return lines


def growth_lines(runs: dict[str, ToolRun], sizes: list[int]) -> list[str]:
    big = max(sizes)
    lines = [f"| p50 @{big} / p50 @1 | up | down |", "|---|---:|---:|"]
    for tool, run in runs.items():
        up = ratio(p50(run, big), p50(run, 1))
        down = ratio(p50(run, big, "down"), p50(run, 1, "down"))
        lines.append(f"| {tool} | {fmt(up)} | {fmt(down)} |")
    return lines


def rss_lines(runs: dict[str, ToolRun], sizes: list[int]) -> list[str]:
    run = runs.get(API)
    if run is None or not run.sizes:
        return ["pontoond RSS: n/a"]
    idle = next(iter(run.sizes.values())).extra["rss_idle_kb"]
    cells = [f"idle {idle / 1024:.1f} MB"] + [
        f"{s} attached {run.sizes[s].extra['rss_kb'] / 1024:.1f} MB"
        for s in sizes
        if s in run.sizes
    ]
    return ["pontoond RSS (VmRSS): " + ", ".join(cells)]


def goals(runs: dict[str, ToolRun], sizes: list[int]) -> list[tuple[str, bool | None, str]]:
    """(goal, met?, the figures behind it)."""
    big = max(sizes)
    out = []
    for ours in (NET, API):
        for size in sorted({1, big}):
            r = ratio(p50(runs.get(ours), size), p50(runs.get(CNI), size))
            out.append(
                (
                    f"{ours} up p50 <= 1/3 CNI @{size}",
                    None if r is None else r <= GOAL_VS_CNI,
                    f"ratio {fmt(r)}",
                )
            )
    for ours in (NET, API):
        g = ratio(p50(runs.get(ours), big), p50(runs.get(ours), 1))
        out.append(
            (
                f"{ours} up p50 @{big} <= {GOAL_GROWTH}x @1",
                None if g is None else g <= GOAL_GROWTH,
                "n/a" if g is None else f"x{g:.2f}",
            )
        )
    api = runs.get(API)
    rss = None
    if api is not None and big in api.sizes:
        rss = api.sizes[big].extra["rss_kb"] / 1024
    out.append(
        (
            f"pontoond RSS <= {GOAL_RSS_MB} MB @{big}",
            None if rss is None else rss <= GOAL_RSS_MB,
            fmt(rss, ".1f", " MB"),
        )
    )
    return out


def report(
    runs: dict[str, ToolRun], sizes: list[int], info: dict[str, str], leaks: list[str]
) -> str:
    lines = ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Bring-up (up) and tear-down (down), milliseconds", ""]
    lines += timing_table(runs, sizes)
    lines += ["", "## Ratios (< 1: pontoon is faster)", ""]
    lines += ratio_table(runs, sizes)
    lines += ["", "## Growth with the number of attached containers", ""]
    lines += growth_lines(runs, sizes)
    lines += ["", *rss_lines(runs, sizes), "", "## Goals", ""]
    lines += ["| goal | result | figures |", "|---|---|---|"]
    lines += [f"| {name} | {verdict(ok)} | {why} |" for name, ok, why in goals(runs, sizes)]
    if max(sizes) < 500:
        lines += ["", f"(quick run: the large size is {max(sizes)}, not 500)"]
    lines += ["", "## Clean-up check (root namespace)", ""]
    lines += [f"- CHANGED: {c}" for c in leaks] or [
        "- links, nft tables, namespaces, mounts, processes, cgroups: as before"
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="sizes 1,100 and fewer iterations")
    p.add_argument("--sizes", help="comma-separated numbers of attached containers")
    p.add_argument("--iterations", type=int, help="timed attach/detach cycles per size")
    p.add_argument("--warmup", type=int, default=5, help="untimed cycles before each size")
    p.add_argument("--tools", help=f"comma-separated subset of: {', '.join(SHORT.values())}")
    p.add_argument("--json", type=Path, help="also write the raw timings here")
    args = p.parse_args(argv)
    args.sizes = [
        int(s) for s in (args.sizes or ("1,100" if args.quick else "1,100,500")).split(",")
    ]
    if 1 not in args.sizes:
        p.error("--sizes must include 1 (the goals compare against it)")
    args.iterations = args.iterations or (30 if args.quick else 100)
    wanted = set((args.tools or ",".join(SHORT.values())).split(","))
    args.tools = [t for t in TOOLS if SHORT[t] in wanted]
    return args


def write_json(path: Path, runs: dict[str, ToolRun], info: dict[str, str]) -> None:
    data = {
        "machine": info,
        "tools": {
            tool: {"error": run.error, "sizes": {s: r.to_json() for s, r in run.sizes.items()}}
            for tool, run in runs.items()
        },
    }
    path.write_text(json.dumps(data, indent=1))


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        log("bench/attach.py needs root (it creates network namespaces)")
        return 2
    on_signals_clean_up()
    workroot = Path(tempfile.mkdtemp(prefix=PREFIX + "attach-"))
    before = root_state(workroot)
    info = machine_info()
    info["pontoon"] = source_revision(Path(pontoon.__file__).resolve().parent)
    info["netavark"] = dpkg_version("netavark")
    info["containernetworking-plugins"] = dpkg_version("containernetworking-plugins")
    info["sizes / iterations"] = f"{args.sizes} / {args.iterations} (+{args.warmup} warm-up)"
    info["method"] = (
        f"pontoon API alone, then the other three side by side, {CHUNK} cycles per turn"
    )
    try:
        runs = run_all(args.tools, workroot, args.sizes, args.iterations, args.warmup)
    finally:
        unmount_all_under(workroot)
        shutil.rmtree(workroot, ignore_errors=True)
    info["loadavg after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    leaks = changes(before, root_state(workroot))
    print(report(runs, args.sizes, info, leaks))
    if args.json:
        write_json(args.json, runs, info)
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
