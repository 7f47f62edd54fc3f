"""TCP through the proxy: echo, bulk integrity, half-close, failures, scale."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time

import pytest

from pontoon.proxy.tcp import IDLE_PIPES
from tests.proxy.helpers import LOOPBACK, connect, free_port, recv_all, wait_for

BULK = 20 * 1024 * 1024


def test_echo(proxy, tcp_server) -> None:
    port = proxy.publish("web", "tcp", tcp_server().port)
    with connect(port) as sock:
        sock.sendall(b"hello proxy")
        assert sock.recv(100) == b"hello proxy"
    stats = proxy.client.stats()["web"]
    assert stats["connections_total"] == 1
    assert stats["bytes_in"] == stats["bytes_out"] == len(b"hello proxy")


def test_bulk_both_directions_at_once(proxy, tcp_server) -> None:
    """20 MB each way simultaneously, each side half-closing when done."""
    upload, download = os.urandom(BULK), os.urandom(BULK)
    received: dict[str, str] = {}

    def backend(conn: socket.socket) -> None:
        sender = threading.Thread(target=_send_then_shutdown, args=(conn, download))
        sender.start()
        received["backend"] = hashlib.sha256(recv_all(conn)).hexdigest()
        sender.join()

    port = proxy.publish("bulk", "tcp", tcp_server(backend).port)
    with connect(port, timeout=10) as sock:
        sender = threading.Thread(target=_send_then_shutdown, args=(sock, upload))
        sender.start()
        got = recv_all(sock)
        sender.join()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(download).hexdigest()
    wait_for(lambda: "backend" in received, what="the backend to finish")
    assert received["backend"] == hashlib.sha256(upload).hexdigest()
    stats = proxy.client.stats()["bulk"]
    assert stats["bytes_in"] == stats["bytes_out"] == BULK


def _send_then_shutdown(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def test_half_close_keeps_the_reply_path(proxy, tcp_server) -> None:
    def backend(conn: socket.socket) -> None:
        data = recv_all(conn)  # until the client's FIN
        time.sleep(0.1)  # reply only after the client has half-closed
        conn.sendall(b"got %d bytes" % len(data))
        conn.close()

    port = proxy.publish("half", "tcp", tcp_server(backend).port)
    with connect(port) as sock:
        sock.sendall(b"x" * 5000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"got 5000 bytes"
    wait_for(lambda: proxy.client.stats()["half"]["connections_active"] == 0)


def test_backend_down_closes_the_client_promptly(proxy) -> None:
    port = proxy.publish("down", "tcp", free_port())
    with connect(port) as sock:
        sock.settimeout(2)
        start = time.monotonic()
        with contextlib.suppress(ConnectionResetError):  # EOF or RST: both fine
            assert sock.recv(100) == b""
        assert time.monotonic() - start < 1
    stats = proxy.client.stats()["down"]
    assert stats["connect_failures"] == 1
    assert stats["connections_active"] == 0


def test_remove_refuses_new_and_ends_existing(proxy, tcp_server) -> None:
    port = proxy.publish("gone", "tcp", tcp_server().port)
    with connect(port) as sock:
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
        assert proxy.client.remove("gone") is True
        sock.settimeout(2)
        with pytest.raises((ConnectionResetError, AssertionError)):
            assert sock.recv(10) != b""  # RST (or at least EOF)
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    assert proxy.client.list() == {}
    assert proxy.client.remove("gone") is False


def test_replace_same_backend_keeps_connections(proxy, tcp_server) -> None:
    backend = tcp_server()
    port = proxy.publish("r", "tcp", backend.port)
    with connect(port) as sock:
        sock.sendall(b"one")
        assert sock.recv(10) == b"one"
        port2 = proxy.publish("r", "tcp", backend.port)  # e.g. a restarted daemon re-adding
        sock.sendall(b"two")
        assert sock.recv(10) == b"two"
        assert proxy.client.list()["r"]["listen"] == f"{LOOPBACK}:{port2}"
        assert proxy.client.stats()["r"]["connections_active"] == 1
        with connect(port2) as other:
            other.sendall(b"new")
            assert other.recv(10) == b"new"
        with pytest.raises(ConnectionRefusedError):
            connect(port)  # the replaced listener is closed

        proxy.publish("r", "tcp", tcp_server().port)  # another backend: old traffic ends
        sock.settimeout(2)
        with pytest.raises((ConnectionResetError, AssertionError)):
            assert sock.recv(10) != b""


def test_many_concurrent_connections(proxy, tcp_server) -> None:
    port = proxy.publish("many", "tcp", tcp_server().port)
    fds = proxy.fds()
    socks = [connect(port) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"conn %03d" % i)
        for i, sock in enumerate(socks):
            assert sock.recv(100) == b"conn %03d" % i
        assert proxy.client.stats()["many"]["connections_active"] == 200
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: proxy.client.stats()["many"]["connections_active"] == 0)
    assert proxy.client.stats()["many"]["connections_total"] == 200
    # Sockets are gone; only a few pooled (empty) pipes may remain.
    assert proxy.fds() <= fds + 2 * IDLE_PIPES * len(proxy.workers())


def test_stalled_reader_backpressure_without_spinning(proxy, tcp_server) -> None:
    """The client stops reading: pipes and socket buffers fill, the proxy must
    wait quietly (not spin on a readable source), then deliver every byte."""
    data = os.urandom(BULK)

    def backend(conn: socket.socket) -> None:
        _send_then_shutdown(conn, data)

    port = proxy.publish("slow", "tcp", tcp_server(backend).port)
    with connect(port, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        time.sleep(0.2)  # let everything fill up
        before = proxy.cpu_seconds()
        time.sleep(0.5)
        assert proxy.cpu_seconds() - before < 0.1
        assert proxy.client.stats()["slow"]["bytes_out"] < BULK  # really stalled
        got = recv_all(sock)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_small_messages_to_a_stalled_reader(proxy, tcp_server) -> None:
    """Messages below the copy threshold go through recv/send: what the
    stalled client cannot take is held, reading stops, nothing spins or is
    lost, and order is kept."""
    messages = [f"{i:06d}".encode() * 50 for i in range(4000)]  # 300 bytes each

    def backend(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for message in messages:
            conn.sendall(message)
        conn.shutdown(socket.SHUT_WR)

    port = proxy.publish("small", "tcp", tcp_server(backend).port)
    with connect(port, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        time.sleep(0.3)  # let buffers fill
        before = proxy.cpu_seconds()
        time.sleep(0.5)
        assert proxy.cpu_seconds() - before < 0.1
        got = recv_all(sock)
    assert got == b"".join(messages)
