"""Starting, finding and stopping a container's processes.

A container is `sh` (the shim, in the host namespaces, recording the exit
status) → `nsenter --net=SANDBOX` → `unshare --mount --uts --ipc --pid --fork`
→ `sh` that bind-mounts /etc/{hosts,resolv.conf,hostname}, sets the hostname
and execs the command as PID 1 of the new PID namespace. Every piece is a small
C program or dash, so a container costs about a megabyte outside itself, and
nothing depends on the daemon staying up: the shim keeps logging and records
the exit status even while pontoond is down.

The scripts are constants; the user's command and all paths travel as
positional arguments, never inside a shell string.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

SHIM = r"""
exitfile=$1 netns=$2 hosts=$3 resolv=$4 hostfile=$5 hostname=$6
shift 6
nsenter --net="$netns" -- unshare --mount --uts --ipc --pid --fork --kill-child \
    --mount-proc --propagation private -- /bin/sh -c "$PONTOON_INIT" pontoon-init \
    "$hosts" "$resolv" "$hostfile" "$hostname" "$@"
rc=$?
printf '%s\n' "$rc" > "$exitfile.tmp" && mv -f "$exitfile.tmp" "$exitfile"
exit "$rc"
"""

INIT = r"""
mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf &&
mount --bind "$3" /etc/hostname && hostname "$4" || exit 125
shift 4
unset PONTOON_INIT
exec "$@"
"""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def spawn(
    *,
    command: list[str],
    env: list[str],
    hostname: str,
    netns: Path,
    files: Path,
    exitfile: Path,
    stdout: Path,
    stderr: Path,
) -> subprocess.Popen[bytes]:
    environ = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "PONTOON_INIT": INIT}
    for item in env:
        key, _, value = item.partition("=")
        environ[key] = value
    args = [
        "/bin/sh",
        "-c",
        SHIM,
        "pontoon-shim",
        str(exitfile),
        str(netns),
        str(files / "hosts"),
        str(files / "resolv.conf"),
        str(files / "hostname"),
        hostname,
        *command,
    ]
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=environ,
            cwd="/",
            start_new_session=True,  # a daemon's ^C or death must not reach containers
        )


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks: with the pid, a unique identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def alive(pid: int, started: int) -> bool:
    return pid > 0 and start_time(pid) == started


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def find_init(shim_pid: int, timeout: float = 5.0) -> int:
    """The container's PID 1 as the host sees it: shim → unshare → init."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mid in children(shim_pid):
            if _exe_name(mid) == "unshare":
                kids = children(mid)
                if kids and _exe_name(kids[0]) != "unshare":
                    return kids[0]
        if start_time(shim_pid) is None:
            break
        time.sleep(0.002)
    return 0


def _exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def kill_tree(init_pid: int, init_start: int, shim_pid: int, shim_start: int) -> None:
    """SIGKILL the container's PID 1: the kernel then kills every process of its
    PID namespace, unshare exits and the shim records 137."""
    if init_pid and alive(init_pid, init_start):
        _kill(init_pid)
    elif alive(shim_pid, shim_start):
        for pid in children(shim_pid):
            _kill(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def read_exit_code(exitfile: Path) -> int | None:
    try:
        return int(exitfile.read_text().strip())
    except (OSError, ValueError):
        return None


def pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
