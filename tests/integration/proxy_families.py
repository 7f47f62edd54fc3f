"""Run inside a throwaway network namespace (`unshare --net`): the userland
proxy serving IPv6, IPv4 and dual-stack sockets, with backends of either
family. Prints one JSON object of check -> answer (or error) and exits.

Every client socket is connected, so a reply from any other address than the
one the client sent to is dropped by the kernel and shows as a timeout.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from pontoon.proxy import client as proxy_client

V6_A, V6_B = "fd00:1::1", "fd00:1::2"


def setup_namespace() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in (V6_A, V6_B):
        subprocess.run(["ip", "addr", "add", f"{address}/128", "dev", "lo", "nodad"], check=True)


def echo_udp(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(address)

    def serve() -> None:
        while True:
            data, peer = sock.recvfrom(2048)
            sock.sendto(b"echo:" + data, peer)

    threading.Thread(target=serve, daemon=True).start()


def echo_tcp(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen()

    def serve() -> None:
        while True:
            conn, _ = sock.accept()
            with conn:
                conn.sendall(b"echo:" + conn.recv(2048))

    threading.Thread(target=serve, daemon=True).start()


def published(family: socket.AddressFamily, kind: int, port: int, v6only: bool) -> socket.socket:
    sock = socket.socket(family, kind)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    return sock


def ask(kind: int, source: str, target: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.settimeout(2)
        try:
            sock.bind((source, 0))
            sock.connect((target, port))
            sock.send(b"hi")
            return sock.recv(2048).decode()
        except OSError as exc:
            return f"error: {exc}"


def main() -> int:
    setup_namespace()
    echo_udp(socket.AF_INET, ("127.0.0.1", 9000))
    echo_udp(socket.AF_INET6, ("::1", 9001))
    echo_tcp(socket.AF_INET, ("127.0.0.1", 9002))
    workdir = Path(tempfile.mkdtemp(prefix="pontoon-proxy-families-"))
    pid = proxy_client.spawn(workdir / "proxy.ctl", workdir / "proxy.log", workers=2)
    udp, tcp, v6, v4 = socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.AF_INET6, socket.AF_INET
    try:
        with proxy_client.ProxyClient.connect(workdir / "proxy.ctl") as proxy:
            proxy.add_many([
                ("v6only-udp", "udp", published(v6, udp, 8000, True), "127.0.0.1", 9000),
                ("dual-udp", "udp", published(v6, udp, 8001, False), "::1", 9001),
                ("v6only-tcp", "tcp", published(v6, tcp, 8002, True), "127.0.0.1", 9002),
                ("v4-udp", "udp", published(v4, udp, 8003, False), "::1", 9001),
            ])  # fmt: skip
        answers = {
            "udp6 client -> v4 backend": ask(udp, V6_A, V6_B, 8000),
            "udp6 client via ::1": ask(udp, "::1", "::1", 8000),
            "udp4 client of a dual-stack socket": ask(udp, "127.0.0.1", "127.0.0.2", 8001),
            "udp6 client of a dual-stack socket": ask(udp, V6_A, V6_B, 8001),
            "tcp6 client -> v4 backend": ask(tcp, V6_A, V6_B, 8002),
            "udp4 client -> v6 backend": ask(udp, "127.0.0.1", "127.0.0.2", 8003),
        }
    finally:
        proxy_client.terminate(pid)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
