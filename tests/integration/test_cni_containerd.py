"""containerd 1.6's `ctr run --cni` on a pontoon network through `pontoon-cni`,
inside a lab engine host (its own /etc/cni/net.d and /opt/cni/bin, where ctr
looks; a standalone containerd). ctr uses the first conflist in sorted order,
passes CNI_NETNS=/proc/PID/ns/net and the container ID `NAMESPACE-ID`, and
sends DEL (with an empty CNI_NETNS) when a foreground run returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pontoon.lab.engines import IMAGE, EngineHost
from tests.integration.helpers import snapshot, wait_for

pytestmark = pytest.mark.integration

PONTOON = str(Path(sys.executable).parent / "pontoon")
SUBNET = "10.74.0.0/24"


def ctr_host(make_engine_host: Any) -> EngineHost:
    engines: EngineHost = make_engine_host()
    host = engines.host
    host.cli("network", "create", "--subnet", SUBNET, "pnet")
    folders = ["--bin-dir", "/opt/cni/bin", "--conf-dir", "/etc/cni/net.d"]
    engines.exec(PONTOON, "-H", host.host_url, "cni", "install", *folders, "pnet")
    engines.start_containerd()
    engines.import_image("ctr")
    return engines


def cni_owners(engines: EngineHost) -> list[dict[str, Any]]:
    return engines.host.cli_json("ps", "--owner", "cni", "--format", "json")


def test_ctr_run_cni_gets_an_address_resolves_names_and_is_deleted_on_return(make_engine_host):
    engines = ctr_host(make_engine_host)
    host = engines.host
    host.cli("run", "-d", "--name", "c1", "--net", "pnet", "--", "sleep", "infinity")
    clean = snapshot(host)

    c1 = host.cli_json("inspect", "c1")[0]["NetworkSettings"]["Networks"]["pnet"]["IPAddress"]
    # ctr writes no resolv.conf from the result's dns: ask pontoon's resolver
    # at the address the result names.
    script = f"ip -4 -o addr show eth0 && nslookup c1 127.0.0.11 && ping -c1 -W2 {c1}"
    out = engines.ctr("run", "--cni", "--rm", IMAGE, "t1", "sh", "-c", script).stdout
    assert "inet 10.74.0." in out and f"Address: {c1}" in out, out
    assert "1 packets received" in out
    # The run returned: ctr sent DEL, and nothing of t1 is left.
    assert cni_owners(engines) == []
    assert snapshot(host) == clean


def test_a_running_ctr_container_is_an_owner_peers_resolve_until_it_ends(make_engine_host):
    engines = ctr_host(make_engine_host)
    host = engines.host
    host.cli("run", "-d", "--name", "c1", "--net", "pnet", "--", "sleep", "infinity")
    clean = snapshot(host)
    ctr = ["/usr/bin/ctr", "--address", str(engines.containerd_socket),
           "--namespace", engines.cgroup_parent]  # fmt: skip
    run = engines.popen(*ctr, "run", "--cni", "--rm", IMAGE, "t2", "sleep", "120",
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: len(cni_owners(engines)) == 1, timeout=30, what="ctr's ADD")
        (owner,) = cni_owners(engines)
        full_id = f"{engines.cgroup_parent}-t2"
        assert owner["Owner"]["Id"] == full_id and owner["Name"] == full_id
        (address,) = owner["IPs"]
        assert address.startswith("10.74.0.")
        # pontoon's own container reaches it by its name, across owner kinds.
        ping = host.cli("exec", "c1", "ping", "-c1", "-W2", full_id, check=False)
        assert ping.returncode == 0 and f"({address})" in ping.stdout, ping.stdout
        engines.ctr("task", "kill", "-s", "SIGKILL", "t2")
        run.wait(60)  # the foreground run returns, and ctr sends DEL
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    wait_for(lambda: cni_owners(engines) == [], timeout=30, what="ctr's DEL")
    assert snapshot(host) == clean
