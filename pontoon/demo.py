"""`make demo`: the tour, replayed on throwaway hosts of this machine.

Everything runs inside network namespaces made for the occasion (a host and
an "outside" machine wired to it) and is removed at the end, also on ^C.
"""

from __future__ import annotations

import json
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
    on_host(host, "nft", "list", "table", "inet", "pontoon")
    say("Bad input: one line, exit 1, nothing left behind")
    show(host, "network", "create", "--subnet", "10.50.0.128/25", "clash", check=False)
    return results


def host_bridge(host: SimHost, network: str) -> str:
    return json.loads(host.cli("network", "inspect", network).stdout)[0]["Bridge"]


# --- the seed's second article: port mapping ---------------------------------

SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 80)); s.listen(64)\n"
    "while True:\n"
    "    c, a = s.accept(); c.recv(100); c.sendall(f'peer={a[0]}'.encode()); c.close()\n"
)
PROBE = (
    "import socket, sys, time\n"
    "for _ in range(50):\n"
    "    try:\n"
    "        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
    "        s.sendall(b'x'); print(s.recv(100).decode()); break\n"
    "    except OSError as exc:\n"
    "        err = exc; time.sleep(0.1)\n"
    "else:\n"
    "    print(f'failed: {err}')\n"
)


def _how(result: dict) -> str:
    if result.get("proxy"):
        return "userland proxy"
    steps = [s["step"] for s in result["nat"] if s["step"] in ("DNAT", "SNAT")]
    return " + ".join(f"kernel {s}" for s in steps) or "direct"


def portmap_matrix(mode: str, tag: str) -> list[bool]:
    """The reachability matrix of SPEC §6 in one proxy mode, with how each
    client got through (from `pontoon trace`)."""
    work = Path("/tmp/pontoon-demo")
    host = SimHost(f"ptd-pm{mode[0]}-{tag}", work / f"pm{mode}-{tag}")
    client = SimHost(f"ptd-cl{mode[0]}-{tag}", work / f"cl{mode}-{tag}")
    results = []
    try:
        host.create()
        client.create()
        connect_hosts(host, client, "10.10.126.101/24", "10.10.126.187/24")
        host.sh("ip", "route", "add", "default", "via", "10.10.126.187")
        host.start_daemon(f"--userland-proxy={mode}")
        say(f"--userland-proxy={mode}: container3 publishes 12580 -> 80 (the seed's setup)")
        show(host, "run", "-d", "--name", "container3", "-p", "12580:80", "--",
             "python3", "-c", SERVER)  # fmt: skip
        host.cli("run", "-d", "--name", "container1", "--", "sleep", "infinity")
        host.cli("network", "create", "--subnet", "10.60.0.0/24", "other")
        host.cli("run", "-d", "--name", "stranger", "--net", "other", "--", "sleep", "infinity")
        rows = [
            ("10.10.126.187 (another host) -> 10.10.126.101:12580", client.name, "netns"),
            ("the host -> 10.10.126.101:12580", "", "host"),
            ("the host -> 127.0.0.1:12580", "", "loopback"),
            ("container1 (same bridge) -> 10.10.126.101:12580", "container1", "container"),
            ("stranger (other network) -> 10.10.126.101:12580", "stranger", "container"),
        ]
        print(f"\n  {'client -> published port':<55} {'answer (as the server saw it)':<28} how")
        for label, who, kind in rows:
            target = "127.0.0.1" if kind == "loopback" else "10.10.126.101"
            if kind == "netns":
                out = client.sh("python3", "-c", PROBE, target, "12580", check=False).stdout
                source = f"netns:{client.name}"
            elif kind == "container":
                out = host.cli("exec", who, "python3", "-c", PROBE, target, "12580").stdout
                source = who
            else:
                out = host.sh("python3", "-c", PROBE, target, "12580", check=False).stdout
                source = "host"
            trace = json.loads(host.cli("trace", "--json", "--from", source, "--to",
                                        f"{target}:12580/tcp").stdout)  # fmt: skip
            ok = out.strip().startswith("peer=") and trace["verdict"] == "delivered"
            results.append(ok)
            mark = f"{GREEN}ok{RESET}" if ok else f"{RED}FAILED{RESET}"
            print(f"  {label:<55} {out.strip():<28} {_how(trace)}  {mark}", flush=True)
        if mode == "false":
            say("The seed's host -> own port under --userland-proxy=false, as one trace")
            print(host.cli("trace", "--from", "host", "--to", "127.0.0.1:12580/tcp").stdout)
    finally:
        host.destroy()
        client.destroy()
    return results


# --- the seed's first article: overlay ----------------------------------------


def overlay_experiment(tag: str) -> list[bool]:
    from pontoon.lab import cluster

    name = "d" + tag[:5]
    results = []
    say("The seed's first article: two hosts, etcd, overlay networks net1 and net2")
    try:
        state = cluster.up(name, 2, "10.10.126.0/24")
        h1 = f"lab://{name}/h1"
        h2 = f"lab://{name}/h2"
        print(
            f"lab {name}: hosts {', '.join(h.address for h in state.hosts)}, etcd {state.etcd_url}"
        )
        lab_show(h1, "network", "create", "-d", "overlay", "net1")
        lab_show(h2, "network", "create", "-d", "overlay", "net2")
        out = lab_show(h2, "network", "ls")
        results.append(check("net1 (made on host 1) is listed on host 2", "net1" in out))
        for h, suffix in ((h1, "1"), (h2, "2")):
            for net in ("net1", "net2"):
                lab_show(h, "run", "-d", "--name", f"{net}c{suffix}", "--net", net, "--",
                         "sleep", "infinity")  # fmt: skip
        out = lab_show(h1, "exec", "net1c1", "ping", "-c2", "-W1", "net1c2")
        results.append(check("net1c1 pings net1c2 by name across hosts (seed: 0% loss)",
                             " 0% packet loss" in out))  # fmt: skip
        net2c2 = json.loads(lab_cli(h2, "inspect", "net2c2"))[0]
        ip = net2c2["NetworkSettings"]["Networks"]["net2"]["IPAddress"]
        out = lab_show(h1, "exec", "net1c1", "ping", "-c2", "-W1", ip)
        results.append(check("net1c1 cannot reach net2c2 (seed: 100% loss)",
                             "100% packet loss" in out))  # fmt: skip
        say("Where the seed looked: the overlay namespace, br0, the VTEP, PERM entries")
        info = json.loads(lab_cli(h1, "network", "inspect", "net1"))[0]["Overlay"]
        print(json.dumps(info, indent=2))
        lab_show(h1, "exec", "net1c1", "ip", "route")
        say("The packet's way, net1c1 -> net1c2, as one trace")
        print(lab_cli(h1, "trace", "--from", "net1c1", "--to", "net1c2"))
        say("The picture the seed drew by hand")
        from pontoon.cli import topology as draw
        from pontoon.client import Client

        hosts = {h.name: Client(f"unix://{h.socket}").get("/topology") for h in state.hosts}
        print(draw.to_text(hosts))
    finally:
        cluster.down(name)
    return results


def lab_cli(ref: str, *args: str) -> str:
    from pontoon.lab.hosts import bin_path, run

    proc = run(bin_path("pontoon"), "-H", ref, *args, check=False)
    return proc.stdout + proc.stderr


def lab_show(ref: str, *args: str) -> str:
    print(f"{GREEN}$ pontoon -H {ref} {shlex.join(args)}{RESET}", flush=True)
    out = lab_cli(ref, *args)
    print(out.rstrip(), flush=True)
    return out


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
        host.destroy()
        outside.destroy()
        for mode in ("true", "false"):
            results += portmap_matrix(mode, tag)
        results += overlay_experiment(tag)
        if Path("/usr/sbin/dockerd").exists():
            from pontoon.demo_docker import overlay_with_docker

            results += overlay_with_docker(tag)
    finally:
        host.destroy()
        outside.destroy()
        say("Cleaned up: containers, daemons, etcd and namespaces are gone")
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
