"""What the plugin asks dockerd itself, over its API socket (`--docker-host`).

Docker never tells a driver a network's or a container's name; its API does,
once the object is stored (a container's: once it runs, after the join).
Every call is bounded: a plugin call waiting on dockerd must never hang
(Docker's own calls to us have no timeout), so a name that cannot be had in
time is simply not known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

CALL_TIMEOUT = 3.0


class DockerdError(Exception):
    pass


class Dockerd:
    def __init__(self, url: str) -> None:
        if not url.startswith("unix://"):
            raise ValueError(f"unsupported --docker-host {url!r}: use unix:///PATH")
        self.socket = url.removeprefix("unix://")
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket),
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, timeout: float = CALL_TIMEOUT
    ) -> tuple[int, Any]:
        try:
            async with self._client().request(
                method, f"http://docker{path}", json=body, timeout=aiohttp.ClientTimeout(timeout)
            ) as resp:
                data = await resp.json(content_type=None) if resp.content_length != 0 else None
                return resp.status, data
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise DockerdError(f"dockerd at {self.socket}: {exc or type(exc).__name__}") from None

    async def _object(self, kind: str, ref: str) -> dict[str, Any] | None:
        """GET /<kind>/<ref>[/json]: the object, or None when dockerd has none."""
        path = f"/{kind}/{ref}" + ("/json" if kind == "containers" else "")
        status, data = await self.request("GET", path)
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise DockerdError(f"GET /{kind}/{ref[:12]}: {status} {data}")
        return data

    async def network(self, network_id: str) -> dict[str, Any] | None:
        return await self._object("networks", network_id)

    async def network_name(self, network_id: str, wait: float) -> str:
        """The name of a network dockerd is creating: it is stored, and so
        shown by the API, only once our CreateNetwork answered."""
        deadline = asyncio.get_running_loop().time() + wait
        delay = 0.02
        while True:
            found = await self.network(network_id)
            if found is not None:
                return str(found["Name"])
            if asyncio.get_running_loop().time() + delay > deadline:
                raise DockerdError(f"network {network_id[:12]} did not appear in dockerd")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def endpoints(self, network_id: str) -> dict[str, str] | None:
        """Endpoint ID -> the container (or "ep-<id>" before its join is
        stored) of every endpoint dockerd has on a network; None if the
        network is gone."""
        found = await self.network(network_id)
        if found is None:
            return None
        containers = found.get("Containers") or {}
        return {str(ep.get("EndpointID")): key for key, ep in containers.items()}

    async def names(self, container: str, endpoint_id: str) -> tuple[str, list[str]]:
        """A container's name and its aliases on the network of one of its
        endpoints. dockerd holds the container's lock while it starts it, so
        this answers once the container runs."""
        status, data = await self.request("GET", f"/containers/{container}/json", timeout=30.0)
        if status != 200 or not isinstance(data, dict):
            return "", []
        name = str(data.get("Name") or "").lstrip("/")
        for net in ((data.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if net.get("EndpointID") == endpoint_id:
                return name, [str(a) for a in net.get("Aliases") or []]
        return name, []

    async def container(self, container: str) -> dict[str, Any] | None:
        return await self._object("containers", container)

    async def container_creations(self) -> AsyncIterator[str]:
        """The ID of each container dockerd creates from now on (its event
        stream, one JSON object a line; it stays open, so no overall bound)."""
        filters = json.dumps({"type": ["container"], "event": ["create"]})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CALL_TIMEOUT)
        try:
            async with self._client().get(
                "http://docker/events", params={"filters": filters}, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    raise DockerdError(f"GET /events: {resp.status}")
                async for line in resp.content:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and isinstance(event.get("id"), str):
                        yield event["id"]
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DockerdError(f"dockerd at {self.socket}: {exc or type(exc).__name__}") from None

    async def containers_on(self, *refs: str) -> list[str]:
        """Every container, running or not, whose configuration names the
        network (a stopped one included: it joins it at its next start). By
        its ID and its name: a container never started has only the name."""
        filters = urllib.parse.quote(json.dumps({"network": list(refs)}))
        status, data = await self.request("GET", f"/containers/json?all=1&filters={filters}")
        if status != 200 or not isinstance(data, list):
            raise DockerdError(f"GET /containers/json: {status} {data}")
        return [str(c.get("Id", "")) for c in data if isinstance(c, dict)]

    async def networks(self, driver: str) -> list[dict[str, Any]]:
        status, data = await self.request("GET", "/networks")
        if status != 200 or not isinstance(data, list):
            raise DockerdError(f"GET /networks: {status} {data}")
        return [n for n in data if n.get("Driver") == driver]

    async def create_network(self, body: dict[str, Any]) -> str:
        status, data = await self.request("POST", "/networks/create", body)
        if status not in (200, 201):
            message = data.get("message") if isinstance(data, dict) else data
            raise DockerdError(f"creating network {body.get('Name')}: {message}")
        return str((data or {}).get("Id", ""))

    async def connect(self, network_id: str, container: str) -> None:
        """`docker network connect`; already connected is fine. dockerd may
        first finish starting the container (it holds its lock meanwhile)."""
        body = {"Container": container}
        status, data = await self.request("POST", f"/networks/{network_id}/connect", body, 30.0)
        message = str(data.get("message", "") if isinstance(data, dict) else data)
        if status not in (200, 201) and "already exists" not in message:
            raise DockerdError(f"connecting {container[:12]}: {message}")

    async def remove_network(self, network_id: str) -> None:
        status, data = await self.request("DELETE", f"/networks/{network_id}")
        if status not in (200, 204, 404):
            message = data.get("message") if isinstance(data, dict) else data
            raise DockerdError(f"removing network {network_id[:12]}: {message}")
