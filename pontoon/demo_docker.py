"""The seed's first article again, with real Docker containers: two lab hosts
on etcd, each with pontoond in plugin mode and a dockerd (no Swarm), the
overlays net1 and net2, four containers, names across hosts, net1 cannot
reach net2, and the trace of a packet between hosts. Part of `make demo`."""

from __future__ import annotations

import json
import shlex
import time

from pontoon.demo import GREEN, RESET, check, lab_cli, say
from pontoon.lab.engines import IMAGE, EngineHost


def docker_show(name: str, engines: EngineHost, *args: str) -> str:
    print(f"{GREEN}[{name}]$ docker {shlex.join(args)}{RESET}", flush=True)
    proc = engines.docker(*args, check=False)
    out = proc.stdout + proc.stderr
    print(out.rstrip(), flush=True)
    return out


def overlay_with_docker(tag: str) -> list[bool]:
    from pontoon.lab import cluster

    results: list[bool] = []
    name = f"d{tag[:5]}"
    say("The seed's overlay with real Docker: two dockerd engines, pontoon as their driver")
    state = cluster.up(name, 2, "10.99.0.0/24", docker=True)
    try:
        h1, h2 = (h.engines() for h in state.hosts)
        refs = [f"lab://{name}/{h.name}" for h in state.hosts]
        print(f"lab {name}: dockerd {h1.docker_host} and {h2.docker_host}, etcd {state.etcd_url}")
        for host, engines, net, subnet in (("h1", h1, "net1", "10.210.1.0/24"),
                                           ("h2", h2, "net2", "10.210.2.0/24")):  # fmt: skip
            docker_show(host, engines, "network", "create", "-d", "pontoon",
                        "--ipam-driver", "pontoon", "-o", "pontoon.driver=overlay",
                        "--subnet", subnet, net)  # fmt: skip
        deadline = time.monotonic() + 15
        while "net1" not in h2.docker("network", "ls").stdout and time.monotonic() < deadline:
            time.sleep(0.2)
        out = docker_show("h2", h2, "network", "ls")
        results.append(check("net1 (made on host 1) is in host 2's docker network ls",
                             "net1" in out))  # fmt: skip
        for host, engines, suffix in (("h1", h1, "1"), ("h2", h2, "2")):
            for net in ("net1", "net2"):
                docker_show(host, engines, "run", "-d", "--stop-timeout", "1",
                            "--name", f"{net}c{suffix}", "--network", net,
                            IMAGE, "sleep", "3600")  # fmt: skip
        out = docker_show("h1", h1, "exec", "net1c1", "ping", "-c2", "-W1", "net1c2")
        results.append(check("net1c1 pings net1c2 by name across hosts (seed: 0% loss)",
                             " 0% packet loss" in out))  # fmt: skip
        info = json.loads(h2.docker("inspect", "net2c2").stdout)[0]
        ip = info["NetworkSettings"]["Networks"]["net2"]["IPAddress"]
        out = docker_show("h1", h1, "exec", "net1c1", "ping", "-c2", "-W1", ip)
        results.append(check("net1c1 cannot reach net2c2 (seed: 100% loss)",
                             "100% packet loss" in out))  # fmt: skip
        say("Inside: one interface on the overlay, one on pontoon's gateway bridge (the way out)")
        docker_show("h1", h1, "exec", "net1c1", "ip", "-4", "-o", "addr")
        docker_show("h1", h1, "exec", "net1c1", "ip", "route")
        say("The packet's way, net1c1 -> net1c2, as one trace (pontoon sees Docker's containers)")
        print(lab_cli(refs[0], "trace", "--from", "net1c1", "--to", "net1c2"))
    finally:
        cluster.down(name)
    return results
