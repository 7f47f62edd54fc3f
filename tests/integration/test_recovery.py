"""A daemon killed mid-operation leaves nothing behind once restarted, and
several daemons share one machine (SPEC §2, §10)."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from pontoon.core.model import Attachment, Container, NetworkRequest, Owner
from pontoon.sandbox import netns
from tests.integration.helpers import can_ping, ip_of, snapshot

pytestmark = pytest.mark.integration


def _put(db_path, key: str, value: str) -> None:
    db = sqlite3.connect(db_path)
    try:
        rev = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0] + 1
        db.execute("INSERT INTO kv VALUES (?, ?, ?, ?)", (key, value, rev, rev))
        db.execute("UPDATE meta SET value=? WHERE name='revision'", (rev,))
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("shape", ["release 1", "current"])
def test_half_made_container_is_rolled_back_on_restart(make_host, shape):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    net_id = host.cli_json("network", "inspect", "web")[0]["Id"]
    clean = snapshot(host)
    host.stop_daemon()

    # What a daemon killed in the middle of `run` leaves: the intent record,
    # a sandbox, an endpoint (attachment) record, an address allocation and a
    # veth; written as release 1 wrote them, or as this release does.
    cid, epid = "a" * 64, "b" * 64
    sandbox = host.exec_root / "netns" / cid[:12]
    netns.create(sandbox)
    ctr = Container(id=cid, name="half", hostname="half", command=["sleep", "1"],
                    networks=[NetworkRequest(net_id)], attachments={net_id: epid},
                    sandbox=str(sandbox))  # fmt: skip
    host_ifname = "veth" + epid[:11]
    if shape == "current":
        att = Attachment(id=epid, network_id=net_id, owner=Owner("pontoon", cid, "half"),
                         netns=str(sandbox), ifname="eth0", addresses=["10.50.0.2/24"],
                         mac="02:42:0a:32:00:02", host_ifname=host_ifname)  # fmt: skip
        key, value = f"/attachments/{epid}", att.dumps()
    else:
        ep = {"id": epid, "network_id": net_id, "container_id": cid, "container_name": "half",
              "ifname": "eth0", "ip": "10.50.0.2", "mac": "02:42:0a:32:00:02", "prefixlen": 24,
              "host_ifname": host_ifname}  # fmt: skip
        key, value = f"/endpoints/{epid}", json.dumps(ep)
    db = host.root / "pontoon.db"
    _put(db, f"/containers/{cid}", ctr.dumps())
    _put(db, key, value)
    _put(db, f"/ipam/{net_id}/10.50.0.2", epid)
    host.sh("ip", "link", "add", host_ifname, "type", "veth", "peer", "name", "tmp0")

    host.start_daemon()
    assert snapshot(host) == clean
    assert json.loads(host.cli("ps", "-a", "--format", "json").stdout) == []
    # And the address is free again.
    host.cli("run", "-d", "--name", "c", "--net", "web", "--", "sleep", "infinity")
    assert ip_of(host, "c", "web") == "10.50.0.2"


def test_daemons_side_by_side(make_host):
    a = make_host()
    b = make_host()
    for host in (a, b):
        host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
        host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
        host.cli("run", "-d", "--name", "c2", "--net", "web", "--", "sleep", "infinity")
    # Same names, same subnets, separate hosts: each sees only its own.
    assert can_ping(a, "c1", ip_of(a, "c2", "web"))
    assert can_ping(b, "c1", ip_of(b, "c2", "web"))
    assert a.cli_json("inspect", "c1")[0]["Id"] != b.cli_json("inspect", "c1")[0]["Id"]
    a.cli("rm", "-f", "c1")
    assert b.cli_json("inspect", "c1")[0]["State"]["Running"]


def test_socket_is_private_to_root(make_host):
    host = make_host()
    mode = subprocess.run(["stat", "-c", "%a %U", str(host.socket)], capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    assert mode == ["660", "root"]
