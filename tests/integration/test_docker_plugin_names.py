"""A Docker container's name in pontoon: the plugin's Join does not wait for
dockerd to tell it (that kept `docker run` waiting); it is learned once the
container runs, with its aliases. pontoon's nameserver (the one Docker's
resolver forwards to, and through the cluster store other hosts' too) must
know it as soon as `docker run -d` is back, and again after a pontoond that
stopped before it learned it; a container removed at once leaves nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from pontoon.lab.cluster import docker_dns
from pontoon.lab.engines import EngineHost
from tests.integration.test_docker_plugin import (
    SUBNET,
    create_network,
    docker_attachments,
    docker_host,
    ip_on,
    run,
    wait_until,
)

pytestmark = pytest.mark.integration


def pontoon_resolves(engines: EngineHost, asker: str, name: str, address: str) -> bool:
    """Whether pontoon's nameserver (asked straight, not through Docker's
    resolver, which knows this engine's containers itself) gives `name`."""
    server = docker_dns(engines.host)[1]
    proc = engines.docker("exec", asker, "nslookup", name, server, check=False)
    return proc.returncode == 0 and address in proc.stdout.split("Name:", 1)[-1]


def owners_named(engines: EngineHost, name: str) -> list[dict]:
    return [a["Owner"] for a in docker_attachments(engines) if a["Owner"]["Name"] == name]


def forget_name(db: Path, name: str) -> None:
    """The records a pontoond leaves when it stops between a container's join
    and learning its name: the owner without it."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, value FROM kv WHERE key LIKE '/attachments/%'")
        for key, value in rows.fetchall():
            att = json.loads(value)
            if att["owner"]["name"] == name:
                att["owner"]["name"] = ""
                att["dns_names"] = [n for n in att["dns_names"] if n != name]
                conn.execute("UPDATE kv SET value=? WHERE key=?", (json.dumps(att), key))


def test_names_learned_once_the_container_runs(make_engine_host):
    engines = docker_host(make_engine_host)
    host = engines.host
    create_network(engines, "web", "--subnet", SUBNET)
    run(engines, "asker", "web")
    run(engines, "named", "web", "--network-alias", "db")
    # Right after `docker run -d` (the learning runs as the start ends; a
    # short bound for a busy machine).
    address = ip_on(engines, "named", "web")
    for each in ("named", "db"):
        wait_until(lambda n=each: pontoon_resolves(engines, "asker", n, address),
                   timeout=3, what=f"{each} in pontoon's names")  # fmt: skip
    [owner] = owners_named(engines, "named")
    sandbox = json.loads(engines.docker("inspect", "named").stdout)[0]["NetworkSettings"]
    assert sandbox["SandboxKey"].endswith(owner["Id"])  # the owner is the container's sandbox

    # pontoond stopped before it learned the name: learned when it is back,
    # the same owner.
    host.stop_daemon()
    forget_name(host.root / "pontoon.db", "named")
    host.start_daemon("--docker-plugin", "--docker-host", engines.docker_host,
                      "--log-level", "debug")  # fmt: skip
    wait_until(lambda: owners_named(engines, "named") == [owner], what="the name after a restart")
    assert pontoon_resolves(engines, "asker", "named", address)

    # Removed at once, before anything was learned: nothing is left, nor
    # written back later.
    before = {a["Id"] for a in docker_attachments(engines)}
    for i in range(3):
        run(engines, f"brief{i}", "web")
        engines.docker("rm", "-f", f"brief{i}")
    time.sleep(1)
    assert {a["Id"] for a in docker_attachments(engines)} == before

    engines.docker("rm", "-f", "asker", "named")
    engines.docker("network", "rm", "web")
    assert docker_attachments(engines) == []
