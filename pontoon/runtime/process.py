"""Starting, finding and stopping a container's processes.

A container is `sh` (the shim, in the host namespaces, recording the exit
status) → `nsenter --net=SANDBOX` → `unshare --mount --uts --ipc --pid` → `sh`
(the keeper, which waits for its child) → `sh` (PID 1 of the new PID
namespace: bind-mounts /etc/{hosts,resolv.conf,hostname}, sets the hostname,
mounts /proc) → exec of the command. Every piece is a small C
program or dash, so a container costs about a megabyte outside itself, and
nothing depends on the daemon staying up: the shim keeps logging and records
the exit status even while pontoond is down.

Why not `unshare --fork`: util-linux 2.38 exits 1 ("sigprocmask unblock
failed") instead of 137 when its child dies of SIGKILL, so the keeper shell
does the waiting and reports 128+signal like any shell.

The scripts are constants; the user's command and all paths travel as
positional arguments, never inside a shell string.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SHIM = r"""
exitfile=$1 netns=$2 hosts=$3 resolv=$4 hostfile=$5 hostname=$6 sandboxes=$7
shift 7
nsenter --net="$netns" -- unshare --mount --uts --ipc --pid --propagation private -- \
    /bin/sh -c "$PONTOON_KEEPER" pontoon-keeper "$hosts" "$resolv" "$hostfile" "$hostname" \
    "$sandboxes" "$@"
rc=$?
printf '%s\n' "$rc" > "$exitfile.tmp" && mv -f "$exitfile.tmp" "$exitfile"
exit "$rc"
"""

# In the container's mount/UTS/IPC namespaces but still in the host's PID
# namespace; its first child becomes PID 1 of the new one (and the namespace
# dies with that child, so nothing else may be forked first). The trailing
# `exit` keeps dash from exec-ing the last command instead of forking it.
KEEPER = r"""
/bin/sh -c "$PONTOON_INIT" pontoon-init "$@"
exit $?
"""

# PID 1 of the container: set up its view of /etc and /proc, then become the
# command. Dropping the copy of the sandboxes' mount (one lazy unmount) keeps
# every container from holding a copy of every other container's namespace
# file: mounts stay linear in the number of containers, not quadratic, and a
# container cannot reach its neighbours' namespaces.
INIT = r"""
mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf &&
mount --bind "$3" /etc/hostname && hostname "$4" && mount -t proc proc /proc || exit 125
umount -l "$5" 2>/dev/null
shift 5
PATH=$PONTOON_PATH
export PATH
unset PONTOON_INIT PONTOON_KEEPER PONTOON_PATH
exec "$@"
"""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_FAILED = 125  # INIT's status when the container's /etc or /proc cannot be set up
# The shim's own variables: a container's environment may not set them.
RESERVED_ENV = frozenset({"PONTOON_INIT", "PONTOON_KEEPER", "PONTOON_PATH"})


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
    environ = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for item in env:
        key, _, value = item.partition("=")
        environ[key] = value
    # The shim finds nsenter, unshare and mount on the host's PATH whatever
    # the container asked for; the container's PATH is restored for its
    # command only, and the shim's own scripts are never the caller's.
    environ |= {
        "PONTOON_PATH": environ["PATH"],
        "PATH": DEFAULT_PATH,
        "PONTOON_KEEPER": KEEPER,
        "PONTOON_INIT": INIT,
    }
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
        str(netns.parent),
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


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def check_executable(program: str, env: list[str]) -> None:
    """Fail early, as Docker does, when the command cannot be executed."""
    from pontoon.errors import InvalidArgument

    path = next((e[5:] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
    if "/" in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise InvalidArgument(f"{program}: no such executable file")
    elif shutil.which(program, path=path) is None:
        raise InvalidArgument(f"executable file not found in $PATH: {program}")


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks: with the pid, a unique identity."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, started: int) -> bool:
    """Running, and the same process we started (not a reused pid). A zombie
    counts as dead: its parent may be an init that never reaps."""
    fields = _stat_fields(pid) if pid > 0 else None
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == started


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _pid_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def find_init(shim_pid: int, timeout: float = 5.0) -> int:
    """The container's PID 1 as the host sees it: the first descendant of the
    shim that lives in another PID namespace."""
    host_ns = _pid_ns(shim_pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        todo = children(shim_pid)
        while todo:
            pid = todo.pop()
            ns = _pid_ns(pid)
            if ns is not None and ns != host_ns:
                return pid
            todo.extend(children(pid))
        if not alive(shim_pid, start_time(shim_pid) or -1):
            break
        time.sleep(0.002)
    return 0


def kill_tree(init_pid: int, init_start: int, shim_pid: int, shim_start: int) -> None:
    """SIGKILL the container's PID 1: the kernel then kills every process of its
    PID namespace, the keeper shell exits 137 and the shim records it."""
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
