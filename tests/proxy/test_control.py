"""The control socket: list/stats, reconnection, bad input, process handling."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from pontoon.proxy.client import ProxyClient, ProxyError, ensure_running, spawn
from tests.proxy.helpers import LOOPBACK, alive, connect, wait_for

COUNTERS = {"connections_total", "connections_active", "bytes_in", "bytes_out", "udp_flows"}


def test_list_and_stats(proxy, tcp_server, udp_echo) -> None:
    backend = tcp_server()
    tcp_port = proxy.publish("c1/tcp/0.0.0.0/80", "tcp", backend.port)
    udp_port = proxy.publish("c1/udp/0.0.0.0/53", "udp", udp_echo.port)
    assert proxy.client.list() == {
        "c1/tcp/0.0.0.0/80": {
            "proto": "tcp",
            "backend_ip": LOOPBACK,
            "backend_port": backend.port,
            "listen": f"{LOOPBACK}:{tcp_port}",
        },
        "c1/udp/0.0.0.0/53": {
            "proto": "udp",
            "backend_ip": LOOPBACK,
            "backend_port": udp_echo.port,
            "listen": f"{LOOPBACK}:{udp_port}",
        },
    }
    stats = proxy.client.stats()
    assert set(stats) == {"c1/tcp/0.0.0.0/80", "c1/udp/0.0.0.0/53"}
    for counters in stats.values():
        assert set(counters) >= COUNTERS
        assert all(value == 0 for value in counters.values())
    with connect(tcp_port) as sock:
        sock.sendall(b"12345")
        assert sock.recv(10) == b"12345"
        tcp = proxy.client.stats()["c1/tcp/0.0.0.0/80"]
        assert (tcp["connections_total"], tcp["connections_active"]) == (1, 1)
        assert (tcp["bytes_in"], tcp["bytes_out"]) == (5, 5)
    assert proxy.client.ping() == proxy.pid


def test_control_socket_is_private(proxy) -> None:
    mode = os.stat(proxy.control).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_connections_survive_the_control_client(proxy, tcp_server) -> None:
    port = proxy.publish("keep", "tcp", tcp_server().port)
    with connect(port) as sock:
        proxy.client.close()  # the daemon goes away (restart)
        sock.sendall(b"still here")
        assert sock.recv(100) == b"still here"
        with (
            ProxyClient.connect(proxy.control) as second,
            ProxyClient.connect(proxy.control) as third,
        ):
            assert list(second.list()) == ["keep"]
            assert third.stats()["keep"]["connections_active"] == 1
        sock.sendall(b"and now")
        assert sock.recv(100) == b"and now"


def _raw(proxy) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(2)
    sock.connect(str(proxy.control))
    return sock


def _ask(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> dict:
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)
    return json.loads(sock.recv(65536))


def test_malformed_requests_are_refused_not_fatal(proxy) -> None:
    fds_before = proxy.fds()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((LOOPBACK, 0))
    unbound = socket.socket()
    r, w = os.pipe()
    item = {"id": "x", "proto": "tcp", "backend_ip": LOOPBACK, "backend_port": 80}

    def add(**changes: object) -> bytes:
        return json.dumps({"op": "add", "mappings": [{**item, **changes}]}).encode()

    good_udp = {"id": "u", "proto": "udp", "backend_ip": LOOPBACK, "backend_port": 53}
    batch = json.dumps({"op": "add", "mappings": [good_udp, item]}).encode()
    bad = [
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"op": "nope"}', None),
        (b'{"op": 7}', None),
        (b'{"op": "add"}', None),
        (b'{"op": "add", "mappings": []}', None),
        (add(), None),  # no fd
        (add(), [udp.fileno(), udp.fileno()]),  # two fds for one mapping
        (add(), [r]),  # not a socket
        (add(), [udp.fileno()]),  # not TCP
        (add(), [unbound.fileno()]),  # not bound
        (add(backend_port=0), [udp.fileno()]),
        (add(backend_port=True), [udp.fileno()]),
        (add(backend_ip="10.0.0.300"), [udp.fileno()]),
        (add(backend_ip=167772161), [udp.fileno()]),
        (add(proto="sctp"), [udp.fileno()]),
        (add(id=""), [udp.fileno()]),
        (batch, [udp.fileno(), udp.fileno()]),  # one bad item refuses the whole batch
        (b'{"op": "list"}', [r]),  # an fd where none belongs
        (b'{"op": "remove"}', None),
        (b'{"op": "remove", "ids": [""]}', None),
        (b"{" * 70000, None),  # not JSON, and large
    ]
    with _raw(proxy) as sock:
        for data, fds in bad:
            reply = _ask(sock, data, fds)
            assert reply["ok"] is False, data[:60]
            assert reply["error"]
    # A client hanging up with a request (and an fd) it never reads the answer of.
    with _raw(proxy) as sock:
        socket.send_fds(sock, [add()], [r])
    # A batch whose continuation never comes: the proxy drops it with the client.
    with _raw(proxy) as sock:
        first = json.dumps({"op": "add", "mappings": [item], "more": True}).encode()
        socket.send_fds(sock, [first], [r])
    for f in (udp, unbound):
        f.close()
    os.close(r)
    os.close(w)
    assert proxy.client.ping() == proxy.pid
    assert proxy.client.list() == {}
    # Every received fd was closed (the hung-up client may be served a bit later).
    wait_for(lambda: proxy.fds() == fds_before, what="the proxy to close what it received")


def test_client_raises_clear_errors(proxy) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((LOOPBACK, 0))
        with pytest.raises(ProxyError, match="not a tcp socket"):
            proxy.client.add("x", "tcp", udp, LOOPBACK, 80)
    with pytest.raises(ProxyError, match="cannot reach"):
        ProxyClient.connect(proxy.control.with_name("nothing.sock"))


def test_one_proxy_per_control_path(proxy, tmp_path) -> None:
    with pytest.raises(ProxyError, match="exited at start"):
        spawn(proxy.control, tmp_path / "second.log", timeout=3)
    with ensure_running(proxy.control, tmp_path / "unused.log") as client:
        assert client.ping() == proxy.pid
    assert not (tmp_path / "unused.log").exists()


def test_ensure_running_spawns_and_replaces_a_stale_socket(tmp_path) -> None:
    from pontoon.proxy.client import terminate

    control = tmp_path / "p.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(control))  # a socket file nobody listens on any more
    stale.close()
    client = ensure_running(control, tmp_path / "p.log")
    pid = client.ping()
    try:
        assert pid != os.getpid()
        assert client.list() == {}
    finally:
        client.close()
        terminate(pid, timeout=3)
    assert not control.exists()  # removed on a clean exit


def test_a_proxy_whose_control_socket_is_gone_exits(make_proxy, tcp_server) -> None:
    """It outlives its daemon, not its host: once the host's run directory
    (and with it the control socket) is removed, nobody can reach it again,
    and its ports and workers must not stay behind."""
    proxy = make_proxy()
    workers = proxy.workers()
    port = proxy.publish("web", "tcp", tcp_server().port)
    proxy.control.unlink()
    wait_for(lambda: not alive(proxy.pid), timeout=10, what="the orphaned proxy to exit")
    wait_for(lambda: not any(alive(pid) for pid in workers), what="its workers to exit")
    with socket.socket() as sock:
        assert sock.connect_ex((LOOPBACK, port)) != 0  # the port went with it
