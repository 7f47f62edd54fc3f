"""Living beside Docker's firewall.

dockerd sets the iptables FORWARD policy to DROP. Its chain and pontoon's
own nftables table hook the same place, and a packet passes only if every
chain there lets it: an accept in our table cannot undo a drop in Docker's.
Docker leaves one chain for others, DOCKER-USER, jumped to first from
FORWARD and never flushed: there we accept what crosses pontoon's bridges,
and pontoon's own table still decides (isolation, --internal, published
ports), as without Docker.
"""

from __future__ import annotations

import logging
import subprocess

log = logging.getLogger(__name__)

CHAIN = "DOCKER-USER"
# Our bridges: pt-<id> and pontoon0 / pontoon_gwbr (iptables' `+` is a prefix match).
BRIDGES = ("pt-+", "pontoon+")


def rules() -> list[list[str]]:
    return [[f"-{way}", bridge, "-j", "ACCEPT"] for bridge in BRIDGES for way in ("i", "o")]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", *args], capture_output=True, text=True, check=False, timeout=30
    )


def ensure_docker_user() -> None:
    """Make DOCKER-USER (if dockerd has not yet) and put our accepts first in
    it, once each. dockerd adds its RETURN and the FORWARD jump when it starts."""
    if _iptables("-n", "-L", CHAIN).returncode != 0:
        _iptables("-N", CHAIN)
    for rule in reversed(rules()):
        if _iptables("-C", CHAIN, *rule).returncode != 0:
            done = _iptables("-I", CHAIN, "1", *rule)
            if done.returncode != 0:
                log.warning("cannot add to %s: %s", CHAIN, done.stderr.strip())


def remove_docker_user() -> None:
    for rule in rules():
        while _iptables("-D", CHAIN, *rule).returncode == 0:
            pass
