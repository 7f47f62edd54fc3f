"""Remote API TLS settings: -H parsing, Docker-style file lookup, contexts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from pontoon.client import ApiError, Client
from pontoon.daemon.config import parse_hosts
from pontoon.lab.pki import Authority
from pontoon.tls import (
    TlsError,
    TlsFiles,
    client_context,
    parse_tcp_host,
    server_context,
    tls_files,
)

FILES = TlsFiles(Path("/c/ca.pem"), Path("/c/cert.pem"), Path("/c/key.pem"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://127.0.0.1:2376", ("127.0.0.1", 2376)),
        ("tcp://10.0.0.1", ("10.0.0.1", 2376)),
        ("tcp://[fd00::1]:9000", ("fd00::1", 9000)),
        ("tcp://daemon.example:443", ("daemon.example", 443)),
    ],
)
def test_parse_tcp_host(url, expected):
    assert parse_tcp_host(url) == expected


@pytest.mark.parametrize("url", ["tcp://", "tcp://a b:1", "tcp://1.2.3.4:0", "tcp://h:99999",
                                 "tcp://[fd00::1", "tcp://h:x"])  # fmt: skip
def test_parse_tcp_host_rejects(url):
    with pytest.raises(ValueError, match="invalid -H"):
        parse_tcp_host(url)


def test_tcp_without_tls_is_refused():
    with pytest.raises(ValueError, match="mutual TLS"):
        parse_hosts(["unix:///run/p.sock", "tcp://127.0.0.1:2376"], None)


def test_unix_and_tcp_side_by_side():
    sock, tcp = parse_hosts(["unix:///run/p.sock", "tcp://127.0.0.1:2376"], FILES)
    assert sock == Path("/run/p.sock") and tcp == [("127.0.0.1", 2376)]


def test_tcp_only_has_no_unix_socket():
    assert parse_hosts(["tcp://127.0.0.1:2376"], FILES) == (None, [("127.0.0.1", 2376)])


def test_one_unix_socket_at_most():
    with pytest.raises(ValueError, match="at most one"):
        parse_hosts(["unix:///a.sock", "unix:///b.sock"], None)


def test_tls_off_unless_asked():
    assert tls_files(False, env={}) is None
    assert tls_files(False, env={"PONTOON_CERT_PATH": "/c"}) is None


def test_tls_verify_env_and_cert_path_as_docker():
    env = {"PONTOON_TLS_VERIFY": "1", "PONTOON_CERT_PATH": "/c"}
    assert tls_files(False, env=env) == FILES


def test_flags_win_over_cert_path():
    got = tls_files(True, cert="/x/me.pem", env={"PONTOON_CERT_PATH": "/c"})
    assert got == TlsFiles(Path("/c/ca.pem"), Path("/x/me.pem"), Path("/c/key.pem"))


def test_default_cert_path_is_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/u")
    got = tls_files(True, env={})
    assert got is not None and got.ca == Path("/home/u/.pontoon/ca.pem")


def test_missing_file_is_named():
    with pytest.raises(TlsError, match=r"/c/ca.pem does not exist"):
        server_context(FILES)


def test_contexts_require_the_peer_certificate(tmp_path):
    ca = Authority.create(tmp_path / "ca")
    files = ca.issue(tmp_path / "d", "pontoond", ips=["127.0.0.1"])
    assert server_context(files).verify_mode == ssl.CERT_REQUIRED
    ctx = client_context(files)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_key_files_are_private(tmp_path):
    ca = Authority.create(tmp_path / "ca")
    files = ca.issue(tmp_path / "d", "h1")
    assert files.key.stat().st_mode & 0o077 == 0
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o077 == 0


def test_client_refuses_tcp_without_tls():
    with pytest.raises(ApiError, match="needs --tlsverify"):
        Client("tcp://127.0.0.1:2376")
