"""Docker on pontoon vs Docker's own bridge driver, side by side on one dockerd.

One simulated host (a network namespace and a mount namespace of its own,
pontoon.lab.engines) runs pontoond in plugin mode and dockerd 20.10. Two
networks with the same shape: `-d pontoon --ipam-driver pontoon` and Docker's
`-d bridge`. For each run, alternating between them: the time from `docker
run -d` (the CLI started) to the container answering TCP on its network
address from the host (a busybox httpd on port 80), then `docker rm -f`.

    .venv/bin/python bench/docker.py [--runs N]

Goal (issue 12): pontoon's time <= 1.0x Docker's bridge.

`--overlay`: two lab hosts on etcd instead, pontoon's overlay only: the time
from `docker run -d` on host 2 to the first ping answered from a container on
host 1. Docker's Swarm overlay, the issue's peer for it, is not measured yet.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.append(str(HERE))

from common import Stats, log  # noqa: E402

from pontoon.lab import SimHost  # noqa: E402
from pontoon.lab.cluster import docker_dns  # noqa: E402
from pontoon.lab.engines import IMAGE, EngineHost  # noqa: E402
from pontoon.sandbox import netns  # noqa: E402

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


def overlay_first_ping(runs: int) -> list[float]:
    from pontoon.lab import cluster

    state = cluster.up(f"b{uuid.uuid4().hex[:5]}", 2, "10.98.0.0/24", docker=True)
    try:
        h1, h2 = (h.engines() for h in state.hosts)
        h1.docker("network", "create", "-d", "pontoon", "--ipam-driver", "pontoon",
                  "-o", "pontoon.driver=overlay", "--subnet", "10.125.0.0/24", "ov")  # fmt: skip
        deadline = time.monotonic() + 15
        while "ov" not in h2.docker("network", "ls").stdout:
            if time.monotonic() > deadline:
                raise TimeoutError("the overlay never reached host 2")
            time.sleep(0.1)
        h1.docker("run", "-d", "--name", "pinger", "--network", "ov", "--ip", "10.125.0.2",
                  IMAGE, "sleep", "3600")  # fmt: skip
        pid = json.loads(h1.docker("inspect", "pinger").stdout)[0]["State"]["Pid"]
        times = []
        for i in range(runs):
            address = f"10.125.0.{10 + i}"
            started = time.perf_counter()
            h2.docker("run", "-d", "--name", f"target{i}", "--network", "ov", "--ip", address,
                      IMAGE, "sleep", "3600")  # fmt: skip
            # From a's namespace, every 10 ms, until one reply.
            h1.exec("nsenter", f"--net=/proc/{pid}/ns/net", "ping", "-n", "-q", "-i", "0.01",
                    "-c", "1", "-w", "30", address)  # fmt: skip
            times.append((time.perf_counter() - started) * 1000)
            h2.docker("rm", "-f", f"target{i}")
            log(f"overlay run {i + 1}/{runs}")
        return times
    finally:
        cluster.down(state.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 runs (make bench's short run)")
    parser.add_argument("--overlay", action="store_true", help="two hosts, pontoon's overlay")
    args = parser.parse_args()
    if args.quick:
        args.runs = 5
    if args.overlay:
        stats = Stats.of(overlay_first_ping(args.runs)).__dict__
        print(json.dumps({"docker_run_on_b_to_first_ping_from_a_ms": stats}, indent=2))
        return
    tag = uuid.uuid4().hex[:6]
    host = SimHost(f"ptb-docker-{tag}", Path("/tmp/pontoon-bench") / f"docker-{tag}")
    host.create()
    engines = EngineHost(host)
    try:
        engines.create()
        host.start_daemon("--docker-plugin", "--docker-host", engines.docker_host)
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
        for i in range(args.runs):
            for driver in ("pontoon", "bridge") if i % 2 == 0 else ("bridge", "pontoon"):
                times[driver].append(one_run(engines, driver, i))
            log(f"run {i + 1}/{args.runs}")
        result = {driver: Stats.of(values).__dict__ for driver, values in times.items()}
        ratio = result["pontoon"]["p50"] / result["bridge"]["p50"]
        print(json.dumps({"docker_run_to_answer_ms": result, "ratio_p50": round(ratio, 3),
                          "goal": "<= 1.0", "met": ratio <= 1.0}, indent=2))  # fmt: skip
    finally:
        engines.destroy()
        host.destroy()


if __name__ == "__main__":
    main()
