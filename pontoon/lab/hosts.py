"""A simulated host: a named network namespace with a pontoond inside.

Everything a SimHost makes lives inside its namespace or its work directory,
so `destroy()` removing both leaves the machine as it was: it kills the
daemon and every process whose network namespace is one of the host's
sandboxes (containers), unmounts the sandboxes and deletes the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")


def bin_path(name: str) -> str:
    """pontoon's console scripts live next to the interpreter running us."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def netns_inode(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def run(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), check=False, text=True, capture_output=True, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class SimHost:
    def __init__(self, name: str, workdir: Path, pythonpath: str = "") -> None:
        self.name = name
        self.workdir = workdir
        # A directory holding another release's `pontoon/` package: put first
        # on PYTHONPATH, it shadows the installed one for the daemon and CLI
        # (the upgrade tests run an old release this way).
        self.pythonpath = pythonpath
        self.root = workdir / "root"
        self.exec_root = workdir / "run"
        self.socket = workdir / "pontoon.sock"
        self.log = workdir / "pontoond.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        # A mount namespace of the host's own (an EngineHost's), entered
        # together with the network namespace when set.
        self.mount_ns: Path | None = None

    @property
    def netns(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def host_url(self) -> str:
        return f"unix://{self.socket}"

    # lifecycle --------------------------------------------------------------

    def create(self) -> SimHost:
        self.workdir.mkdir(parents=True, exist_ok=True)
        run("ip", "netns", "add", self.name)
        self.sh("ip", "link", "set", "lo", "up")
        return self

    def start_daemon(self, *extra: str, via: str = "nsenter", timeout: float = 15.0) -> None:
        """Start pontoond in the host's namespace, with `nsenter --net` or
        `ip netns exec` (SPEC §2 promises both work)."""
        args = [
            bin_path("pontoond"),
            "--root", str(self.root),
            "--exec-root", str(self.exec_root),
            "-H", self.host_url,
            *extra,
        ]  # fmt: skip
        prefix = self.nsenter() if via == "nsenter" else ["ip", "netns", "exec", self.name]
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(
                prefix + args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                **self._release_env(),
            )  # fmt: skip
        self.wait_ready(timeout)

    def _release_env(self) -> dict[str, Any]:
        """Popen arguments that run the release at `pythonpath`: its package
        first on the path, and a cwd with no other `pontoon/` in it (children
        started with `python -c` or `-m` put their cwd first)."""
        if not self.pythonpath:
            return {}
        env = dict(os.environ, PYTHONPATH=self.pythonpath)
        return {"env": env, "cwd": self.pythonpath}

    def wait_ready(self, timeout: float = 15.0) -> None:
        from pontoon.client import ApiError, Client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(f"pontoond on {self.name} exited:\n{self.log.read_text()}")
            try:
                Client(self.host_url).get("/version")
                return
            except (ApiError, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"pontoond on {self.name} not ready:\n{self.log.read_text()}")

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            try:
                self.daemon.wait(timeout)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def destroy(self) -> None:
        self.stop_daemon(signal.SIGKILL)
        self.kill_containers()
        sandboxes = self.exec_root / "netns"
        if sandboxes.is_dir():
            for path in sandboxes.iterdir():
                run("umount", "-l", str(path), check=False)
            run("umount", "-l", str(sandboxes), check=False)  # the daemon's own mount of it
        if self.netns.exists():
            run("ip", "netns", "del", self.name, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_containers(self) -> None:
        """SIGKILL every process living in one of this host's sandboxes or in
        the host namespace itself."""
        inodes = {netns_inode(self.netns)}
        sandboxes = self.exec_root / "netns"
        if sandboxes.is_dir():
            inodes |= {netns_inode(p) for p in sandboxes.iterdir()}
        inodes.discard(None)
        me = os.getpid()
        for pid in pids_in_netns(inodes):
            if pid != me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # commands ---------------------------------------------------------------

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = run(bin_path("pontoon"), "-H", self.host_url, *args, check=False, timeout=timeout,
                   **self._release_env())  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pontoon {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"--- daemon log (tail):\n{self.log_tail()}"
            )
        return proc

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args).stdout)

    def sh(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the host's network namespace."""
        return run(*self.nsenter(), *args, check=check, timeout=timeout)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.nsenter(), *args], text=True, **kwargs)

    def nsenter(self) -> list[str]:
        """The command prefix that enters the host's namespaces."""
        mount = [f"--mount={self.mount_ns}"] if self.mount_ns else []
        return ["nsenter", *mount, f"--net={self.netns}", "--"]


def pids_in_netns(inodes: set[int | None]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ino = netns_inode(f"/proc/{entry}/ns/net")
        if ino is not None and ino in inodes:
            found.append(int(entry))
    return found


def connect_hosts(
    a: SimHost, b: SimHost, a_addr: str, b_addr: str, a_if: str = "eth0", b_if: str = "eth0"
) -> None:
    """A point-to-point veth between two hosts, addresses as CIDRs."""
    # Both ends are born inside their namespaces: nothing touches ours.
    run("ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if,
        "netns", b.name)  # fmt: skip
    a.sh("ip", "addr", "add", a_addr, "dev", a_if)
    b.sh("ip", "addr", "add", b_addr, "dev", b_if)
    a.sh("ip", "link", "set", a_if, "up")
    b.sh("ip", "link", "set", b_if, "up")
