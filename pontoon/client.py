"""A small HTTP client for the daemon's unix socket (stdlib only: the CLI
starts in tens of milliseconds)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from pontoon.errors import os_error_text

DEFAULT_HOST = "unix:///run/pontoon/pontoon.sock"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def socket_path(host: str | None) -> str:
    url = host or os.environ.get("PONTOON_HOST") or DEFAULT_HOST
    if url.startswith("lab://"):
        from pontoon.lab.cluster import LabError, socket_for

        try:
            return socket_for(url)
        except LabError as exc:
            raise ApiError(0, str(exc)) from None
    if url.startswith("unix://"):
        return url.removeprefix("unix://")
    if url.startswith("/"):
        return url
    raise ApiError(0, f"unsupported host {url!r}: use unix:///PATH")


def ref(value: str) -> str:
    return quote(value, safe="")


class Client:
    def __init__(self, host: str | None = None) -> None:
        self.path = socket_path(host)

    def _open(self, method: str, url: str, payload: Any = None) -> http.client.HTTPResponse:
        conn = UnixHTTPConnection(self.path)
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise ApiError(
                0, f"cannot reach pontoond at {self.path}: is the daemon running?"
            ) from None
        except OSError as exc:
            reason = os_error_text(exc)
            raise ApiError(0, f"cannot talk to pontoond at {self.path}: {reason}") from None
        if resp.status >= 400:
            raw = resp.read()
            try:
                message = json.loads(raw)["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or resp.reason
            raise ApiError(resp.status, message)
        return resp

    def request(
        self, method: str, url: str, payload: Any = None, query: dict[str, str] | None = None
    ) -> Any:
        if query:
            url = f"{url}?{urlencode(query)}"
        resp = self._open(method, url, payload)
        raw = resp.read()
        if not raw:
            return None
        return json.loads(raw)

    def get(self, url: str, **query: str) -> Any:
        return self.request("GET", url, query=query or None)

    def post(self, url: str, payload: Any = None) -> Any:
        return self.request("POST", url, payload if payload is not None else {})

    def delete(self, url: str, **query: str) -> Any:
        return self.request("DELETE", url, query=query or None)

    def stream(self, url: str, **query: str) -> Iterator[tuple[int, bytes]]:
        """Frames of a multiplexed log stream: (1 stdout | 2 stderr, bytes)."""
        if query:
            url = f"{url}?{urlencode(query)}"
        resp = self._open("GET", url)
        while True:
            header = resp.read(8)
            if len(header) < 8:
                return
            stream, length = struct.unpack(">BxxxL", header)
            yield stream, resp.read(length)
