"""The HTTP/JSON API on the daemon's unix socket. Reference: docs/api.md."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pyroute2 import NetlinkError

from pontoon import __version__, model
from pontoon.daemon import views
from pontoon.daemon.service import Service
from pontoon.drivers.bridge import bridge_ports, describe_endpoint, sandbox_routes
from pontoon.errors import InvalidArgument, PontoonError, os_error_text
from pontoon.model import Endpoint, NetworkSpec

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STDOUT, STDERR = 1, 2
LOG_POLL_SECONDS = 0.02


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PontoonError as exc:
        return web.json_response({"message": exc.message}, status=exc.status)
    except web.HTTPException:
        raise
    except (OSError, NetlinkError) as exc:
        # The kernel refused something no check caught: say what, in words.
        log.exception("kernel error on %s %s", request.method, request.path)
        message = f"{request.method} {request.path} failed: {os_error_text(exc)}"
        return web.json_response({"message": message}, status=500)
    except Exception as exc:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"message": f"internal error: {exc}"}, status=500)


async def body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    return data


def _str_list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{key} must be a list of strings")
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key) or ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    return value


class Api:
    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors])
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
        r.add_post("/trace", self.trace)
        r.add_get("/topology", self.topology)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def version(self, request: web.Request) -> web.Response:
        cfg = self.svc.config
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
        svc = self.svc
        out = [
            views.network_summary(n, len(svc.network_endpoints(n)))
            for n in sorted(svc.networks.values(), key=lambda n: n.name)
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
            driver=_str(data, "Driver") or "bridge",
            subnet=_str(data, "Subnet"),
            gateway=_str(data, "Gateway"),
            ip_range=_str(data, "IPRange"),
            internal=bool(data.get("Internal")),
            options=options,
        )
        net = await self.svc.create_network(spec)
        return web.json_response({"Id": net.id}, status=201)

    async def network_inspect(self, request: web.Request) -> web.Response:
        svc = self.svc
        net = svc.find_network(request.match_info["ref"])
        view = views.network_view(net, svc.network_endpoints(net))
        if net.driver == "bridge":
            view["BridgePorts"] = await svc.kernel.call(bridge_ports, svc.kernel.ipr, net.bridge)
        if net.driver == "overlay":
            view["VNI"] = net.vni
            overlay = svc.kernel.overlay
            view["Overlay"] = await svc.kernel.call(overlay.describe, net) if overlay else {}
        return web.json_response(view)

    async def network_remove(self, request: web.Request) -> web.Response:
        await self.svc.remove_network(request.match_info["ref"])
        return web.Response(status=204)

    async def network_connect(self, request: web.Request) -> web.Response:
        data = await body(request)
        await self.svc.connect(
            request.match_info["ref"],
            _str(data, "Container"),
            ip=_str(data, "IPAddress"),
            aliases=_str_list(data, "Aliases"),
        )
        return web.Response(status=204)

    async def network_disconnect(self, request: web.Request) -> web.Response:
        data = await body(request)
        await self.svc.disconnect(request.match_info["ref"], _str(data, "Container"))
        return web.Response(status=204)

    # containers -----------------------------------------------------------

    async def container_list(self, request: web.Request) -> web.Response:
        svc = self.svc
        show_all = request.query.get("all") in ("1", "true")
        out = [
            views.container_summary(c, svc.container_endpoints(c), svc.networks)
            for c in sorted(svc.containers.values(), key=lambda c: c.created)
            if show_all or c.state == model.RUNNING
        ]
        return web.json_response(out)

    async def container_run(self, request: web.Request) -> web.Response:
        data = await body(request)
        c = await self.svc.run_container(
            name=_str(data, "Name"),
            command=_str_list(data, "Cmd"),
            networks=_str_list(data, "Networks"),
            ip=_str(data, "IPAddress"),
            aliases=_str_list(data, "Aliases"),
            hostname=_str(data, "Hostname"),
            env=_str_list(data, "Env"),
            dns=_str_list(data, "Dns"),
            auto_remove=bool(data.get("AutoRemove")),
            ports=_str_list(data, "Ports"),
        )
        return web.json_response({"Id": c.id}, status=201)

    async def container_inspect(self, request: web.Request) -> web.Response:
        svc = self.svc
        c = svc.find_container(request.match_info["ref"])
        endpoints = svc.container_endpoints(c)
        devices: dict[str, dict[str, Any]] = {}
        routes: list[str] = []
        if c.state == model.RUNNING:
            for ep in endpoints:
                devices[ep.id] = await svc.kernel.call(self._describe, ep, Path(c.sandbox))
            routes = await svc.kernel.call(sandbox_routes, Path(c.sandbox))
        view = views.container_view(c, endpoints, svc.networks, devices)
        view["NetworkSettings"]["Routes"] = routes
        return web.json_response(view)

    def _describe(self, ep: Endpoint, sandbox: Path) -> dict[str, object]:
        """On the kernel thread: the endpoint's devices, wherever its host side is."""
        svc = self.svc
        net = svc.networks.get(ep.network_id)
        if net is not None and net.driver == "overlay" and svc.kernel.overlay is not None:
            info = describe_endpoint(svc.kernel.overlay._nl(net), sandbox, ep)
            info["HostNamespace"] = str(svc.kernel.overlay.namespace(net))
            return info
        return describe_endpoint(svc.kernel.ipr, sandbox, ep)

    async def container_remove(self, request: web.Request) -> web.Response:
        force = request.query.get("force") in ("1", "true")
        await self.svc.remove_container(request.match_info["ref"], force=force)
        return web.Response(status=204)

    async def container_wait(self, request: web.Request) -> web.Response:
        code = await self.svc.wait(request.match_info["ref"])
        return web.json_response({"StatusCode": code})

    async def topology(self, request: web.Request) -> web.Response:
        from pontoon.daemon.topology import topology

        return web.json_response(await topology(self.svc))

    async def trace(self, request: web.Request) -> web.Response:
        from pontoon.trace.run import trace

        data = await body(request)
        live = data.get("Live") or 0
        if not isinstance(live, int | float):
            raise InvalidArgument("Live must be a number of seconds")
        result = await trace(
            self.svc, _str(data, "From"), _str(data, "To"), _str(data, "Proto"), float(live)
        )
        return web.json_response(result)

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        """Docker's multiplexed log stream: 8-byte header (stream, 0, 0, 0,
        big-endian length) before each chunk."""
        svc = self.svc
        c = svc.find_container(request.match_info["ref"])
        follow = request.query.get("follow") in ("1", "true")
        cdir = svc.config.container_dir(c.id)
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.pontoon.raw-stream"})
        await resp.prepare(request)
        sources = [(STDOUT, cdir / "stdout.log"), (STDERR, cdir / "stderr.log")]
        offsets = {stream: 0 for stream, _ in sources}
        while True:
            finished = c.state != model.RUNNING or c.id not in svc.containers
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


def _read_from(path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""
