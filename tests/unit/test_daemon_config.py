"""pontoond's -H parsing and configuration paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from pontoon.daemon.config import DaemonConfig, parse_host, parse_hosts


def test_parse_host_unix_url():
    assert parse_host("unix:///run/pontoon/pontoon.sock") == Path("/run/pontoon/pontoon.sock")


def test_parse_host_bare_absolute_path():
    assert parse_host("/tmp/p.sock") == Path("/tmp/p.sock")


@pytest.mark.parametrize("url", ["http://localhost", "fd://", "p.sock"])
def test_parse_host_rejects_anything_but_unix_sockets(url):
    with pytest.raises(ValueError, match="use unix:///PATH"):
        parse_host(url)


def test_parse_host_error_explains_tcp_needs_tls():
    with pytest.raises(ValueError, match="mutual TLS"):
        parse_host("tcp://0.0.0.0:2375")


def test_tcp_host_needs_tlsverify():
    with pytest.raises(ValueError, match="without --tlsverify"):
        parse_hosts(["tcp://0.0.0.0:2375"], None)


def test_parse_host_empty_unix_path_is_not_the_current_directory():
    try:
        path = parse_host("unix://")
    except ValueError:
        return
    assert path.name


def test_config_paths_follow_root_and_exec_root():
    cfg = DaemonConfig(root=Path("/r"), exec_root=Path("/x"))
    assert cfg.db_path == Path("/r/pontoon.db")
    assert cfg.container_dir("abc") == Path("/r/containers/abc")
    assert cfg.netns_dir == Path("/x/netns")
