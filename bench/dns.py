"""DNS benchmark (issue 5): container-name lookups, pontoon's resolver vs dnsmasq.

On a throwaway host (a `ptb2-*` network namespace with its own pontoond), a
client container and N peer containers share a user-defined network. From
the client, a Python load generator (`_common_net.py dnsqps` / `dnslat`, run
with `pontoon exec`) asks for the peers' names:

  pontoon   127.0.0.11:53, the embedded resolver (served by pontoond);
  dnsmasq   the same names from a hosts file, `--cache-size=0`, listening on
            the client's own address inside the client's network namespace
            (so both answers travel over the client's loopback).

Throughput: answers per second with several queries in flight; latency:
p50/p99 of serial queries, on a quiet host and again while containers come
and go on the client's network (`run -d` / `rm -f` in a loop: the daemon is
busy attaching and releasing, and every change drops its cached views). The
two servers alternate, a few rounds each.

The network is dual-stack (issue 13): every round also asks AAAA for the
same names (answers per second and serial latency; dnsmasq's hosts file
has each name's IPv6 address too). The queries travel over IPv4 to both
servers, as a container's resolv.conf sends them.

Usage: .venv/bin/python bench/dns.py [--quick]
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common_net import (
    PY,
    TOOL,
    WORK,
    Comparison,
    CpuMeter,
    Goal,
    Session,
    bench_args,
    comparison_table,
    fmt,
    in_netns,
    log,
    median,
    print_report,
    report_header,
    verdict,
)

SUBNET = "10.78.0.0/24"
SUBNET6 = "fd00:78::/64"
NETWORK = "dnsnet"
RESOLVER = "127.0.0.11"
GOAL_QPS = Goal(">=", 0.5)
GOAL_P99_US = 1000.0


@dataclasses.dataclass(frozen=True)
class Params:
    peers: int
    seconds: float
    inflight: int
    latency_count: int
    busy_count: int  # serial queries while containers come and go
    reps: int


FULL = Params(peers=20, seconds=4, inflight=16, latency_count=5000, busy_count=50000, reps=3)
QUICK = Params(peers=6, seconds=2, inflight=16, latency_count=1000, busy_count=5000, reps=1)


@dataclasses.dataclass
class Server:
    name: str
    address: str
    pids: list[int]  # whose CPU time serving the load counts
    qps: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    p50: list[float] = dataclasses.field(default_factory=list)
    p99: list[float] = dataclasses.field(default_factory=list)
    busy_p50: list[float] = dataclasses.field(default_factory=list)
    busy_p99: list[float] = dataclasses.field(default_factory=list)
    lost: int = 0
    qps6: list[float] = dataclasses.field(default_factory=list)  # AAAA
    p50_6: list[float] = dataclasses.field(default_factory=list)
    p99_6: list[float] = dataclasses.field(default_factory=list)
    lost6: int = 0


def setup(session: Session, p: Params) -> tuple[Any, dict[str, tuple[str, str]]]:
    """The host, the client and the peers on a dual-stack network; returns
    (host, name -> (IPv4 address, IPv6 address))."""
    host = session.host("dns")
    host.cli("network", "create", "--ipv6", "--subnet", SUBNET, "--subnet", SUBNET6, NETWORK)
    host.cli("run", "-d", "--name", "client", "--net", NETWORK, "--", "sleep", "infinity")
    names = {}
    for i in range(p.peers):
        name = f"peer{i}"
        host.cli("run", "-d", "--name", name, "--net", NETWORK, "--", "sleep", "infinity")
        names[name] = addresses_of(host, name)
    return host, names


def addresses_of(host: Any, name: str) -> tuple[str, str]:
    info = host.cli_json("inspect", name)[0]
    net = info["NetworkSettings"]["Networks"][NETWORK]
    return net["IPAddress"], net["GlobalIPv6Address"]


def start_dnsmasq(session: Session, host: Any, names: dict[str, tuple[str, str]]) -> Server:
    """dnsmasq in the client's network namespace, on the client's address."""
    info = host.cli_json("inspect", "client")[0]
    sandbox = info["NetworkSettings"]["SandboxKey"]
    listen = info["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    hosts_file = WORK / f"{host.name}.hosts"
    hosts_file.write_text("".join(f"{ip} {name}\n" for name, both in names.items() for ip in both))
    session.cleanups.append(lambda: hosts_file.unlink(missing_ok=True))
    argv = ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            f"--addn-hosts={hosts_file}", f"--listen-address={listen}", "--bind-interfaces",
            "--user=root", "--cache-size=0", "--pid-file=", "--port=53"]  # fmt: skip
    proc = session.spawn(in_netns(sandbox, argv))
    return Server("dnsmasq", listen, [proc.pid])


def client_tool(host: Any, *args: str) -> dict[str, Any]:
    """A load tool inside the client container (its namespaces, our files)."""
    import json

    out = host.cli("exec", "client", PY, str(TOOL), *args, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def wait_answering(host: Any, server: Server, names: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = client_tool(host, "dnslat", "--server", server.address,
                             "--names", ",".join(names), "--count", "1")  # fmt: skip
        if not result["failures"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} on {server.address} does not answer")
        time.sleep(0.2)


def check_aaaa(host: Any, server: Server, names: dict[str, tuple[str, str]]) -> None:
    """Both servers must give each name's IPv6 address (an empty NOERROR
    answer would count as answered in the load tool)."""
    name, (_, ip6) = next(iter(names.items()))
    code = ("import sys, dns.resolver; r = dns.resolver.Resolver(configure=False); "
            "r.nameservers = [sys.argv[1]]; "
            "print(' '.join(a.address for a in r.resolve(sys.argv[2], 'AAAA')))")  # fmt: skip
    got = host.cli("exec", "client", PY, "-c", code, server.address, name).stdout.split()
    if got != [ip6]:
        raise RuntimeError(f"{server.name}: AAAA {name} gave {got}, not [{ip6}]")


@contextlib.contextmanager
def churn(host: Any) -> Iterator[list[int]]:
    """Containers started and removed on the client's network until the block
    ends; yields a one-element list that counts the cycles."""
    stop = threading.Event()
    cycles = [0]

    def loop() -> None:
        while not stop.is_set():
            # No check: a failed `run` must not end the churn (the count says how much ran).
            name = f"churn{cycles[0] % 2}"
            started = host.cli("run", "-d", "--name", name, "--net", NETWORK, "--", "sleep",
                               "infinity", check=False)  # fmt: skip
            host.cli("rm", "-f", name, check=False)
            cycles[0] += started.returncode == 0

    worker = threading.Thread(target=loop, name="churn")
    worker.start()
    time.sleep(0.5)  # the first container is on its way
    try:
        yield cycles
    finally:
        stop.set()
        worker.join()


def measure(host: Any, server: Server, names: list[str], p: Params) -> None:
    query = ["--server", server.address, "--names", ",".join(names)]
    meter = CpuMeter(server.pids)
    meter.start()
    result = client_tool(host, "dnsqps", *query, "--seconds", str(p.seconds),
                         "--inflight", str(p.inflight))  # fmt: skip
    server.cpu.append(meter.stop())
    server.qps.append(result["qps"])
    server.lost += result["lost"]
    lat = client_tool(host, "dnslat", *query, "--count", str(p.latency_count))
    server.p50.append(lat["p50_us"])
    server.p99.append(lat["p99_us"])
    with churn(host) as cycles:
        busy = client_tool(host, "dnslat", *query, "--count", str(p.busy_count))
    server.busy_p50.append(busy["p50_us"])
    server.busy_p99.append(busy["p99_us"])
    aaaa = client_tool(host, "dnsqps", *query, "--qtype", "AAAA", "--seconds", str(p.seconds),
                       "--inflight", str(p.inflight))  # fmt: skip
    server.qps6.append(aaaa["qps"])
    server.lost6 += aaaa["lost"]
    lat6 = client_tool(host, "dnslat", *query, "--qtype", "AAAA", "--count",
                       str(p.latency_count))  # fmt: skip
    server.p50_6.append(lat6["p50_us"])
    server.p99_6.append(lat6["p99_us"])
    log(f"  {server.name}: {result['qps']:.0f} q/s, p50 {lat['p50_us']:.0f} µs, "
        f"p99 {lat['p99_us']:.0f} µs; while {cycles[0]} containers came and went: "
        f"p50 {busy['p50_us']:.0f} µs, p99 {busy['p99_us']:.0f} µs; AAAA "
        f"{aaaa['qps']:.0f} q/s, p50 {lat6['p50_us']:.0f} µs")  # fmt: skip


def report(ours: Server, peer: Server, p: Params, peers: int) -> tuple[str, list[list[str]]]:
    rows = [
        Comparison("answers per second", "q/s", median(ours.qps), median(peer.qps), GOAL_QPS,
                   ours.qps, peer.qps),
        Comparison("latency p50", "µs", median(ours.p50), median(peer.p50), None,
                   ours.p50, peer.p50),
        Comparison("latency p99", "µs", median(ours.p99), median(peer.p99), None,
                   ours.p99, peer.p99),
        Comparison("latency p50, containers coming and going", "µs", median(ours.busy_p50),
                   median(peer.busy_p50), None, ours.busy_p50, peer.busy_p50),
        Comparison("latency p99, containers coming and going", "µs", median(ours.busy_p99),
                   median(peer.busy_p99), None, ours.busy_p99, peer.busy_p99),
        Comparison("server CPU during the q/s test", "% of a core", median(ours.cpu),
                   median(peer.cpu), None, ours.cpu, peer.cpu),
    ]  # fmt: skip
    p99 = median(ours.p99)
    text = (
        f"**Container-name lookups** ({peers} names, A queries; q/s with {p.inflight} in "
        f"flight for {p.seconds:g} s; latency over {p.latency_count} serial queries, "
        f"{p.busy_count} while containers come and go; median of "
        f"{p.reps} rounds, range in brackets; lost queries: pontoon {ours.lost}, "
        f"dnsmasq {peer.lost})\n\n"
        + comparison_table("pontoon (127.0.0.11)", "dnsmasq", rows)
        + f"\n\nServer CPU: pontoond's whole process for pontoon, dnsmasq for dnsmasq. "
        f"pontoon p99 {fmt(p99)} µs against the goal of ≤{GOAL_P99_US:g} µs.\n"
    )
    rows6 = [
        Comparison("AAAA answers per second", "q/s", median(ours.qps6), median(peer.qps6),
                   GOAL_QPS, ours.qps6, peer.qps6),
        Comparison("AAAA latency p50", "µs", median(ours.p50_6), median(peer.p50_6), None,
                   ours.p50_6, peer.p50_6),
        Comparison("AAAA latency p99", "µs", median(ours.p99_6), median(peer.p99_6), None,
                   ours.p99_6, peer.p99_6),
    ]  # fmt: skip
    text += (
        f"\n**AAAA lookups (issue 13)**: the same {peers} names on the dual-stack network, "
        f"in the same rounds (lost queries: pontoon {ours.lost6}, dnsmasq {peer.lost6})\n\n"
        + comparison_table("pontoon (127.0.0.11)", "dnsmasq", rows6)
        + "\n"
    )
    goals = [
        ["dns", "q/s vs dnsmasq", f"{rows[0].ratio:.2f}x", GOAL_QPS.text(), verdict(rows[0].ok)],
        ["dns", "AAAA q/s vs dnsmasq", f"{rows6[0].ratio:.2f}x", GOAL_QPS.text(),
         verdict(rows6[0].ok)],
        ["dns", "p99 latency", f"{fmt(p99)} µs", f"≤{GOAL_P99_US:g} µs",
         verdict(p99 <= GOAL_P99_US)],
    ]  # fmt: skip
    return text, goals


def main(argv: list[str] | None = None) -> int:
    args = bench_args(__doc__, argv)
    p = QUICK if args.quick else FULL
    header = report_header("### DNS (issues 5 and 13)", "dns.py", args.quick)
    t0 = time.monotonic()
    with Session() as session:
        log(f"dns: {p.peers} peers")
        host, names = setup(session, p)
        assert host.daemon is not None
        ours = Server("pontoon", RESOLVER, [host.daemon.pid])
        peer = start_dnsmasq(session, host, names)
        for server in (ours, peer):
            wait_answering(host, server, list(names))
            check_aaaa(host, server, names)
        for rep in range(p.reps):
            for server in (ours, peer) if rep % 2 == 0 else (peer, ours):
                measure(host, server, list(names), p)
        text, goals = report(ours, peer, p, len(names))
    return print_report(header, text, goals, t0, session)


if __name__ == "__main__":
    sys.exit(main())
