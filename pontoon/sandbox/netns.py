"""Network namespaces as files, without forking.

A namespace is created by a short-lived thread that unshares its own network
namespace and bind-mounts /proc/thread-self/ns/net onto a file, the way
`ip netns add` does with a process. Sockets for another namespace are made the
same way: a thread enters it, opens the socket and ends; the socket stays in
the namespace it was born in. pyroute2's own netns support forks a child per
socket, which costs milliseconds we do not want on the attach path.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_ROUTE

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _check(ret: int, what: str, path: str | Path = "") -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))


def in_thread(fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread: namespace changes there never touch ours."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="pontoon-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def create(path: Path, loopback_up: bool = True) -> None:
    """Create a network namespace pinned by a bind mount at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)

    def work() -> None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare", path)
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(src, str(path).encode(), b"none", MS_BIND, None), "mount", path)
        if loopback_up:
            with IPRoute() as ipr:
                ipr.link("set", index=1, state="up")  # lo is always ifindex 1

    try:
        in_thread(work)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def pin(source: str | Path, path: Path) -> None:
    """Pin a namespace someone else made (a file, or /proc/self/fd/N of an
    open descriptor) at `path`, as `ip netns attach` does: it then stays
    reachable by path from this mount namespace until `remove(path)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    ret = _libc.mount(str(source).encode(), str(path).encode(), b"none", MS_BIND, None)
    if ret != 0:
        err = ctypes.get_errno()
        path.unlink(missing_ok=True)
        raise OSError(err, os.strerror(err), str(source))
    if not is_network_namespace(path):  # some other file bound onto ours
        remove(path)
        raise OSError(errno.EINVAL, "not a network namespace", str(source))


def is_network_namespace(path: Path | str) -> bool:
    """The kernel's own answer (NS_GET_NSTYPE), not a guess from the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Unmount and delete a namespace file; missing files are fine."""
    ret = _libc.umount2(str(path).encode(), MNT_DETACH)
    if ret != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(ret, "umount", path)
    path.unlink(missing_ok=True)


def is_mounted(path: Path) -> bool:
    """True when `path` is a live namespace file (an nsfs bind mount)."""
    # A plain empty file and an nsfs mount differ in device: nsfs has its own.
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def is_mount_point(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def ensure_own_mount(directory: Path) -> None:
    """Make `directory` a mount of its own (a bind onto itself, private), so
    the sandboxes under it form one subtree a container can drop at once."""
    directory.mkdir(parents=True, exist_ok=True)
    if is_mount_point(directory):
        return
    raw = str(directory).encode()
    _check(_libc.mount(raw, raw, b"none", MS_BIND, None), "mount --bind", directory)
    _check(_libc.mount(b"none", raw, None, MS_PRIVATE, None), "mount --make-private", directory)


def run_in(path: Path | str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that has entered the namespace at `path`."""

    def work() -> T:
        fd = os.open(path, os.O_RDONLY)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), "setns", path)
        finally:
            os.close(fd)
        return fn()

    return in_thread(work)


def netlink_socket(path: Path | str) -> socket.socket:
    return run_in(path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))


def iproute(path: Path | str | None = None) -> IPRoute:
    """An IPRoute bound to the namespace at `path` (ours when None)."""
    if path is None:
        return IPRoute()
    sock = netlink_socket(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return IPRoute(use_socket=sock)


def _mount_ns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _parent(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def host_mount_ns_pid() -> int | None:
    """The nearest process (init, else an ancestor) whose mount namespace is not
    ours, when ours looks private; None when we already are in the host's."""
    ours = _mount_ns("self")
    init = _mount_ns(1)
    if init is not None:
        return None if init == ours else 1
    # init's namespaces are hidden from us (a hardened PID 1): walk up to the
    # process that ran us, e.g. the shell that typed `ip netns exec`.
    pid = _parent(os.getpid())
    while pid > 1:
        ns = _mount_ns(pid)
        if ns is not None and ns != ours:
            return pid
        pid = _parent(pid)
    return None


def join_host_mount_ns() -> None:
    """Leave a private mount namespace (as `ip netns exec` makes) for the host's.

    Sandbox bind mounts must live where every process sees them and where they
    outlive the daemon; inside `ip netns exec`'s mount namespace they would
    vanish with it. Must run before any thread starts: setns(CLONE_NEWNS) is
    refused to multi-threaded processes.
    """
    pid = host_mount_ns_pid()
    if pid is None:
        return
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNS), "setns(mnt)", f"/proc/{pid}/ns/mnt")
    finally:
        os.close(fd)
    os.chdir("/")
