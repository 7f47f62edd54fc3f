"""In-place upgrade from the release at UPGRADE_FROM (issue 10, item 5).

The state is made by THAT release's own daemon and CLI (tests/integration/
old_release.py runs them from a `git archive` of the commit), then the daemon
of this tree takes over the same --root/--exec-root (or the same etcd). What
must hold across the switch:

- traffic never stops: request loops from an outside host, from the host
  itself and from containers see no failed request (the kernel rules, the
  veths and the userland proxy outlive the daemon);
- the new release reports what the old one did: `ps`, `inspect`, `port`,
  `network ls/inspect` (every field the old release showed, same value;
  fields the new release adds are ignored);
- the store was really taken over: names resolve, `exec` works, a new
  container gets a free address, a published port is still taken;
- `rm -f` and `network rm` still clean everything the OLD release made: no
  veth, bridge, nft rule, store record or sandbox is left.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pontoon.lab import SimHost, cluster
from pontoon.lab.hosts import run
from tests.conftest import PREFIX, WORKDIR, new_lab_name
from tests.integration.helpers import HOST_ADDR, add_outside, inspect, nft_state, wait_for
from tests.integration.old_release import UPGRADE_FROM, ReleaseMissing, materialise
from tests.integration.portmap_helpers import PROBE, SERVER
from tests.integration.upgrade_checks import (
    PingLoop,
    TrafficLoop,
    alive,
    assert_no_failures,
    by_key,
    differences,
    id_pattern,
    ip_pattern,
    links,
    mentions,
    release_of,
    sandbox_mounts,
    store_keys,
    store_rows,
    wait_all_answered,
)

pytestmark = pytest.mark.integration

SUBNET = "10.61.0.0/24"
TCP_PORT, UDP_PORT = "8080", "5300"  # published: srv's 80/tcp and 53/udp
PEER_PORT = "7000"  # peer's own TCP server, reached directly over `web`


@pytest.fixture(scope="session")
def old_release() -> Iterator[str]:
    """The old release's source, extracted once per session."""
    dest = WORKDIR / f"{PREFIX}-release-{UPGRADE_FROM}"
    try:
        yield str(materialise(UPGRADE_FROM, dest))
    except ReleaseMissing as exc:
        pytest.fail(str(exc))
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def start_release(host: SimHost, pythonpath: str, *flags: str) -> None:
    """Start `host`'s daemon from the release at `pythonpath` ("" = this
    tree) and check which one really runs."""
    host.pythonpath = pythonpath
    host.start_daemon(*flags)
    assert host.daemon is not None
    assert release_of(host.daemon.pid) == pythonpath


# Single host, SQLite ---------------------------------------------------------


def build_old_state(host: SimHost) -> None:
    """A user network with --subnet, a server publishing TCP and UDP, a peer on
    the same network, a container on the default bridge hot-plugged into the
    user network."""
    host.cli("network", "create", "--subnet", SUBNET, "web")
    publish = ["-p", f"{TCP_PORT}:80", "-p", f"{UDP_PORT}:53/udp"]
    host.cli("run", "-d", "--name", "srv", "--net", "web", *publish, "--",
             "python3", "-c", SERVER, "80/tcp", "53/udp")  # fmt: skip
    host.cli("run", "-d", "--name", "peer", "--net", "web", "--",
             "python3", "-c", SERVER, f"{PEER_PORT}/tcp")  # fmt: skip
    host.cli("run", "-d", "--name", "client", "--", "sleep", "infinity")
    host.cli("network", "connect", "web", "client")


def reports(host: SimHost) -> dict[str, Any]:
    """Everything the CLI of the running release says about the state."""
    names = ["srv", "peer", "client"]
    return {
        "ps": by_key([ps_entry(c) for c in host.cli_json("ps", "--format", "json")]),
        "inspect": by_key(host.cli_json("inspect", *names)),
        "port": {n: sorted(host.cli("port", n).stdout.splitlines()) for n in names},
        "network ls": by_key(host.cli_json("network", "ls", "--format", "json")),
        "network inspect": by_key(host.cli_json("network", "inspect", "web", "bridge")),
    }


def ps_entry(container: dict[str, Any]) -> dict[str, Any]:
    """`ps` lists a container's networks and their addresses as two parallel
    lists in no promised order (a restart of the old release itself reorders
    them for a hot-plugged container): compare the pairs."""
    pairs = dict(zip(container.pop("Networks"), container.pop("IPs"), strict=True))
    return {**container, "Networks/IPs": pairs}


def start_loops(host: SimHost, outside: SimHost, tmp: Path) -> list[TrafficLoop]:
    """Request loops along every path the old release set up (SPEC §6)."""
    peer_ip = inspect(host, "peer")["NetworkSettings"]["Networks"]["web"]["IPAddress"]
    published = [f"tcp:{HOST_ADDR}:{TCP_PORT}", f"udp:{HOST_ADDR}:{UDP_PORT}"]
    sandbox = {n: inspect(host, n)["NetworkSettings"]["SandboxKey"] for n in ("peer", "client")}
    loopback = [f"tcp:127.0.0.1:{TCP_PORT}", f"udp:127.0.0.1:{UDP_PORT}"]
    paths = {
        # Another machine to the host's address: kernel DNAT.
        "outside": (outside.netns, published),
        # The host to itself: 127.0.0.1 is the userland proxy's (or NAT's).
        "host": (host.netns, [*published, *loopback]),
        # Same bridge as srv, to the host's address: hairpin.
        "peer": (sandbox["peer"], published[:1]),
        # From the default bridge to the published port, and over the
        # hot-plugged interface straight to the peer.
        "client": (sandbox["client"], [*published, f"tcp:{peer_ip}:{PEER_PORT}"]),
    }
    return [TrafficLoop(name, ns, probes, tmp / f"{name}.json")
            for name, (ns, probes) in paths.items()]  # fmt: skip


def wait_serving(host: SimHost, outside: SimHost) -> None:
    """The servers answer before the loops start, so that every failure a
    loop counts is the upgrade's."""
    for port, proto in ((TCP_PORT, "tcp"), (UDP_PORT, "udp")):
        outside.sh("python3", "-c", PROBE, HOST_ADDR, port, proto, "10")
    peer_ip = inspect(host, "peer")["NetworkSettings"]["Networks"]["web"]["IPAddress"]
    host.cli("exec", "client", "python3", "-c", PROBE, peer_ip, PEER_PORT, "tcp", "10")


def assert_same_reports(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Every field the old release showed, the new one shows with the same
    value. That includes the kernel facts (Pid, SandboxKey, HostInterface and
    its ifindex, MAC): equal means the new daemon adopted the containers'
    processes and veths instead of re-creating them. Fields only the new
    release has (schema versions, address lists, owners) are not compared."""
    found = differences(old, new)
    assert not found, "the new release reports differently:\n" + "\n".join(found)


def assert_takes_over_the_store(host: SimHost, old: dict[str, Any]) -> None:
    """What only a daemon that understood the old records can do."""
    srv = old["inspect"]["srv"]["NetworkSettings"]["Networks"]["web"]["IPAddress"]
    # exec (the new CLI on the new daemon) into a container the old one made.
    assert host.cli("exec", "client", "cat", "/etc/hostname").stdout.strip()
    # The embedded DNS answers from the migrated records (peer is on a user
    # network; the default bridge has no embedded DNS, as in Docker).
    assert host.cli("exec", "peer", "getent", "hosts", "srv").stdout.split()[0] == srv
    # The address allocations survived: a new container gets a free address...
    host.cli("run", "-d", "--name", "late", "--net", "web", "--", "sleep", "infinity")
    taken = {ip for c in old["ps"].values() for ip in c["Networks/IPs"].values()}
    late = inspect(host, "late")["NetworkSettings"]["Networks"]["web"]["IPAddress"]
    assert late not in taken, f"{late} handed out again"
    # ... and the port reservations too: srv's host port is still taken.
    dup = host.cli("run", "-d", "--name", "dup", "--net", "web", "-p", f"{TCP_PORT}:80",
                   "--", "sleep", "infinity", check=False)  # fmt: skip
    assert dup.returncode == 1 and dup.stderr.startswith("Error: "), dup
    host.cli("rm", "-f", "late")


def remove_everything(host: SimHost) -> None:
    host.cli("rm", "-f", "srv", "peer", "client")
    host.cli("network", "rm", "web")
    assert host.cli_json("ps", "-a", "--format", "json") == []
    assert [n["Name"] for n in host.cli_json("network", "ls", "--format", "json")] == ["bridge"]


def assert_clean(host: SimHost, fresh: SimHost, old: dict[str, Any]) -> None:
    """Nothing the old release made for the containers and `web` is left:
    the host looks like a fresh host of the new release (`fresh`, same
    flags), and nothing in the kernel or the store names a removed object."""
    web = old["network inspect"]["web"]
    gone_ids = [web["Id"], *(c["Id"] for c in old["ps"].values())]
    gone_ids += [ep["EndpointID"] for c in old["inspect"].values()
                 for ep in c["NetworkSettings"]["Networks"].values()]  # fmt: skip
    gone_ips = [ip for c in old["ps"].values() for ip in c["Networks/IPs"].values()]
    gone_devs = [web["Bridge"], *(p for n in old["network inspect"].values()
                                  for p in n["BridgePorts"])]  # fmt: skip

    # Processes and sandboxes.
    for c in old["inspect"].values():
        wait_for(lambda pid=c["State"]["Pid"]: not alive(pid), what=f"{c['Name']} to end")
    sandboxes = host.exec_root / "netns"
    assert not (sandboxes.is_dir() and list(sandboxes.iterdir())), list(sandboxes.iterdir())
    assert sandbox_mounts(host) == []
    containers = host.root / "containers"
    assert not (containers.is_dir() and list(containers.iterdir()))

    # Links: no veth, no `web` bridge, nothing on pontoon0; the rest is what a
    # fresh host has (plus the test's own link to the outside host).
    names = links(host)
    assert not [n for n in names if n[0] in gone_devs or n[0].startswith("veth")], names
    assert [n for n in names if n[0] != "eth0"] == links(fresh)

    # nftables: the same ruleset as a fresh host, and no removed address,
    # subnet or device in it.
    ruleset = host.sh("nft", "list", "ruleset").stdout
    assert not mentions([ruleset], [*map(ip_pattern, gone_ips), *gone_devs, SUBNET])
    assert nft_state(host) == nft_state(fresh)

    # The store: no record names a removed container, endpoint, network or
    # address; the same kinds of records as a fresh store.
    rows = ["|".join(r) for r in store_rows(host.root)]
    assert rows, f"no SQLite store found under {host.root}"
    gone = [*map(id_pattern, gone_ids), *map(ip_pattern, gone_ips), SUBNET]
    leftover = mentions(rows, gone)
    assert not leftover, leftover
    assert store_keys(host.root) == store_keys(fresh.root)


@pytest.mark.parametrize("userland_proxy", ["true", "false"])
def test_single_host_upgrade(make_host, old_release, tmp_path, userland_proxy):
    flags = (f"--userland-proxy={userland_proxy}",)
    host = make_host(start=False)
    start_release(host, old_release, *flags)
    outside = add_outside(make_host, host)
    build_old_state(host)
    wait_serving(host, outside)
    before = reports(host)

    loops = start_loops(host, outside, tmp_path)
    try:
        wait_all_answered(loops, {})
        stopping = time.time()
        host.stop_daemon()  # SIGTERM: the containers keep running
        assert all(alive(c["State"]["Pid"]) for c in before["inspect"].values())
        answered = {loop.name: loop.successes() for loop in loops}
        time.sleep(1)  # traffic while no daemon runs at all
        start_release(host, "", *flags)
        switch = f"old daemon stopping at {stopping:.3f}, new one ready at {time.time():.3f}"
        wait_all_answered(loops, answered)
        after = reports(host)
        assert_same_reports(before, after)
        assert_takes_over_the_store(host, before)
        wait_all_answered(loops, {loop.name: loop.successes() for loop in loops})
        results = {loop.name: loop.stop() for loop in loops}
    finally:
        for loop in loops:
            loop.kill()
    assert_no_failures(results, switch)

    remove_everything(host)
    assert_clean(host, make_host(*flags), before)


# Overlay, etcd: a rolling upgrade of a two-host lab ----------------------------


class OldLab:
    """A lab whose daemons start as the old release, upgraded host by host."""

    def __init__(self, state: cluster.LabState) -> None:
        self.state = state

    def sim(self, host: str) -> SimHost:
        """`host` with the CLI of the release its daemon runs."""
        return self.state.host(host).sim()

    def cli_json(self, host: str, *args: str) -> Any:
        return self.sim(host).cli_json(*args)

    def release(self, host: str) -> str:
        return release_of(self.state.host(host).daemon_pid)

    def upgrade(self, host: str) -> None:
        cluster.restart_daemon(self.state, host, pythonpath="")  # SIGTERM, then this tree
        assert self.release(host) == ""

    def etcd(self) -> list[str]:
        """Every key and value under the cluster prefix, one line each."""
        proc = run(
            "nsenter", f"--net=/run/netns/{self.state.switch}", "--", "etcdctl",
            f"--endpoints={self.state.etcd_client_url}", "get", "--prefix",
            cluster.CLUSTER_PREFIX, env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        return proc.stdout.splitlines()

    def overlay_report(self, host: str, mine: str) -> dict[str, Any]:
        return {
            "ps": by_key([ps_entry(c) for c in self.cli_json(host, "ps", "--format", "json")]),
            "inspect": by_key(self.cli_json(host, "inspect", mine)),
            "network ls": by_key(self.cli_json(host, "network", "ls", "--format", "json")),
            "network inspect": by_key(self.cli_json(host, "network", "inspect", "ov")),
        }


@pytest.fixture
def old_lab(old_release) -> Iterator[OldLab]:
    state = cluster.up(new_lab_name(), 2, "10.181.0.0/24", ["--cluster-ttl", str(CLUSTER_TTL)],
                       pythonpath=old_release)  # fmt: skip
    try:
        yield OldLab(state)
    finally:
        cluster.down(state.name)


def wait_peers_programmed(lab: OldLab, expect: dict[str, str]) -> None:
    """Each host lists the other's container among its overlay peers."""
    for host, remote_ip in expect.items():
        wait_for(lambda h=host, ip=remote_ip: ip in overlay_of(lab, h)["Peers"],
                 what=f"{remote_ip} programmed on {host}")  # fmt: skip


def overlay_of(lab: OldLab, host: str) -> dict[str, Any]:
    return lab.cli_json(host, "network", "inspect", "ov")[0]["Overlay"]


def assert_lab_clean(lab: OldLab, before: dict[str, dict[str, Any]]) -> None:
    """Nothing of `ov`, `a` and `b` is left: not in etcd (the records the OLD
    release wrote included: endpoints, addresses, name, subnet, VNI), not on
    either host (overlay namespace, VXLAN device, veths, sandboxes)."""
    net = before["h1"]["network inspect"]["ov"]
    endpoints = [c["EndpointID"] for c in net["Containers"].values()]
    gone_ids = [net["Id"], *net["Containers"], *endpoints]
    gone_ips = [c["IPv4Address"].split("/")[0] for c in net["Containers"].values()]
    subnet = net["IPAM"]["Config"][0]["Subnet"]
    etcd = lab.etcd()
    leftover = mentions(etcd, [*map(id_pattern, gone_ids), *map(ip_pattern, gone_ips), subnet])
    assert not leftover, "\n".join(leftover)
    for host in ("h1", "h2"):
        sim = lab.sim(host)
        namespace = before[host]["network inspect"]["ov"]["Overlay"]["Namespace"]
        assert not os.path.exists(namespace), f"{host}: overlay namespace {namespace} left"
        assert not [n for n in links(sim) if n[0].startswith(("veth", "vxlan"))], links(sim)
        sandboxes = sim.exec_root / "netns"
        assert not (sandboxes.is_dir() and list(sandboxes.iterdir())), list(sandboxes.iterdir())
        assert sandbox_mounts(sim) == []


def wait_same_reports(lab: OldLab, before: dict[str, dict[str, Any]], timeout: float) -> None:
    """Each host, old or new, in a mixed cluster too, reports what it did
    before the upgrade. Eventually: the cluster views converge through the
    watch and the periodic resync (on the tree at UPGRADE_FROM a restarted
    host shows its own endpoints without Host/VTEP for up to a resync
    period, ~10 s)."""
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [f"{host}: {d}" for host, mine in (("h1", "a"), ("h2", "b"))
                 for d in differences(before[host], lab.overlay_report(host, mine))]  # fmt: skip
        if not found:
            return
        time.sleep(0.5)
    raise AssertionError("the new release reports differently:\n" + "\n".join(found))


# Overlay endpoints are leased: a restarted daemon must keep its containers'
# records alive past the old process's lease (a2ce7c8 did not: they vanished
# cluster-wide when it expired). A short TTL makes the test see the old lease
# expire within seconds of each upgrade.
CLUSTER_TTL = 5


def test_overlay_rolling_upgrade(old_lab, old_release, tmp_path):
    """h1 then h2 move to the new release while a and b, one on each host,
    ping each other by name and talk TCP: nothing is lost, each host (old or
    new, in a mixed cluster too) reports what it did, rm cleans etcd."""
    lab = old_lab
    assert lab.release("h1") == lab.release("h2") == old_release
    lab.sim("h1").cli("network", "create", "-d", "overlay", "ov")
    for host, name in (("h1", "a"), ("h2", "b")):
        lab.sim(host).cli("run", "-d", "--name", name, "--net", "ov", "--",
                          "python3", "-c", SERVER, f"{PEER_PORT}/tcp")  # fmt: skip
    ip = {n: lab.cli_json(h, "inspect", n)[0]["NetworkSettings"]["Networks"]["ov"]["IPAddress"]
          for h, n in (("h1", "a"), ("h2", "b"))}  # fmt: skip
    wait_peers_programmed(lab, {"h1": ip["b"], "h2": ip["a"]})
    before = {"h1": lab.overlay_report("h1", "a"), "h2": lab.overlay_report("h2", "b")}
    a, b = before["h1"]["inspect"]["a"], before["h2"]["inspect"]["b"]
    loops = [
        # By name: resolved once, by the old release's embedded DNS.
        PingLoop("a ping b", a["State"]["Pid"], "b", tmp_path / "a.ping"),
        PingLoop("b ping a", b["State"]["Pid"], "a", tmp_path / "b.ping"),
        TrafficLoop(
            "a tcp b",
            a["NetworkSettings"]["SandboxKey"],
            [f"tcp:{ip['b']}:{PEER_PORT}"],
            tmp_path / "a.json",
        ),
        TrafficLoop(
            "b tcp a",
            b["NetworkSettings"]["SandboxKey"],
            [f"tcp:{ip['a']}:{PEER_PORT}"],
            tmp_path / "b.json",
        ),
    ]
    try:
        wait_all_answered(loops, {})
        for upgraded in ("h1", "h2"):
            answered = {loop.name: loop.successes() for loop in loops}
            lab.upgrade(upgraded)
            restarted = time.monotonic()
            wait_all_answered(loops, answered)
            wait_same_reports(lab, before, timeout=45)
            # Keep the traffic going past the old daemon's lease.
            time.sleep(max(0.0, restarted + CLUSTER_TTL + 3 - time.monotonic()))
        # Names resolve through the new daemons' DNS; exec works.
        lab.sim("h1").cli("exec", "a", "ping", "-c1", "-W2", "b")
        lab.sim("h2").cli("exec", "b", "ping", "-c1", "-W2", "a")
        wait_all_answered(loops, {loop.name: loop.successes() for loop in loops})
        results = {loop.name: loop.stop() for loop in loops}
    finally:
        for loop in loops:
            loop.kill()

    lab.sim("h1").cli("rm", "-f", "a")
    lab.sim("h2").cli("rm", "-f", "b")
    lab.sim("h2").cli("network", "rm", "ov")
    for host in ("h1", "h2"):
        wait_for(lambda h=host: "ov" not in by_key(lab.cli_json(h, "network", "ls", "--format",
                                                                "json")),
                 what=f"ov gone on {host}")  # fmt: skip
    assert_lab_clean(lab, before)
    # Last, so that everything above is checked even when traffic was lost.
    assert_no_failures(results)
