"""The Docker front end: a remote network driver and IPAM driver named
`pontoon`, served on /run/docker/plugins/pontoon.sock (`pontoond
--docker-plugin`). A thin layer over the engine, as the API and CNI front ends.

How Docker's calls map onto the engine:

    IpamDriver.RequestPool        a subnet for a network to be (none made yet)
    IpamDriver.RequestAddress     the gateway: answered from the pool; an
                                  endpoint's: Engine.reserve_address
    NetworkDriver.CreateNetwork   checked at once (Engine.check_network); made
                                  once dockerd tells its name (below)
    NetworkDriver.CreateEndpoint  remembered; the MAC derived from the address
    NetworkDriver.Join            Engine.attach(handover): a veth whose
                                  container side is left in dockerd's namespace
                                  for Docker to move, with the reserved address
    ProgramExternalConnectivity   Engine.publish_ports (Docker picks which
                                  endpoint of a container publishes)
    NetworkDriver.DeleteEndpoint  Engine.detach (the endpoint's attachment)
    NetworkDriver.DeleteNetwork   Engine.remove_network

An attachment's owner is the container (kind docker, its sandbox's ID, its
name), so a container on several networks has one DNS view.

Docker never tells a driver the network's name: CreateNetwork answers once
the request is checked, and a task then asks dockerd's API for the name (the
network is stored, and listed, right after our answer) and creates the pontoon
network under it. Calls that need the network wait for that task.

What must survive a restart of pontoond lives in the local store under
/docker/: which pontoon network each Docker network is, and the endpoints
between CreateEndpoint and DeleteEndpoint.

Besides the calls, a sync task shows every global network of the cluster in
this host's dockerd (and removes those that left), collects endpoints dockerd
forgot, and dns.py answers the names Docker's resolver forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from pyroute2.netlink.exceptions import NetlinkError

from pontoon.core import addresses
from pontoon.core.model import OWNER_DOCKER, Attachment, Network, NetworkSpec, Owner
from pontoon.engine.attachments import AttachRequest
from pontoon.engine.engine import Engine
from pontoon.errors import InvalidArgument, NotFound, PontoonError, Unavailable, os_error_text
from pontoon.frontends.docker import firewall, protocol
from pontoon.frontends.docker.dns import DockerDns
from pontoon.frontends.docker.dockerd import Dockerd, DockerdError
from pontoon.sandbox import netns

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
WebHandler = Callable[[web.Request], Awaitable[web.Response]]

NETWORKS = "/docker/networks/"
ENDPOINTS = "/docker/endpoints/"
# Bounds so that no call of Docker's waits forever on us (it has no timeout).
CALL_TIMEOUT = 60.0
NAME_WAIT = 10.0
SYNC_SECONDS = 1.0
COLLECT_EVERY = 10  # sync rounds between looks for endpoints dockerd forgot
STALE_AFTER = 60.0  # seconds: an endpoint this old that dockerd does not list is gone
ALIAS_WAIT = 30.0
FIRST_LOOK = 0.1  # seconds after a join before asking dockerd about the container
# An address Docker reserved for an endpoint that no CreateEndpoint took this
# long after: Docker forgot it (dockerd 20.10 keeps the IPv4 address of an
# endpoint whose IPv6 one it then refuses, e.g. an --ip6 outside the subnet).
UNCLAIMED_AFTER = 10.0


@dataclasses.dataclass
class Pool:
    """A pool Docker asked for, until the network using it is made."""

    pool: str
    sub_pool: str
    existing: str = ""  # protocol.NETWORK_OPTION
    docker_network: str = ""  # set by CreateNetwork


@dataclasses.dataclass
class DockerNetwork:
    docker_id: str
    network_id: str  # pontoon's
    name: str
    # Docker's own IPAM hands out its addresses (no --ipam-driver pontoon, as
    # docker-compose makes networks): pontoon takes each one as it comes.
    docker_ipam: bool = False

    def is_ref(self, ref: str) -> bool:
        """Whether `ref` names this network as dockerd's API does: its name,
        or its ID or an unambiguous prefix of it (12 characters at least)."""
        return ref == self.name or (len(ref) >= 12 and self.docker_id.startswith(ref))


@dataclasses.dataclass
class Endpoint:
    docker_network: str
    endpoint_id: str
    address: str  # address/prefix
    mac: str
    created: float = dataclasses.field(default_factory=time.time)
    attachment: str = ""  # pontoon's, once joined
    address6: str = ""  # address/prefix, on a network with IPv6

    @property
    def ips(self) -> list[str]:
        return [addresses.address_of(a) for a in (self.address, self.address6) if a]

    @property
    def families(self) -> tuple[int, ...]:
        """The families Docker gave the endpoint addresses of: those of its
        network in dockerd, which may lack one pontoon's has (pontoon_gwbridge's
        IPv6 subnet, added after dockerd's view of it was made)."""
        return tuple(addresses.family_of(a) for a in self.ips)


class DockerPlugin:
    def __init__(self, engine: Engine, dockerd: Dockerd | None) -> None:
        self.engine = engine
        self.dockerd = dockerd
        self.pools: dict[str, Pool] = {}
        self.networks: dict[str, DockerNetwork] = {}
        self.creating: dict[str, asyncio.Task[DockerNetwork]] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self._sync: asyncio.Task[None] | None = None
        self._told: set[str] = set()  # conflicts already logged
        self.names = DockerDns(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._gateway_lock = asyncio.Lock()
        # (Docker network ID, subnets) of pontoon_gwbridge seen complete in
        # dockerd: a Docker network's subnets never change, so once is enough.
        self._gateway_shown: tuple[str, frozenset[str]] | None = None
        # (pontoon network, address) -> when Docker reserved it for an endpoint.
        self.unclaimed: dict[tuple[str, str], float] = {}

    @property
    def holder(self) -> str:
        """Who holds addresses Docker reserved and no endpoint took yet: one
        per host, so a late release never frees another host's address."""
        cluster = self.engine.cluster
        return f"docker/{cluster.host_id if cluster is not None else 'local'}"

    async def load(self) -> None:
        store = self.engine.store
        for value in await store.values(NETWORKS):
            net = _record(DockerNetwork, value)
            self.networks[net.docker_id] = net
        for value in await store.values(ENDPOINTS):
            ep = _record(Endpoint, value)
            self.endpoints[ep.endpoint_id] = ep
        await asyncio.to_thread(firewall.ensure_docker_user)

    async def start(self) -> None:
        self._sync = asyncio.create_task(self._sync_loop(), name="docker-sync")
        self._learn_unnamed()
        if self.dockerd is not None:
            self._background(self._creations_loop())
        try:
            await self.names.start()
        except OSError as exc:
            log.warning("names for Docker's resolver: cannot listen: %s", exc)

    def _learn_unnamed(self) -> None:
        """Containers joined by a pontoond that stopped before it learned their
        names (and aliases): learned now."""
        for ep in self.endpoints.values():
            att = self.attachment_of(ep.endpoint_id)
            net = self.engine.state.networks.get(att.network_id) if att is not None else None
            if att is not None and net is not None and not att.owner.name:
                self._background(self._after_start(ep, att.id, self._own_gateway(net)))

    async def close(self) -> None:
        self.names.close()
        for task in list(self._tasks):
            task.cancel()
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        for creating in self.creating.values():
            creating.cancel()
        if self.dockerd is not None:
            await self.dockerd.close()

    # -- the server -------------------------------------------------------------

    def routes(self) -> dict[str, Handler]:
        return {
            "/Plugin.Activate": self.activate,
            "/NetworkDriver.GetCapabilities": self.capabilities,
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": self.nothing,
            "/NetworkDriver.ProgramExternalConnectivity": self.program_external,
            "/NetworkDriver.RevokeExternalConnectivity": self.revoke_external,
            "/NetworkDriver.DiscoverNew": self.nothing,
            "/NetworkDriver.DiscoverDelete": self.nothing,
            "/NetworkDriver.AllocateNetwork": self.nothing,
            "/NetworkDriver.FreeNetwork": self.nothing,
            "/IpamDriver.GetCapabilities": self.ipam_capabilities,
            "/IpamDriver.GetDefaultAddressSpaces": self.address_spaces,
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": self.release_pool,
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }

    def app(self) -> web.Application:
        app = web.Application()
        for path, handler in self.routes().items():
            app.router.add_post(path, self._serve(path, handler))
        return app

    def _serve(self, path: str, handler: Handler) -> WebHandler:
        async def serve(request: web.Request) -> web.Response:
            data = await _body(request)
            if not isinstance(data, dict):
                reply = protocol.error_reply(path, "the request must be a JSON object")
                return web.json_response(reply, status=400)
            log.debug("docker %s %s", path, data)
            try:
                # In this task, not another (as wait_for would): each hop is
                # an event loop turn on the critical path of a `docker run`.
                async with asyncio.timeout(CALL_TIMEOUT):
                    reply = await handler(data)
            except PontoonError as exc:
                reply = protocol.error_reply(path, exc.message)
            except TimeoutError:
                log.error("docker %s timed out", path)
                reply = protocol.error_reply(path, f"{path[1:]} timed out; see pontoond's log")
            except (OSError, NetlinkError) as exc:
                log.exception("docker %s: kernel error", path)
                reply = protocol.error_reply(path, os_error_text(exc))
            except Exception as exc:
                log.exception("docker %s: internal error", path)
                reply = protocol.error_reply(path, f"internal error: {exc}")
            log.debug("docker %s -> %s", path, reply)
            return web.json_response(reply, content_type=protocol.CONTENT_TYPE)

        return serve

    # -- handshake ----------------------------------------------------------------

    async def activate(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": protocol.IMPLEMENTS}

    async def capabilities(self, data: dict[str, Any]) -> dict[str, Any]:
        # Docker's global scope needs the cluster store it removed: hosts share
        # networks through pontoon's own.
        return {"Scope": "local", "ConnectivityScope": "local"}

    async def nothing(self, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    # -- IPAM ------------------------------------------------------------------------

    async def ipam_capabilities(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def address_spaces(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "LocalDefaultAddressSpace": protocol.LOCAL_ADDRESS_SPACE,
            "GlobalDefaultAddressSpace": protocol.GLOBAL_ADDRESS_SPACE,
        }

    async def request_pool(self, data: dict[str, Any]) -> dict[str, Any]:
        req = protocol.pool_request(data)
        existing = req.options.get(protocol.NETWORK_OPTION, "")
        pool = req.pool
        if existing:
            net = self.engine.find_network(existing)
            sub = net.subnet_for(req.family)
            if sub is None or (pool and pool != sub.subnet):
                raise InvalidArgument(
                    f"network {net.name} has no subnet {pool or f'IPv{req.family}'}"
                )
            pool = sub.subnet
        elif not pool:
            pool = await self._free_subnet(req.family)
        self.pools[pool] = Pool(pool, req.sub_pool, existing)
        return {"PoolID": protocol.pool_id(pool, req.sub_pool), "Pool": pool, "Data": {}}

    async def _free_subnet(self, family: int) -> str:
        """A subnet of one family no network here uses nor another pool
        promised, from pontoon's pools (the bridge ones: Docker asks before it
        says which driver the network is for)."""
        spec = NetworkSpec(name="docker-pool-probe", ipv4=family == 4, ipv6=family == 6)
        plans = await self.engine.check_network(spec, also_taken=sorted(self.pools))
        return str(plans[0].subnet)

    async def release_pool(self, data: dict[str, Any]) -> dict[str, Any]:
        pool, _ = protocol.parse_pool_id(str(data.get("PoolID", "")))
        self.pools.pop(pool, None)
        return {}

    async def request_address(self, data: dict[str, Any]) -> dict[str, Any]:
        pool, _ = protocol.parse_pool_id(str(data.get("PoolID", "")))
        asked = str(data.get("Address") or "")
        if protocol.is_gateway_request(data):
            return {"Address": self._gateway(pool, asked), "Data": {}}
        pending = self.pools.get(pool)
        if pending is not None and not (pending.docker_network or pending.existing) and asked:
            # --aux-address, asked before the network exists: CreateNetwork
            # lists them again, and they are reserved once the network is made.
            return {"Address": protocol.aux_address(pool, asked), "Data": {}}
        net = await self._network_for_pool(pool)
        family = addresses.family_of(pool)
        address = await self.engine.reserve_address(net.id, self.holder, family, asked)
        self.unclaimed[(net.id, addresses.address_of(address))] = time.monotonic()
        return {"Address": address, "Data": {}}

    def _gateway(self, pool: str, asked: str) -> str:
        net = self._pontoon_network_with(pool)
        if net is not None:
            # The subnet named: the network's IPv6 one has no IPv4 twin to assert.
            sub = next(s for s in net.subnets if s.subnet == pool)
            return protocol.with_prefix(sub.gateway, pool)
        return protocol.with_prefix(protocol.gateway_for(pool, asked), pool)

    async def release_address(self, data: dict[str, Any]) -> dict[str, Any]:
        pool, _ = protocol.parse_pool_id(str(data.get("PoolID", "")))
        address = str(data.get("Address") or "")
        net = self._pontoon_network_with(pool)
        if net is not None and address:
            # The gateway is the network's own, never held: nothing happens to it.
            self.unclaimed.pop((net.id, address), None)
            await self.engine.release_reserved(net.id, self.holder, address)
        return {}

    def _pontoon_network_with(self, pool: str) -> Network | None:
        for net in self.engine.state.networks.values():
            if any(s.subnet == pool for s in net.subnets):
                return net
        return None

    async def _network_for_pool(self, pool: str) -> Network:
        net = self._pontoon_network_with(pool)
        if net is not None:
            return net
        pending = self.pools.get(pool)
        if pending is not None and pending.docker_network:
            return await self._network(pending.docker_network)
        raise NotFound(f"no network has the pool {pool}")

    # -- networks ----------------------------------------------------------------------

    async def create_network(self, data: dict[str, Any]) -> dict[str, Any]:
        req = protocol.network_create(data, placeholder_name="docker-" + _short(data))
        pools = [self.pools.get(p) for p in req.pools]
        pool = pools[0]  # IPv4's: Docker asks for it first
        existing = req.existing or (pool.existing if pool else "")
        if existing:
            net = self.engine.find_network(existing)
            await self._remember(DockerNetwork(req.network_id, net.id, net.name))
            return {}
        spec = req.spec
        if pool is not None:
            subnets = []
            for sub, of_pool in zip(spec.subnets, pools, strict=True):
                if of_pool is not None:
                    of_pool.docker_network = req.network_id
                    sub = dataclasses.replace(sub, ip_range=of_pool.sub_pool)
                subnets.append(sub)
            spec = dataclasses.replace(spec, subnets=tuple(subnets))
        await self.engine.check_network(spec)
        if pool is None and self.engine.drivers.get(spec.driver).capabilities.scope == "global":
            raise InvalidArgument(
                f"{spec.driver} networks hand out addresses cluster-wide: create the network "
                "with --ipam-driver pontoon"
            )
        await asyncio.to_thread(firewall.ensure_docker_user)  # dockerd may have started since
        docker_ipam = pool is None
        aux = [] if docker_ipam else list(req.aux)  # Docker's own IPAM keeps its own
        task = asyncio.create_task(self._create_named(req.network_id, spec, docker_ipam, aux))
        self.creating[req.network_id] = task
        task.add_done_callback(lambda _: self.creating.pop(req.network_id, None))
        return {}

    async def _create_named(
        self, docker_id: str, spec: NetworkSpec, docker_ipam: bool, aux: list[str]
    ) -> DockerNetwork:
        name = await self._network_name(docker_id)
        net = await self.engine.create_network(dataclasses.replace(spec, name=name))
        try:
            for address in aux:
                # Held by this host's holder, as addresses Docker reserved:
                # Docker's ReleaseAddress at `network rm` frees them.
                family = addresses.family_of(address)
                await self.engine.reserve_address(net.id, self.holder, family, address)
        except BaseException:
            await self.engine.remove_network(net.id)
            raise
        found = DockerNetwork(docker_id, net.id, net.name, docker_ipam)
        await self._remember(found)
        return found

    async def _network_name(self, docker_id: str) -> str:
        if self.dockerd is None:
            return f"docker-{docker_id[:12]}"
        try:
            return await self.dockerd.network_name(docker_id, NAME_WAIT)
        except DockerdError as exc:
            log.warning("network %s: its name is unknown (%s): using its ID", docker_id[:12], exc)
            return f"docker-{docker_id[:12]}"

    async def _remember(self, net: DockerNetwork) -> None:
        self.networks[net.docker_id] = net
        await self.engine.store.put(NETWORKS + net.docker_id, json.dumps(dataclasses.asdict(net)))

    async def _network(self, docker_id: str) -> Network:
        """The pontoon network of a Docker network (waiting for it to be made)."""
        task = self.creating.get(docker_id)
        if task is not None:
            try:
                await asyncio.shield(task)
            except PontoonError as exc:
                raise Unavailable(f"the network could not be made: {exc.message}") from None
        known = self.networks.get(docker_id)
        if known is None:
            raise NotFound(f"network {docker_id[:12]} is not a pontoon network")
        try:
            return self.engine.find_network(known.network_id)
        except NotFound:
            raise NotFound(f"network {known.name} is gone from pontoon") from None

    async def delete_network(self, data: dict[str, Any]) -> dict[str, Any]:
        docker_id = str(data.get("NetworkID", ""))
        task = self.creating.get(docker_id)
        if task is not None:
            await asyncio.wait([task], timeout=NAME_WAIT)
        known = self.networks.get(docker_id)
        if known is not None:
            net = self.engine.state.networks.get(known.network_id)
            # pontoon_gwbridge is pontoon's, for every front end, made on
            # need: dockerd's network is only its view (made again by
            # _docker_gateway), so it stays.
            if net is not None and not net.gateway_bridge:
                with contextlib.suppress(NotFound):  # removed already (pontoon, another host)
                    await self.engine.remove_network(known.network_id)
            await self._forget(docker_id)
        return {}

    async def _forget(self, docker_id: str) -> None:
        self.networks.pop(docker_id, None)
        await self.engine.store.delete(NETWORKS + docker_id)

    # -- endpoints -------------------------------------------------------------------

    async def create_endpoint(self, data: dict[str, Any]) -> dict[str, Any]:
        req = protocol.endpoint_create(data)
        net = await self._network(req.network_id)
        for address in (req.address, req.address6):
            self.unclaimed.pop((net.id, addresses.address_of(address)), None)
        mac = req.mac or addresses.mac_for(addresses.address_of(req.address))
        ep = Endpoint(req.network_id, req.endpoint_id, req.address, mac, address6=req.address6)
        await self._save_endpoint(ep)
        # Docker refuses a MAC back when it gave one.
        return {} if req.mac else {"Interface": {"MacAddress": mac}}

    async def _save_endpoint(self, ep: Endpoint) -> None:
        self.endpoints[ep.endpoint_id] = ep
        await self.engine.store.put(ENDPOINTS + ep.endpoint_id, json.dumps(dataclasses.asdict(ep)))

    async def endpoint_info(self, data: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints.get(str(data.get("EndpointID", "")))
        return {"Value": {"pontoon.address": ep.address} if ep else {}}

    async def join(self, data: dict[str, Any]) -> dict[str, Any]:
        endpoint_id = str(data.get("EndpointID", ""))
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            raise NotFound(f"no endpoint {endpoint_id[:12]}")
        sandbox = str(data.get("SandboxKey", ""))
        if not sandbox:
            raise InvalidArgument("SandboxKey is required")
        net = await self._network(ep.docker_network)
        ifname = protocol.interface_name(endpoint_id)
        req = AttachRequest(
            network=net.id,
            netns=sandbox,
            ifname=ifname,
            # The container (its sandbox), not the endpoint: its attachments on
            # several networks are one owner, with one DNS view, as pontoon's own.
            # Its name is learned once it runs (_after_start): asking dockerd
            # here would keep the container waiting.
            owner=Owner(OWNER_DOCKER, Path(sandbox).name),
            ips=ep.ips,
            families=ep.families,  # no gateway, nor address, Docker would not configure
            mac=ep.mac,
            gateway=False,
            dns=False,  # Docker's own resolver serves the container
            handover=True,
            reserved_by="" if self._docker_ipam(ep.docker_network) else self.holder,
        )
        result = await self.engine.attach(req)
        att = result.attachments[0]
        ep.attachment = att.id
        await self._save_endpoint(ep)
        caps = self.engine.drivers.of(net).capabilities
        own_gateway = self._own_gateway(net)
        self._background(self._after_start(ep, att.id, own_gateway))
        # A gateway wherever the network has a way out, on every endpoint:
        # Docker picks which one a container's default route takes.
        way_out = caps.default_route and not net.internal
        gateways = {addresses.family_of(g): g for g in att.gateways} if way_out else {}
        return protocol.join_reply(ifname, gateways.get(4, ""), own_gateway, gateways.get(6, ""))

    def _own_gateway(self, net: Network) -> bool:
        """An overlay has no way out: pontoon's gateway bridge is, as in the
        seed (docker_gwbridge there), plugged as a Docker network of its own
        once the container runs, so its ports go through pontoon too."""
        caps = self.engine.drivers.of(net).capabilities
        return caps.needs_gateway_bridge and not net.internal

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_start(self, ep: Endpoint, att_id: str, own_gateway: bool) -> None:
        """Once dockerd has joined the container: plug pontoon's gateway bridge
        into it if its network has no way out; read its name and aliases
        (--network-alias reaches the driver nowhere), so that pontoon's DNS
        and other hosts resolve them, and the name Docker gave the interface
        (eth0, ...)."""
        if self.dockerd is None:
            return
        deadline = time.monotonic() + ALIAS_WAIT
        # dockerd is still joining the container, then starting it: the first
        # look waits, not to take the CPU nor dockerd from that start. The
        # container's own JSON then waits for the start (dockerd's lock).
        delay = FIRST_LOOK
        await asyncio.sleep(delay)
        while time.monotonic() < deadline:
            try:
                found = await self.dockerd.endpoints(ep.docker_network)
                container = (found or {}).get(ep.endpoint_id, "")
                if found is None or not container:
                    return  # gone already
                if not container.startswith("ep-"):
                    if own_gateway:
                        await self._connect_gateway(container)
                    name, aliases = await self.dockerd.names(container, ep.endpoint_id)
                    ifname = await self._moved_ifname(att_id, ep.mac)
                    await self.engine.learned(att_id, aliases, ifname, name)
                    return
            except (DockerdError, PontoonError) as exc:
                log.debug("endpoint %s: aliases: %s", ep.endpoint_id[:12], exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _creations_loop(self) -> None:
        """An overlay container gets pontoon_gwbridge (its way out) before it
        first starts, when pontoon is quicker than `docker start`: connecting a
        created container only adds the network to its configuration, and
        dockerd then joins both networks before the container's process runs,
        default route included. When the start wins, dockerd's container lock
        holds the connect until the container runs (as _after_start's)."""
        assert self.dockerd is not None
        while True:
            try:
                async for container in self.dockerd.container_creations():
                    # Most containers need no look (one of dockerd's JSONs
                    # just as `docker run` starts them): only with overlays.
                    if any(self._lacks_way_out(k) for k in self.networks.values()):
                        self._background(self._gateway_before_start(container))
            except DockerdError as exc:
                log.debug("docker events: %s", exc)  # dockerd is down or restarting
            await asyncio.sleep(SYNC_SECONDS)

    async def _gateway_before_start(self, container: str) -> None:
        assert self.dockerd is not None
        try:
            info = await self.dockerd.container(container)
            if info is None or (info.get("State") or {}).get("Status") != "created":
                return  # gone, or started already: _after_start connects it
            on = (info.get("NetworkSettings") or {}).get("Networks") or {}
            if any(self._lacks_way_out(k) for k in self._known(on)):
                await self._connect_gateway(container)
        except (DockerdError, PontoonError) as exc:
            log.debug("container %s: gateway before start: %s", container[:12], exc)

    def _known(self, refs: Iterable[str]) -> list[DockerNetwork]:
        """The pontoon networks among Docker network references (names or IDs)."""
        wanted = [str(r) for r in refs]
        return [known for known in self.networks.values() if any(map(known.is_ref, wanted))]

    def _lacks_way_out(self, known: DockerNetwork) -> bool:
        net = self.engine.state.networks.get(known.network_id)
        return net is not None and self._own_gateway(net)

    async def _connect_gateway(self, container: str) -> None:
        assert self.dockerd is not None
        async with self._gateway_lock:
            gw = await self._gateway_network()
            docker_id = await self._docker_gateway(gw)
        try:
            await self.dockerd.connect(docker_id, container)
        except DockerdError:
            self._gateway_shown = None  # look again: dockerd may have lost it
            raise

    async def _gateway_network(self) -> Network:
        """pontoon_gwbridge with both families, whatever the overlay has.
        Docker fixes a network's subnets when it is made, and the Docker
        network for pontoon_gwbridge outlives pontoond's and dockerd's
        restarts with containers on it: made IPv4-only, it would keep a
        later dual-stack overlay container (or pontoon's own and CNI's, which
        grow the bridge on demand) from ever getting IPv6 out through Docker.
        So it is made dual-stack from the start, as a docker_gwbridge made
        with IPv6 is: every Docker overlay container gets an IPv6 address and
        default route there, masqueraded. IPv4 alone where IPv6 cannot be had
        (a used-up IPv6 pool, a kernel without IPv6)."""
        try:
            return await self.engine.gateway_network((4, 6))
        except (PontoonError, OSError, NetlinkError) as exc:
            if "gateway-ipv6" not in self._told:
                why = exc.message if isinstance(exc, PontoonError) else os_error_text(exc)
                log.warning("pontoon_gwbridge: no IPv6 for Docker containers: %s", why)
                self._told.add("gateway-ipv6")
            return await self.engine.gateway_network((4,))

    async def _docker_gateway(self, gw: Network) -> str:
        """The Docker network for pontoon_gwbridge, made (again) when it lacks
        one of the bridge's subnets (a release before this one made it
        IPv4-only) and no container names it: a stopped one would fail to
        start once its network's ID is gone. In use, it is connected as it is."""
        assert self.dockerd is not None
        docker_id = next((k for k, m in self.networks.items() if m.network_id == gw.id), "")
        subnets = frozenset(s.subnet for s in gw.subnets)
        if docker_id and self._gateway_shown == (docker_id, subnets):
            return docker_id
        if docker_id:
            info = await self.dockerd.network(docker_id)
            if info is not None and protocol.shows_subnets_of(info, gw):
                self._gateway_shown = (docker_id, subnets)
                return docker_id
            if info is not None:
                users = await self.dockerd.containers_on(docker_id, str(info.get("Name", "")))
                if users:
                    if docker_id not in self._told:
                        log.warning("Docker network %s lacks subnets of pontoon's (%s) and "
                                    "containers use it: no IPv6 out for Docker containers until "
                                    "none does", gw.name, _subnets(gw))  # fmt: skip
                        self._told.add(docker_id)
                    return docker_id
                log.info("Docker network %s: making it again with %s", gw.name, _subnets(gw))
                await self.dockerd.remove_network(docker_id)
            await self._forget(docker_id)  # dockerd's DeleteNetwork did, unless dockerd lost it
        return await self.dockerd.create_network(protocol.docker_network_body(gw))

    async def _moved_ifname(self, att_id: str, mac: str) -> str:
        att = self.engine.state.attachments.get(att_id)
        if att is None:
            return ""
        try:
            return await asyncio.to_thread(_link_with_mac, att.netns, mac)
        except (OSError, NetlinkError):
            return ""  # the container is gone already

    def _docker_ipam(self, docker_id: str) -> bool:
        known = self.networks.get(docker_id)
        return known is not None and known.docker_ipam

    async def program_external(self, data: dict[str, Any]) -> dict[str, Any]:
        ports = protocol.port_requests(data.get("Options") or {})
        att = self.attachment_of(str(data.get("EndpointID", "")))
        if att is None:
            raise NotFound("the endpoint has not joined a container")
        if ports:
            await self.engine.publish_ports(att.id, ports)
        return {}

    async def revoke_external(self, data: dict[str, Any]) -> dict[str, Any]:
        att = self.attachment_of(str(data.get("EndpointID", "")))
        if att is not None:
            await self.engine.unpublish_ports(att.id)
        return {}

    def attachment_of(self, endpoint_id: str) -> Attachment | None:
        """An endpoint's attachment: the one its Join made, else (pontoond died
        before it noted which) the container's one with its address."""
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            return None
        att = self.engine.state.attachments.get(ep.attachment)
        if att is not None:
            return att
        known = self.networks.get(ep.docker_network)
        address = ep.ips[0]
        for att in self.engine.state.attachments.values():
            on_network = known is not None and att.network_id == known.network_id
            if att.owner.kind == OWNER_DOCKER and on_network and address in att.ips:
                return att
        return None

    async def delete_endpoint(self, data: dict[str, Any]) -> dict[str, Any]:
        endpoint_id = str(data.get("EndpointID", ""))
        att = self.attachment_of(endpoint_id)
        if att is not None:
            with contextlib.suppress(NotFound):  # detached meanwhile
                await self.engine.detach(att.id)
        self.endpoints.pop(endpoint_id, None)
        await self.engine.store.delete(ENDPOINTS + endpoint_id)
        return {}

    # -- global networks in this host's dockerd ----------------------------------------

    async def _sync_loop(self) -> None:
        rounds = 0
        while True:
            rounds += 1
            try:
                await self.sync_global()
                if rounds % COLLECT_EVERY == 0:
                    await self.collect_stale()
            except DockerdError as exc:
                log.debug("docker sync: %s", exc)  # dockerd is down or starting
            except Exception:
                log.exception("docker sync failed")
            await asyncio.sleep(SYNC_SECONDS)

    async def sync_global(self) -> None:
        """Every global network of the cluster appears in this host's dockerd,
        as the seed's overlays did (pontoon creates it there), and one gone
        from the cluster goes from dockerd."""
        if self.dockerd is None:
            return
        listed = await self.dockerd.networks(protocol.PLUGIN_NAME)
        in_dockerd = {n["Id"] for n in listed}
        names = {n["Name"] for n in listed}
        mapped = {m.network_id for m in self.networks.values() if m.docker_id in in_dockerd}
        for net in list(self.engine.state.networks.values()):
            if net.id in mapped or not self._is_global(net) or net.status != "ready":
                continue
            if net.name in names:
                if net.id not in self._told:
                    log.warning("dockerd already has a network named %s: %s is not shown "
                                "there", net.name, net.id[:12])  # fmt: skip
                    self._told.add(net.id)
                continue
            log.info("network %s: creating it in dockerd", net.name)
            await self.dockerd.create_network(protocol.docker_network_body(net))
        for known in list(self.networks.values()):
            gone = known.network_id not in self.engine.state.networks
            if gone and known.docker_id in in_dockerd:
                log.info("network %s left the cluster: removing it from dockerd", known.name)
                await self.dockerd.remove_network(known.docker_id)

    async def collect_stale(self) -> None:
        """Endpoints dockerd no longer has (it removed them while pontoond was
        down, or gave up calling us): their attachments and addresses go."""
        await self._release_unclaimed()
        if self.dockerd is None:
            return
        live: dict[str, set[str]] = {}
        for docker_id in {ep.docker_network for ep in self.endpoints.values()}:
            found = await self.dockerd.endpoints(docker_id)
            live[docker_id] = set(found or {})
        now = time.time()
        for ep in list(self.endpoints.values()):
            if ep.endpoint_id in live[ep.docker_network] or now - ep.created < STALE_AFTER:
                continue
            log.info("endpoint %s: gone from dockerd, detaching", ep.endpoint_id[:12])
            await self.delete_endpoint({"EndpointID": ep.endpoint_id})
            net = self.networks.get(ep.docker_network)
            if net is not None and not self._docker_ipam(ep.docker_network):
                for address in ep.ips:
                    await self.engine.release_reserved(net.network_id, self.holder, address)

    async def _release_unclaimed(self) -> None:
        """Addresses Docker reserved for an endpoint it then never created."""
        now = time.monotonic()
        for key, since in list(self.unclaimed.items()):
            if now - since < UNCLAIMED_AFTER:
                continue
            self.unclaimed.pop(key, None)
            network_id, address = key
            log.info("address %s: reserved by Docker for no endpoint, releasing", address)
            await self.engine.release_reserved(network_id, self.holder, address)

    def _is_global(self, net: Network) -> bool:
        return self.engine.drivers.of(net).capabilities.scope == "global"


async def _body(request: web.Request) -> Any:
    """The request's JSON value, None when it is not JSON. Docker sends no
    body, or `null`, to calls without arguments: those are {}."""
    if not request.can_read_body:
        return {}
    try:
        # JSON is UTF-8: the charset a Content-Type names (a bogus one
        # included) is not consulted.
        data = json.loads(await request.read())
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    except web.HTTPRequestEntityTooLarge:
        return None
    return {} if data is None else data


def _record(kind: Any, value: str) -> Any:
    """A record of ours from the store; keys a newer release added are ignored."""
    data = json.loads(value)
    return kind(**{f.name: data[f.name] for f in dataclasses.fields(kind) if f.name in data})


def _link_with_mac(sandbox: str, mac: str) -> str:
    with netns.iproute(sandbox) as ipr:
        for link in ipr.link("dump"):
            if str(link.get("IFLA_ADDRESS", "")).lower() == mac:
                return str(link.get("IFLA_IFNAME", ""))
    return ""


def _subnets(net: Network) -> str:
    return ", ".join(s.subnet for s in net.subnets)


def _short(data: dict[str, Any]) -> str:
    return str(data.get("NetworkID", ""))[:12]


async def serve(plugin: DockerPlugin, directory: Path) -> web.AppRunner:
    """Listen on <directory>/pontoon.sock, where dockerd discovers plugins."""
    runner = web.AppRunner(plugin.app(), access_log=None)
    await runner.setup()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{protocol.PLUGIN_NAME}.sock"
    path.unlink(missing_ok=True)
    await web.UnixSite(runner, str(path)).start()
    log.info("Docker plugin %s on %s", protocol.PLUGIN_NAME, path)
    return runner
