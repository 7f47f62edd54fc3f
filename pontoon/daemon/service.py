"""The service layer: networks, containers and endpoints, over store and kernel.

Every mutating operation runs under one lock and follows the same shape:
write an intent record (status "creating"), change the kernel, then mark the
record done; on failure undo in reverse. Restart reconciliation
(reconcile.py) finishes or rolls back whatever a killed daemon left half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from pontoon import ipam, model
from pontoon.daemon.config import DaemonConfig
from pontoon.daemon.kernel import Kernel
from pontoon.dns import upstream
from pontoon.dns.server import LISTEN_ADDR, Resolver, View
from pontoon.drivers import NetworkDriver, mac_for
from pontoon.errors import Conflict, InvalidArgument, NotFound, PontoonError, Unavailable
from pontoon.firewall import NetworkRules, PortRule
from pontoon.model import (
    Container,
    Endpoint,
    Network,
    NetworkRequest,
    NetworkSpec,
    PortMapping,
)
from pontoon.portmap import conntrack, reserve
from pontoon.portmap import spec as portspec
from pontoon.runtime import process
from pontoon.sandbox import files, netns
from pontoon.store import Store
from pontoon.util import last_line

if TYPE_CHECKING:
    # Imported lazily at run time: the etcd client (gRPC) costs ~20 MB and only
    # a daemon with --cluster-store needs it.
    from pontoon.daemon.cluster import ClusterAgent

log = logging.getLogger(__name__)
T = TypeVar("T", Network, Container)

DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "pontoon0"
# docker_gwbridge's counterpart. The device name is shorter than the network
# name because Linux caps interface names at 15 characters.
GW_NETWORK = "pontoon_gwbridge"
GW_BRIDGE = "pontoon_gwbr"
OVERLAY_OVERHEAD = 50  # outer Ethernet + IP + UDP + VXLAN headers
BRIDGE_NAME_OPTIONS = ("com.docker.network.bridge.name", "bridge.name")
MTU_OPTIONS = ("com.docker.network.driver.mtu", "mtu")
KNOWN_OPTIONS = (*BRIDGE_NAME_OPTIONS, *MTU_OPTIONS)
BRIDGE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ, ASCII only


def net_key(network_id: str) -> str:
    return f"/networks/{network_id}"


def ep_key(endpoint_id: str) -> str:
    return f"/endpoints/{endpoint_id}"


def ctr_key(container_id: str) -> str:
    return f"/containers/{container_id}"


def network_rules(net: Network) -> NetworkRules:
    return NetworkRules(bridge=net.bridge, subnet=net.subnet, internal=net.internal, icc=net.icc)


class Service:
    def __init__(self, config: DaemonConfig, store: Store, kernel: Kernel) -> None:
        self.config = config
        self.store = store
        self.kernel = kernel
        self.ipam = ipam.Ipam(store)
        self.lock = asyncio.Lock()
        self.networks: dict[str, Network] = {}
        self.containers: dict[str, Container] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.exited: dict[str, asyncio.Event] = {}
        self._shims: dict[str, subprocess.Popen[bytes]] = {}
        self._pidfds: dict[str, int] = {}
        # Host-port reservations we hold (kernel mode, or until handed to the proxy).
        self._reservations: dict[str, list[socket.socket]] = {}
        self.proxy: ProxyPort | None = None
        self.resolver = Resolver(self.dns_view)
        self.cluster: ClusterAgent | None = None
        self.underlay_mtu = 1500
        self._dns_views: dict[str, View] = {}  # cache, dropped on any endpoint change

    # ------------------------------------------------------------------ load

    async def load(self) -> None:
        for value in await self.store.values("/networks/"):
            net = Network.loads(value)
            self.networks[net.id] = net
        # Overlays this host is on, as last seen: enough to keep their datapath
        # up across a restart while etcd is away.
        for value in await self.store.values("/global/networks/"):
            net = Network.loads(value)
            self.networks.setdefault(net.id, net)
        for value in await self.store.values("/endpoints/"):
            ep = Endpoint.loads(value)
            self.endpoints[ep.id] = ep
        for value in await self.store.values("/containers/"):
            c = Container.loads(value)
            self.containers[c.id] = c

    # --------------------------------------------------------------- lookups

    def find_network(self, ref: str) -> Network:
        return _find(self.networks.values(), ref, "network")

    def find_container(self, ref: str) -> Container:
        return _find(self.containers.values(), ref, "container")

    def container_endpoints(self, c: Container) -> list[Endpoint]:
        return [self.endpoints[e] for e in c.endpoints.values() if e in self.endpoints]

    def network_endpoints(self, net: Network) -> list[Endpoint]:
        """Every endpoint of a network, on this host and (overlays) on others."""
        return [ep for ep in self._all_endpoints() if ep.network_id == net.id]

    def _all_endpoints(self) -> list[Endpoint]:
        remote = list(self.cluster.remote.values()) if self.cluster is not None else []
        return [*self.endpoints.values(), *remote]

    def driver(self, net: Network) -> NetworkDriver:
        if net.driver == "overlay":
            if self.kernel.overlay is None:
                raise Unavailable("overlay networks need --cluster-store on this host")
            return self.kernel.overlay
        return self.kernel.bridge

    # ------------------------------------------------------------- persisting

    async def save_network(self, net: Network) -> None:
        self.networks[net.id] = net
        await self.store.put(net_key(net.id), net.dumps())

    async def save_container(self, c: Container) -> None:
        self.containers[c.id] = c
        await self.store.put(ctr_key(c.id), c.dumps())

    async def save_endpoint(self, ep: Endpoint) -> None:
        self._dns_views.clear()
        self.endpoints[ep.id] = ep
        await self.store.put(ep_key(ep.id), ep.dumps())

    # -------------------------------------------------------------- networks

    async def ensure_default_network(self) -> None:
        if any(n.default for n in self.networks.values()):
            return
        iface = ipaddress.IPv4Interface(self.config.bip)
        spec = NetworkSpec(
            DEFAULT_NETWORK,
            subnet=str(iface.network),
            gateway=str(iface.ip),
            options={"com.docker.network.bridge.name": DEFAULT_BRIDGE},
        )
        async with self.lock:
            await self._create_network(spec, default=True)

    async def create_network(self, spec: NetworkSpec) -> Network:
        model.check_name("network", spec.name)
        async with self.lock:
            self._check_name_free(spec.name)
            if spec.driver == "overlay":
                return await self._create_overlay(spec)
            return await self._create_network(spec)

    def _check_name_free(self, name: str) -> None:
        if any(n.name == name for n in self.networks.values()):
            raise Conflict(f"network with name {name} already exists")

    async def _create_overlay(self, spec: NetworkSpec) -> Network:
        if self.cluster is None:
            raise InvalidArgument(
                "overlay networks need a cluster store: start pontoond with "
                "--cluster-store etcd://HOST:PORT"
            )
        for key in spec.options:
            if key not in MTU_OPTIONS:
                raise InvalidArgument(f"unknown overlay network option {key!r}")
        mtu = _mtu_option(spec.options, self.underlay_mtu - OVERLAY_OVERHEAD)
        net = await self.cluster.create_network(spec, mtu)
        log.info("overlay network %s (%s) created: %s VNI %d", net.name, net.id[:12],
                 net.subnet, net.vni)  # fmt: skip
        return net

    async def _create_network(
        self,
        spec: NetworkSpec,
        default: bool = False,
        icc: bool = True,
        gateway_bridge: bool = False,
    ) -> Network:
        name, options = spec.name, spec.options
        self._check_name_free(name)
        if spec.driver != "bridge":
            raise InvalidArgument(
                f"unknown network driver {spec.driver!r} (known: bridge, overlay)"
            )
        for key in options:
            if key not in KNOWN_OPTIONS:
                raise InvalidArgument(f"unknown network option {key!r}")
        mtu = _mtu_option(options)
        net_id = model.new_id()
        bridge = _bridge_name_option(options) or f"pt-{net_id[:12]}"
        if any(n.bridge == bridge for n in self.networks.values()):
            raise Conflict(f"bridge {bridge} is already used by another network")
        if await self.kernel.call(self.kernel.link_exists, bridge) and not default:
            raise Conflict(f"a device named {bridge} already exists on this host")

        taken = [ipaddress.IPv4Network(n.subnet) for n in self.networks.values() if n.subnet]
        ours = {n.bridge for n in self.networks.values()}
        routes = await self.kernel.call(self.kernel.host_routes, ours)
        plan = ipam.plan_subnet(spec, self.config.pools, taken, routes)
        net = Network(
            id=net_id,
            name=name,
            driver=spec.driver,
            subnet=str(plan.subnet),
            gateway=str(plan.gateway),
            ip_range=spec.ip_range and str(plan.ip_range),
            internal=spec.internal,
            options=dict(options),
            bridge=bridge,
            mtu=mtu,
            default=default,
            icc=icc,
            gateway_bridge=gateway_bridge,
        )
        await self.save_network(net)  # intent: status "creating"
        try:
            await self.kernel.call(self.kernel.bridge.create_network, net)
            await self.kernel.call(self.kernel.firewall.add_network, network_rules(net))
            await self.ipam.open(net.id, plan)
            net.status = model.READY
            await self.save_network(net)
        except BaseException:
            await self._destroy_network(net)
            raise
        log.info("network %s (%s) created: %s on %s", name, net.id[:12], net.subnet, bridge)
        return net

    async def remove_network(self, ref: str) -> None:
        async with self.lock:
            net = self.find_network(ref)
            if net.default:
                raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
            users = sorted(ep.container_name for ep in self.network_endpoints(net))
            if users:
                raise Conflict(f"network {net.name} has active endpoints ({', '.join(users)})")
            if net.scope == "global":
                assert self.cluster is not None
                await self.cluster.remove_network(net)
                await self._drop_overlay(net)
            else:
                await self._destroy_network(net)
            log.info("network %s (%s) removed", net.name, net.id[:12])

    async def _destroy_network(self, net: Network) -> None:
        """Remove every trace of a network; safe on a half-made one."""
        with contextlib.suppress(Exception):
            await self.kernel.call(self.kernel.firewall.remove_network, network_rules(net))
        await self.kernel.call(self.kernel.bridge.delete_network, net)
        await self.ipam.release_all(net.id)
        await self.store.delete(net_key(net.id))
        self.networks.pop(net.id, None)

    async def restore_network(self, net: Network) -> None:
        await self.kernel.call(self.kernel.bridge.create_network, net)
        await self.ipam.open(net.id, _plan(net))

    # ------------------------------------------------------------ containers

    async def run_container(
        self,
        *,
        name: str,
        command: list[str],
        networks: list[str],
        ip: str = "",
        aliases: list[str] | None = None,
        hostname: str = "",
        env: list[str] | None = None,
        dns: list[str] | None = None,
        auto_remove: bool = False,
        ports: list[str] | None = None,
    ) -> Container:
        async with self.lock:
            c = self._validate_run(
                name,
                command,
                networks,
                ip,
                aliases or [],
                hostname,
                env or [],
                dns or [],
                auto_remove,
                ports or [],
            )
            await self.save_container(c)  # intent: state "creating"
            try:
                await self._start(c)
            except BaseException:
                await self._destroy_container(c)
                raise
        log.info("container %s (%s) running, pid %d", c.name, c.id[:12], c.pid)
        return c

    def _validate_run(
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
    ) -> Container:
        cid = model.new_id()
        name = name or f"ctr-{cid[:8]}"
        model.check_name("container", name)
        if any(c.name == name for c in self.containers.values()):
            raise Conflict(f"container name {name} is already in use")
        if not command or not command[0]:
            raise InvalidArgument("no command given: pontoon run [OPTIONS] -- COMMAND [ARG...]")
        process.check_executable(command[0], env)
        port_reqs = portspec.parse_all(ports)
        for item in env:
            key = item.partition("=")[0]
            if not key or "=" not in item or "\0" in item:
                raise InvalidArgument(f"invalid environment variable {item!r}: use KEY=VALUE")
        for server in dns:
            ipam.parse_address(server, "DNS server")
        hostname = model.check_hostname(hostname) if hostname else cid[:12]
        nets = [self.find_network(ref) for ref in (networks or [DEFAULT_NETWORK])]
        if len({n.id for n in nets}) != len(nets):
            raise InvalidArgument("a network is given twice")
        for alias in aliases:
            model.check_name("alias", alias)
        if aliases and nets[0].default:
            raise InvalidArgument("network-scoped aliases need a user-defined network")
        if ip:
            ipam.parse_address(ip)
            if nets[0].default:
                raise InvalidArgument("a fixed --ip needs a user-defined network")
            if not ipam.SubnetPlan.build(
                ipaddress.IPv4Network(nets[0].subnet), nets[0].gateway
            ).usable(ipaddress.IPv4Address(ip)):
                raise InvalidArgument(f"IP address {ip} is not usable in network {nets[0].name}")
        if port_reqs and nets[0].internal:
            raise InvalidArgument(f"cannot publish ports on internal network {nets[0].name}")
        requests = [NetworkRequest(n.id) for n in nets]
        requests[0].ip = ip
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

    async def _start(self, c: Container) -> None:
        self._reserve_ports(c)  # before any rule exists: a taken port fails here
        sandbox = Path(c.sandbox)
        await self.kernel.call(netns.create, sandbox, False)  # lo comes up with eth0
        for index, req in enumerate(c.networks):
            await self._attach(c, self.networks[req.network_id], req, f"eth{index}", index == 0)
        if self._needs_gateway(c):
            gw = await self.gateway_network()
            await self._attach(c, gw, NetworkRequest(gw.id), f"eth{len(c.networks)}", True)
        await self._publish(c)
        if c.embedded_dns:
            await self.resolver.start(c.id, sandbox)
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
        if not c.pid:
            err = last_line(cdir / "stderr.log")
            raise PontoonError(f"container failed to start{': ' + err if err else ''}")
        c.pid_start = process.start_time(c.pid) or 0
        c.state = model.RUNNING
        c.started_at = model.now()
        await self.save_container(c)
        self.watch_exit(c)

    def _write_etc(self, c: Container, cdir: Path, initial: bool = False) -> None:
        entries = [
            (ep.ip, [c.hostname] + ([c.name] if c.name != c.hostname else []))
            for ep in self.container_endpoints(c)
        ]
        files.write_in_place(cdir / "hosts", files.hosts_text(entries))
        if initial:
            files.write_in_place(cdir / "hostname", c.hostname + "\n")
            try:
                host_resolv = Path("/etc/resolv.conf").read_text()
            except OSError:
                host_resolv = ""
            if c.embedded_dns:
                servers, options = [LISTEN_ADDR], ["ndots:0"]
            else:
                servers, options = (c.dns or self.config.dns or None), []
            files.write_in_place(
                cdir / "resolv.conf", files.resolv_text(host_resolv, servers, options)
            )

    async def _attach(
        self, c: Container, net: Network, req: NetworkRequest, ifname: str, primary: bool
    ) -> Endpoint:
        ep = Endpoint(
            id=model.new_id(),
            network_id=net.id,
            container_id=c.id,
            container_name=c.name,
            ifname=ifname,
            ip="",
            mac="",
            prefixlen=ipaddress.IPv4Network(net.subnet).prefixlen,
            gateway=net.gateway,
            aliases=list(req.aliases),
            default_route=primary and not net.internal and net.driver == "bridge",
            dns_names=list(dict.fromkeys([c.name, c.hostname, c.id[:12], *req.aliases])),
        )
        overlay = net.driver == "overlay"
        if overlay:
            assert self.cluster is not None
            addr = await self.cluster.allocate(net, ep.id, req.ip)
        else:
            addr = await self.ipam.allocate(net.id, ep.id, req.ip)
        ep.ip = str(addr)
        ep.mac = mac_for(ep.ip)
        c.endpoints[net.id] = ep.id
        await self.save_endpoint(ep)  # before the kernel: a crash leaves a findable record
        await self.save_container(c)
        try:
            if overlay:
                await self._ensure_overlay(net)
            await self.kernel.call(self.driver(net).join, net, ep, Path(c.sandbox))
            await self.save_endpoint(ep)
            if overlay:
                assert self.cluster is not None
                await self.cluster.publish(ep)
        except BaseException:
            await self._detach(c, ep)
            raise
        return ep

    async def _detach(self, c: Container, ep: Endpoint) -> None:
        net = self.networks.get(ep.network_id)
        overlay = net is not None and net.driver == "overlay"
        if net is not None:
            await self.kernel.call(self.driver(net).leave, net, ep)
        if overlay:
            await self._release_overlay_endpoint(ep)
        elif ep.ip:
            await self.ipam.release(ep.network_id, ep.ip)
        await self.store.delete(ep_key(ep.id))
        self.endpoints.pop(ep.id, None)
        self._dns_views.clear()
        if c.endpoints.get(ep.network_id) == ep.id:
            del c.endpoints[ep.network_id]
        if c.id in self.containers:
            await self.save_container(c)
        if overlay and net is not None and not self.participating(net.id):
            await self._drop_overlay(net)

    async def _release_overlay_endpoint(self, ep: Endpoint) -> None:
        """Withdraw from the cluster. With etcd away the local teardown goes on
        and the next resync deletes what is left under our name."""
        assert self.cluster is not None
        try:
            await self.cluster.withdraw(ep)
            if ep.ip:
                await self.cluster.release(ep.network_id, ep.ip)
        except Unavailable as exc:
            log.warning("endpoint %s: cluster cleanup deferred: %s", ep.id[:12], exc)

    # ------------------------------------------------------------ overlays

    def participating(self, net_id: str) -> bool:
        """This host has containers on the network (so it holds its namespace)."""
        return any(ep.network_id == net_id for ep in self.endpoints.values())

    def local_overlay_endpoints(self) -> list[Endpoint]:
        return [
            ep
            for ep in self.endpoints.values()
            if (net := self.networks.get(ep.network_id)) is not None and net.driver == "overlay"
        ]

    async def _ensure_overlay(self, net: Network) -> None:
        """The network's namespace, bridge and VTEP on this host, with every
        known peer programmed (first local container on the network)."""
        assert self.kernel.overlay is not None
        if self.participating(net.id) and await self.kernel.call(self.kernel.overlay.present, net):
            await self.kernel.call(self.kernel.overlay.create_network, net)
            return
        await self.kernel.call(self.kernel.overlay.create_network, net)
        # Kept locally so a restart with etcd away still knows the network.
        await self.store.put(f"/global/networks/{net.id}", net.dumps())
        for peer in self._remote_on(net.id):
            await self.kernel.call(self.kernel.overlay.add_peer, net, peer.ip, peer.mac, peer.vtep)

    async def _drop_overlay(self, net: Network) -> None:
        if self.kernel.overlay is not None:
            await self.kernel.call(self.kernel.overlay.delete_network, net)
        await self.store.delete(f"/global/networks/{net.id}")

    def _remote_on(self, net_id: str) -> list[Endpoint]:
        if self.cluster is None:
            return []
        return [ep for ep in self.cluster.remote.values() if ep.network_id == net_id]

    async def global_network_seen(self, net: Network) -> None:
        self.networks[net.id] = net

    async def global_network_gone(self, net: Network) -> None:
        if self.participating(net.id):
            log.warning("overlay network %s vanished from the store while in use here", net.name)
            return
        self.networks.pop(net.id, None)
        await self._drop_overlay(net)

    async def reprogram_peers(self) -> None:
        """Kernel peers of every overlay network we are on = the store's view."""
        self._dns_views.clear()
        overlay = self.kernel.overlay
        if overlay is None:
            return
        for net_id in {ep.network_id for ep in self.local_overlay_endpoints()}:
            net = self.networks[net_id]
            want = {p.ip: (p.mac, p.vtep) for p in self._remote_on(net_id)}
            have = await self.kernel.call(overlay.peers, net)
            for ip, (mac, vtep) in want.items():
                if have.get(ip) != (mac, vtep):
                    await self.kernel.call(overlay.add_peer, net, ip, mac, vtep)
            for ip, (mac, _) in have.items():
                if ip not in want:
                    await self.kernel.call(overlay.remove_peer, net, ip, mac)

    async def peer_added(self, ep: Endpoint) -> None:
        self._dns_views.clear()
        net = self.networks.get(ep.network_id)
        if net is not None and self.kernel.overlay is not None and self.participating(net.id):
            await self.kernel.call(self.kernel.overlay.add_peer, net, ep.ip, ep.mac, ep.vtep)

    async def peer_removed(self, ep: Endpoint) -> None:
        self._dns_views.clear()
        net = self.networks.get(ep.network_id)
        if net is not None and self.kernel.overlay is not None and self.participating(net.id):
            await self.kernel.call(self.kernel.overlay.remove_peer, net, ep.ip, ep.mac)

    async def gateway_network(self) -> Network:
        """pontoon_gwbridge, made on first need: the default route and outbound
        NAT of overlay containers (docker_gwbridge in the seed). Containers on
        it cannot reach each other through it (icc off)."""
        for net in self.networks.values():
            if net.gateway_bridge:
                return net
        spec = NetworkSpec(GW_NETWORK, options={"com.docker.network.bridge.name": GW_BRIDGE})
        return await self._create_network(spec, icc=False, gateway_bridge=True)

    def _needs_gateway(self, c: Container) -> bool:
        """Overlay containers reach the outside through eth<N> on the gateway
        bridge, unless a bridge network already gives them a default route."""
        nets = [self.networks[r.network_id] for r in c.networks]
        wants_out = any(n.driver == "overlay" and not n.internal for n in nets)
        has_route = any(ep.default_route for ep in self.container_endpoints(c))
        return wants_out and not has_route

    # ------------------------------------------------------------ ports

    def _reserve_ports(self, c: Container) -> None:
        reqs = [portspec.PortRequest(p.host_ip, p.host_port, p.container_port, p.proto)
                for p in c.ports]  # fmt: skip
        taken = reserve.reserve_all(reqs)
        for mapping, (_, port) in zip(c.ports, taken, strict=True):
            mapping.host_port = port
        self._reservations[c.id] = [sock for sock, _ in taken]

    def reserve_existing(self, c: Container) -> None:
        """Bind a running container's host ports again (after a restart)."""
        reqs = [portspec.PortRequest(p.host_ip, p.host_port, p.container_port, p.proto)
                for p in c.ports]  # fmt: skip
        self._reservations[c.id] = [sock for sock, _ in reserve.reserve_all(reqs)]

    def port_rules(self, c: Container) -> list[PortRule]:
        """Firewall rules for a container's ports: DNAT to its first network's address."""
        if not c.ports or not c.networks:
            return []
        primary = c.networks[0].network_id
        net = self.networks.get(primary)
        if net is not None and net.driver == "overlay":
            # Published through the gateway bridge, as Docker does.
            net = next((n for n in self.networks.values() if n.gateway_bridge), None)
        ep = self.endpoints.get(c.endpoints.get(net.id, "")) if net is not None else None
        if ep is None or net is None:
            return []
        return [
            PortRule(p.host_ip, p.proto, p.host_port, ep.ip, p.container_port, net.bridge)
            for p in c.ports
        ]

    @staticmethod
    def proxy_id(c: Container, p: PortMapping) -> str:
        return f"{c.id[:12]}/{p.proto}/{p.host_ip}/{p.host_port}"

    async def _publish(self, c: Container) -> None:
        rules = self.port_rules(c)
        if not rules:
            return
        primary = next(ep for ep in self.container_endpoints(c) if ep.ip == rules[0].container_ip)
        await self.kernel.call(self.kernel.bridge.set_hairpin, primary)
        await self.kernel.call(self.kernel.firewall.add_ports, rules)
        if self.proxy is not None:
            await self._hand_to_proxy(c, rules)

    async def _hand_to_proxy(self, c: Container, rules: list[PortRule]) -> None:
        """Give the reserved sockets to the proxy; it owns them from now on."""
        assert self.proxy is not None
        socks = self._reservations.pop(c.id, [])
        try:
            # The proxy speaks TCP and UDP; SCTP takes the kernel path only.
            batch = [(self.proxy_id(c, mapping), mapping.proto, sock, rule.container_ip,
                      rule.container_port)
                     for mapping, rule, sock in zip(c.ports, rules, socks, strict=True)
                     if mapping.proto != "sctp"]  # fmt: skip
            await asyncio.to_thread(self.proxy.add_many, batch)  # one round trip
        finally:
            for sock in socks:
                sock.close()

    async def _unpublish(self, c: Container) -> None:
        rules = self.port_rules(c)
        if rules:
            await self.kernel.call(self.kernel.firewall.remove_ports, rules)
        if self.proxy is not None and c.ports:
            with contextlib.suppress(Exception):
                ids = [self.proxy_id(c, mapping) for mapping in c.ports]
                await asyncio.to_thread(self.proxy.remove_many, ids)
        for sock in self._reservations.pop(c.id, []):
            sock.close()
        taken = [(p.host_ip, p.proto, p.host_port) for p in c.ports if p.host_port]
        if taken:
            await self.kernel.call(conntrack.flush, taken)

    async def _release_network(self, c: Container) -> None:
        await self.resolver.stop(c.id)
        await self._unpublish(c)
        for ep in self.container_endpoints(c):
            await self._detach(c, ep)
        for ep_id in list(c.endpoints.values()):  # records already gone
            self.endpoints.pop(ep_id, None)
        c.endpoints.clear()
        if c.sandbox:
            await self.kernel.call(netns.remove, Path(c.sandbox))

    async def _destroy_container(self, c: Container) -> None:
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

    # --------------------------------------------------------- exit watching

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
        await self.save_container(c)
        log.info("container %s (%s) exited with %s", c.name, c.id[:12], c.exit_code)
        if c.auto_remove:
            await self._destroy_container(c)
        self.exited.setdefault(c.id, asyncio.Event()).set()

    async def wait(self, ref: str) -> int:
        c = self.find_container(ref)
        if c.state == model.RUNNING:
            await self.exited.setdefault(c.id, asyncio.Event()).wait()
        return c.exit_code if c.exit_code is not None else -1

    async def remove_container(self, ref: str, force: bool = False) -> None:
        c = self.find_container(ref)
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
                await self._destroy_container(c)
        log.info("container %s (%s) removed", c.name, c.id[:12])

    # ------------------------------------------------------- connect/disconnect

    async def connect(
        self, net_ref: str, ctr_ref: str, ip: str = "", aliases: list[str] | None = None
    ) -> None:
        async with self.lock:
            net = self.find_network(net_ref)
            c = self.find_container(ctr_ref)
            if c.state != model.RUNNING:
                raise Conflict(f"container {c.name} is not running")
            if net.id in c.endpoints:
                raise Conflict(f"container {c.name} is already connected to network {net.name}")
            for alias in aliases or []:
                model.check_name("alias", alias)
            if aliases and net.default:
                raise InvalidArgument("network-scoped aliases need a user-defined network")
            if ip and net.default:
                raise InvalidArgument("a fixed --ip needs a user-defined network")
            used = {self.endpoints[e].ifname for e in c.endpoints.values() if e in self.endpoints}
            ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
            req = NetworkRequest(net.id, ip, list(aliases or []))
            await self._attach(c, net, req, ifname, primary=False)
            c.networks.append(req)
            await self.save_container(c)
            self._write_etc(c, self.config.container_dir(c.id))

    async def disconnect(self, net_ref: str, ctr_ref: str) -> None:
        async with self.lock:
            net = self.find_network(net_ref)
            c = self.find_container(ctr_ref)
            ep_id = c.endpoints.get(net.id)
            if ep_id is None or ep_id not in self.endpoints:
                raise Conflict(f"container {c.name} is not connected to network {net.name}")
            await self._detach(c, self.endpoints[ep_id])
            c.networks = [r for r in c.networks if r.network_id != net.id]
            await self.save_container(c)
            self._write_etc(c, self.config.container_dir(c.id))

    # ------------------------------------------------------------------ dns

    def dns_view(self, cid: str) -> View | None:
        """Names a container may resolve: peers on the user-defined networks it
        is on, by name, hostname, short ID and alias."""
        view = self._dns_views.get(cid)
        if view is not None:
            return view
        c = self.containers.get(cid)
        if c is None or c.state != model.RUNNING:
            return None
        names: dict[str, list[str]] = {}
        reverse: dict[str, str] = {}
        mine = self.container_endpoints(c)
        shared = {ep.network_id for ep in mine}
        for ep in self._all_endpoints():
            net = self.networks.get(ep.network_id)
            if ep.network_id not in shared or net is None or net.default:
                continue
            for name in ep.dns_names:
                addrs = names.setdefault(name.lower(), [])
                if ep.ip not in addrs:
                    addrs.append(ep.ip)
            reverse.setdefault(ep.ip, ep.container_name)
        nets = [self.networks[n] for n in shared if n in self.networks]
        view = View(
            names=names,
            reverse=reverse,
            upstreams=c.dns or self.config.dns or upstream.host_nameservers(),
            external=any(not n.internal for n in nets),
        )
        self._dns_views[cid] = view
        return view

    # ------------------------------------------------------------- shutdown

    async def close(self) -> None:
        """Stop watching; containers keep running without us."""
        if self.cluster is not None:
            await self.cluster.close()
        for cid in list(self._pidfds):
            self._unwatch(cid)
        await self.resolver.close()


class ProxyPort(Protocol):
    """What the service needs from the userland proxy (pontoon.proxy.client)."""

    def add(self, mapping_id: str, proto: str, sock: socket.socket, ip: str, port: int) -> None: ...

    def remove(self, mapping_id: str) -> None: ...

    def add_many(self, mappings: Sequence[tuple[str, str, socket.socket, str, int]]) -> None: ...

    def remove_many(self, ids: Sequence[str]) -> list[str]: ...

    def list(self) -> dict[str, dict]: ...


def _find(items: Iterable[T], ref: str, kind: str) -> T:
    items = list(items)
    for item in items:
        if item.name == ref or item.id == ref:
            return item
    if len(ref) >= 3 and all(ch in "0123456789abcdef" for ch in ref):
        matches = [item for item in items if item.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"{kind} ID prefix {ref} is ambiguous")
    raise NotFound(f"no such {kind}: {ref}")


def _plan(net: Network) -> ipam.SubnetPlan:
    return ipam.SubnetPlan.build(ipaddress.IPv4Network(net.subnet), net.gateway, net.ip_range)


def _mtu_option(options: dict[str, str], default: int = 1500) -> int:
    for key in MTU_OPTIONS:
        if key in options:
            try:
                mtu = int(options[key])
            except ValueError:
                raise InvalidArgument(f"invalid MTU {options[key]!r}") from None
            if not 68 <= mtu <= 65535:
                raise InvalidArgument(f"invalid MTU {mtu}: must be 68-65535")
            return mtu
    return default


def _bridge_name_option(options: dict[str, str]) -> str:
    for key in BRIDGE_NAME_OPTIONS:
        if key in options:
            name = options[key]
            if not BRIDGE_NAME_RE.fullmatch(name) or name in (".", ".."):
                raise InvalidArgument(f"invalid bridge name {name!r}: 1-15 of [A-Za-z0-9_.-]")
            return name
    return ""


__all__ = ["PontoonError", "Service"]
