"""`pontoon trace` where the host has no default route (a laptop offline, a CI
sandbox: a namespace with only `lo`) and where it has one (issue 16): `host:PORT`
picks an address it can explain, and what cannot be traced says why in one
line, never as an "internal error" with an errno tuple."""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers import HOST_ADDR, add_outside, fetch

pytestmark = pytest.mark.integration

SUBNET_PREFIX = "10.57.0"


def published_host(host) -> None:
    """`web` with c1, and `pub` serving HTTP on 12580."""
    host.cli("network", "create", "--subnet", f"{SUBNET_PREFIX}.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    host.cli("run", "-d", "--name", "pub", "--net", "web", "-p", "12580:80", "--",
             "python3", "-m", "http.server", "80")  # fmt: skip
    pub_ip = json.loads(host.cli("inspect", "pub").stdout)[0]["NetworkSettings"]["Networks"]
    fetch(host, "c1", f"http://{pub_ip['web']['IPAddress']}/")  # the server is up


def trace_json(host, *args: str) -> dict:
    return json.loads(host.cli("trace", "--json", *args).stdout)


def one_line_error(host, *args: str) -> str:
    proc = host.cli(*args, check=False)
    assert proc.returncode == 1, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "internal error" not in lines[0] and "(101," not in lines[0], lines[0]
    return lines[0]


def test_no_default_route_container_reaches_host_at_its_gateway(make_host):
    host = make_host()  # only lo
    published_host(host)
    r = trace_json(host, "--from", "c1", "--to", "host:12580/tcp")
    assert r["to"]["ip"] == f"{SUBNET_PREFIX}.1"  # the host as c1 sees it
    assert r["verdict"] == "delivered"
    # And the text form, as the README's tour runs it.
    text = host.cli("trace", "--from", "c1", "--to", "host:12580/tcp").stdout
    assert "verdict: delivered" in text


def test_no_default_route_host_source_says_what_to_give(make_host):
    host = make_host()
    published_host(host)
    line = one_line_error(host, "trace", "--from", "host", "--to", "host:12580/tcp")
    assert "no default route" in line and "--to 127.0.0.1:12580/tcp" in line
    # What it suggests works.
    assert trace_json(host, "--from", "host", "--to", "127.0.0.1:12580/tcp")["verdict"] == (
        "delivered"
    )


def test_unroutable_probe_says_so(make_host):
    host = make_host()
    published_host(host)
    line = one_line_error(host, "trace", "--from", "host", "--to", "203.0.113.9:80/tcp")
    assert "cannot route a probe from host to 203.0.113.9" in line
    assert "network is unreachable" in line
    live = one_line_error(host, "trace", "--live", "1", "--from", "host", "--to", "203.0.113.9")
    assert "cannot route a probe" in live


def test_with_default_route_host_is_its_address(make_host):
    host = make_host()
    add_outside(make_host, host)
    published_host(host)
    r = trace_json(host, "--from", "c1", "--to", "host:12580/tcp")
    assert r["to"]["ip"] == HOST_ADDR and r["verdict"] == "delivered"
    own = trace_json(host, "--from", "host", "--to", "host:12580/tcp")
    assert own["to"]["ip"] == HOST_ADDR and own["verdict"] == "delivered"
