"""A single-node etcd for the lab and the tests.

The server is started from the Debian package's binary, optionally inside a
network namespace (`nsenter --net=PATH`, which execs etcd in place, so the PID
we hold is etcd's own). Its PID is also written next to the data directory, so
a later process (`pontoon lab down`) can stop it; a PID is only signalled
while /proc says it is still that etcd, never a recycled PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from pontoon.tls import TlsFiles

ETCD_BIN = "/usr/bin/etcd"
ETCDCTL_BIN = "/usr/bin/etcdctl"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (of the calling process's namespace)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EtcdServer:
    """One etcd member: alone, its own cluster (the default), or one of the
    members `initial_cluster` names ("NAME=PEER_URL,…", this one included).

    Clients reach it on `client_url_host:client_port`; its peers on
    `peer_host:peer_port` (127.0.0.1 of the same namespace when alone, as
    nothing joins it). With `tls` (this member's certificate, key and the CA
    that signs every member and client) both ends are HTTPS and etcd takes
    only clients and peers showing a certificate of that CA.
    Logs go to `log_path` (default: next to the data directory)."""

    def __init__(
        self,
        data_dir: Path,
        client_url_host: str = "127.0.0.1",
        client_port: int = 2379,
        peer_port: int = 2380,
        netns_path: str | Path | None = None,
        *,
        name: str = "pontoon",
        log_path: Path | None = None,
        tls: TlsFiles | None = None,
        peer_host: str = "127.0.0.1",
        initial_cluster: str = "",
        cluster_token: str = "",
    ) -> None:
        # Absolute: the PID check matches it against etcd's command line.
        self.data_dir = Path(data_dir).absolute()
        self.host = client_url_host
        self.client_port = client_port
        self.peer_port = peer_port
        self.netns_path = Path(netns_path) if netns_path else None
        self.name = name
        self.tls = tls
        self.peer_host = peer_host
        self._initial_cluster = initial_cluster
        self.cluster_token = cluster_token or f"pontoon-{name}"
        self.log_path = log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        self.pid_file = self.data_dir.with_name(self.data_dir.name + ".pid")
        self._proc: subprocess.Popen[bytes] | None = None

    # addresses ----------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{_hostport(self.host, self.client_port)}"

    @property
    def url(self) -> str:
        """What `pontoond --cluster-store` takes."""
        return f"etcd://{_hostport(self.host, self.client_port)}"

    @property
    def initial_cluster(self) -> str:
        return self._initial_cluster or f"{self.name}={self.peer_url}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{_hostport(self.peer_host, self.peer_port)}"

    # processes ---------------------------------------------------------------

    def _in_netns(self, argv: list[str]) -> list[str]:
        if self.netns_path is None:
            return argv
        return ["nsenter", f"--net={self.netns_path}", *argv]

    def command(self) -> list[str]:
        return self._in_netns(
            [
                ETCD_BIN,
                "--name", self.name,
                "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.cluster_token,
                "--logger", "zap",
                "--log-level", "warn",
                *self._tls_flags(),
            ]
        )  # fmt: skip

    def _tls_flags(self) -> list[str]:
        """Clients and peers alike must show a certificate our CA signed."""
        if self.tls is None:
            return []
        ca, cert, key = str(self.tls.ca), str(self.tls.cert), str(self.tls.key)
        return [
            "--client-cert-auth", "--trusted-ca-file", ca, "--cert-file", cert, "--key-file", key,
            "--peer-client-cert-auth", "--peer-trusted-ca-file", ca,
            "--peer-cert-file", cert, "--peer-key-file", key,
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        """etcd's PID while it runs (started here or by another process)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return ETCD_BIN.encode() in argv and str(self.data_dir).encode() in argv

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 10.0, wait: bool = True) -> EtcdServer:
        """Start etcd and return once it serves requests; on failure it is
        stopped again and RuntimeError carries the end of its log. A member
        of several starts with `wait=False`: it has no quorum until the
        others run (then `wait_healthy`)."""
        if self.is_running():
            raise RuntimeError(f"etcd for {self.data_dir} already runs (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # etcd warns about wider data directories
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Own session: a ^C in the terminal running `lab up` must not reach it.
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        if not wait:
            return self
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise RuntimeError(f"etcd exited during start-up:\n{self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        """etcdctl's health check commits a proposal: the member has a leader."""
        try:
            proc = self.etcdctl("endpoint", "health", timeout=3)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def etcdctl(self, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        """Run `etcdctl ARGS` (API v3) against this member, in its namespace."""
        argv = [
            ETCDCTL_BIN,
            f"--endpoints={self.client_url}",
            "--dial-timeout=1s",
            "--command-timeout=2s",
            *self._etcdctl_tls(),
            *args,
        ]
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(
            self._in_netns(argv), capture_output=True, text=True, env=env, timeout=timeout
        )

    def _etcdctl_tls(self) -> list[str]:
        """etcdctl shows the member's own certificate (it serves as a client's)."""
        if self.tls is None:
            return []
        return [f"--cacert={self.tls.ca}", f"--cert={self.tls.cert}", f"--key={self.tls.key}"]

    def status(self) -> dict[str, Any] | None:
        """`etcdctl endpoint status` of this member: its ID, the leader's, the
        raft term; None when it does not answer."""
        try:
            proc = self.etcdctl("endpoint", "status", "-w", "json", timeout=5)
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode != 0:
            return None
        try:
            entry = json.loads(proc.stdout)[0]["Status"]
        except (ValueError, LookupError, TypeError):
            return None
        # etcd's JSON leaves out zeros: no "leader" while there is none.
        return {"member": entry["header"]["member_id"], "leader": entry.get("leader", 0),
                "term": entry.get("raftTerm", 0)}  # fmt: skip

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`. Works on a paused etcd too."""
        pid = self.pid
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            self._signal(pid, signal.SIGCONT)  # a stopped process acts on nothing
            if not self._wait_exit(pid, timeout):
                self._signal(pid, signal.SIGKILL)
                self._wait_exit(pid, timeout)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=timeout)  # reap
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            elif not self._is_ours(pid):
                return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def pause(self, timeout: float = 2.0) -> None:
        """SIGSTOP: etcd keeps its sockets but answers nothing (a hung member).

        Returns once every thread is stopped: kill() only queues the signal,
        and a request arriving meanwhile would still be answered."""
        pid = self._require_pid()
        self._signal(pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not _all_threads_stopped(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd (pid {pid}) did not stop within {timeout:g}s")
            time.sleep(0.01)

    def resume(self) -> None:
        self._signal(self._require_pid(), signal.SIGCONT)

    def _require_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError("etcd is not running")
        return pid

    def __enter__(self) -> EtcdServer:
        return self.start() if not self.is_running() else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` in state T (stopped by a signal)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rpartition(")")[2].split()[0] for task in tasks]
    except OSError:
        return False
    return bool(states) and all(state == "T" for state in states)
