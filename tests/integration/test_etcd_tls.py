"""etcd over TLS with client certificates (issue 15, item 2): `pontoon lab up
--tls` runs etcd with --client-cert-auth and every pontoond with Docker's
--cluster-store-opt kv.cacertfile/kv.certfile/kv.keyfile. The good
certificate carries an overlay between two hosts; a daemon with no
certificate, an expired one or one of another CA is refused at once, with one
line and a non-zero exit, and makes nothing."""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pontoon.lab import cluster
from pontoon.lab.hosts import bin_path
from pontoon.lab.pki import Authority
from tests.conftest import new_lab_name
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

SUBNET = "10.191.0.0/24"
REFUSAL_BUDGET = 20.0  # seconds: the store's 3 s budget, and a slow shared machine


@pytest.fixture(scope="module")
def lab() -> Iterator[cluster.LabState]:
    name = new_lab_name()
    try:
        yield cluster.up(name, 2, SUBNET, tls=True)
    finally:
        cluster.down(name)


def cli(lab: cluster.LabState, host: str, *args: str) -> str:
    return lab.host(host).sim().cli(*args).stdout


def test_overlay_across_hosts_over_tls_etcd(lab: cluster.LabState):
    cli(lab, "h1", "network", "create", "-d", "overlay", "--subnet", "10.93.0.0/24", "sec")
    cli(lab, "h1", "run", "-d", "--name", "sec1", "--net", "sec", "--", "sleep", "infinity")
    cli(lab, "h2", "run", "-d", "--name", "sec2", "--net", "sec", "--", "sleep", "infinity")
    h1 = lab.host("h1").sim()
    wait_for(lambda: h1.cli("exec", "sec1", "ping", "-c1", "-W1", "sec2", check=False)
             .returncode == 0, 20, "sec1 pings sec2 over the overlay")  # fmt: skip


def test_api_over_mutual_tls_from_the_underlay(lab: cluster.LabState):
    """The admin's certificate reaches h2's API on its underlay address."""
    env = {**os.environ, "PONTOON_TLS_VERIFY": "1",
           "PONTOON_CERT_PATH": str(lab.certs / "client")}  # fmt: skip
    address = lab.host("h2").address
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.switch}", "--", bin_path("pontoon"),
         "-H", f"tcp://{address}:{cluster.API_TLS_PORT}", "network", "ls"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0 and "bridge" in out.stdout, out.stderr


def test_etcd_itself_refuses_a_client_without_certificate(lab: cluster.LabState):
    ca = lab.certs / "ca" / "ca.pem"
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.switch}", "--", "etcdctl",
         f"--endpoints={lab.etcd_client_url}", f"--cacert={ca}", "--dial-timeout=2s",
         "--command-timeout=3s", "get", "--prefix", "/"],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0


def start_refused(lab: cluster.LabState, tmp_path: Path, *opts: str) -> str:
    """A second pontoond in h1's namespace (so it reaches etcd) with these
    --cluster-store-opt values: it must exit non-zero, fast, with one
    `Error:` line, having made no store."""
    root = tmp_path / "root"
    args = [bin_path("pontoond"), "--root", str(root), "--exec-root", str(tmp_path / "run"),
            "-H", f"unix://{tmp_path}/p.sock", "--metrics-addr", "",
            "--cluster-store", f"{lab.etcd_url}{cluster.CLUSTER_PREFIX}",
            "--cluster-advertise", "eth0"]  # fmt: skip
    for opt in opts:
        args += ["--cluster-store-opt", opt]
    started = time.monotonic()
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.host('h1').netns}", "--", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < REFUSAL_BUDGET
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    assert not (root / "pontoon.db").exists() and not (tmp_path / "p.sock").exists()
    return errors[0]


def test_daemon_without_client_certificate_is_refused(lab: cluster.LabState, tmp_path: Path):
    error = start_refused(lab, tmp_path, f"kv.cacertfile={lab.certs / 'ca' / 'ca.pem'}")
    assert "refused our client certificate (none given)" in error


def test_daemon_with_foreign_certificate_is_refused(lab: cluster.LabState, tmp_path: Path):
    foreign = Authority.create(tmp_path / "other-ca").issue(tmp_path / "f", "h1", server=False)
    error = start_refused(lab, tmp_path, f"kv.cacertfile={lab.certs / 'ca' / 'ca.pem'}",
                          f"kv.certfile={foreign.cert}", f"kv.keyfile={foreign.key}")  # fmt: skip
    assert f"refused our client certificate ({foreign.cert})" in error


def test_daemon_with_expired_certificate_is_refused(lab: cluster.LabState, tmp_path: Path):
    # The lab's CA key signs an expired certificate for h1.
    ca = Authority.load(lab.certs / "ca")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    old = ca.issue(tmp_path / "old", "h1", not_before=past,
                   not_after=past + datetime.timedelta(days=1))  # fmt: skip
    error = start_refused(lab, tmp_path, f"kv.cacertfile={old.ca}", f"kv.certfile={old.cert}",
                          f"kv.keyfile={old.key}")  # fmt: skip
    assert "the certificate expired on" in error


def test_daemon_refuses_an_etcd_its_ca_did_not_sign(lab: cluster.LabState, tmp_path: Path):
    other = Authority.create(tmp_path / "other-ca")
    h1 = lab.certs / "h1"
    opts = [f"kv.certfile={h1 / 'cert.pem'}", f"kv.keyfile={h1 / 'key.pem'}"]
    error = start_refused(lab, tmp_path, f"kv.cacertfile={other.cert_path}", *opts)
    assert "etcd's certificate is not signed by kv.cacertfile" in error


def test_store_options_need_their_files(lab: cluster.LabState, tmp_path: Path):
    error = start_refused(lab, tmp_path, "kv.cacertfile=/nonexistent/ca.pem")
    assert "/nonexistent/ca.pem" in error
