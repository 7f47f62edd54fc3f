"""Debian's Podman 4.3, CNI backend, on pontoon networks through `pontoon-cni`,
inside lab engine hosts (pontoon/lab/engines.py: the host's own network and
mount namespaces, its own /etc/cni/net.d, /opt/cni/bin, /var/lib/cni,
/run/netns and storage; containers.conf with `enable_port_reservation =
false`). The image is Debian's busybox-static, imported."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pontoon.lab import cluster
from pontoon.lab.engines import EngineHost
from tests.conftest import new_lab_name
from tests.integration.helpers import HOST_ADDR, add_outside, snapshot, wait_for

pytestmark = pytest.mark.integration

PONTOON = str(Path(sys.executable).parent / "pontoon")
SUBNET = "10.72.0.0/24"
SITE = "echo pontoon-site > /var/www/index.html && exec httpd -f -p 80 -h /var/www"


def install(engines: EngineHost, *networks: str) -> None:
    """`pontoon cni install` where Podman looks, inside the host's mount namespace."""
    folders = ["--bin-dir", "/opt/cni/bin", "--conf-dir", "/etc/cni/net.d"]
    engines.exec(PONTOON, "-H", engines.host.host_url, "cni", "install", *folders, *networks)


def podman_host(make_engine_host: Callable[..., EngineHost], *daemon_args: str) -> EngineHost:
    engines = make_engine_host(*daemon_args)
    engines.host.cli("network", "create", "--subnet", SUBNET, "pnet")
    install(engines, "pnet")
    engines.import_image("podman")
    return engines


def run_detached(engines: EngineHost, name: str, *options: str, command: str = "") -> str:
    argv = ["run", "-d", "--name", name, "--network", "pnet", *options, "pontoon/busybox"]
    argv += ["sh", "-c", command or "exec sleep 600"]
    return engines.podman(*argv).stdout.strip()


def shell(engines: EngineHost, name: str, script: str) -> subprocess.CompletedProcess[str]:
    return engines.podman("exec", name, "sh", "-c", script, check=False)


def podman_address(engines: EngineHost, name: str) -> str:
    info = json.loads(engines.podman("inspect", name).stdout)[0]
    return info["NetworkSettings"]["Networks"]["pnet"]["IPAddress"]


def cni_owners(engines: EngineHost) -> list[dict[str, Any]]:
    return engines.host.cli_json("ps", "--owner", "cni", "--format", "json")


def fetch(where: Any, url: str) -> str:
    code = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read())"
    return where.sh("python3", "-c", code, url, check=False).stdout


def test_podman_run_inspect_names_aliases_and_a_published_port(make_host, make_engine_host):
    engines = podman_host(make_engine_host)
    host = engines.host
    outside = add_outside(make_host, host)
    clean = snapshot(host)

    web_id = run_detached(engines, "web1", "--network-alias", "db", "-p", "18090:80",
                          command=SITE)  # fmt: skip
    address = podman_address(engines, "web1")
    assert address.startswith("10.72.0.")
    (owner,) = cni_owners(engines)
    assert owner["Owner"]["Id"] == web_id and owner["Name"] == "web1"
    assert owner["IPs"] == [address]

    # --ip and --mac-address arrive as IP= and MAC= in CNI_ARGS.
    run_detached(engines, "client1", "--ip", "10.72.0.50", "--mac-address", "02:00:00:00:72:50")
    client = json.loads(engines.podman("inspect", "client1").stdout)[0]
    assert client["NetworkSettings"]["Networks"]["pnet"]["IPAddress"] == "10.72.0.50"
    assert client["NetworkSettings"]["Networks"]["pnet"]["MacAddress"] == "02:00:00:00:72:50"
    for name in ("web1", "db", web_id[:12]):
        proc = shell(engines, "client1", f"ping -c1 -W2 {name}")
        assert proc.returncode == 0 and f"({address})" in proc.stdout, (name, proc.stdout)
    resolv = shell(engines, "client1", "cat /etc/resolv.conf").stdout
    assert resolv.splitlines()[0] == "nameserver 127.0.0.11"
    # -p through pontoon's port mapping (conmon reserves nothing: containers.conf).
    assert "pontoon-site" in fetch(outside, f"http://{HOST_ADDR}:18090/")

    engines.podman("rm", "-f", "-t0", "web1", "client1")
    assert cni_owners(engines) == []
    assert snapshot(host) == clean


def test_podman_containers_survive_a_daemon_restart_and_are_removed_after(make_engine_host):
    engines = podman_host(make_engine_host)
    host = engines.host
    clean = snapshot(host)
    run_detached(engines, "before")
    address = podman_address(engines, "before")

    host.stop_daemon()
    host.start_daemon()
    assert [o["Name"] for o in cni_owners(engines)] == ["before"]
    run_detached(engines, "after")
    proc = shell(engines, "after", "ping -c1 -W2 before")
    assert proc.returncode == 0 and f"({address})" in proc.stdout
    assert shell(engines, "before", "ping -c1 -W2 after").returncode == 0

    engines.podman("rm", "-f", "-t0", "before", "after")
    assert cni_owners(engines) == []
    assert snapshot(host) == clean


def test_gc_with_podmans_containers_collects_only_the_orphans(make_engine_host):
    """Podman 4.3 never sends GC (libcni 1.1 does): the runtime's GC is
    driven here with the containers `podman ps` lists as the valid ones, after
    an attachment was orphaned (a runtime that died between ADD and writing
    down its container)."""
    engines = podman_host(make_engine_host)
    host = engines.host
    clean = snapshot(host)
    kept = run_detached(engines, "kept")
    # Made in the host's mount namespace, as a runtime makes its namespaces
    # (gone with that mount namespace at teardown).
    orphan_ns = Path("/run/netns/orphan")
    engines.exec("touch", str(orphan_ns))
    engines.exec("unshare", f"--net={orphan_ns}", "true")
    conflist = json.loads(engines.exec("cat", "/etc/cni/net.d/pontoon-pnet.conflist").stdout)
    plugin = {**conflist["plugins"][0], "name": "pnet", "cniVersion": "1.1.0"}
    add = _plugin(engines, "ADD", plugin, "orphaned-container", orphan_ns)
    assert add.returncode == 0, add.stdout
    assert len(cni_owners(engines)) == 2

    listed = engines.podman("ps", "--format", "{{.ID}}", "--no-trunc").stdout.split()
    valid = [{"containerID": cid, "ifname": "eth0"} for cid in listed]
    gc = _plugin(engines, "GC", {**plugin, "cni.dev/valid-attachments": valid})
    assert gc.returncode == 0, gc.stdout
    assert [o["Owner"]["Id"] for o in cni_owners(engines)] == [kept]
    assert shell(engines, "kept", "ping -c1 -W2 10.72.0.1").returncode == 0

    engines.podman("rm", "-f", "-t0", "kept")
    assert snapshot(host) == clean


def _plugin(
    engines: EngineHost, command: str, conf: dict[str, Any], cid: str = "", ns: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The plugin Podman execs, run the same way from the host's namespaces."""
    env = ["CNI_COMMAND=" + command, "CNI_PATH=/opt/cni/bin"]
    if cid:
        env += [f"CNI_CONTAINERID={cid}", "CNI_IFNAME=eth0", f"CNI_NETNS={ns}"]
    return engines.exec("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *env,
                        "/opt/cni/bin/pontoon", input=json.dumps(conf), check=False)  # fmt: skip


# -- two Podman hosts on one overlay ----------------------------------------------------------


@pytest.fixture
def podman_lab() -> Iterator[list[EngineHost]]:
    state = cluster.up(new_lab_name(), 2, "10.251.0.0/24", [])
    engines: list[EngineHost] = []
    try:
        for lab_host in state.hosts:
            engines.append(EngineHost(lab_host.sim()).create())
        yield engines
    finally:
        for each in reversed(engines):
            each.destroy()
        cluster.down(state.name)


def test_two_podman_hosts_on_one_overlay_reach_each_other_by_name(podman_lab):
    first, second = podman_lab
    first.host.cli("network", "create", "-d", "overlay", "--subnet", "10.73.0.0/24", "pov")
    for engines in podman_lab:
        wait_for(lambda e=engines: "pov" in e.host.cli("network", "ls").stdout, what="network")
        install(engines, "pov")
        engines.import_image("podman")
    for engines, name in ((first, "left"), (second, "right")):
        engines.podman("run", "-d", "--name", name, "--network", "pov", "pontoon/busybox",
                       "sleep", "600")  # fmt: skip

    def pings(engines: EngineHost, src: str, dst: str) -> bool:
        return shell(engines, src, f"ping -c1 -W1 {dst}").returncode == 0

    wait_for(lambda: pings(first, "left", "right"), timeout=20, what="left -> right")
    wait_for(lambda: pings(second, "right", "left"), timeout=20, what="right -> left")
    # An overlay has no way out: the gateway bridge leg is there too.
    routes = shell(first, "left", "ip -4 route").stdout
    assert "default" in routes

    first.podman("rm", "-f", "-t0", "left")
    second.podman("rm", "-f", "-t0", "right")
    for engines in podman_lab:
        assert cni_owners(engines) == []
