"""The trace rules: table `inet pontoon_trace`, marking one flow with nftrace
(both families: the matches say `ip`/`ip6` where they must).

Its chains hook prerouting and output at priority -350 (before conntrack and
every other table), so the kernel's trace events cover the whole walk through
every table of the namespace, ours or not. Which packets are marked is
trace/monitor.py's business (FlowMatch.rules); this module writes them.
"""

from __future__ import annotations

from pathlib import Path

from pontoon.firewall.nft import writer

TABLE = "pontoon_trace"
T = f"inet {TABLE}"
LEGACY_T = f"ip {TABLE}"  # an older release's, left by a daemon killed mid-trace
PRIORITY = -350
HOOKS = ("prerouting", "output")


def trace_script(matches: list[str]) -> str:
    """Replace the trace table with one chain per hook marking `matches`
    (rule bodies such as "tcp sport 40000 meta nftrace set 1")."""
    body = "\n".join(f"        {rule}" for rule in matches)
    chains = "".join(
        f"""
    chain {hook} {{
        type filter hook {hook} priority {PRIORITY}; policy accept;
{body}
    }}"""
        for hook in HOOKS
    )
    return f"add table {T}\ndelete table {T}\ntable {T} {{{chains}\n}}\n"


def remove_script() -> str:
    return f"add table {T}\ndelete table {T}\nadd table {LEGACY_T}\ndelete table {LEGACY_T}\n"


def install(matches: list[str], ns: Path | str | int | None = None) -> None:
    """Mark `matches` in namespace `ns` (None: the calling thread's)."""
    writer.run(trace_script(matches), ns)


def remove(ns: Path | str | int | None = None) -> None:
    """Drop the trace table of namespace `ns`, if any."""
    writer.run(remove_script(), ns)
