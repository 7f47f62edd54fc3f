"""Attachments through the API: namespaces pontoon did not make, joined to a
network for an owner of any kind, detached idempotently, kept across restarts
by owner kind, and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pontoon.client import ApiError, Client
from pontoon.lab import SimHost
from tests.integration.helpers import can_ping, in_ns, resolve, snapshot, wait_for

pytestmark = pytest.mark.integration


def attach(host: SimHost, netns: Path | None, kind: str, owner: str, **extra: object) -> dict:
    body: dict[str, object] = {
        "Network": "web",
        "Owner": {"Kind": kind, "Id": owner, "Name": owner},
        **extra,
    }
    if netns is not None:
        body["Netns"] = str(netns)
    return Client(host.host_url).post("/attachments", body)


def pins(host: SimHost) -> list[str]:
    return sorted(p.name for p in (host.exec_root / "netns").iterdir() if "-" in p.name)


def test_foreign_namespace_attached_resolved_and_detached_clean(make_host, foreign_ns):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    clean = snapshot(host)
    ns = foreign_ns(host, "pod1")

    result = attach(host, ns, "cni", "pod1", IPs=["10.50.0.40"], Aliases=["db"])
    assert result["interfaces"][0]["name"] == "eth0"
    assert result["ips"] == [{"address": "10.50.0.40/24", "interface": 0, "gateway": "10.50.0.1"}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.50.0.1"}]
    assert result["dns"] == {"nameservers": ["127.0.0.11"]}
    assert "10.50.0.40/24" in in_ns(ns, "ip", "-o", "-4", "addr", "show", "eth0").stdout
    # A pontoon container and the foreign_ns namespace reach each other, by name too.
    assert can_ping(host, "c1", "pod1") and can_ping(host, "c1", "db")
    c1 = resolve(ns, "c1")
    assert c1 == [
        host.cli_json("inspect", "c1")[0]["NetworkSettings"]["Networks"]["web"]["IPAddress"]
    ]
    assert in_ns(ns, "ping", "-c1", "-W1", c1[0], check=False).returncode == 0
    listed = Client(host.host_url).get("/attachments", owner_kind="cni")
    assert [(a["Owner"]["Id"], a["Addresses"]) for a in listed] == [("pod1", ["10.50.0.40/24"])]

    client = Client(host.host_url)
    client.delete(f"/attachments/{result['Id']}")
    client.delete(f"/attachments/{result['Id']}")  # idempotent
    assert "eth0" not in in_ns(ns, "ip", "-o", "link").stdout
    assert pins(host) == []
    assert snapshot(host) == clean


def test_detach_succeeds_when_the_owner_already_deleted_the_namespace(make_host, foreign_ns):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    clean = snapshot(host)
    ns = foreign_ns(host, "gone")
    attach(host, ns, "docker", "ep1")
    # The owner's runtime deletes its namespace first (unmount + unlink).
    subprocess.run(["umount", str(ns)], check=True)
    ns.unlink()
    Client(host.host_url).delete("/attachments", owner_kind="docker", owner_id="ep1")
    assert snapshot(host) == clean


def test_attach_by_descriptor_uses_the_clients_open_namespace(make_host, foreign_ns):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    ns = foreign_ns(host, "byfd")
    fd = os.open(ns, os.O_RDONLY)
    try:
        result = attach(host, None, "cni", "fd1", NetnsFd=fd)
    finally:
        os.close(fd)
    ip = result["ips"][0]["address"].split("/")[0]
    assert ip in in_ns(ns, "ip", "-o", "-4", "addr").stdout


def test_bad_attachments_are_refused_and_leave_nothing(make_host, foreign_ns, tmp_path):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    clean = snapshot(host)
    ns = foreign_ns(host, "bad")
    plain = tmp_path / "not-a-namespace"
    plain.write_text("")
    cases = [
        ({"Netns": str(plain)}, 400, "not a network namespace"),
        ({"Netns": str(tmp_path / "missing")}, 400, "cannot open network namespace"),
        ({"Netns": str(ns), "IPs": ["10.99.0.5"]}, 400, "not usable in network web"),
        ({"Netns": str(ns), "Network": "nope"}, 404, "no such network: nope"),
        ({"Netns": str(ns), "Ifname": "x" * 16}, 400, "invalid interface name"),
        ({"Netns": str(ns), "Owner": {"Kind": "robot", "Id": "r"}}, 400, "unknown owner kind"),
        ({"Netns": str(ns), "Ports": ["80:80:80:80"]}, 400, "invalid port specification"),
    ]
    for extra, status, message in cases:
        body = {"Network": "web", "Owner": {"Kind": "cni", "Id": "x"}, **extra}
        with pytest.raises(ApiError) as err:
            Client(host.host_url).post("/attachments", body)
        assert (err.value.status, message in err.value.message) == (status, True), extra
        assert "\n" not in err.value.message
    assert snapshot(host) == clean
    assert "eth0" not in in_ns(ns, "ip", "-o", "link").stdout


def test_attaching_one_owner_twice_to_a_network_is_a_conflict(make_host, foreign_ns):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    ns = foreign_ns(host, "twice")
    attach(host, ns, "cni", "twice")
    with pytest.raises(ApiError) as err:
        attach(host, ns, "cni", "twice", Ifname="eth1")
    assert err.value.status == 409


def test_attachments_of_every_owner_kind_survive_a_daemon_restart(make_host, foreign_ns):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    cni, docker = foreign_ns(host, "cni"), foreign_ns(host, "docker")
    attach(host, cni, "cni", "k8s-pod")
    attach(host, docker, "docker", "endpoint-1", Ports=["18080:80"])
    before = Client(host.host_url).get("/attachments")

    host.stop_daemon()
    host.start_daemon()
    after = Client(host.host_url).get("/attachments")
    assert sorted(json.dumps(a, sort_keys=True) for a in after) == sorted(
        json.dumps(a, sort_keys=True) for a in before
    )
    assert can_ping(host, "c1", "k8s-pod") and can_ping(host, "c1", "endpoint-1")

    # Killed while the daemon is down: only the pontoon container's attachment
    # goes; the CNI runtime's and dockerd's are theirs to remove.
    host.stop_daemon()
    host.kill_containers()
    host.start_daemon()
    kinds = sorted(a["Owner"]["Kind"] for a in Client(host.host_url).get("/attachments"))
    assert kinds == ["cni", "docker"]
    (peer,) = resolve(cni, "endpoint-1")
    wait_for(lambda: in_ns(cni, "ping", "-c1", "-W1", peer, check=False).returncode == 0)


def dns_listeners(ns: Path) -> str:
    return in_ns(ns, "ss", "-Hlnu", "src", "127.0.0.11").stdout


def test_an_attachment_without_dns_gets_no_resolver_after_a_restart(make_host, foreign_ns):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    plain, served = foreign_ns(host, "nodns"), foreign_ns(host, "dns")
    attach(host, plain, "cni", "nodns", DNS=False)
    attach(host, served, "cni", "dns")
    assert dns_listeners(plain) == "" and "127.0.0.11:" in dns_listeners(served)

    host.stop_daemon()
    host.start_daemon()
    assert dns_listeners(plain) == "", "the restart started a resolver nobody asked for"
    assert "127.0.0.11:" in dns_listeners(served)
