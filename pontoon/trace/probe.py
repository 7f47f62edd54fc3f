"""The probe: one connection attempt, ping or datagram from a namespace, with
a source port (or ICMP id) chosen by us so the trace can follow exactly it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, os, socket, struct, sys, time
proto, dst, port, mark = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = {"ok": False}
t = time.monotonic()
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
v6 = ":" in dst
af, anyaddr = (socket.AF_INET6, "::") if v6 else (socket.AF_INET, "0.0.0.0")
try:
    if proto == "icmp" and v6:
        # The kernel fills in an ICMPv6 checksum; replies come without an IP header.
        s = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); s.settimeout(1.5)
        s.sendto(struct.pack("!BBHHH", 128, 0, 0, mark, 1) + b"pontoon-trace", (dst, 0))
        while True:
            data, addr = s.recvfrom(2048)
            typ, _, _, ident = struct.unpack("!BBHH", data[:6])
            if typ == 129 and ident == mark:
                out.update(ok=True, reply_from=addr[0]); break
    elif proto == "icmp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.settimeout(1.5)
        body = b"pontoon-trace"
        hdr = struct.pack("!BBHHH", 8, 0, 0, mark, 1)
        s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + body), mark, 1) + body, (dst, 0))
        while True:
            data, addr = s.recvfrom(2048)
            ihl = (data[0] & 15) * 4
            typ, _, _, ident = struct.unpack("!BBHH", data[ihl:ihl + 6])
            if typ == 0 and ident == mark:
                out.update(ok=True, reply_from=addr[0]); break
    elif proto == "tcp":
        s = socket.socket(af); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((anyaddr, mark)); s.settimeout(2)
        s.connect((dst, port)); out.update(ok=True, reply_from=s.getpeername()[0])
        s.sendall(b"pontoon-trace\r\n\r\n"); s.settimeout(0.3)
        try:
            out["answered"] = bool(s.recv(100))
        except OSError:
            out["answered"] = False
    else:
        s = socket.socket(af, socket.SOCK_DGRAM); s.bind((anyaddr, mark))
        s.settimeout(1.5); s.sendto(b"pontoon-trace", (dst, port))
        data, addr = s.recvfrom(2048); out.update(ok=True, reply_from=addr[0])
    out["source"] = s.getsockname()[0] if proto != "icmp" else ""
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}".strip(": ")
out["ms"] = round((time.monotonic() - t) * 1000, 3)
print(json.dumps(out))
"""


def new_mark(proto: str) -> int:
    """A source port (or ICMP id) unlikely to be in use: the trace's handle."""
    return random.randint(42000, 48999) if proto != "icmp" else random.randint(1000, 65000)


def run(ns: Path | None, proto: str, dst: str, port: int, mark: int) -> dict[str, object]:
    prefix = [] if ns is None else ["nsenter", f"--net={ns}", "--"]
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE, proto, dst, str(port), str(mark)],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": proc.stderr.strip() or "the probe did not run"}
