"""`pontoon trace` on the seed's scenarios, checked through --json (SPEC §8)."""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers import OUTSIDE_ADDR, add_outside
from tests.integration.portmap_helpers import SERVER
from tests.integration.test_portmap import probe

pytestmark = pytest.mark.integration


def trace(host, *args: str) -> dict:
    return json.loads(host.cli("trace", "--json", *args).stdout)


def chains(result: dict, where: str = "host") -> list[tuple[str, str, str]]:
    return [(c["hook"], c["chain"], c["rule"]) for w in result["netfilter"][where]
            for c in w["chains"]]  # fmt: skip


def steps(result: dict) -> list[str]:
    return [s["step"] for s in result["nat"] if s["step"] != "conntrack"]


def no_trace_rules(host) -> bool:
    return "pontoon_trace" not in host.sh("nft", "list", "tables").stdout


@pytest.fixture(params=["true", "false"], ids=["proxy", "kernel"])
def seed_host(request, make_host):
    host = make_host(f"--userland-proxy={request.param}")
    outside = add_outside(make_host, host)
    host.cli("run", "-d", "--name", "container3", "-p", "12580:80", "--",
             "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    host.cli("run", "-d", "--name", "container1", "--", "sleep", "infinity")
    probe(host, "127.0.0.1", 12580)  # the server is up
    return host, outside, request.param == "true"


def test_external_client_to_published_port(seed_host):
    host, outside, _ = seed_host
    r = trace(host, "--from", f"netns:{outside.name}", "--to", "host:12580/tcp")
    assert r["verdict"] == "delivered"
    assert ("prerouting", "portmap", "dnat ip to meta l4proto . th dport map @portmap_any") in [
        (h, c, rule) for h, c, rule in chains(r)
    ]
    assert steps(r) == ["DNAT", "un-DNAT (reply)"]  # the client's address is kept
    assert r["nat"][0]["to"].endswith(":80")
    assert r["proxy"] is None
    kinds = [hop["kind"] for hop in r["path"]]
    assert kinds[-3:] == ["bridge", "veth", "container"] and r["path"][-1]["name"] == "container3"
    assert no_trace_rules(host)
    assert r["probe"]["source"] == OUTSIDE_ADDR


def test_host_to_its_own_address_and_to_loopback(seed_host):
    host, _, proxy_mode = seed_host
    own = trace(host, "--from", "host", "--to", "host:12580/tcp")
    assert own["verdict"] == "delivered" and steps(own)[0] == "DNAT"
    lo = trace(host, "--from", "host", "--to", "127.0.0.1:12580/tcp")
    assert lo["verdict"] == "delivered"
    if proxy_mode:
        # The kernel cannot NAT loopback without route_localnet: the proxy does.
        assert lo["proxy"] is not None and steps(lo) == []
        assert any(hop["kind"] == "userland proxy" for hop in lo["path"])
    else:
        # The seed's order: DNAT -> SNAT -> (reply) un-SNAT -> un-DNAT.
        assert lo["proxy"] is None
        assert steps(lo) == ["DNAT", "SNAT", "un-SNAT (reply)", "un-DNAT (reply)"]
    assert no_trace_rules(host)


def test_container_to_the_host_port_hairpin(seed_host):
    host, _, _ = seed_host
    r = trace(host, "--from", "container1", "--to", "host:12580/tcp")
    assert r["verdict"] == "delivered"
    assert steps(r) == ["DNAT", "un-DNAT (reply)"]
    assert r["path"][0] == {**r["path"][0], "kind": "container", "name": "container1"}


def test_isolation_drop_says_where(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.51.0.0/24", "neta")
    host.cli("network", "create", "--subnet", "10.52.0.0/24", "netb")
    host.cli("run", "-d", "--name", "a", "--net", "neta", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "b", "--net", "netb", "--", "sleep", "infinity")
    r = trace(host, "--from", "a", "--to", "b")
    assert r["verdict"].startswith("dropped")
    assert r["dropped"]["hook"] == "forward"
    assert r["dropped"]["chain"].startswith("from-pt-")
    assert r["dropped"]["rule"] == "oifname @bridges drop"
    text = host.cli("trace", "--from", "a", "--to", "b").stdout
    assert "verdict: dropped" in text
    assert no_trace_rules(host)


def test_bad_trace_requests_leave_no_rules(make_host):
    host = make_host()
    host.cli("run", "-d", "--name", "a", "--", "sleep", "infinity")
    bad = [
        ("--from", "nope", "--to", "a"),
        ("--from", "a", "--to", "host/tcp"),
        ("--from", "netns:nope", "--to", "a"),
        ("--from", "a", "--to", "10.1.1.1:99999"),
    ]
    for args in bad:
        proc = host.cli("trace", *args, check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("Error: "), args
    assert no_trace_rules(host)


def test_metrics_scrape_parses(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "-p", "8080:80", "--", "sleep", "inf")
    text = host.sh("curl", "-sf", "http://127.0.0.1:9323/metrics").stdout
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)  # every sample line parses
    assert samples['pontoon_containers{state="running"}'] == 1
    assert samples['pontoon_endpoints{network="web"}'] == 1
    assert samples["pontoon_published_ports"] == 2  # 0.0.0.0:8080 and [::]:8080
    assert samples['pontoon_store_operation_seconds_count{store="local"}'] > 0
    assert "pontoon_proxy_connections_total" in samples


def test_topology_shows_every_device(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "-p", "8080:80", "--", "sleep", "inf")
    info = json.loads(host.cli("inspect", "c1").stdout)[0]["NetworkSettings"]["Networks"]["web"]
    bridge = json.loads(host.cli("network", "inspect", "web").stdout)[0]["Bridge"]
    text = host.cli("topology").stdout
    for needle in (bridge, info["HostInterface"], "c1:eth0 10.50.0.2", "0.0.0.0:8080/tcp -> c1:80"):
        assert needle in text
    dot = host.cli("topology", "--format", "dot").stdout
    assert dot.startswith("digraph") and info["HostInterface"] in dot
    assert "<svg" in host.cli("topology", "--format", "svg").stdout


def test_live_trace_follows_real_traffic(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "b", "--net", "web", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "a", "--net", "web", "-p", "7000:7000", "--",
             "sh", "-c", "sleep 1; ping -i 0.2 -c 20 10.50.0.2")  # fmt: skip
    r = trace(host, "--from", "a", "--to", "b", "--live", "2")
    assert r["probe"]["live"] == 2 and r["probe"]["packets"] > 0
    assert r["verdict"].startswith("observed")
    assert no_trace_rules(host)


def test_interrupted_trace_leaves_no_rules(make_host):
    import signal
    import subprocess
    import time

    from pontoon.lab.hosts import bin_path

    host = make_host()
    host.cli("run", "-d", "--name", "a", "--", "sleep", "infinity")
    proc = subprocess.Popen([bin_path("pontoon"), "-H", host.host_url, "trace", "--from", "a",
                             "--to", "a", "--live", "2"])  # fmt: skip
    time.sleep(0.7)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    time.sleep(2.5)  # the daemon finishes the trace it was asked for and cleans up
    assert no_trace_rules(host)
