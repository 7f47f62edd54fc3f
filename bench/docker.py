"""Docker on pontoon vs Docker's own networking (issue 12), side by side.

One host: a simulated host (a network namespace and a mount namespace of its
own, pontoon.lab.engines) runs pontoond in plugin mode and dockerd 20.10. Two
networks with the same shape: `-d pontoon --ipam-driver pontoon` and Docker's
`-d bridge`. For each run, alternating between them: the time from `docker
run -d` (the CLI started) to the container answering TCP on its network
address from the host (a busybox httpd on port 80), then `docker rm -f`.
Goal: pontoon's p50 <= 1.0x Docker's bridge.

Two hosts: a lab of two hosts on etcd (pontoon.lab.cluster), each with
pontoond and dockerd 20.10; on the same two dockerds a pontoon overlay and
Swarm's (A `docker swarm init`, B joins, an `--attachable` overlay; plain
`docker run`, no services: the routing mesh and service VIPs need IPVS, which
this kernel lacks). A container on each overlay on A pings every 10 ms; each
run times `docker run -d` of a new container on B (the CLI started) to A's
first answered ping (goal <= 0.1x Swarm), then iperf3 between a container on
each host, 1 and 4 streams (goal >= 1.0x Swarm).

    .venv/bin/python bench/docker.py [--runs N] [--only one-host|two-hosts] [--quick] [--profile]

`--profile`: pontoond logs at debug level, and the report gives how long each
of Docker's calls to the plugin took inside it.

Nothing is left behind: the run checks the machine's links, nftables tables,
its own namespaces, mounts, processes and cgroups before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.append(str(HERE))

from _common_net import iperf3_gbps, tool_argv, wait_tcp  # noqa: E402
from common import Stats, log, machine_info, source_revision, stop_process  # noqa: E402

from pontoon.lab import SimHost  # noqa: E402
from pontoon.lab.cluster import STATE_ROOT, docker_dns  # noqa: E402
from pontoon.lab.engines import IMAGE, EngineHost  # noqa: E402
from pontoon.lab.leaks import changes, machine_state  # noqa: E402
from pontoon.sandbox import netns  # noqa: E402

WORKROOT = Path("/tmp/pontoon-bench")
NETWORKS = {"pontoon": "10.123.0", "bridge": "10.124.0"}


def answers(host: SimHost, address: str) -> bool:
    def connect() -> bool:
        try:
            with socket.create_connection((address, 80), timeout=0.2):
                return True
        except OSError:
            return False

    return netns.run_in(host.netns, connect)


def one_run(engines: EngineHost, driver: str, index: int) -> float:
    address = f"{NETWORKS[driver]}.{10 + index % 200}"
    name = f"b{driver}{index}"
    started = time.perf_counter()
    engines.docker("run", "-d", "--stop-timeout", "1", "--name", name, "--network",
                   f"net-{driver}", "--ip", address, IMAGE, "httpd", "-f", "-p", "80")  # fmt: skip
    while not answers(engines.host, address):
        if time.perf_counter() - started > 30:
            raise TimeoutError(f"{name} never answered on {address}")
        time.sleep(0.005)
    elapsed = (time.perf_counter() - started) * 1000
    engines.docker("rm", "-f", name)
    return elapsed


# -- two hosts: pontoon's overlay vs Docker's Swarm overlay -------------------------------------

# Both overlays on the same two lab hosts and the same two dockerds, so only
# the network differs: pontoon's (etcd, remote driver) and Swarm's (its raft
# store and gossip, Docker's own overlay driver).
OVERLAYS = {"pontoon": "10.125.0", "swarm": "10.126.0"}
IPERF_PORT = 5201


def swarm_up(a: EngineHost, b: EngineHost, a_addr: str) -> None:
    """A swarm of two: A the manager, B a worker. Plain `docker run` on an
    `--attachable` overlay only: no services, so neither the ingress
    routing mesh nor a service VIP (both IPVS, which this kernel lacks) is
    ever used."""
    a.docker("swarm", "init", "--advertise-addr", a_addr)
    token = a.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    b.docker("swarm", "join", "--token", token, f"{a_addr}:2377")
    # A container on B needs B's session with the manager (its attachment is
    # a task the manager hands out): wait until the manager sees B ready.
    deadline = time.monotonic() + 30
    while a.docker("node", "ls", "--format", "{{.Status}}").stdout.split().count("Ready") < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("host B never became a ready swarm worker")
        time.sleep(0.2)
    a.docker("network", "create", "-d", "overlay", "--attachable",
             "--subnet", f"{OVERLAYS['swarm']}.0/24", "net-swarm")  # fmt: skip


def swarm_attach_ready(b: EngineHost, timeout: float = 90) -> float:
    """Seconds until a container on B can join the swarm overlay. A fresh
    worker's first attempts fail after 20 s ("attaching to network failed
    ... context deadline exceeded") until its agent renews its session with
    the manager; the first-ping runs start after that."""
    started = time.monotonic()
    while True:
        probe = b.docker("run", "--rm", "--name", "swarm-probe", "--network", "net-swarm",
                         IMAGE, "true", check=False)  # fmt: skip
        if probe.returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"B never attached to the swarm overlay: {probe.stderr.strip()}")
        b.docker("rm", "-f", "swarm-probe", check=False)  # a failed start leaves it created


def pontoon_overlay_up(a: EngineHost, b: EngineHost) -> None:
    a.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
             "-o", "pontoon.driver=overlay", "--subnet", f"{OVERLAYS['pontoon']}.0/24",
             "net-pontoon")  # fmt: skip
    deadline = time.monotonic() + 15
    while "net-pontoon" not in b.docker("network", "ls").stdout:
        if time.monotonic() > deadline:
            raise TimeoutError("pontoon's overlay never reached host B")
        time.sleep(0.1)


def container_netns(engines: EngineHost, name: str) -> str:
    pid = json.loads(engines.docker("inspect", name).stdout)[0]["State"]["Pid"]
    return f"/proc/{pid}/ns/net"


def sleeper(engines: EngineHost, name: str, network: str, address: str) -> str:
    """A container that only holds its network namespace; returns that."""
    engines.docker("run", "-d", "--stop-timeout", "1", "--name", name, "--network", network,
                   "--ip", address, IMAGE, "sleep", "3600")  # fmt: skip
    return container_netns(engines, name)


class Prober:
    """Pings from a container on A every 10 ms until an address answers
    (bench/_common_net.py's icmpprobe, run from the machine's file system in
    the container's network namespace)."""

    def __init__(self, netns_path: str) -> None:
        # ARP retried every 10 ms instead of every second: a target still
        # unknown to the overlay when the first request leaves is then found
        # within 10 ms of its peer entry arriving, not at the next second.
        subprocess.run(["nsenter", f"--net={netns_path}", "sysctl", "-q", "-w",
                        "net.ipv4.neigh.eth0.retrans_time_ms=10"],
                       check=True, capture_output=True)  # fmt: skip
        argv = ["nsenter", f"--net={netns_path}",
                *tool_argv("icmpprobe", "--interval-ms", "10", "--timeout", "30")]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._line() != "ready":
            raise RuntimeError("the prober did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def start(self, address: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(address + "\n")
        self.proc.stdin.flush()

    def answered(self) -> float:
        """CLOCK_MONOTONIC of the first reply to the address started."""
        address, when = self._line().split()
        if when == "-":
            raise TimeoutError(f"{address} never answered a ping")
        return float(when)

    def stop(self) -> None:
        stop_process(self.proc, grace=1)


def first_ping(prober: Prober, b: EngineHost, driver: str, index: int) -> tuple[float, float]:
    """(ms to the first ping answered, ms until `docker run -d` returned),
    both from the moment `docker run` starts on B; A pings from before."""
    address = f"{OVERLAYS[driver]}.{10 + index % 200}"
    name = f"t{driver}{index}"
    prober.start(address)
    time.sleep(0.02)  # the prober is sending
    started = time.monotonic()
    b.docker("run", "-d", "--stop-timeout", "1", "--name", name, "--network",
             f"net-{driver}", "--ip", address, IMAGE, "sleep", "3600")  # fmt: skip
    returned = (time.monotonic() - started) * 1000
    answered = (prober.answered() - started) * 1000
    b.docker("rm", "-f", name)
    return answered, returned


def run_without_network(b: EngineHost, index: int) -> float:
    """ms for `docker run -d --network none` on B: the floor under both
    overlays' times (dockerd, containerd and runc with no network at all)."""
    name = f"tnone{index}"
    started = time.monotonic()
    b.docker("run", "-d", "--stop-timeout", "1", "--name", name, "--network", "none",
             IMAGE, "sleep", "3600")  # fmt: skip
    elapsed = (time.monotonic() - started) * 1000
    b.docker("rm", "-f", name)
    return elapsed


def iperf_servers(pingers: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """An iperf3 server in each of A's containers, from the machine's file
    system (busybox has no iperf3): the same program for both overlays."""
    servers = []
    for netns_path in pingers.values():
        argv = ["nsenter", f"--net={netns_path}", "iperf3", "-s", "-p", str(IPERF_PORT)]
        servers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return servers


def throughput(b_netns: str, address: str, streams: int, seconds: float) -> float:
    """Gbit/s from B's container to A's, the client in B's container's
    network namespace."""
    return iperf3_gbps(["nsenter", f"--net={b_netns}"], address, IPERF_PORT, seconds, streams)


def two_hosts(lab: str, runs: int, reps: int, seconds: float) -> dict[str, Any]:
    from pontoon.lab import cluster

    state = cluster.up(lab, 2, "10.98.0.0/24", docker=True)
    servers: list[subprocess.Popen[bytes]] = []
    probers: dict[str, Prober] = {}
    try:
        a, b = (h.engines() for h in state.hosts)
        swarm_up(a, b, state.hosts[0].address)
        pontoon_overlay_up(a, b)
        swarm_ready_s = swarm_attach_ready(b)
        log(f"two hosts: B attached to the swarm overlay {swarm_ready_s:.1f} s after joining")
        pingers, senders = {}, {}
        for driver, prefix in OVERLAYS.items():
            pingers[driver] = sleeper(a, f"a-{driver}", f"net-{driver}", f"{prefix}.2")
            senders[driver] = sleeper(b, f"b-{driver}", f"net-{driver}", f"{prefix}.3")
            probers[driver] = Prober(pingers[driver])
        # Warm-up, not counted: each overlay's first container on B.
        for driver in OVERLAYS:
            first_ping(probers[driver], b, driver, 999)
        answered: dict[str, list[float]] = {d: [] for d in OVERLAYS}
        returned: dict[str, list[float]] = {d: [] for d in OVERLAYS}
        for i in range(runs):
            for driver in alternate(OVERLAYS, i):
                ping_ms, run_ms = first_ping(probers[driver], b, driver, i)
                answered[driver].append(ping_ms)
                returned[driver].append(run_ms)
            returned.setdefault("none", []).append(run_without_network(b, i))
            log(f"two hosts: first ping, run {i + 1}/{runs}")
        servers = iperf_servers(pingers)
        for driver, prefix in OVERLAYS.items():
            wait_tcp(["nsenter", f"--net={senders[driver]}"], f"{prefix}.2", IPERF_PORT)
        gbps: dict[str, dict[int, list[float]]] = {d: {1: [], 4: []} for d in OVERLAYS}
        for i in range(reps):
            for streams in (1, 4):
                for driver in alternate(OVERLAYS, i):
                    address = f"{OVERLAYS[driver]}.2"
                    gbps[driver][streams].append(
                        throughput(senders[driver], address, streams, seconds))  # fmt: skip
            log(f"two hosts: throughput, round {i + 1}/{reps}")
        result = two_hosts_result(answered, returned, gbps)
        result["swarm_worker_first_attach_s"] = round(swarm_ready_s, 1)
        return result
    finally:
        for server in servers:
            stop_process(server, grace=2)
        for prober in probers.values():
            prober.stop()
        cluster.down(state.name)


def alternate(drivers: dict[str, str], i: int) -> list[str]:
    """Every other round the other one goes first (warm caches, load)."""
    order = list(drivers)
    return order if i % 2 == 0 else order[::-1]


def two_hosts_result(
    answered: dict[str, list[float]],
    returned: dict[str, list[float]],
    gbps: dict[str, dict[int, list[float]]],
) -> dict[str, Any]:
    first = {d: Stats.of(v).__dict__ for d, v in answered.items()}
    ping_ratio = first["pontoon"]["p50"] / first["swarm"]["p50"]
    tput = {
        d: {f"{s}_stream": statistics.median(v) for s, v in by.items()} for d, by in gbps.items()
    }
    tput_ratio = {k: tput["pontoon"][k] / tput["swarm"][k] for k in tput["pontoon"]}
    return {
        "docker_run_on_b_to_first_ping_from_a_ms": first,
        "docker_run_returned_ms": {d: Stats.of(v).__dict__ for d, v in returned.items()},
        "first_ping_ratio_p50": round(ping_ratio, 3),
        "first_ping_goal": "<= 0.1",
        "first_ping_met": ping_ratio <= 0.1,
        "tcp_gbps_median": tput,
        "tcp_gbps_runs": gbps,
        "tcp_ratio": {k: round(v, 3) for k, v in tput_ratio.items()},
        "tcp_goal": ">= 1.0",
        "tcp_met": all(v >= 1.0 for v in tput_ratio.values()),
    }


def plugin_calls(log_path: Path) -> dict[str, dict[str, float]]:
    """From pontoond's debug log: how long each of Docker's calls to the
    plugin took inside pontoond (request logged to reply logged), per call."""
    started: dict[str, datetime.datetime] = {}
    took: dict[str, list[float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 6)
        if len(parts) < 7 or parts[4] != "docker" or not parts[5].startswith("/"):
            continue
        when = datetime.datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f")
        call = parts[5].lstrip("/")
        if parts[6].startswith("-> "):
            if call in started:
                took.setdefault(call, []).append((when - started.pop(call)).total_seconds() * 1000)
        else:
            started[call] = when
    return {call: {"n": len(ms), "median_ms": statistics.median(ms), "max_ms": max(ms)}
            for call, ms in sorted(took.items())}  # fmt: skip


def one_host(tag: str, runs: int, profile: bool = False) -> dict[str, Any]:
    host = SimHost(f"ptb-docker-{tag}", WORKROOT / f"docker-{tag}")
    host.create()
    engines = EngineHost(host)
    try:
        engines.create()
        debug = ["--log-level", "debug"] if profile else []
        host.start_daemon("--docker-plugin", "--docker-host", engines.docker_host, *debug)
        engines.start_dockerd(*docker_dns(host))
        engines.import_image("docker")
        engines.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
                       "--subnet", f"{NETWORKS['pontoon']}.0/24", "net-pontoon")  # fmt: skip
        engines.docker("network", "create", "-d", "bridge",
                       "--subnet", f"{NETWORKS['bridge']}.0/24", "net-bridge")  # fmt: skip
        time.sleep(1)  # pontoon makes its network once dockerd tells the name
        times: dict[str, list[float]] = {"pontoon": [], "bridge": []}
        one_run(engines, "pontoon", 999)  # warm-up: the plugin's first activation
        one_run(engines, "bridge", 998)
        for i in range(runs):
            for driver in alternate(NETWORKS, i):
                times[driver].append(one_run(engines, driver, i))
            log(f"one host: run {i + 1}/{runs}")
        result = {driver: Stats.of(values).__dict__ for driver, values in times.items()}
        ratio = result["pontoon"]["p50"] / result["bridge"]["p50"]
        # Each round ran both, one right after the other: their difference is
        # less at the mercy of the machine's load than either time.
        paired = [p - b for p, b in zip(times["pontoon"], times["bridge"], strict=True)]
        report = {"docker_run_to_answer_ms": result, "ratio_p50": round(ratio, 3),
                  "goal": "<= 1.0", "met": ratio <= 1.0,
                  "pontoon_minus_bridge_ms": round(statistics.median(paired), 1)}  # fmt: skip
        if profile:
            report["plugin_calls_in_pontoond"] = plugin_calls(host.log)
        return report
    finally:
        engines.destroy()
        host.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per driver")
    parser.add_argument("--quick", action="store_true", help="5 runs, short iperf3 (make bench)")
    parser.add_argument("--only", choices=("one-host", "two-hosts"), help="one half only")
    parser.add_argument("--overlay", action="store_true", help="the same as --only two-hosts")
    parser.add_argument("--profile", action="store_true",
                        help="one host: how long each plugin call took in pontoond")  # fmt: skip
    args = parser.parse_args()
    runs, reps, seconds = (5, 1, 3.0) if args.quick else (args.runs, 3, 5.0)
    if args.overlay:
        args.only = "two-hosts"
    signal_unwinds()
    tag, lab = uuid.uuid4().hex[:6], f"b{uuid.uuid4().hex[:5]}"
    # Ours alone: the engine host's and the lab's namespaces and cgroups, and
    # whatever is mounted from or runs out of their folders.
    mine = (
        (f"ptb-docker-{tag}", f"ptl-{lab}-"),
        (str(WORKROOT / f"docker-{tag}"), str(STATE_ROOT / lab)),
    )
    before = machine_state(*mine)
    report: dict[str, Any] = {"machine": machine_info(),
                              "pontoon": source_revision(HERE.parent / "pontoon")}  # fmt: skip
    try:
        if args.only in (None, "one-host"):
            report["one_host"] = one_host(tag, runs, args.profile)
        if args.only in (None, "two-hosts"):
            report["two_hosts"] = two_hosts(lab, runs, reps, seconds)
    finally:
        report["leaks"] = changes(before, machine_state(*mine))
        print(json.dumps(report, indent=2))
    if report["leaks"]:
        log("WARNING: the machine changed: " + "; ".join(report["leaks"]))
        sys.exit(1)


def signal_unwinds() -> None:
    """SIGINT and SIGTERM unwind the stack, so every clean-up runs."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


if __name__ == "__main__":
    main()
