"""Servers and probes for the port-mapping matrix (SPEC §6)."""

from __future__ import annotations

from pontoon.lab import SimHost

# Inside a container: TCP and UDP on the given ports, answering "peer=<ip>".
SERVER = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, a = s.accept()
        try:
            c.recv(100); c.sendall(f"peer={a[0]}\n".encode())
        finally:
            c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(100); s.sendto(f"peer={a[0]}\n".encode(), a)
for arg in sys.argv[1:]:
    port, proto = arg.split("/")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),)).start()
"""

# Anywhere: one request to either family; prints the reply, then
# "from=<address the reply came from>".
PROBE = r"""
import socket, sys, time
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
af = socket.AF_INET6 if ":" in host else socket.AF_INET
deadline = time.monotonic() + float(sys.argv[4] if len(sys.argv) > 4 else 5)
while True:
    try:
        if proto == "tcp":
            s = socket.socket(af, socket.SOCK_STREAM); s.settimeout(1)
            s.connect((host, port)); s.sendall(b"x"); data = s.recv(100)
            src = s.getpeername()[0]
        else:
            s = socket.socket(af, socket.SOCK_DGRAM); s.settimeout(0.5)
            s.sendto(b"x", (host, port)); data, a = s.recvfrom(100); src = a[0]
        if data:
            print(data.decode().strip(), f"from={src}"); sys.exit(0)
    except OSError as exc:
        err = exc
    if time.monotonic() > deadline:
        print(f"error={err}"); sys.exit(1)
    time.sleep(0.1)
"""


def probe(where: SimHost, addr: str, port: int, proto: str = "tcp", timeout: float = 5) -> str:
    proc = where.sh("python3", "-c", PROBE, addr, str(port), proto, str(timeout), check=False)
    return proc.stdout.strip()


def probe_from(host: SimHost, container: str, addr: str, port: int, proto: str = "tcp") -> str:
    proc = host.cli("exec", container, "python3", "-c", PROBE, addr, str(port), proto,
                    check=False)  # fmt: skip
    return proc.stdout.strip()
