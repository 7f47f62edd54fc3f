"""Talking to a test's pontoond over its unix socket: raw requests (any body,
any header) and undoing what a successful one made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pontoon.client import UnixHTTPConnection
from tests.fuzz.api_requests import Call


def send(socket: Path, call: Call, timeout: float = 30) -> tuple[int, str, bytes]:
    conn = UnixHTTPConnection(str(socket), timeout=timeout)
    try:
        conn.request(call.method, call.path, body=call.body, headers=call.headers)
        resp = conn.getresponse()
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    finally:
        conn.close()


def undo(socket: Path, call: Call, answer: bytes) -> None:
    """DELETE what a successful request made."""
    if call.method != "POST" or not answer:
        return
    made: dict[str, Any] = json.loads(answer)
    if call.path == "/networks/create":
        undo_call = Call("DELETE", f"/networks/{made['Id']}")
    elif call.path == "/containers/run":
        undo_call = Call("DELETE", f"/containers/{made['Id']}?force=1")
    elif call.path == "/attachments":
        owner = json.loads(call.body or b"{}")["Owner"]
        query = urlencode(
            {"owner_kind": owner.get("Kind") or "", "owner_id": owner.get("Id") or ""}
        )
        undo_call = Call("DELETE", f"/attachments?{query}")
    else:
        return
    status, _, body = send(socket, undo_call)
    # An auto-removed container may be gone already.
    assert status in (204, 404), (undo_call, status, body)
