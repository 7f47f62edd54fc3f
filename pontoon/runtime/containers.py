"""pontoon's own containers: one front end of the engine.

A container is a host program in its own network, mount, UTS, IPC and PID
namespaces. The runtime makes the sandbox (the network namespace), asks the
engine for one attachment per network exactly as the CNI and Docker front
ends do, writes /etc/hosts, /etc/resolv.conf and /etc/hostname, starts and
watches the process, and gives the attachments back when it ends.

Mutating calls run under the runtime's lock, which is always taken before the
engine's (never the other way round).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from pathlib import Path

from pontoon import ipam
from pontoon.core import addresses, model
from pontoon.core.model import Container, NetworkRequest, PortMapping
from pontoon.daemon.config import DaemonConfig
from pontoon.dns.server import LISTEN_ADDR
from pontoon.engine.attachments import AttachRequest
from pontoon.engine.engine import Engine
from pontoon.engine.networks import DEFAULT_NETWORK
from pontoon.engine.state import find
from pontoon.errors import Conflict, InvalidArgument, PontoonError
from pontoon.portmap import spec as portspec
from pontoon.runtime import process
from pontoon.sandbox import files, netns
from pontoon.store import Store
from pontoon.util import last_line

log = logging.getLogger(__name__)

CONTAINERS = "/containers/"


def fixed_addresses(ip: str, ip6: str) -> tuple[str, str]:
    """Docker's --ip (IPv4) and --ip6 (IPv6), each checked for its family."""
    for flag, text, family in (("--ip", ip, 4), ("--ip6", ip6, 6)):
        if text and ipam.parse_address(text).version != family:
            raise InvalidArgument(f"{flag} {text}: an IPv{family} address is needed")
    return ip, ip6


def ctr_key(container_id: str) -> str:
    return f"{CONTAINERS}{container_id}"


class Runtime:
    def __init__(self, config: DaemonConfig, store: Store, engine: Engine) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.lock = asyncio.Lock()
        self.containers: dict[str, Container] = {}
        self.exited: dict[str, asyncio.Event] = {}
        self._shims: dict[str, subprocess.Popen[bytes]] = {}
        self._pidfds: dict[str, int] = {}
        engine.judges[model.OWNER_PONTOON] = self._alive

    def _alive(self, owner: model.Owner) -> bool:
        c = self.containers.get(owner.id)
        return c is not None and c.state == model.RUNNING

    async def load(self) -> None:
        for value in await self.store.values(CONTAINERS):
            c = Container.loads(value)
            self.containers[c.id] = c

    async def upgrade(self) -> None:
        """Release 1 kept published ports on the container only; they belong to
        its first network's attachment now (after the engine loaded its state)."""
        state = self.engine.state
        for c in self.containers.values():
            if not c.ports or not c.networks or c.state != model.RUNNING:
                continue
            att = state.attachments.get(c.attachments.get(c.networks[0].network_id, ""))
            if att is not None and not att.ports:
                att.ports = [PortMapping(**p.to_dict()) for p in c.ports]
                await state.save_attachment(att)

    def sandbox_of(self, container_id: str) -> str:
        """A container's namespace file (release-1 endpoint records lack it)."""
        c = self.containers.get(container_id)
        return c.sandbox if c is not None else ""

    def keep_namespaces(self) -> set[str]:
        return {c.sandbox for c in self.containers.values() if c.state == model.RUNNING}

    # -- lookups -----------------------------------------------------------------

    def find(self, ref: str) -> Container:
        return find(self.containers.values(), ref, "container", lambda c: (c.name, c.id))

    def attachments(self, c: Container) -> list[model.Attachment]:
        state = self.engine.state
        return [state.attachments[a] for a in c.attachments.values() if a in state.attachments]

    async def save(self, c: Container) -> None:
        self.containers[c.id] = c
        await self.store.put(ctr_key(c.id), c.dumps())

    # -- run -----------------------------------------------------------------------

    async def run(
        self,
        *,
        name: str,
        command: list[str],
        networks: list[str],
        ip: str = "",
        aliases: list[str] | None = None,
        hostname: str = "",
        ip6: str = "",
        env: list[str] | None = None,
        dns: list[str] | None = None,
        auto_remove: bool = False,
        ports: list[str] | None = None,
    ) -> Container:
        async with self.lock:
            c = self._validate(name, command, networks, ip, aliases or [], hostname, env or [],
                               dns or [], auto_remove, ports or [], ip6)  # fmt: skip
            await self.save(c)  # intent: state "creating"
            try:
                await self._start(c)
            except BaseException:
                await self._destroy(c)
                raise
        log.info("container %s (%s) running, pid %d", c.name, c.id[:12], c.pid)
        return c

    def _validate(
        self,
        name: str,
        command: list[str],
        networks: list[str],
        ip: str,
        aliases: list[str],
        hostname: str,
        env: list[str],
        dns: list[str],
        auto_remove: bool,
        ports: list[str],
        ip6: str = "",
    ) -> Container:
        cid = model.new_id()
        name = name or f"ctr-{cid[:8]}"
        model.check_name("container", name)
        if any(c.name == name for c in self.containers.values()):
            raise Conflict(f"container name {name} is already in use")
        if not command or not command[0]:
            raise InvalidArgument("no command given: pontoon run [OPTIONS] -- COMMAND [ARG...]")
        if any("\0" in arg for arg in command):  # exec cannot pass one: a 500 at start
            raise InvalidArgument("invalid command: an argument holds a NUL character")
        process.check_executable(command[0], env)
        port_reqs = portspec.parse_all(ports)
        for item in env:
            key, equals, _ = item.partition("=")
            if not key or not equals or "\0" in item:
                raise InvalidArgument(f"invalid environment variable {item!r}: use KEY=VALUE")
            if key in process.RESERVED_ENV:
                raise InvalidArgument(f"environment variable {key} is reserved for pontoon")
        for server in dns:
            ipam.parse_address(server, "DNS server")
        hostname = model.check_hostname(hostname) if hostname else cid[:12]
        nets = [self.engine.find_network(ref) for ref in (networks or [DEFAULT_NETWORK])]
        if len({n.id for n in nets}) != len(nets):
            raise InvalidArgument("a network is given twice")
        requests = [NetworkRequest(n.id) for n in nets]
        requests[0].ip, requests[0].ip6 = fixed_addresses(ip, ip6)
        requests[0].aliases = list(aliases)
        return Container(
            id=cid,
            name=name,
            hostname=hostname,
            command=list(command),
            env=list(env),
            networks=requests,
            dns=list(dns),
            auto_remove=auto_remove,
            sandbox=str(self.config.netns_dir / cid[:12]),
            embedded_dns=any(not n.default for n in nets),
            ports=[
                PortMapping(r.host_ip, r.host_port, r.container_port, r.proto) for r in port_reqs
            ],
        )

    def _request(self, c: Container, req: NetworkRequest, ifname: str, primary: bool,
                 ports: list[portspec.PortRequest]) -> AttachRequest:  # fmt: skip
        return AttachRequest(
            network=req.network_id,
            netns=c.sandbox,
            ifname=ifname,
            owner=c.owner,
            ips=[ip for ip in (req.ip, req.ip6) if ip],
            aliases=list(req.aliases),
            names=[c.hostname, c.id[:12]],
            ports=ports,
            primary=primary,
            dns=c.embedded_dns,
            upstreams=list(c.dns),
        )

    async def _start(self, c: Container) -> None:
        sandbox = Path(c.sandbox)
        await self.engine.kernel.call(netns.create, sandbox, False)  # lo comes up with eth0
        port_reqs = portspec.requests_of(
            [(p.host_ip, p.host_port, p.container_port, p.proto) for p in c.ports]
        )
        for index, req in enumerate(c.networks):
            ifname = self._free_ifname(c)
            attach = self._request(c, req, ifname, index == 0, port_reqs if index == 0 else [])
            result = await self.engine.attach(attach)
            for att in result.attachments:
                c.attachments[att.network_id] = att.id
            await self.save(c)
        for att in self.attachments(c):
            if att.ports:  # the host ports chosen for ephemeral requests
                c.ports = [PortMapping(**p.to_dict()) for p in att.ports]
        cdir = self.config.container_dir(c.id)
        cdir.mkdir(parents=True, exist_ok=True)
        self._write_etc(c, cdir, initial=True)
        proc = process.spawn(
            command=c.command,
            env=c.env,
            hostname=c.hostname,
            netns=sandbox,
            files=cdir,
            exitfile=cdir / "exit",
            stdout=cdir / "stdout.log",
            stderr=cdir / "stderr.log",
        )
        self._shims[c.id] = proc
        c.shim_pid = proc.pid
        c.shim_start = process.start_time(proc.pid) or 0
        c.pid = await asyncio.to_thread(process.find_init, proc.pid)
        if not c.pid and not await asyncio.to_thread(self._ran_and_exited, proc, cdir):
            err = last_line(cdir / "stderr.log")
            raise PontoonError(f"container failed to start{': ' + err if err else ''}")
        c.pid_start = process.start_time(c.pid) or 0
        c.state = model.RUNNING
        c.started_at = model.now()
        await self.save(c)
        self.watch_exit(c)

    @staticmethod
    def _ran_and_exited(shim: subprocess.Popen[bytes], cdir: Path) -> bool:
        """A command that ends at once (`true`) may be gone before its PID 1
        is seen: it started if the shim recorded a status other than the
        set-up's failure (125); the exit watcher then finishes it."""
        try:
            shim.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return False
        code = process.read_exit_code(cdir / "exit")
        return code is not None and code != process.SETUP_FAILED

    def _free_ifname(self, c: Container) -> str:
        used = {a.ifname for a in self.attachments(c)}
        return next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)

    def _write_etc(self, c: Container, cdir: Path, initial: bool = False) -> None:
        names = [c.hostname] + ([c.name] if c.name != c.hostname else [])
        entries = [(ip, names) for att in self.attachments(c) for ip in att.ips]
        files.write_in_place(cdir / "hosts", files.hosts_text(entries))
        if initial:
            files.write_in_place(cdir / "hostname", c.hostname + "\n")
            try:
                host_resolv = Path("/etc/resolv.conf").read_text()
            except OSError:
                host_resolv = ""
            servers: list[str] | None = [LISTEN_ADDR]
            options = ["ndots:0"]
            if not c.embedded_dns:
                servers, options = (c.dns or self.config.dns or None), []
            families = {addresses.family_of(ip) for att in self.attachments(c) for ip in att.ips}
            files.write_in_place(
                cdir / "resolv.conf", files.resolv_text(host_resolv, servers, options, families)
            )

    # -- ending ----------------------------------------------------------------------

    async def _release_network(self, c: Container) -> None:
        await self.engine.detach_owner(c.owner.key)
        c.attachments.clear()
        if c.sandbox:
            await self.engine.kernel.call(netns.remove, Path(c.sandbox))

    async def _destroy(self, c: Container) -> None:
        """Remove every trace of a container; safe on a half-made one."""
        process.kill_tree(c.pid, c.pid_start, c.shim_pid, c.shim_start)
        await self._reap(c)
        await self._release_network(c)
        await self.store.delete(ctr_key(c.id))
        self.containers.pop(c.id, None)
        self._unwatch(c.id)
        shutil.rmtree(self.config.container_dir(c.id), ignore_errors=True)

    async def _reap(self, c: Container, timeout: float = 10.0) -> None:
        """Wait until the shim is gone (it ends right after the container)."""
        proc = self._shims.pop(c.id, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not process.alive(c.shim_pid, c.shim_start):
                return
            await asyncio.sleep(0.005)
        log.warning("container %s: shim %d did not exit", c.name, c.shim_pid)

    def watch_exit(self, c: Container) -> None:
        self.exited.setdefault(c.id, asyncio.Event())
        fd = process.pidfd_open(c.shim_pid) if process.alive(c.shim_pid, c.shim_start) else None
        if fd is None:
            asyncio.get_running_loop().call_soon(self._exit_soon, c.id)
            return
        self._pidfds[c.id] = fd
        asyncio.get_running_loop().add_reader(fd, self._exit_soon, c.id)

    def _unwatch(self, cid: str) -> None:
        fd = self._pidfds.pop(cid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _exit_soon(self, cid: str) -> None:
        self._unwatch(cid)
        asyncio.get_running_loop().create_task(self.on_exit(cid))

    async def on_exit(self, cid: str) -> None:
        async with self.lock:
            c = self.containers.get(cid)
            if c is None or c.state != model.RUNNING:
                return
            try:
                await self._reap(c)
                await self._finish(c)
            except Exception:
                log.exception("container %s: cleaning up after its exit failed", c.name)
                self.exited.setdefault(c.id, asyncio.Event()).set()

    async def _finish(self, c: Container) -> None:
        """The main process ended: release the network as Docker does."""
        c.exit_code = process.read_exit_code(self.config.container_dir(c.id) / "exit")
        if c.exit_code is None:
            c.exit_code = -1  # ended while nothing could record it
        await self._release_network(c)
        c.state = model.EXITED
        c.finished_at = model.now()
        c.pid = 0
        await self.save(c)
        log.info("container %s (%s) exited with %s", c.name, c.id[:12], c.exit_code)
        if c.auto_remove:
            await self._destroy(c)
        self.exited.setdefault(c.id, asyncio.Event()).set()

    async def wait(self, ref: str) -> int:
        c = self.find(ref)
        if c.state == model.RUNNING:
            await self.exited.setdefault(c.id, asyncio.Event()).wait()
        return c.exit_code if c.exit_code is not None else -1

    async def remove(self, ref: str, force: bool = False) -> None:
        c = self.find(ref)
        if c.state == model.RUNNING:
            if not force:
                raise Conflict(f"container {c.name} is running: stop it first or use rm -f")
            process.kill_tree(c.pid, c.pid_start, c.shim_pid, c.shim_start)
            try:
                await asyncio.wait_for(self.wait(c.id), timeout=15)
            except TimeoutError:
                log.warning("container %s did not exit after SIGKILL", c.name)
        async with self.lock:
            if c.id in self.containers:
                await self._destroy(c)
        log.info("container %s (%s) removed", c.name, c.id[:12])

    # -- connect/disconnect --------------------------------------------------------------

    async def connect(
        self,
        net_ref: str,
        ctr_ref: str,
        ip: str = "",
        aliases: list[str] | None = None,
        ip6: str = "",
    ) -> None:
        async with self.lock:
            net = self.engine.find_network(net_ref)
            c = self.find(ctr_ref)
            if c.state != model.RUNNING:
                raise Conflict(f"container {c.name} is not running")
            if net.id in c.attachments:
                raise Conflict(f"container {c.name} is already connected to network {net.name}")
            v4, v6 = fixed_addresses(ip, ip6)
            req = NetworkRequest(net.id, v4, list(aliases or []), v6)
            result = await self.engine.attach(
                self._request(c, req, self._free_ifname(c), False, [])
            )
            for att in result.attachments:
                c.attachments[att.network_id] = att.id
            c.networks.append(req)
            await self.save(c)
            self._write_etc(c, self.config.container_dir(c.id))

    async def disconnect(self, net_ref: str, ctr_ref: str) -> None:
        async with self.lock:
            net = self.engine.find_network(net_ref)
            c = self.find(ctr_ref)
            att_id = c.attachments.get(net.id)
            if att_id is None or att_id not in self.engine.state.attachments:
                raise Conflict(f"container {c.name} is not connected to network {net.name}")
            await self.engine.detach(att_id)
            c.attachments = {
                n: a for n, a in c.attachments.items() if a in self.engine.state.attachments
            }
            c.networks = [r for r in c.networks if r.network_id != net.id]
            await self.save(c)
            self._write_etc(c, self.config.container_dir(c.id))

    # -- restart ---------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Processes: roll back half-made containers, finish those that exited
        while the daemon was down, watch the rest."""
        async with self.lock:
            for c in list(self.containers.values()):
                if c.state == model.CREATING:
                    log.info("rolling back half-created container %s", c.name)
                    await self._destroy(c)
                elif c.state == model.RUNNING:
                    if process.alive(c.shim_pid, c.shim_start):
                        self.watch_exit(c)
                    else:
                        log.info("container %s exited while the daemon was down", c.name)
                        await self._finish(c)

    async def close(self) -> None:
        """Stop watching; containers keep running without us."""
        for cid in list(self._pidfds):
            self._unwatch(cid)
