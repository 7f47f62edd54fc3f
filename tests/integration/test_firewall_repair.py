"""The periodic firewall check: rules removed or changed by something else
(`nft flush ruleset`, a deleted map element, iptables -F) are re-applied,
logged and counted in /metrics. And the one nft writer, in other namespaces,
from a process holding more than 1,024 descriptors."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator

import pytest

from pontoon.firewall import nft
from pontoon.firewall.nft import trace as trace_rules
from pontoon.firewall.nft.sandbox import redirect_dns
from pontoon.lab import SimHost
from pontoon.sandbox import netns
from tests.integration.helpers import HOST_ADDR, add_outside, wait_for
from tests.integration.portmap_helpers import PROBE, SERVER

pytestmark = pytest.mark.integration

INTERVAL = 0.5  # seconds between checks in these tests (the daemon's default is 10)
# The port must answer again within one interval; the slack absorbs a loaded
# machine (the probe itself, the CLI, the scrape).
DEADLINE = INTERVAL + 4


def answers(outside: SimHost, port: int = 12580) -> bool:
    proc = outside.sh("python3", "-c", PROBE, HOST_ADDR, str(port), "tcp", "0.5", check=False)
    return proc.stdout.startswith("peer=")


def repairs(host: SimHost) -> float:
    text = host.sh("curl", "-sf", "http://127.0.0.1:9323/metrics").stdout
    for line in text.splitlines():
        if line.startswith("pontoon_firewall_repairs_total "):
            return float(line.split()[1])
    raise AssertionError("no pontoon_firewall_repairs_total in /metrics")


def publish(make_host, backend: str, interval: float = INTERVAL) -> tuple[SimHost, SimHost]:
    # Kernel NAT only: with the userland proxy, its listening socket would
    # answer the port even without our rules.
    host = make_host(
        "--userland-proxy=false",
        "--firewall-backend", backend,
        "--firewall-check-interval", str(interval),
    )  # fmt: skip
    outside = add_outside(make_host, host)
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "front")
    host.cli("run", "-d", "--name", "web", "--net", "front", "-p", "12580:80",
             "--", "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    wait_for(lambda: answers(outside), DEADLINE, "the published port")
    return host, outside


@pytest.fixture
def nft_host(make_host):
    return publish(make_host, "nftables")


def test_flushed_ruleset_is_reapplied(nft_host):
    host, outside = nft_host
    # Our own changes (a second container publishing and going) are no drift.
    host.cli("run", "-d", "--name", "other", "--net", "front", "-p", "12581:80",
             "--", "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    host.cli("rm", "-f", "other")
    time.sleep(3 * INTERVAL)
    assert repairs(host) == 0

    host.sh("nft", "flush", "ruleset")
    wait_for(lambda: answers(outside), DEADLINE, "the port after nft flush ruleset")
    assert repairs(host) == 1
    assert "table inet pontoon is missing" in host.log_tail(50)
    assert "portmap_any" in host.sh("nft", "list", "table", "inet", "pontoon").stdout


def test_deleted_map_element_is_reapplied(nft_host):
    host, outside = nft_host
    host.sh("nft", "delete element inet pontoon portmap_any { tcp . 12580 }")
    wait_for(lambda: repairs(host) == 1, DEADLINE, "the repair of the map element")
    assert answers(outside)
    assert "portmap_any: 1 element(s) missing" in host.log_tail(50)


def test_deleted_table_is_reapplied_and_new_ports_still_work(nft_host):
    host, outside = nft_host
    host.sh("nft", "delete", "table", "inet", "pontoon")
    wait_for(lambda: answers(outside), DEADLINE, "the port after the table was deleted")
    host.cli("run", "-d", "--name", "late", "--net", "front", "-p", "12582:80",
             "--", "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    wait_for(lambda: answers(outside, 12582), DEADLINE, "a port published after the repair")
    assert repairs(host) == 1


def test_a_change_after_a_flush_repairs_first_without_waiting(make_host):
    host, outside = publish(make_host, "nftables", interval=3600)
    host.sh("nft", "flush", "ruleset")
    host.cli("run", "-d", "--name", "late", "--net", "front", "-p", "12582:80",
             "--", "python3", "-c", SERVER, "80/tcp")  # fmt: skip
    wait_for(lambda: answers(outside, 12582), DEADLINE, "the port published after the flush")
    assert answers(outside)  # the older port came back with the repair
    assert repairs(host) == 1


def test_iptables_backend_repairs_a_flushed_chain(make_host):
    host, outside = publish(make_host, "iptables")
    host.sh("iptables", "-t", "nat", "-F", "PONTOON")
    wait_for(lambda: answers(outside), DEADLINE, "the port after iptables -t nat -F PONTOON")
    # The port can answer while the re-apply is still finishing (ip6tables,
    # the other tables), before the repair is counted.
    wait_for(lambda: repairs(host) == 1, DEADLINE, "the repair to be counted")
    assert "rule(s) missing" in host.log_tail(50)
    host.sh("nft", "flush", "ruleset")
    wait_for(lambda: repairs(host) == 2, DEADLINE, "the repair after nft flush ruleset")
    assert answers(outside)


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """This process holds more than 1,024 descriptors, as a busy daemon does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        yield
        for fd in held:  # none of them was closed behind our back
            os.fstat(fd)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_writer_with_descriptors_past_1024(make_host, many_descriptors):
    """libnftables would abort the process on a socket numbered 1024 or more;
    the writer's private descriptor table keeps its socket low."""
    host = make_host(start=False)
    probe = os.dup(0)
    os.close(probe)
    assert probe > 1024
    redirect_dns("127.0.0.11", 40123, host.netns)  # by path
    fd = os.open(host.netns, os.O_RDONLY)
    try:
        trace_rules.install(["tcp sport 40000 meta nftrace set 1"], fd)  # by descriptor
    finally:
        os.close(fd)
    netns.run_in(host.netns, lambda: nft.run("add table ip from_inside"))  # the thread's own
    listing = host.sh("nft", "list", "ruleset").stdout
    assert "udp dport 53 udp dport set 40123" in listing
    assert "tcp sport 40000 meta nftrace set 1" in listing
    assert "table ip from_inside" in listing
    with pytest.raises(nft.NftError, match="syntax error"):
        nft.run("add table ip ;", host.netns)
    trace_rules.remove(host.netns)
    assert "pontoon_trace" not in host.sh("nft", "list", "ruleset").stdout
