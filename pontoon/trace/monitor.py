"""Kernel trace events: `meta nftrace set 1` for one flow, `nft monitor trace`.

Which packets to mark is decided here (FlowMatch); the marking table
`inet pontoon_trace` is written by pontoon/firewall/nft/trace.py, and read back
by an `nft monitor trace` process per namespace.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import subprocess
import time
from pathlib import Path

from pontoon.firewall.nft import trace as trace_rules

TRACE_LINE = re.compile(
    r"^trace id (?P<id>[0-9a-f]+) (?P<family>\w+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)$"
)
# Offsets inside a VXLAN packet, counted from the outer UDP header: UDP 8,
# VXLAN 8, inner Ethernet 14, inner IPv4 20 (no options).
INNER_IP = (8 + 8 + 14) * 8
INNER_L4 = INNER_IP + 20 * 8
INNER_PROTO, INNER_SADDR, INNER_DADDR = INNER_IP + 72, INNER_IP + 96, INNER_IP + 128
INNER_L4_6 = INNER_IP + 40 * 8  # an inner IPv6 header (dual-stack overlays) is 40 bytes
PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17}
# nft's words per address family: the address match and the ICMP protocol.
NFT_FAMILY = {4: ("ip", "icmp"), 6: ("ip6", "icmpv6")}


@dataclasses.dataclass
class TraceEvent:
    id: str
    family: str
    table: str
    chain: str
    kind: str  # packet | rule | policy | verdict
    text: str
    verdict: str = ""
    fields: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FlowMatch:
    """What marks the probe's packets, both ways: a source port (TCP/UDP) or
    an ICMP id, also seen inside VXLAN encapsulation."""

    proto: str
    port: int = 0  # tcp/udp: the probe's source port
    icmp_id: int = 0
    vxlan_port: int = 0
    live_src: str = ""  # --live: real traffic from this address ...
    live_dport: int = 0  # ... to this port (tcp/udp)

    def rules(self) -> list[str]:
        if self.live_src:
            return self._live_rules()
        if self.proto == "icmp":  # whichever family the probe uses
            matches = [f"icmp id {self.icmp_id}", f"icmpv6 id {self.icmp_id}"]
            inner = [f"@th,{l4 + 32},16 {self.icmp_id}" for l4 in (INNER_L4, INNER_L4_6)]
        else:
            matches = [f"{self.proto} sport {self.port}", f"{self.proto} dport {self.port}"]
            inner = [f"@th,{l4 + shift},16 {self.port}"
                     for l4 in (INNER_L4, INNER_L4_6) for shift in (0, 16)]  # fmt: skip
        if self.vxlan_port:
            matches += [f"udp dport {self.vxlan_port} {m}" for m in inner]
        return [f"{m} meta nftrace set 1" for m in matches]

    def _live_rules(self) -> list[str]:
        """Requests from the source to the port, and whatever comes back to it,
        plain and (on overlay hosts) inside VXLAN."""
        src = self.live_src
        ip, icmp = NFT_FAMILY[ipaddress.ip_address(src).version]
        if self.proto == "icmp":
            out = [f"{ip} saddr {src} {icmp} type echo-request",
                   f"{ip} daddr {src} {icmp} type echo-reply"]  # fmt: skip
        else:
            out = [f"{ip} saddr {src} {self.proto} dport {self.live_dport}",
                   f"{ip} daddr {src} meta l4proto {self.proto}"]  # fmt: skip
        if self.vxlan_port and ip == "ip":  # VXLAN carries IPv4 only so far
            out += [f"udp dport {self.vxlan_port} {m}" for m in self._inner_live(src)]
        return [f"{m} meta nftrace set 1" for m in out]

    def _inner_live(self, src: str) -> list[str]:
        """The same two matches on the encapsulated packet (raw offsets from
        the outer UDP header: nft cannot parse inside VXLAN)."""
        addr = f"{int(ipaddress.IPv4Address(src)):#010x}"
        proto = f"@th,{INNER_PROTO},8 {PROTO_NUMBERS[self.proto]}"
        if self.proto == "icmp":  # echo-request 8, echo-reply 0
            return [f"@th,{INNER_SADDR},32 {addr} {proto} @th,{INNER_L4},8 8",
                    f"@th,{INNER_DADDR},32 {addr} {proto} @th,{INNER_L4},8 0"]  # fmt: skip
        return [f"@th,{INNER_SADDR},32 {addr} {proto} @th,{INNER_L4 + 16},16 {self.live_dport}",
                f"@th,{INNER_DADDR},32 {addr} {proto}"]  # fmt: skip


def remove_rules() -> None:
    """Drop the trace table of the current namespace, if any."""
    trace_rules.remove()


class Monitor:
    """Trace rules plus an `nft monitor trace` reader in one namespace."""

    def __init__(self, match: FlowMatch, ns: Path | None = None, label: str = "host") -> None:
        self.match = match
        self.ns = ns
        self.label = label
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        prefix = [] if self.ns is None else ["nsenter", f"--net={self.ns}", "--"]
        self.proc = subprocess.Popen(
            [*prefix, "nft", "monitor", "trace"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        trace_rules.install(self.match.rules(), self.ns)
        time.sleep(0.05)  # let the monitor subscribe before the first packet

    def stop(self) -> list[TraceEvent]:
        """Remove the rules, end the reader, return what it saw."""
        try:
            trace_rules.remove(self.ns)
        finally:
            out = ""
            if self.proc is not None:
                time.sleep(0.1)  # the last events are still on their way
                self.proc.terminate()
                try:
                    out, _ = self.proc.communicate(timeout=2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    out, _ = self.proc.communicate()
        return parse(out)


def parse(text: str) -> list[TraceEvent]:
    events = []
    for line in text.splitlines():
        m = TRACE_LINE.match(line.strip())
        if not m:
            continue
        rest = m["rest"]
        kind, verdict, fields = "verdict", "", {}
        if rest.startswith("packet:"):
            kind = "packet"
            fields = _packet_fields(rest.removeprefix("packet:"))
        elif rest.startswith("rule "):
            kind = "rule"
            vm = re.search(r"\(verdict (\S+?)(?: (\S+))?\)\s*$", rest)
            if vm:
                verdict = vm.group(1) + (f" {vm.group(2)}" if vm.group(2) else "")
            rest = re.sub(r"\s*\(verdict [^)]*\)\s*$", "", rest.removeprefix("rule "))
        elif rest.startswith("policy "):
            kind = "policy"
            verdict = rest.split()[1]
        elif rest.startswith("verdict "):
            verdict = rest.split(" ", 1)[1].strip()
        event = TraceEvent(m["id"], m["family"], m["table"], m["chain"], kind, rest.strip())
        event.verdict, event.fields = verdict, fields
        events.append(event)
    return events


TCP_FLAGS = ((0x01, "fin"), (0x02, "syn"), (0x04, "rst"), (0x08, "psh"), (0x10, "ack"))


def _flags(text: str) -> str:
    """nft prints flag combinations it has no name for as hex (0x12 = syn,ack)."""
    if not text.startswith("0x"):
        return text
    value = int(text, 16)
    return ",".join(name for bit, name in TCP_FLAGS if value & bit) or text


def _packet_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in re.finditer(r'(iif|oif) "?([^" ]+)"?', text):
        out[m.group(1)] = m.group(2)
    for m in re.finditer(r"ip6? (saddr|daddr) (\S+)", text):
        out[m.group(1)] = m.group(2)
    for m in re.finditer(r"(tcp|udp) (sport|dport) (\d+)", text):
        out[m.group(2)] = m.group(3)
        out["proto"] = m.group(1)
    if flags := re.search(r"tcp flags == (\S+)", text):
        out["tcp_flags"] = _flags(flags.group(1))
    if icmp := re.search(r"icmp(?:v6)? type (\S+)", text):
        out["icmp_type"] = icmp.group(1)
        out["proto"] = "icmp"
    return out
