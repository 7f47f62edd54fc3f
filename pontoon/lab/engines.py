"""Container engines inside a simulated host.

dockerd, podman and containerd cannot run under a plain `ip netns exec`: it
remounts /sys (dropping the cgroup hierarchies) and the engines hard-code
folders (/run/docker/plugins, /var/lib/cni, /run/netns, ...) that several
simulated hosts would then share with each other and with the machine. An
`EngineHost` gives a SimHost a persistent mount namespace of its own
(`unshare --mount=FILE --propagation slave`: the machine's mounts still reach
it, its own never leave it) in which

- /sys is mounted again from inside the host's network namespace, so it
  shows the host's devices, and the cgroup hierarchies are mounted again
  under it, as the machine has them;
- each hard-coded folder is a bind mount of a folder in the host's work
  directory.

Everything an EngineHost starts runs in both namespaces (`exec`, `popen`).
`destroy()` kills every process in the mount namespace and all their
descendants (the containers), removes the cgroups the engines made under the
host's own cgroup parent, and drops the mount namespace, whose mounts go
with it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

from pontoon.lab.hosts import SimHost, run

CGROUP_ROOT = Path("/sys/fs/cgroup")
BUSYBOX = Path("/bin/busybox")
IMAGE = "pontoon/busybox:latest"

# Folders the engines and their CNI plugins hard-code, made private per host.
PRIVATE_DIRS = (
    "/run/docker",
    "/run/containerd",
    "/run/containers",
    "/run/libpod",
    "/run/netns",
    "/run/cni",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/var/lib/cni",
    "/etc/cni/net.d",
    "/etc/docker",
    "/opt/cni/bin",
    "/dev/shm",
)


class EngineHost:
    """A SimHost with a mount namespace of its own, for container engines."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.dir = host.workdir / "engines"
        self.mntns = host.workdir / "mnt.ns"
        self.private = self.dir / "private"
        # Cgroups of everything this host's engines run go below this parent.
        self.cgroup_parent = f"pontoon-lab-{host.name}"
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.containerd: subprocess.Popen[bytes] | None = None

    # namespaces -----------------------------------------------------------

    def create(self) -> EngineHost:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mntns.touch()
        run("unshare", f"--mount={self.mntns}", "--propagation", "slave", "true")
        self.host.mount_ns = self.mntns
        self._mount_sys()
        for target in PRIVATE_DIRS:
            self._mount_private(target)
        return self

    def exec(
        self, *args: str, check: bool = True, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the host's mount and network namespaces."""
        return run(*self.host.nsenter(), *args, check=check, timeout=timeout, **kwargs)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen([*self.host.nsenter(), *args], **kwargs)

    def _mount_sys(self) -> None:
        # sysfs shows the network namespace of whoever mounts it.
        self.exec("mount", "-t", "sysfs", "sysfs", "/sys")
        self.exec("mount", "-t", "tmpfs", "-o", "mode=755", "cgroup", str(CGROUP_ROOT))
        for target, fstype, options in machine_cgroup_mounts():
            self.exec("mkdir", "-p", target)
            self.exec("mount", "-t", fstype, "-o", options, fstype, target)

    def _mount_private(self, target: str) -> None:
        source = self.private / target.strip("/").replace("/", "_")
        source.mkdir(parents=True, exist_ok=True)
        # mkdir inside: where the machine lacks the folder, making it in the
        # shared root file system is the only way to have a mount point.
        self.exec("mkdir", "-p", target)
        self.exec("mount", "--bind", str(source), target)

    # engines --------------------------------------------------------------

    @property
    def docker_socket(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_socket}"

    def start_dockerd(self, *extra: str, timeout: float = 60) -> None:
        """dockerd with its own data, exec root, socket and config; it runs
        its own containerd under its exec root. vfs storage: the image is one
        small layer, and vfs works on any file system under the work dir."""
        config = self.dir / "daemon.json"
        if not config.exists():
            config.write_text("{}\n")
        args = [
            "/usr/sbin/dockerd",
            "--data-root", str(self.dir / "docker"),
            "--exec-root", str(self.dir / "docker-run"),
            "--pidfile", str(self.dir / "docker.pid"),
            "-H", self.docker_host,
            "--config-file", str(config),
            "--storage-driver", "vfs",
            "--cgroup-parent", f"/{self.cgroup_parent}/docker",
            *extra,
        ]  # fmt: skip
        with open(self.dir / "dockerd.log", "ab") as log:
            self.dockerd = self.popen(*args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self._wait(lambda: self.docker("version", check=False).returncode == 0,
                   self.dockerd, "dockerd.log", timeout)  # fmt: skip

    def stop_dockerd(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        self.dockerd = _stop(self.dockerd, sig, timeout)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.exec("/usr/bin/docker", "-H", self.docker_host, *args,
                         check=check, timeout=timeout)  # fmt: skip

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd.sock"

    def start_containerd(self, timeout: float = 30) -> None:
        """A standalone containerd (for `ctr`), its own root, state and socket."""
        config = self.dir / "containerd.toml"
        # The CRI plugin is Kubernetes' and not needed by `ctr`.
        config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        args = [
            "/usr/bin/containerd",
            "--root", str(self.dir / "containerd"),
            "--state", str(self.dir / "containerd-run"),
            "--address", str(self.containerd_socket),
            "--config", str(config),
        ]  # fmt: skip
        with open(self.dir / "containerd.log", "ab") as log:
            self.containerd = self.popen(*args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self._wait(lambda: self.ctr("version", check=False).returncode == 0,
                   self.containerd, "containerd.log", timeout)  # fmt: skip

    def stop_containerd(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        self.containerd = _stop(self.containerd, sig, timeout)

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        # containerd puts a container's cgroup at /NAMESPACE/ID: the host's
        # cgroup parent as the namespace keeps them where destroy() looks.
        return self.exec("/usr/bin/ctr", "--address", str(self.containerd_socket),
                         "--namespace", self.cgroup_parent, *args,
                         check=check, timeout=timeout)  # fmt: skip

    def podman_env(self) -> dict[str, str]:
        """Podman's own configuration files for this host: CNI backend,
        runc, cgroupfs under the host's cgroup parent, vfs storage."""
        conf = self.dir / "containers.conf"
        storage = self.dir / "storage.conf"
        if not conf.exists():
            conf.write_text(
                "[containers]\n"
                'cgroupns = "private"\n'
                # Podman's default limits are higher than this machine lets
                # runc set.
                f"default_ulimits = {json.dumps(_hard_ulimits())}\n"
                "[engine]\n"
                'runtime = "runc"\n'
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
                f'events_logfile_path = "{self.dir / "podman-events.log"}"\n'
                f'tmp_dir = "{self.dir / "podman-tmp"}"\n'
                "enable_port_reservation = false\n"
                "[network]\n"
                'network_backend = "cni"\n'
                'cni_plugin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]\n'
                'network_config_dir = "/etc/cni/net.d"\n'
            )
            storage.write_text(
                "[storage]\n"
                'driver = "vfs"\n'
                f'graphroot = "{self.dir / "podman-storage"}"\n'
                f'runroot = "{self.dir / "podman-run"}"\n'
            )
        return dict(os.environ, CONTAINERS_CONF=str(conf), CONTAINERS_STORAGE_CONF=str(storage))

    def podman(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        if args and args[0] in ("run", "create"):
            # containers.conf has no cgroup parent setting for cgroupfs.
            args = (args[0], f"--cgroup-parent=/{self.cgroup_parent}/podman", *args[1:])
        return self.exec("/usr/bin/podman", "--cgroup-manager", "cgroupfs", *args,
                         check=check, timeout=timeout, env=self.podman_env())  # fmt: skip

    def _wait(
        self, ready: Any, proc: subprocess.Popen[bytes] | None, log: str, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{log} exited:\n{self.log_tail(log)}")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"not ready after {timeout}s:\n{self.log_tail(log)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.dir / name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # images ---------------------------------------------------------------

    def rootfs_tar(self) -> Path:
        """A root file system of Debian's busybox-static, as a tar."""
        path = self.dir / "busybox-rootfs.tar"
        if not path.exists():
            path.write_bytes(busybox_rootfs())
        return path

    def oci_archive(self) -> Path:
        """The same file system as an OCI image archive, for `ctr image import`."""
        path = self.dir / "busybox-oci.tar"
        if not path.exists():
            path.write_bytes(oci_archive(busybox_rootfs(), IMAGE))
        return path

    def import_image(self, engine: str) -> str:
        """Make IMAGE known to `docker`, `podman` or `ctr`; returns its name."""
        change = ["--change", 'CMD ["/bin/sh"]']
        if engine == "docker":
            self.docker("import", *change, str(self.rootfs_tar()), IMAGE)
        elif engine == "podman":
            self.podman("import", *change, str(self.rootfs_tar()), IMAGE)
        elif engine == "ctr":
            self.ctr("image", "import", str(self.oci_archive()))
        else:
            raise ValueError(f"unknown engine {engine!r}")
        return IMAGE

    # teardown -------------------------------------------------------------

    def destroy(self) -> None:
        self.stop_dockerd(signal.SIGKILL)
        self.stop_containerd(signal.SIGKILL)
        kill_tree(processes_in_mount_ns(self.mntns))
        remove_cgroups(self.cgroup_parent)
        run("umount", "-l", str(self.mntns), check=False)
        self.host.mount_ns = None


# helpers ------------------------------------------------------------------


def _stop(
    proc: subprocess.Popen[bytes] | None, sig: int, timeout: float
) -> subprocess.Popen[bytes] | None:
    if proc is None or proc.poll() is not None:
        return None
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return None


def _hard_ulimits() -> list[str]:
    """Limits no higher than ours: this machine withholds CAP_SYS_RESOURCE,
    so runc cannot raise a container's limits past them (and its own
    processes limit counts per user, so containers get a modest share)."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    return [f"nofile={nofile}:{nofile}", f"nproc={min(nproc, 4096)}:{min(nproc, 4096)}"]


def machine_cgroup_mounts() -> list[tuple[str, str, str]]:
    """(target, fstype, options) of every cgroup hierarchy the machine has."""
    found = []
    for line in Path("/proc/1/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        target, fstype, super_options = fields[4], fields[sep + 1], fields[sep + 3]
        if fstype in ("cgroup", "cgroup2") and target.startswith(f"{CGROUP_ROOT}/"):
            options = ",".join(o for o in super_options.split(",") if o not in ("rw", "ro"))
            found.append((target, fstype, options or "defaults"))
    return found


def processes_in_mount_ns(mntns: Path) -> set[int]:
    try:
        inode = os.stat(mntns).st_ino
    except OSError:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino == inode:
                    found.add(int(entry))
    return found


def kill_tree(roots: set[int]) -> None:
    """SIGKILL the roots and all their descendants (containers live in mount
    namespaces of their own, below the engines' shims)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    doomed, todo = set(), list(roots - {os.getpid()})
    while todo:
        pid = todo.pop()
        if pid not in doomed:
            doomed.add(pid)
            todo.extend(children.get(pid, []))
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in doomed):
        time.sleep(0.05)


def remove_cgroups(parent: str) -> None:
    """rmdir the cgroup tree under `parent` in every hierarchy, leaves first."""
    for target, _fstype, _options in machine_cgroup_mounts():
        top = Path(target) / parent
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def busybox_rootfs() -> bytes:
    """A tar of /bin/busybox with a link per applet, and the files a
    container expects to find."""
    applets = run(str(BUSYBOX), "--list").stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "var/www"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):  # fmt: skip
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def oci_archive(layer: bytes, ref: str) -> bytes:
    """An OCI image layout (one uncompressed layer) as a tar archive."""
    import hashlib

    def blob(data: bytes) -> tuple[str, int]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)

    layer_digest, layer_size = blob(layer)
    config = json.dumps({
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }).encode()  # fmt: skip
    config_digest, config_size = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }).encode()  # fmt: skip
    manifest_digest, manifest_size = blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": ref,
                                       "io.containerd.image.name": ref}}],
    }).encode()  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {
            "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
            "index.json": index,
            f"blobs/sha256/{layer_digest[7:]}": layer,
            f"blobs/sha256/{config_digest[7:]}": config,
            f"blobs/sha256/{manifest_digest[7:]}": manifest,
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
