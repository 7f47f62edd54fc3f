"""How the lab lays out its etcd members, and the flags each member gets
(pure: nothing is started)."""

from __future__ import annotations

from pathlib import Path

from pontoon.lab import cluster
from pontoon.lab.etcd import EtcdServer
from pontoon.tls import TlsFiles

FILES = TlsFiles(Path("/c/ca.pem"), Path("/c/cert.pem"), Path("/c/key.pem"))


def state(members: int, tls: bool) -> cluster.LabState:
    return cluster.LabState(name="u1", subnet="10.10.0.0/24", switch="ptl-u1-sw",
                            etcd_members=members, tls=tls)  # fmt: skip


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_one_member_is_its_own_cluster_in_plaintext():
    (server,) = cluster.etcd_servers(state(1, False))
    argv = server.command()
    assert server.url == "etcd://10.10.0.1:2379"
    assert flag(argv, "--initial-cluster") == "pontoon=http://127.0.0.1:2380"
    assert "--client-cert-auth" not in argv


def test_three_members_on_the_switch_know_each_other_over_tls():
    servers = cluster.etcd_servers(state(3, True))
    assert [s.url for s in servers] == [f"etcd://10.10.0.{i}:2379" for i in (1, 2, 3)]
    initial = ",".join(f"etcd{i}=https://10.10.0.{i}:2380" for i in (1, 2, 3))
    for i, server in enumerate(servers, 1):
        argv = server.command()
        assert flag(argv, "--name") == f"etcd{i}"
        assert flag(argv, "--initial-cluster") == initial
        assert flag(argv, "--listen-peer-urls") == f"https://10.10.0.{i}:2380"
        assert flag(argv, "--cert-file").endswith(f"certs/etcd{i}/cert.pem")
        assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv


def test_member_tls_flags_and_etcdctl_identity():
    server = EtcdServer(Path("/d/etcd"), "127.0.0.1", 2379, 2380, tls=FILES)
    argv = server.command()
    assert server.client_url == "https://127.0.0.1:2379"
    assert flag(argv, "--trusted-ca-file") == "/c/ca.pem"
    assert flag(argv, "--peer-trusted-ca-file") == "/c/ca.pem"
    assert flag(argv, "--key-file") == "/c/key.pem"
    assert server._etcdctl_tls() == ["--cacert=/c/ca.pem", "--cert=/c/cert.pem",
                                     "--key=/c/key.pem"]  # fmt: skip


def test_tls_daemon_flags_cover_store_and_api():
    s = state(1, True)
    host = cluster.LabHost("h1", "ptl-u1-h1", "10.10.0.11", "/w/h1")
    argv = cluster._tls_args(s, host)
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "--cluster-store-opt"]
    assert [o.split("=")[0] for o in opts] == ["kv.cacertfile", "kv.certfile", "kv.keyfile"]
    assert flag(argv, "-H") == "tcp://10.10.0.11:2376" and "--tlsverify" in argv
    assert cluster._tls_args(state(1, False), host) == []
