"""What this kernel offers to encrypt an overlay (`-o encrypted`).

An encrypted overlay needs either IPsec ESP with AES-GCM (Docker's overlay:
per-pair transport-mode SAs, `rfc4106(gcm(aes))`) or WireGuard. Nothing is
guessed from module lists: each probe asks the kernel to do the real thing
(an ESP security association, a WireGuard device) inside a throwaway network
namespace (`unshare --net`), which disappears with the probe, so the host's
own namespace never sees it. docs/security.md says how the encryption would
work where these exist.
"""

from __future__ import annotations

import socket
import subprocess

NETLINK_XFRM = 6
# Fixed argument lists, never built from input. Addresses from TEST-NET-1.
_SA = ["ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
       "proto", "esp", "spi", "0x100", "mode", "transport"]  # fmt: skip
ESP_PROBE = [*_SA, "enc", "cbc(aes)", "0x" + "00" * 16]
AES_GCM_PROBE = [*_SA, "aead", "rfc4106(gcm(aes))", "0x" + "00" * 20, "128"]
WIREGUARD_PROBE = ["ip", "link", "add", "wgprobe0", "type", "wireguard"]


def _in_throwaway_namespace(argv: list[str]) -> bool:
    """Whether the command succeeds in a network namespace of its own."""
    try:
        proc = subprocess.run(
            ["unshare", "--net", "--", *argv], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _xfrm_netlink() -> bool:
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM).close()
    except OSError:
        return False
    return True


def missing() -> list[str]:
    """What the kernel lacks for an encrypted overlay, in words; empty when
    it can encrypt one (ESP with AES-GCM, or WireGuard)."""
    if _in_throwaway_namespace(WIREGUARD_PROBE):
        return []
    if not _xfrm_netlink():
        return ["IPsec (no xfrm netlink)", "WireGuard"]
    if _in_throwaway_namespace(AES_GCM_PROBE):  # an ESP SA with AES-GCM: both there
        return []
    lacking = [] if _in_throwaway_namespace(ESP_PROBE) else ["IPsec ESP"]
    return [*lacking, "AES-GCM (rfc4106(gcm(aes)))", "WireGuard"]
