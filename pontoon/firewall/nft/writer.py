"""The one path by which pontoon runs nft scripts: each script is one transaction.

Two ways in, one per kind of namespace:

- `HostContext`: the daemon's own namespace, through one long-lived
  libnftables context (the python `nftables` binding). It is opened by the
  kernel thread at start-up and used only there.
- `run(script, netns)`: any other namespace (a sandbox, an overlay's) or the
  calling thread's own, through a short-lived context in a fresh thread.

Why the second way is built as it is: a libnftables context opens its netlink
socket when it is created, in the creating thread's network namespace, and
libnftables 1.0.6 (Debian 12) waits for the kernel's answers to a transaction
with select(), which glibc's fortified FD_SET answers by aborting the process
when the socket's number is 1024 or more. A daemon with many published ports
and sandbox resolvers holds more than 1,024 descriptors, so a context opened
late gets such a number. The fresh thread therefore unshares its descriptor
table (unshare(CLONE_FILES)) and closes a few low numbers in its private copy:
the context's socket takes one of them, while every descriptor of the rest of
the daemon stays open and untouched in the shared table. The context is freed
in the same thread (which closes the socket in the private table) and the
private table goes with the thread. No fork, no exec: about 1 ms with 1,100
descriptors open, against 6-7 ms for the `nft` binary (measured on the 2-CPU
dev VM, `list ruleset` in an empty namespace).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import threading
from pathlib import Path

import nftables
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, NFTSocket, nft_gen_msg

from pontoon.sandbox import netns

CLONE_FILES = 0x00000400
# Numbers closed in the private descriptor table: enough for the context's
# socket and the few files libnftables opens while it parses.
_PRIVATE_LOW_FDS = range(3, 16)

_libc = ctypes.CDLL(None, use_errno=True)
# Cyclic GC is held off while a thread has a private descriptor table (a
# finalizer run there would close its private copy of some other object's
# descriptor, leaking the real one); the lock keeps one such window at a time.
_private_window = threading.Lock()


class NftError(RuntimeError):
    pass


class _Lib:
    """The few libnftables calls a short-lived context needs. Written out here
    rather than taken from the `nftables` binding, which frees its context in
    __del__, whenever and on whichever thread the collector gets to it: ours
    must be freed in the thread that owns the private descriptor table."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        self.ctx_new = lib.nft_ctx_new
        self.ctx_new.restype, self.ctx_new.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
        self.buffer_output = lib.nft_ctx_buffer_output
        self.buffer_error = lib.nft_ctx_buffer_error
        self.buffer_output.argtypes = self.buffer_error.argtypes = [ctypes.c_void_p]
        self.get_output = lib.nft_ctx_get_output_buffer
        self.get_error = lib.nft_ctx_get_error_buffer
        for fn in (self.get_output, self.get_error):
            fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        self.run = lib.nft_run_cmd_from_buffer
        self.run.restype, self.run.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
        self.ctx_free = lib.nft_ctx_free
        self.ctx_free.argtypes = [ctypes.c_void_p]


_lib: _Lib | None = None


def _run_with_private_fds(script: str) -> str:
    """In a thread of its own only: its descriptor table becomes private."""
    global _lib
    if _lib is None:
        _lib = _Lib()
    lib, data = _lib, script.encode()
    with _private_window:
        collecting = gc.isenabled()
        gc.disable()
        try:
            if _libc.unshare(CLONE_FILES) != 0:
                code = ctypes.get_errno()
                raise NftError(f"unshare(CLONE_FILES): {os.strerror(code)}")
            # Private copies: the daemon's own stay open in the shared table.
            os.closerange(_PRIVATE_LOW_FDS.start, _PRIVATE_LOW_FDS.stop)
            ctx = lib.ctx_new(0)
            if not ctx:
                raise NftError("libnftables: cannot create a context")
            try:
                lib.buffer_output(ctx)
                lib.buffer_error(ctx)
                rc = lib.run(ctx, data)
                out = (lib.get_output(ctx) or b"").decode()
                err = (lib.get_error(ctx) or b"").decode()
            finally:
                lib.ctx_free(ctx)
        finally:
            if collecting:
                gc.enable()
    if rc != 0:
        raise NftError(err.strip() or f"nft failed with status {rc}")
    return out


def run(script: str, ns: Path | str | int | None = None) -> str:
    """Run `script` as one transaction in the network namespace at path `ns`,
    or of the open descriptor `ns`, or (None) the calling thread's own. Safe
    from any thread, whatever descriptor numbers the daemon holds."""
    if ns is None:
        return netns.in_thread(lambda: _run_with_private_fds(script))
    path = f"/proc/self/fd/{ns}" if isinstance(ns, int) else ns
    return netns.run_in(path, lambda: _run_with_private_fds(script))


class Generation:
    """The namespace's ruleset generation, which the kernel bumps on every
    committed nftables transaction, ours or anyone's (iptables-nft's too):
    while it stands still, nothing in the ruleset changed. One netlink round
    trip, about 0.3 ms."""

    def __init__(self) -> None:
        self._sock: NFTSocket | None = None

    def __call__(self) -> int:
        if self._sock is None:
            self._sock = NFTSocket(nfgen_family=0)
        (reply,) = self._sock.request_get(nft_gen_msg(), NFT_MSG_GETGEN)
        return int(reply.get_attr("NFTA_GEN_ID"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class HostContext:
    """The daemon's long-lived context for its own namespace. Open it early
    (the kernel thread's setup()), while descriptor numbers are low, and use it
    from one thread only."""

    def __init__(self) -> None:
        self._nft = nftables.Nftables()
        self._nft.set_handle_output(False)
        self.generation = Generation()

    def run(self, script: str) -> str:
        """Run a script as one transaction: all of it applies or none does."""
        rc, out, err = self._nft.cmd(script)
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with status {rc}")
        return out

    def read_json(self, command: str) -> list[dict[str, object]]:
        """A `list ...` command's objects, from nft's JSON output."""
        self._nft.set_json_output(True)
        try:
            text = self.run(command)
        finally:
            self._nft.set_json_output(False)
        return json.loads(text)["nftables"] if text.strip() else []
