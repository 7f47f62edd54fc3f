"""The control protocol's framing, shared by the daemon, supervisor and workers.

One request is one JSON object and one reply is one JSON object, over an
AF_UNIX SOCK_SEQPACKET socket, so there is no framing code for ordinary
requests. A batch (`add` of a thousand sockets) does not fit one packet: the
kernel passes at most SCM_MAX_FD (253) descriptors per message, and a packet
must fit the socket's send buffer. So the list a batch carries is split over
several packets, each a complete JSON object holding a slice of the list and
exactly the descriptors of that slice, all but the last marked
`"more": true`. The receiver joins them back into one request and answers
once: a batch costs one round trip however many packets it took.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

ITEMS_PER_PACKET = 200  # fds per packet stay below SCM_MAX_FD (253)
MAX_PACKET = 256 * 1024  # one packet: 200 items of ~100 bytes, with room to spare
MAX_ITEMS = 65536  # items in one logical request (ports are 16 bits)
MAX_FDS = ITEMS_PER_PACKET + 4  # a few extra, so a bad request's fds are received and closed
LIST_KEYS = ("mappings", "ids")  # the keys a batch may split


def packets(
    request: dict[str, Any], fds: Sequence[int] = (), per_packet: int = ITEMS_PER_PACKET
) -> Iterator[tuple[bytes, list[int]]]:
    """The packets of one request. A list under a LIST_KEYS key is split; if
    `fds` are given, there is one per item of that list, in order."""
    key = next((k for k in LIST_KEYS if isinstance(request.get(k), list)), None)
    items: list[Any] = request[key] if key else []
    if key is None or len(items) <= per_packet:
        yield _encode(request), list(fds)
        return
    if fds and len(fds) != len(items):
        raise ValueError(f"{len(fds)} fds for {len(items)} items")
    for start in range(0, len(items), per_packet):
        end = start + per_packet
        part = {**request, key: items[start:end], "more": end < len(items)}
        yield _encode(part), list(fds[start:end])


def send(sock: socket.socket, request: dict[str, Any], fds: Sequence[int] = ()) -> None:
    for data, part_fds in packets(request, fds):
        if part_fds:
            socket.send_fds(sock, [data], part_fds)
        else:
            sock.send(data)


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class RequestError(Exception):
    """A request we refuse; its message goes back to the client."""


class Assembler:
    """Joins the packets of one connection back into requests.

    `feed` takes ownership of the fds: it returns (request, fds) once a
    request is complete, None while more packets are due. A bad packet
    raises RequestError after closing every fd received for that request;
    the packets still due for it are swallowed, so the client gets exactly
    one reply per request."""

    def __init__(self) -> None:
        self._request: dict[str, Any] | None = None
        self._fds: list[int] = []
        self._key = ""
        self._error: str | None = None  # a bad batch, still waiting for its end

    def feed(self, data: bytes, fds: list[int]) -> tuple[dict[str, Any], list[int]] | None:
        try:
            part = json.loads(data)
            if not isinstance(part, dict):
                raise RequestError("a request must be a JSON object")
        except (ValueError, RequestError) as exc:  # JSONDecodeError is a ValueError
            self._fail(fds)
            raise RequestError(_message(exc)) from None
        more = part.pop("more", False) is True
        if self._error is not None:
            self._swallow(fds, more)
            return None
        self._fds += fds
        if self._request is None:
            self._request = part
            self._key = next((k for k in LIST_KEYS if isinstance(part.get(k), list)), "")
        elif not self._key or not isinstance(part.get(self._key), list):
            self._error = "a continuation packet without its list"
            self._swallow([], more)
            return None
        else:
            self._request[self._key] += part[self._key]
        if len(self._fds) > MAX_ITEMS or (self._key and len(self._request[self._key]) > MAX_ITEMS):
            self._error = f"more than {MAX_ITEMS} items in one request"
            self._swallow([], more)
            return None
        if more:
            return None
        request, taken = self._request, self._fds
        self._request, self._fds, self._key = None, [], ""
        return request, taken

    def _swallow(self, fds: list[int], more: bool) -> None:
        close_all(self._fds + fds)
        self._fds, self._request, self._key = [], None, ""
        if more:
            return None
        error, self._error = self._error, None
        raise RequestError(error)

    def _fail(self, fds: list[int]) -> None:
        close_all(self._fds + fds)
        self._fds, self._request, self._key, self._error = [], None, "", None

    def reset(self) -> None:
        self._fail([])


def _message(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "a request must be UTF-8 JSON"
    return str(exc)


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
