"""UDP through the proxy: reply source address, flows, expiry."""

from __future__ import annotations

import socket
import time

from tests.proxy.helpers import LOOPBACK, wait_for


def _udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(2)
    return sock


def test_echo_reply_comes_from_the_address_the_client_used(proxy, udp_echo) -> None:
    # Bound to every address: without IP_PKTINFO the reply to a datagram sent
    # to 127.0.0.2 would leave from 127.0.0.1 (the route's preferred source).
    port = proxy.publish("dns", "udp", udp_echo.port, host="0.0.0.0")
    with _udp_client() as sock:
        for dst in ("127.0.0.1", "127.0.0.2"):
            sock.sendto(b"to " + dst.encode(), (dst, port))
            data, source = sock.recvfrom(100)
            assert data == b"to " + dst.encode()
            assert source == (dst, port)
        stats = proxy.client.stats()["dns"]
    assert stats["udp_flows"] == 2  # (client, local address) pairs
    assert stats["bytes_in"] == stats["bytes_out"] == len(b"to 127.0.0.1") * 2
    # The backend sees one proxy-side peer per flow, never the client itself.
    assert len(set(udp_echo.peers)) == 2


def test_connected_client_on_a_specific_address(proxy, udp_echo) -> None:
    port = proxy.publish("udp1", "udp", udp_echo.port)
    with _udp_client() as sock:
        sock.connect((LOOPBACK, port))  # drops datagrams from any other source
        for i in range(20):
            sock.send(b"n%d" % i)
            assert sock.recv(100) == b"n%d" % i
    assert proxy.client.stats()["udp1"]["udp_flows"] == 1


def test_idle_flows_expire(make_proxy, udp_echo) -> None:
    proxy = make_proxy(udp_timeout=0.4)
    port = proxy.publish("short", "udp", udp_echo.port)
    with _udp_client() as sock:
        sock.sendto(b"a", (LOOPBACK, port))
        assert sock.recv(10) == b"a"
        assert proxy.client.stats()["short"]["udp_flows"] == 1
        wait_for(lambda: proxy.client.stats()["short"]["udp_flows"] == 0, timeout=2)
        sock.sendto(b"b", (LOOPBACK, port))  # a fresh flow
        assert sock.recv(10) == b"b"
    stats = proxy.client.stats()["short"]
    assert stats["connections_total"] == 2
    assert stats["udp_flows"] == 1


def test_active_flow_does_not_expire(make_proxy, udp_echo) -> None:
    proxy = make_proxy(udp_timeout=0.5)
    port = proxy.publish("busy", "udp", udp_echo.port)
    with _udp_client() as sock:
        for _ in range(10):  # 1 s of traffic, twice the timeout
            sock.sendto(b"x", (LOOPBACK, port))
            assert sock.recv(10) == b"x"
            time.sleep(0.1)
    assert proxy.client.stats()["busy"]["connections_total"] == 1


def test_remove_closes_flows(proxy, udp_echo) -> None:
    port = proxy.publish("u", "udp", udp_echo.port)
    fds = proxy.fds()
    with _udp_client() as sock:
        sock.sendto(b"a", (LOOPBACK, port))
        assert sock.recv(10) == b"a"
    assert proxy.fds() == fds + 1  # the flow's backend socket
    proxy.client.remove("u")
    assert proxy.fds() == fds - 2  # and the listener (the supervisor's and its worker's copy)


def test_flow_cap_evicts_the_oldest(make_proxy, udp_echo) -> None:
    proxy = make_proxy(udp_max_flows=4)
    port = proxy.publish("capped", "udp", udp_echo.port)
    clients = [_udp_client() for _ in range(6)]
    try:
        for i, sock in enumerate(clients):
            sock.sendto(b"c%d" % i, (LOOPBACK, port))
            assert sock.recv(10) == b"c%d" % i
        stats = proxy.client.stats()["capped"]
        assert (stats["udp_flows"], stats["connections_total"]) == (4, 6)
        # The newest flows are the ones kept: the last client still answers
        # on its flow, without opening a new one.
        clients[-1].sendto(b"again", (LOOPBACK, port))
        assert clients[-1].recv(10) == b"again"
        assert proxy.client.stats()["capped"]["connections_total"] == 6
    finally:
        for sock in clients:
            sock.close()
