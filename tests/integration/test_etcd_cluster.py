"""etcd as a real cluster (issue 15, item 6): `pontoon lab up --etcd-members 3`
(with --tls: client and peer certificates) gives every daemon the three
client URLs. Killing the etcd leader during a stream of network creations on
two hosts loses no creation that reported success, a ping between containers
on the two hosts never stops, and both hosts converge on the same networks
once a new leader is elected."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pontoon.lab import cluster
from pontoon.lab.etcd import EtcdServer
from pontoon.lab.hosts import bin_path
from tests.conftest import new_lab_name
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

PING_INTERVAL = 0.2


@pytest.fixture(scope="module", params=[True, False], ids=["tls", "plaintext"])
def lab(request: pytest.FixtureRequest) -> Iterator[cluster.LabState]:
    name = new_lab_name()
    subnet = "10.192.0.0/24" if request.param else "10.193.0.0/24"
    try:
        yield cluster.up(name, 2, subnet, tls=request.param, etcd_members=3)
    finally:
        cluster.down(name)


def leader(servers: list[EtcdServer]) -> EtcdServer:
    """The member every running member names as leader (etcdctl endpoint status)."""
    found: list[EtcdServer] = []

    def agreed() -> bool:
        statuses = {s.name: s.status() for s in servers if s.is_running()}
        leaders = {st["leader"] for st in statuses.values() if st}
        if len(leaders) != 1 or 0 in leaders or not all(statuses.values()):
            return False
        found[:] = [s for s in servers if (statuses.get(s.name) or {}).get("member") in leaders]
        return len(found) == 1

    wait_for(agreed, 20, "the etcd members agree on a leader")
    return found[0]


def lead_from_first_member(servers: list[EtcdServer]) -> EtcdServer:
    """The hardest case: the leader is the member every daemon dials first,
    so killing it also breaks their connections (`etcdctl move-leader`)."""
    current, first = leader(servers), servers[0]
    if current is not first:
        status = first.status()
        assert status is not None
        proc = current.etcdctl("move-leader", f"{status['member']:x}")
        assert proc.returncode == 0, proc.stderr
    assert leader(servers) is first
    return first


def test_every_daemon_gets_every_member(lab: cluster.LabState):
    hosts = lab.etcd_url.removeprefix("etcd://").split(",")
    assert len(hosts) == 3 and len({h.split(":")[0] for h in hosts}) == 3
    info = cluster.status(lab.name)
    assert [m["running"] for m in info["etcd"]["members"]] == [True] * 3
    assert sum(m["leader"] for m in info["etcd"]["members"]) == 1
    for host in lab.hosts:
        cmdline = Path(f"/proc/{host.daemon_pid}/cmdline").read_bytes().split(b"\0")
        assert f"{lab.etcd_url}{cluster.CLUSTER_PREFIX}".encode() in cmdline


class Creator(threading.Thread):
    """Until stopped, in turn: a network n<i> on h1, one on h2, a container
    c<i> on h2 in the overlay `data`; records what reported success."""

    def __init__(self, lab: cluster.LabState) -> None:
        super().__init__(daemon=True)
        self.sims = [h.sim() for h in lab.hosts]
        self.ok: list[str] = []
        self.containers: list[str] = []
        self.failed: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            if i % 3 < 2:
                name, made = f"n{i}", self.ok
                args = ["network", "create", "-d", "overlay", name]
            else:
                name, made = f"c{i}", self.containers
                args = ["run", "-d", "--name", name, "--net", "data", "--", "sleep", "infinity"]
            proc = self.sims[1 if i % 3 else 0].cli(*args, check=False)
            if proc.returncode == 0:
                made.append(name)
            else:
                self.failed[name] = proc.stderr.strip()
            i += 1


def networks(lab: cluster.LabState, host: str) -> set[str]:
    out = lab.host(host).sim().cli("network", "ls", "--format", "json").stdout
    return {n["Name"] for n in json.loads(out) if n["Driver"] == "overlay"}


def test_leader_kill_loses_nothing_and_the_data_path_goes_on(lab: cluster.LabState):
    h1, h2 = (h.sim() for h in lab.hosts)
    h1.cli("network", "create", "-d", "overlay", "--subnet", "10.94.0.0/24", "data")
    h1.cli("run", "-d", "--name", "d1", "--net", "data", "--", "sleep", "infinity")
    h2.cli("run", "-d", "--name", "d2", "--net", "data", "--", "sleep", "infinity")
    wait_for(lambda: h1.cli("exec", "d1", "ping", "-c1", "-W1", "d2", check=False)
             .returncode == 0, 20, "d1 pings d2")  # fmt: skip
    d2_ip = json.loads(h2.cli("inspect", "d2").stdout)[0]["NetworkSettings"]["Networks"]["data"][
        "IPAddress"
    ]
    servers = cluster.etcd_servers(lab)
    old_leader = lead_from_first_member(servers)

    # ~16 s of pings, the leader killed ~4 s in, creations all along.
    count = int(16 / PING_INTERVAL)
    pinger = subprocess.Popen(
        [bin_path("pontoon"), "-H", h1.host_url, "exec", "d1", "ping", "-n", "-q",
         "-i", str(PING_INTERVAL), "-W", "1", "-c", str(count), d2_ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    creator = Creator(lab)
    creator.start()
    time.sleep(4)
    assert old_leader.pid is not None
    os.kill(old_leader.pid, signal.SIGKILL)  # our own etcd, by its PID
    old_leader.stop()  # reaps it and removes its pid file
    new_leader = leader([s for s in servers if s is not old_leader])
    assert new_leader is not old_leader
    time.sleep(4)
    creator.stop.set()
    creator.join(90)
    out, _ = pinger.communicate(timeout=60)

    print(f"networks {len(creator.ok)}, containers {len(creator.containers)}, "
          f"failed {len(creator.failed)}: {creator.failed}\n{out}")  # fmt: skip
    # The data path never stopped: at most one probe of the whole run lost.
    match = re.search(r"(\d+) received", out)
    assert match and int(match.group(1)) >= count - 1, out

    # Nothing that reported success is lost, and both hosts converge.
    assert len(creator.ok) >= 3, creator.failed

    def converged() -> bool:
        one, two = networks(lab, "h1"), networks(lab, "h2")
        return one == two and set(creator.ok) <= one

    wait_for(converged, 30, "both hosts list every network that was created")
    # Every container h2 started reports on h1's side of the overlay: its
    # endpoint reached h1 through the store (neighbour and FDB entries).
    assert creator.containers
    for name in creator.containers:
        info = json.loads(h2.cli("inspect", name).stdout)[0]
        ip = info["NetworkSettings"]["Networks"]["data"]["IPAddress"]
        wait_for(lambda ip=ip: h1.cli("exec", "d1", "ping", "-c1", "-W1", ip, check=False)
                 .returncode == 0, 20, f"d1 pings {name} ({ip})")  # fmt: skip
    # Both daemons did lose their member and moved on to another.
    gone = f"cluster store: leaving {old_leader.host}:{old_leader.client_port}"
    for sim in (h1, h2):
        assert gone in sim.log.read_text(), sim.log_tail()
    # The store still serves writes from both hosts.
    h2.cli("network", "create", "-d", "overlay", "after")
    wait_for(lambda: "after" in networks(lab, "h1"), 15, "h1 sees h2's new network")
