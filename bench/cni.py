"""CNI benchmark: ADD and DEL as a runtime pays for them, process start included.

Side by side, in one run, each on its own simulated host (a `ptb-*` network
namespace; nothing touches the machine's own namespace), every container
publishing one TCP port:

  pontoon-cni   `pontoon-cni` exec'd with CNI_* + stdin against a pontoond
                (kernel mode) on a user-defined bridge network: address,
                veth, DNS resolver, port mapping;
  CNI chain     Debian's bridge + host-local + portmap, exec'd in turn as
                libcni runs a conflist (DEL reversed), host-local's dataDir
                private;
  netavark      netavark 1.4 `--config DIR setup|teardown NETNS`, options on
                stdin, as podman runs it.

Each up and down includes making and removing the container's namespace
(the same code for all three). Sizes 1 and 500 attached; the three take
turns every ROUND cycles, the first to go rotating, so that load from
elsewhere on the machine falls on all alike; figures are medians (p50) and
p99 over all cycles. Goals from issue 11: pontoon-cni ADD p50 <= 0.5x the
chain's at both sizes, and its ADD p50 @500 <= 1.5x @1. Results:
docs/benchmarks.md. Usage: .venv/bin/python bench/cni.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.append(str(HERE))

import attach  # noqa: E402
from _common_net import raise_nofile  # noqa: E402
from attach import Contender, ToolRun, WorkerDriver, fmt, p50, ratio, verdict  # noqa: E402
from common import (  # noqa: E402
    PREFIX,
    Stats,
    dpkg_version,
    log,
    machine_info,
    on_signals_clean_up,
    root_state,
    source_revision,
)

import pontoon  # noqa: E402
from pontoon.lab import SimHost  # noqa: E402
from pontoon.lab.leaks import changes  # noqa: E402

WORKER = HERE / "_cni_worker.py"
PONTOON, CHAIN, NETAVARK = "pontoon-cni", "CNI chain", "netavark"
TOOLS = [PONTOON, CHAIN, NETAVARK]
MODE = {PONTOON: "pontoon", CHAIN: "chain", NETAVARK: "netavark"}
SHORT = {PONTOON: "pc", CHAIN: "ch", NETAVARK: "nv"}
PONTOON_SUBNET = "10.90.0.0/16"
ROUND = 2  # cycles a tool runs before the next one's turn

GOAL_VS_CHAIN = 0.5
GOAL_GROWTH = 1.5


class CniWorkerDriver(WorkerDriver):
    """bench/_cni_worker.py in the host's namespace; for pontoon-cni, the
    host's pontoond first (kernel mode) with the network `bench`."""

    def __init__(self, tool: str, host: SimHost) -> None:
        cmd = [
            "nsenter", f"--net={host.netns}", "--",
            sys.executable, str(WORKER), MODE[tool],
            "--host-netns", str(host.netns),
            "--workdir", str(host.workdir / "worker"),
        ]  # fmt: skip
        if tool == PONTOON:
            host.start_daemon("--userland-proxy=false")
            host.cli("network", "create", "--subnet", PONTOON_SUBNET, "bench")
            cmd += ["--daemon", host.host_url]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._answer()


def start(c: Contender) -> None:
    try:
        c.host.create()
        c.driver = CniWorkerDriver(c.tool, c.host)
    except Exception as exc:  # a tool that cannot be driven is reported, not fatal
        c.fail(exc)


def run_all(workroot: Path, sizes: list[int], iterations: int, warmup: int) -> dict[str, ToolRun]:
    contenders = [
        Contender(t, SimHost(f"{PREFIX}{SHORT[t]}-{os.getpid()}", workroot / SHORT[t]))
        for t in TOOLS
    ]
    attach.CHUNK = ROUND
    try:
        for c in contenders:
            start(c)
        for size in sorted(sizes):
            log(f"{', '.join(TOOLS)} with {size} attached: {iterations} cycles (+{warmup} warm-up)")
            attach.measure_size(contenders, size, iterations, warmup)
    finally:
        for c in contenders:
            attach.stop(c)
    return {c.tool: c.run for c in contenders}


# ----------------------------------------------------------------- report


def report(
    runs: dict[str, ToolRun], sizes: list[int], info: dict[str, str], leaks: list[str]
) -> str:
    big = max(sizes)
    lines = ["", "## Machine", "", *[f"- {k}: {v}" for k, v in info.items()]]
    lines += ["", "## ADD (up) and DEL (down), milliseconds, namespace included", ""]
    lines += attach.timing_table(runs, sizes)
    lines += ["", "## pontoon-cni / the others (p50; < 1: pontoon-cni is faster)", ""]
    header = " | ".join(f"ADD @{s}" for s in sizes) + " | " + " | ".join(f"DEL @{s}" for s in sizes)
    lines += [f"| ratio | {header} |", "|---|" + "---:|" * (2 * len(sizes))]
    for theirs in (CHAIN, NETAVARK):
        cells = [
            fmt(ratio(p50(runs.get(PONTOON), s, what), p50(runs.get(theirs), s, what)))
            for what in ("up", "down")
            for s in sizes
        ]
        lines.append(f"| {PONTOON} / {theirs} | " + " | ".join(cells) + " |")
    lines += ["", f"## Growth: p50 @{big} / p50 @1", "", "| tool | ADD | DEL |", "|---|---:|---:|"]
    for tool, run in runs.items():
        up = ratio(p50(run, big), p50(run, 1))
        down = ratio(p50(run, big, "down"), p50(run, 1, "down"))
        lines.append(f"| {tool} | {fmt(up)} | {fmt(down)} |")
    lines += ["", "## Goals", "", "| goal | result | figures |", "|---|---|---|"]
    for name, ok, why in goals(runs, sizes):
        lines.append(f"| {name} | {verdict(ok)} | {why} |")
    lines += ["", "## Clean-up check (root namespace)", ""]
    lines += [f"- CHANGED: {c}" for c in leaks] or [
        "- links, nft tables, ptb- namespaces: as before"
    ]
    return "\n".join(lines)


def goals(runs: dict[str, ToolRun], sizes: list[int]) -> list[tuple[str, bool | None, str]]:
    big = max(sizes)
    out: list[tuple[str, bool | None, str]] = []
    for size in sorted({1, big}):
        r = ratio(p50(runs.get(PONTOON), size), p50(runs.get(CHAIN), size))
        ok = None if r is None else r <= GOAL_VS_CHAIN
        out.append((f"ADD p50 <= {GOAL_VS_CHAIN}x the chain's @{size}", ok, f"ratio {fmt(r)}"))
    g = ratio(p50(runs.get(PONTOON), big), p50(runs.get(PONTOON), 1))
    ok = None if g is None else g <= GOAL_GROWTH
    out.append((f"ADD p50 @{big} <= {GOAL_GROWTH}x @1", ok, "n/a" if g is None else f"x{g:.2f}"))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="sizes 1,50 and fewer cycles")
    p.add_argument("--sizes", help="comma-separated numbers of attached containers")
    p.add_argument("--iterations", type=int, help="timed ADD/DEL cycles per size and tool")
    p.add_argument("--warmup", type=int, default=4, help="untimed cycles before each size")
    p.add_argument("--json", type=Path, help="also write the raw timings here")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in (args.sizes or ("1,50" if args.quick else "1,500")).split(",")]
    if 1 not in args.sizes:
        p.error("--sizes must include 1 (the growth goal compares against it)")
    args.iterations = args.iterations or (20 if args.quick else 120)
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        log("bench/cni.py needs root (it creates network namespaces)")
        return 2
    on_signals_clean_up()
    raise_nofile()  # pontoond holds sockets per attachment (resolver, reserved port)
    workroot = Path(tempfile.mkdtemp(prefix=PREFIX + "cni-"))
    before = root_state(workroot)
    info = machine_info()
    info["pontoon"] = source_revision(Path(pontoon.__file__).resolve().parent)
    info["netavark"] = dpkg_version("netavark")
    info["containernetworking-plugins"] = dpkg_version("containernetworking-plugins")
    info["sizes / cycles"] = f"{args.sizes} / {args.iterations} per tool (+{args.warmup} warm-up)"
    info["method"] = f"the three side by side, {ROUND} cycles per turn, first turn rotating"
    info["loadavg before"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        runs = run_all(workroot, args.sizes, args.iterations, args.warmup)
    finally:
        attach.unmount_all_under(workroot)
        shutil.rmtree(workroot, ignore_errors=True)
    info["loadavg after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    leaks = changes(before, root_state(workroot))
    print(report(runs, args.sizes, info, leaks))
    if args.json:
        data: dict[str, Any] = {"machine": info, "tools": {
            tool: {"error": run.error, "sizes": {s: r.to_json() for s, r in run.sizes.items()}}
            for tool, run in runs.items()
        }}  # fmt: skip
        args.json.write_text(json.dumps(data, indent=1))
    for tool, run in runs.items():
        for size, r in run.sizes.items():
            log(f"{tool} @{size}: ADD {Stats.of(r.up_ms).p50:.1f} ms p50")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
