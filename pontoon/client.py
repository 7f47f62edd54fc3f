"""A small HTTP client for the daemon's unix socket (stdlib only: the CLI
starts in tens of milliseconds)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from pontoon.errors import os_error_text

if TYPE_CHECKING:
    from pontoon.tls import TlsFiles

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


class TlsHTTPConnection(http.client.HTTPSConnection):
    """HTTPS whose connect and handshake are bounded, and whose reads are not
    (as the unix socket's): `logs -f` may wait for output for hours."""

    CONNECT_TIMEOUT = 10.0

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context=context, timeout=self.CONNECT_TIMEOUT)

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(None)


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
    raise ApiError(0, f"unsupported host {url!r}: use unix:///PATH or tcp://ADDR:PORT")


def ref(value: str) -> str:
    return quote(value, safe="")


class Client:
    """`host`: unix:///PATH, lab://HOST, or tcp://ADDR:PORT with `tls` (mutual
    TLS only: the client never speaks plaintext HTTP over TCP)."""

    def __init__(self, host: str | None = None, tls: TlsFiles | None = None) -> None:
        url = host or os.environ.get("PONTOON_HOST") or DEFAULT_HOST
        self.tcp: tuple[str, int] | None = None
        self.context: ssl.SSLContext | None = None
        if url.startswith("tcp://"):
            if tls is None:
                raise ApiError(0, f"{url} needs --tlsverify: pontoond's remote API is mutual "
                               "TLS only (--tlscacert, --tlscert, --tlskey)")  # fmt: skip
            # Only here: the CNI plugin, a unix-socket client exec'd per
            # container, does not pay for importing the TLS settings.
            from pontoon.tls import client_context, parse_tcp_host

            try:
                self.tcp = parse_tcp_host(url)
                self.context = client_context(tls)
            except ValueError as exc:
                raise ApiError(0, str(exc)) from None
            self.path = url
        else:
            self.path = socket_path(url)

    def _connection(self) -> http.client.HTTPConnection:
        if self.tcp is None:
            return UnixHTTPConnection(self.path)
        host, port = self.tcp
        assert self.context is not None
        return TlsHTTPConnection(host, port, self.context)

    def _open(self, method: str, url: str, payload: Any = None) -> http.client.HTTPResponse:
        conn = self._connection()
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise ApiError(
                0, f"cannot reach pontoond at {self.path}: is the daemon running?"
            ) from None
        except ssl.SSLError as exc:
            from pontoon.tls import ssl_error_text

            reason = ssl_error_text(exc)
            raise ApiError(0, f"TLS with pontoond at {self.path} failed: {reason}") from None
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            if self.tcp is None:
                reason = os_error_text(exc)
                raise ApiError(0, f"cannot talk to pontoond at {self.path}: {reason}") from None
            # TLS 1.3: the daemon checks our certificate after our side of the
            # handshake is done, and a refusal reaches us as a closed connection.
            raise ApiError(0, f"pontoond at {self.path} refused our TLS certificate (expired, "
                           "or not signed by the daemon's CA?)") from None  # fmt: skip
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
