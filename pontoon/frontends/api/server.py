"""The HTTP/JSON API on the daemon's unix socket: a thin front end over the
engine (networks, attachments) and pontoon's own container runtime.
Reference: docs/api.md."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pyroute2 import NetlinkError

from pontoon import __version__
from pontoon.core import model
from pontoon.core.model import Attachment, NetworkSpec, Owner, Subnet
from pontoon.daemon.config import DaemonConfig
from pontoon.drivers.links import describe_endpoint, sandbox_routes
from pontoon.drivers.registry import DEFAULT_DRIVER
from pontoon.engine.attachments import AttachRequest
from pontoon.engine.engine import Engine
from pontoon.errors import InvalidArgument, NotFound, PontoonError, os_error_text
from pontoon.frontends import fields
from pontoon.frontends.api import views
from pontoon.frontends.fields import string as _str
from pontoon.frontends.fields import string_list as _str_list
from pontoon.portmap import spec as portspec
from pontoon.runtime.containers import Runtime

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STDOUT, STDERR = 1, 2
MAX_BODY = 1 << 20  # bytes; a larger request body is a 413 (JSON, as every error)
LOG_POLL_SECONDS = 0.02


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PontoonError as exc:
        return web.json_response({"message": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (no route, wrong method, a body over
        # MAX_BODY) in the API's error shape too.
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        message = _http_error_text(request, exc)
        return web.json_response({"message": message}, status=exc.status, headers=headers)
    except (OSError, NetlinkError) as exc:
        # The kernel refused something no check caught: say what, in words.
        log.exception("kernel error on %s %s", request.method, request.path)
        message = f"{request.method} {request.path} failed: {os_error_text(exc)}"
        return web.json_response({"message": message}, status=500)
    except Exception as exc:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"message": f"internal error: {exc}"}, status=500)


def _http_error_text(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such route: {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} not allowed on {request.path}"
    return (exc.text or "").removeprefix(f"{exc.status}: ") or exc.reason


async def body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        # JSON is UTF-8 (json.loads also takes UTF-16/32): whatever charset
        # the Content-Type names, a bogus one included, is not consulted.
        data = json.loads(await request.read())
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    return data


def _peer_pid(request: web.Request) -> int:
    """The client's PID, from the kernel (SO_PEERCRED), never from the body."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise InvalidArgument("NetnsFd needs a client on the unix socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


class Api:
    def __init__(self, config: DaemonConfig, engine: Engine, runtime: Runtime) -> None:
        self.config = config
        self.engine = engine
        self.runtime = runtime

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/_ping", self.ping)
        r.add_get("/version", self.version)
        r.add_get("/networks", self.network_list)
        r.add_post("/networks/create", self.network_create)
        r.add_get("/networks/{ref}", self.network_inspect)
        r.add_delete("/networks/{ref}", self.network_remove)
        r.add_post("/networks/{ref}/connect", self.network_connect)
        r.add_post("/networks/{ref}/disconnect", self.network_disconnect)
        r.add_get("/containers/json", self.container_list)
        r.add_post("/containers/run", self.container_run)
        r.add_get("/containers/{ref}/json", self.container_inspect)
        r.add_delete("/containers/{ref}", self.container_remove)
        r.add_get("/containers/{ref}/logs", self.container_logs)
        r.add_post("/containers/{ref}/wait", self.container_wait)
        r.add_get("/attachments", self.attachment_list)
        r.add_post("/attachments", self.attachment_create)
        r.add_get("/attachments/{id}", self.attachment_inspect)
        r.add_delete("/attachments/{id}", self.attachment_remove)
        r.add_delete("/attachments", self.attachment_remove_owner)
        r.add_post("/trace", self.trace)
        r.add_get("/topology", self.topology)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def version(self, request: web.Request) -> web.Response:
        cfg = self.config
        return web.json_response(
            {
                "Version": __version__,
                "FirewallBackend": cfg.firewall_backend,
                "UserlandProxy": cfg.userland_proxy,
                "Root": str(cfg.root),
                "ExecRoot": str(cfg.exec_root),
            }
        )

    # networks -------------------------------------------------------------

    async def network_list(self, request: web.Request) -> web.Response:
        engine = self.engine
        out = [
            views.network_summary(n, len(engine.network_attachments(n)))
            for n in sorted(engine.state.networks.values(), key=lambda n: n.name)
        ]
        return web.json_response(out)

    async def network_create(self, request: web.Request) -> web.Response:
        data = await body(request)
        options = data.get("Options") or {}
        if not isinstance(options, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in options.items()
        ):
            raise InvalidArgument("Options must map strings to strings")
        spec = NetworkSpec(
            _str(data, "Name"),
            driver=_str(data, "Driver") or DEFAULT_DRIVER,
            subnets=_subnets(data),
            internal=bool(data.get("Internal")),
            options=options,
            ipv4=fields.boolean(data, "EnableIPv4", True),
            ipv6=fields.boolean(data, "EnableIPv6", False),
        )
        net = await self.engine.create_network(spec)
        return web.json_response({"Id": net.id}, status=201)

    async def network_inspect(self, request: web.Request) -> web.Response:
        engine = self.engine
        net = engine.find_network(request.match_info["ref"])
        view = views.network_view(net, engine.network_attachments(net))
        driver = engine.drivers.of(net)
        view.update(await engine.kernel.call(driver.describe_network, net))
        return web.json_response(view)

    async def network_remove(self, request: web.Request) -> web.Response:
        await self.engine.remove_network(request.match_info["ref"])
        return web.Response(status=204)

    async def network_connect(self, request: web.Request) -> web.Response:
        data = await body(request)
        await self.runtime.connect(
            request.match_info["ref"],
            _str(data, "Container"),
            ip=_str(data, "IPAddress"),
            ip6=_str(data, "IPv6Address"),
            aliases=_str_list(data, "Aliases"),
        )
        return web.Response(status=204)

    async def network_disconnect(self, request: web.Request) -> web.Response:
        data = await body(request)
        await self.runtime.disconnect(request.match_info["ref"], _str(data, "Container"))
        return web.Response(status=204)

    # containers -----------------------------------------------------------

    async def container_list(self, request: web.Request) -> web.Response:
        rt = self.runtime
        show_all = request.query.get("all") in ("1", "true")
        out = [
            views.container_summary(c, rt.attachments(c), self.engine.state.networks)
            for c in sorted(rt.containers.values(), key=lambda c: c.created)
            if show_all or c.state == model.RUNNING
        ]
        return web.json_response(out)

    async def container_run(self, request: web.Request) -> web.Response:
        data = await body(request)
        c = await self.runtime.run(
            name=_str(data, "Name"),
            command=_str_list(data, "Cmd"),
            networks=_str_list(data, "Networks"),
            ip=_str(data, "IPAddress"),
            ip6=_str(data, "IPv6Address"),
            aliases=_str_list(data, "Aliases"),
            hostname=_str(data, "Hostname"),
            env=_str_list(data, "Env"),
            dns=_str_list(data, "Dns"),
            auto_remove=bool(data.get("AutoRemove")),
            ports=_str_list(data, "Ports"),
        )
        return web.json_response({"Id": c.id}, status=201)

    async def container_inspect(self, request: web.Request) -> web.Response:
        engine = self.engine
        c = self.runtime.find(request.match_info["ref"])
        attachments = self.runtime.attachments(c)
        devices: dict[str, dict[str, Any]] = {}
        routes: list[str] = []
        if c.state == model.RUNNING:
            for att in attachments:
                devices[att.id] = await engine.kernel.call(self._describe, att)
            routes = await engine.kernel.call(sandbox_routes, Path(c.sandbox))
        view = views.container_view(c, attachments, engine.state.networks, devices)
        view["NetworkSettings"]["Routes"] = routes
        return web.json_response(view)

    def _describe(self, att: Attachment) -> dict[str, object]:
        """On the kernel thread: the attachment's devices, wherever its host side is."""
        net = self.engine.state.networks.get(att.network_id)
        if net is None:
            return {}
        driver = self.engine.drivers.of(net)
        info = describe_endpoint(driver.endpoint_netlink(net), Path(att.netns), att)
        if driver.host_namespace(net) != "host":
            info["HostNamespace"] = driver.host_namespace(net)
        return info

    async def container_remove(self, request: web.Request) -> web.Response:
        force = request.query.get("force") in ("1", "true")
        await self.runtime.remove(request.match_info["ref"], force=force)
        return web.Response(status=204)

    async def container_wait(self, request: web.Request) -> web.Response:
        code = await self.runtime.wait(request.match_info["ref"])
        return web.json_response({"StatusCode": code})

    # attachments ----------------------------------------------------------

    async def attachment_list(self, request: web.Request) -> web.Response:
        kind, owner_id = request.query.get("owner_kind", ""), request.query.get("owner_id", "")
        out = [
            views.attachment_view(a, self.engine.state.networks.get(a.network_id))
            for a in self.engine.state.attachments.values()
            if (not kind or a.owner.kind == kind) and (not owner_id or a.owner.id == owner_id)
        ]
        return web.json_response(out)

    async def attachment_create(self, request: web.Request) -> web.Response:
        data = await body(request)
        owner = data.get("Owner") or {}
        if not isinstance(owner, dict):
            raise InvalidArgument("Owner must be an object with Kind, Id and Name")
        netns: str | int = _str(data, "Netns")
        fd = data.get("NetnsFd")
        if fd is not None:
            if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
                raise InvalidArgument("NetnsFd must be a descriptor number")
            netns = f"/proc/{_peer_pid(request)}/fd/{fd}"
        if not netns:
            raise InvalidArgument("give the namespace as Netns (a path) or NetnsFd")
        req = AttachRequest(
            network=_str(data, "Network"),
            netns=netns,
            ifname=_str(data, "Ifname") or "eth0",
            owner=Owner(_str(owner, "Kind"), _str(owner, "Id"), _str(owner, "Name")),
            ips=_str_list(data, "IPs"),
            mac=fields.mac(data, "MAC"),
            aliases=_str_list(data, "Aliases"),
            names=_str_list(data, "Names"),
            ports=portspec.parse_all(_str_list(data, "Ports")),
            primary=fields.boolean(data, "DefaultRoute", True),
            gateway=fields.boolean(data, "GatewayBridge", True),
            dns=fields.boolean(data, "DNS", True),
            upstreams=_str_list(data, "Upstreams"),
        )
        if not req.network:
            raise InvalidArgument("Network is required")
        result = await self.engine.attach(req)
        return web.json_response(result.to_dict(), status=201)

    async def attachment_inspect(self, request: web.Request) -> web.Response:
        att = self.engine.find_attachment(request.match_info["id"])
        net = self.engine.state.networks.get(att.network_id)
        view = views.attachment_view(att, net)
        view["Result"] = self.engine.result_of(att.owner.key).to_dict()
        return web.json_response(view)

    async def attachment_remove(self, request: web.Request) -> web.Response:
        """Idempotent: an attachment already gone is no error."""
        try:
            att = self.engine.find_attachment(request.match_info["id"])
        except NotFound:
            return web.Response(status=204)
        await self.engine.detach(att.id)
        return web.Response(status=204)

    async def attachment_remove_owner(self, request: web.Request) -> web.Response:
        """DELETE /attachments?owner_kind=K&owner_id=ID: all of an owner's, or
        (&network=N, &ifname=I) those on a network and/or with that interface."""
        kind, owner_id = request.query.get("owner_kind", ""), request.query.get("owner_id", "")
        if not kind or not owner_id:
            raise InvalidArgument("give owner_kind and owner_id")
        network, ifname = request.query.get("network", ""), request.query.get("ifname", "")
        await self.engine.detach_owner(Owner(kind, owner_id).key, network, ifname)
        return web.Response(status=204)

    def inventory(self) -> Any:
        from pontoon.trace.inventory import Inventory

        return Inventory(self.config, self.engine, self.runtime)

    async def topology(self, request: web.Request) -> web.Response:
        from pontoon.frontends.api.topology import topology

        return web.json_response(await topology(self.engine, self.runtime, self.config))

    async def trace(self, request: web.Request) -> web.Response:
        from pontoon.trace.run import trace

        data = await body(request)
        live = data.get("Live") or 0
        # Range-checked before float(): float(10**400) raises OverflowError.
        if not isinstance(live, int | float) or not 0 <= live <= 300:
            raise InvalidArgument("Live must be a number of seconds, 0-300")
        family = data.get("Family") or 0
        if family not in (0, 4, 6):
            raise InvalidArgument("Family must be 4 or 6")
        result = await trace(
            self.inventory(), _str(data, "From"), _str(data, "To"), _str(data, "Proto"),
            float(live), family,
        )  # fmt: skip
        return web.json_response(result)

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        """Docker's multiplexed log stream: 8-byte header (stream, 0, 0, 0,
        big-endian length) before each chunk."""
        rt = self.runtime
        c = rt.find(request.match_info["ref"])
        follow = request.query.get("follow") in ("1", "true")
        cdir = self.config.container_dir(c.id)
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.pontoon.raw-stream"})
        await resp.prepare(request)
        sources = [(STDOUT, cdir / "stdout.log"), (STDERR, cdir / "stderr.log")]
        offsets = {stream: 0 for stream, _ in sources}
        while True:
            finished = c.state != model.RUNNING or c.id not in rt.containers
            sent = False
            for stream, path in sources:
                chunk = _read_from(path, offsets[stream])
                if chunk:
                    offsets[stream] += len(chunk)
                    await resp.write(struct.pack(">BxxxL", stream, len(chunk)) + chunk)
                    sent = True
            if sent:
                continue  # drain what is there before deciding anything
            if not follow or finished:
                break
            await asyncio.sleep(LOG_POLL_SECONDS)
        await resp.write_eof()
        return resp


def _subnets(data: dict[str, Any]) -> tuple[Subnet, ...]:
    """`Subnet`/`Gateway`/`IPRange` (one family, as release 1 took them) or
    `Subnets`: [{Subnet, Gateway, IPRange}, ...]."""
    items = data.get("Subnets")
    if items is None:
        items = [data] if any(data.get(k) for k in ("Subnet", "Gateway", "IPRange")) else []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidArgument("Subnets must be a list of objects")
    return tuple(Subnet(_str(i, "Subnet"), _str(i, "Gateway"), _str(i, "IPRange")) for i in items)


def _read_from(path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""
