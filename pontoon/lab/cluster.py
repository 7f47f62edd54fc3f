"""`pontoon lab`: a cluster of simulated hosts on this machine (SPEC §9).

    switch netns  ptl-<lab>-sw   bridge br0 10.10.0.1/24, etcd on 10.10.0.1:2379
                                 (--etcd-members N: also 10.10.0.2, .3 … on br0,
                                 one etcd member each, all in one cluster)
        │ veth
    host netns    ptl-<lab>-h1   eth0 10.10.0.11/24, pontoond (--cluster-store etcd://…)
    host netns    ptl-<lab>-h2   eth0 10.10.0.12/24, pontoond
    …

`--ipv6-underlay` also gives br0 and every eth0 a unique-local address of
one /64 per lab (fd6c:6162:<2nd and 3rd octets of the subnet>::/64, without
DAD), and each pontoond advertises its IPv6 address: VXLAN then travels over
IPv6. etcd stays on the switch's IPv4 address (the control plane's family
does not matter to the datapath).

`--tls` makes a CA and a certificate per etcd member, per host and for an
admin client under /run/pontoon-lab/<lab>/certs/ (Docker's ca.pem, cert.pem,
key.pem per folder); etcd then takes only clients and peers with one of them,
every pontoond talks to etcd with its host's certificate and serves its API
on eth0:2376 over mutual TLS as well as on its unix socket.

The switch namespace is the underlay (and the "outside" the hosts route to);
nothing is created in the machine's own network namespace. State lives in
/run/pontoon-lab/<lab>/state.json so `lab down` and `-H lab://h1` work from
any later command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pontoon.lab.hosts import SimHost, run

if TYPE_CHECKING:
    from pontoon.lab.engines import EngineHost
    from pontoon.lab.etcd import EtcdServer
    from pontoon.tls import TlsFiles

STATE_ROOT = Path("/run/pontoon-lab")
DEFAULT_SUBNET = "10.10.0.0/24"
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
API_TLS_PORT = 2376
CLUSTER_PREFIX = "/pontoon"
MAX_ETCD_MEMBERS = 7  # the switch's addresses .1-.7; hosts start at .11


class LabError(RuntimeError):
    pass


@dataclasses.dataclass
class LabHost:
    name: str  # h1, h2, ...
    netns: str
    address: str
    workdir: str
    daemon_pid: int = 0
    pythonpath: str = ""  # another release's source to run (SimHost.pythonpath)
    docker: bool = False  # a dockerd beside pontoond, in the host's own mount namespace
    address6: str = ""  # with --ipv6-underlay: eth0's IPv6 address, the host's VTEP

    @property
    def vtep(self) -> str:
        """The address other hosts send this one's VXLAN to."""
        return self.address6 or self.address

    def sim(self) -> SimHost:
        host = SimHost(self.netns, Path(self.workdir), self.pythonpath)
        if self.docker:
            host.mount_ns = host.workdir / "mnt.ns"
        return host

    def engines(self) -> EngineHost:
        from pontoon.lab.engines import EngineHost

        return EngineHost(self.sim())

    @property
    def socket(self) -> str:
        return str(Path(self.workdir) / "pontoon.sock")


@dataclasses.dataclass
class LabState:
    name: str
    subnet: str
    switch: str
    etcd_pid: int = 0
    etcd_url: str = ""  # what --cluster-store takes: etcd://HOST:PORT
    etcd_client_url: str = ""  # what etcdctl takes: http://HOST:PORT
    hosts: list[LabHost] = dataclasses.field(default_factory=list)
    daemon_args: list[str] = dataclasses.field(default_factory=list)  # extra pontoond flags
    etcd_members: int = 1
    etcd_pids: list[int] = dataclasses.field(default_factory=list)
    tls: bool = False
    subnet6: str = ""  # with --ipv6-underlay: the underlay's IPv6 /64

    @property
    def directory(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def certs(self) -> Path:
        """With --tls: ca/, etcd<N>/, h<N>/ and client/ (the admin's)."""
        return self.directory / "certs"

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "state.json").write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, name: str) -> LabState:
        path = STATE_ROOT / name / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r} is up") from None
        data["hosts"] = [LabHost(**h) for h in data["hosts"]]
        return cls(**data)

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if name in (host.name, host.netns):
                return host
        raise LabError(f"lab {self.name} has no host {name!r}")


def socket_for(spec: str) -> str:
    """`lab://h1` or `lab://LAB/h1` -> that host's API socket."""
    rest = spec.removeprefix("lab://")
    lab, _, host = rest.rpartition("/")
    return LabState.load(lab or "lab").host(host).socket


def _root_routes() -> list[ipaddress.IPv4Network]:
    """Read-only look at the machine's routes: the lab must not shadow them."""
    out = run("ip", "-4", "route", "show", "table", "all").stdout
    nets = []
    for line in out.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "local", "broadcast", "unreachable", "multicast"):
            dest = line.split()[1] if dest != "default" and len(line.split()) > 1 else ""
        with contextlib.suppress(ValueError):
            if dest:
                net = ipaddress.IPv4Network(dest, strict=False)
                if net.prefixlen > 0 and not net.is_loopback:
                    nets.append(net)
    return nets


def check_subnet(subnet: str, hosts: int) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise LabError(f"invalid lab subnet {subnet!r}: {exc}") from None
    if net.num_addresses < hosts + 16:
        raise LabError(f"lab subnet {net} is too small for {hosts} hosts")
    for route in _root_routes():
        if net.overlaps(route):
            raise LabError(f"lab subnet {net} overlaps this machine's route to {route}")
    return net


def up(
    name: str = "lab",
    hosts: int = 2,
    subnet: str = DEFAULT_SUBNET,
    daemon_args: list[str] | None = None,
    pythonpath: str = "",
    *,
    tls: bool = False,
    etcd_members: int = 1,
    docker: bool = False,
    ipv6_underlay: bool = False,
) -> LabState:
    """`docker`: each host also runs a dockerd (its own mount namespace and
    folders, pontoon as its network and IPAM driver, a busybox-static image)."""
    if not 1 <= hosts <= 50:
        raise LabError("--hosts must be 1-50")
    if not 1 <= etcd_members <= MAX_ETCD_MEMBERS:
        raise LabError(f"--etcd-members must be 1-{MAX_ETCD_MEMBERS}")
    if (STATE_ROOT / name / "state.json").exists():
        raise LabError(f"lab {name!r} is already up: `pontoon lab down` first")
    if not name.isalnum() or len(name) > 6:
        raise LabError("a lab name is 1-6 letters or digits")
    net = check_subnet(subnet, hosts)
    addrs = list(net.hosts())
    switch_ip = addrs[0]
    state = LabState(name=name, subnet=str(net), switch=f"ptl-{name}-sw",
                     daemon_args=list(daemon_args or []), etcd_members=etcd_members,
                     tls=tls)  # fmt: skip
    if ipv6_underlay:
        state.subnet6 = str(underlay6(net))
    state.save()
    try:
        _make_switch(state, f"{switch_ip}/{net.prefixlen}")
        if tls:
            _make_certs(state, [str(a) for a in addrs[9 + 1 : 9 + hosts + 1]])
        _start_etcd(state)
        for i in range(1, hosts + 1):
            _add_host(state, i, f"{addrs[9 + i]}/{net.prefixlen}", str(switch_ip), pythonpath,
                      docker)  # fmt: skip
            state.save()
    except BaseException:
        down(name)
        raise
    return state


def underlay6(net: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The lab's IPv6 underlay: a ULA /64 named after its IPv4 subnet, so two
    labs side by side never share one."""
    octets = net.network_address.packed
    return ipaddress.IPv6Network(f"fd6c:6162:{octets[1]:x}{octets[2]:02x}::/64")


def address6(state: LabState, index: int) -> str:
    """The switch's (index 1) or a host's IPv6 address, with its prefix
    length; hosts use the same host part as for IPv4 (.11 -> ::b)."""
    net = ipaddress.IPv6Network(state.subnet6)
    return f"{net.network_address + index}/{net.prefixlen}"


def _make_switch(state: LabState, address: str) -> None:
    run("ip", "netns", "add", state.switch)
    sw = ["ip", "-n", state.switch]
    run(*sw, "link", "set", "lo", "up")
    run(*sw, "link", "add", "br0", "type", "bridge")
    run(*sw, "addr", "add", address, "dev", "br0")
    if state.subnet6:
        run(*sw, "addr", "add", address6(state, 1), "dev", "br0", "nodad")
    run(*sw, "link", "set", "br0", "up")


def member_addresses(state: LabState) -> list[str]:
    """The switch's addresses, one per etcd member: .1, .2, …"""
    hosts = iter(ipaddress.IPv4Network(state.subnet).hosts())
    return [str(next(hosts)) for _ in range(state.etcd_members)]


def etcd_servers(state: LabState) -> list[EtcdServer]:
    """The lab's etcd members (running or not), as `up` made them: one alone
    is its own cluster as before; several list each other as peers."""
    from pontoon.lab.etcd import EtcdServer

    ips = member_addresses(state)
    netns_path = f"/run/netns/{state.switch}"
    if len(ips) == 1:
        tls = _files(state, "etcd1") if state.tls else None
        return [EtcdServer(state.directory / "etcd", ips[0], ETCD_PORT, ETCD_PEER_PORT,
                           netns_path=netns_path, tls=tls)]  # fmt: skip
    scheme = "https" if state.tls else "http"
    initial = ",".join(f"etcd{i}={scheme}://{ip}:{ETCD_PEER_PORT}" for i, ip in enumerate(ips, 1))
    servers = []
    for i, ip in enumerate(ips, 1):
        tls = _files(state, f"etcd{i}") if state.tls else None
        servers.append(
            EtcdServer(state.directory / f"etcd{i}", ip, ETCD_PORT, ETCD_PEER_PORT,
                       netns_path=netns_path, name=f"etcd{i}", tls=tls, peer_host=ip,
                       initial_cluster=initial, cluster_token=f"pontoon-lab-{state.name}")
        )  # fmt: skip
    return servers


def _files(state: LabState, folder: str) -> TlsFiles:
    from pontoon.lab.pki import CA_FILE, CERT_FILE, KEY_FILE
    from pontoon.tls import TlsFiles

    certs = state.certs / folder
    return TlsFiles(certs / CA_FILE, certs / CERT_FILE, certs / KEY_FILE)


def _make_certs(state: LabState, host_ips: list[str]) -> None:
    """One CA; a certificate per etcd member (its address), per host (its
    underlay address: etcd client and API server) and the admin's."""
    from pontoon.lab.pki import Authority

    ca = Authority.create(state.certs / "ca", f"pontoon lab {state.name} CA")
    members = member_addresses(state)
    for i in range(1, len(members) + 1):
        # Every member's addresses: they share the switch's namespace, so a
        # peer connection leaves from br0's first address, whichever member
        # makes it, and etcd checks the address against the certificate.
        ca.issue(state.certs / f"etcd{i}", f"etcd{i}", ips=[*members, "127.0.0.1"])
    for i, ip in enumerate(host_ips, 1):
        ca.issue(state.certs / f"h{i}", f"h{i}", ips=[ip, "127.0.0.1"])
    ca.issue(state.certs / "client", "admin", server=False)


def _start_etcd(state: LabState) -> None:
    ips = member_addresses(state)
    for ip in ips[1:]:  # the first is br0's own address
        run("ip", "-n", state.switch, "addr", "add", f"{ip}/32", "dev", "br0")
    servers = etcd_servers(state)
    for server in servers:
        server.start(wait=len(servers) == 1)
        state.etcd_pids.append(server.pid or 0)
        state.save()  # so that `down` stops what has started, should the next fail
    for server in servers:
        server.wait_healthy(20.0)
    state.etcd_pid = state.etcd_pids[0]
    hosts = ",".join(s.url.removeprefix("etcd://") for s in servers)
    state.etcd_url = f"etcd://{hosts}"
    state.etcd_client_url = servers[0].client_url
    state.save()


def _add_host(
    state: LabState, index: int, address: str, gateway: str, pythonpath: str, docker: bool
) -> None:
    name = f"h{index}"
    host = LabHost(name, f"ptl-{state.name}-{name}", address.split("/")[0],
                   str(state.directory / name), pythonpath=pythonpath)  # fmt: skip
    state.hosts.append(host)
    sim = host.sim()
    sim.create()
    # The host's eth0 is born in its namespace, its peer on the switch's bridge.
    run("ip", "link", "add", "eth0", "netns", host.netns, "type", "veth", "peer", "name",
        f"p{name}", "netns", state.switch)  # fmt: skip
    run("ip", "-n", state.switch, "link", "set", f"p{name}", "master", "br0", "up")
    sim.sh("ip", "addr", "add", address, "dev", "eth0")
    if state.subnet6:
        # Same host part as the IPv4 address (.11 -> ::b): easy to read.
        index = int(ipaddress.IPv4Interface(address).ip.packed[-1])
        host.address6 = address6(state, index).split("/")[0]
        sim.sh("ip", "addr", "add", address6(state, index), "dev", "eth0", "nodad")
    sim.sh("ip", "link", "set", "eth0", "up")
    sim.sh("ip", "route", "add", "default", "via", gateway)
    if not docker:
        _start_daemon(state, host)
        return
    from pontoon.lab.engines import EngineHost

    EngineHost(sim).create()
    host.docker = True
    state.save()
    engines = host.engines()
    # pontoond first: dockerd then picks its docker0 subnet around pontoon's bridge.
    _start_daemon(state, host)
    engines.start_dockerd(*docker_dns(sim))
    engines.import_image("docker")


def docker_dns(host: SimHost) -> list[str]:
    """dockerd's --dns: pontoon's names for Docker's resolver, on the default
    bridge's address (pontoon/frontends/docker/dns.py)."""
    bridge = host.cli_json("network", "inspect", "bridge")[0]
    return ["--dns", bridge["IPAM"]["Config"][0]["Gateway"]]


def _start_daemon(state: LabState, host: LabHost) -> None:
    sim = host.sim()
    store = f"{state.etcd_url}{CLUSTER_PREFIX}"
    docker = []
    if host.docker:
        docker = ["--docker-plugin", "--docker-host", host.engines().docker_host]
    advertise = host.address6 or "eth0"  # an interface name means its IPv4 address
    sim.start_daemon("--cluster-store", store, "--cluster-advertise", advertise, *docker,
                     *_tls_args(state, host), *state.daemon_args)  # fmt: skip
    assert sim.daemon is not None
    host.daemon_pid = sim.daemon.pid


def _tls_args(state: LabState, host: LabHost) -> list[str]:
    """With --tls: etcd with the host's certificate, and the API on eth0 over
    mutual TLS beside the unix socket."""
    if not state.tls:
        return []
    f = _files(state, host.name)
    return [
        "--cluster-store-opt", f"kv.cacertfile={f.ca}",
        "--cluster-store-opt", f"kv.certfile={f.cert}",
        "--cluster-store-opt", f"kv.keyfile={f.key}",
        "-H", f"tcp://{host.address}:{API_TLS_PORT}",
        "--tlsverify", "--tlscacert", str(f.ca), "--tlscert", str(f.cert), "--tlskey", str(f.key),
    ]  # fmt: skip


def restart_daemon(
    state: LabState, name: str, pythonpath: str = "", sig: int = signal.SIGTERM
) -> LabHost:
    """Stop host NAME's daemon with `sig` (its containers keep running) and
    start it again from the release at `pythonpath` ("" = this tree): an
    in-place upgrade, or a downgrade."""
    host = state.host(name)
    _stop(host.daemon_pid, sig)
    host.pythonpath = pythonpath
    _start_daemon(state, host)
    state.save()
    return host


def down(name: str = "lab") -> None:
    """Remove everything the lab made; safe on a half-made lab."""
    try:
        state = LabState.load(name)
    except LabError:
        state = LabState(name=name, subnet="", switch=f"ptl-{name}-sw")
    for host in state.hosts:
        sim = host.sim()
        if host.daemon_pid:
            _kill(host.daemon_pid)
        if host.docker:
            host.engines().destroy()
        sim.destroy()
    for pid in state.etcd_pids or [state.etcd_pid]:
        _kill(pid)
    # Hosts not yet recorded in the state when `up` failed half-way.
    for ns in run("ip", "netns", "list", check=False).stdout.split("\n"):
        ns = ns.split(" ")[0]
        if ns.startswith(f"ptl-{name}-") and ns != state.switch:
            SimHost(ns, state.directory / ns.rsplit("-", 1)[1]).destroy()
    if (Path("/run/netns") / state.switch).exists():
        run("ip", "netns", "del", state.switch, check=False)
    shutil.rmtree(state.directory, ignore_errors=True)


def _kill(pid: int) -> None:
    _stop(pid, signal.SIGKILL)


def _stop(pid: int, sig: int, timeout: float = 10.0) -> None:
    """Signal `pid` and wait until it is gone; SIGKILL after `timeout`."""
    if pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + (timeout if sig != signal.SIGKILL else 2.0)
    while _alive_or_unreaped(pid):
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            sig, deadline = signal.SIGKILL, time.monotonic() + 2.0
        time.sleep(0.01)


def _alive_or_unreaped(pid: int) -> bool:
    # Reap it when it is our child (the lab was made by this process), so no
    # zombie is left behind; anyone else's child is its parent's business.
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return _alive(pid)


def status(name: str = "lab") -> dict[str, Any]:
    state = LabState.load(name)
    hosts = []
    for host in state.hosts:
        alive = _alive(host.daemon_pid)
        ref = f"lab://{host.name}" if state.name == "lab" else f"lab://{state.name}/{host.name}"
        hosts.append(
            {"host": host.name, "netns": host.netns, "address": host.address,
             "daemon": "running" if alive else "down", "socket": host.socket, "ref": ref}
        )  # fmt: skip
    members = []
    for server in etcd_servers(state):
        info = server.status() if server.is_running() else None
        members.append(
            {"name": server.name, "url": server.client_url, "running": info is not None,
             "leader": bool(info and info["member"] == info["leader"])}
        )  # fmt: skip
    return {
        "lab": state.name,
        "subnet": state.subnet,
        "cluster_store": state.etcd_url + CLUSTER_PREFIX,
        "switch": state.switch,
        "tls": state.tls,
        "etcd": {
            "url": state.etcd_url,
            "healthy": any(m["running"] for m in members),
            "members": members,
        },
        "hosts": hosts,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
