"""Fuzzing a real pontoond's API (in a throwaway host namespace, over its unix
socket) with the requests of tests/fuzz/api_requests.py: the daemon answers
each with a success or its JSON error, never a 500, and stays up; a refused
request changes nothing (links, addresses, routes, rules, sandboxes, store,
container directories: tests/integration/helpers.snapshot), and what a
successful one made is removed by the matching DELETE, leaving the host as it
was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, note

from pontoon.client import UnixHTTPConnection
from pontoon.lab import SimHost
from tests.fuzz.api_requests import Call, calls, check_answer
from tests.fuzz.budget import fuzz_settings, run_for
from tests.integration.helpers import snapshot

pytestmark = pytest.mark.integration

# Documented: no free subnet or address left (docs/api.md). Never a 500.
DEPENDENCY_UNAVAILABLE = (503,)


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
        query = urlencode({"owner_kind": owner["Kind"], "owner_id": owner["Id"]})
        undo_call = Call("DELETE", f"/attachments?{query}")
    else:
        return
    status, _, body = send(socket, undo_call)
    # An auto-removed container may be gone already.
    assert status in (204, 404), (undo_call, status, body)


def test_daemon_answers_any_request_and_a_refusal_leaves_nothing(make_host, foreign_ns) -> None:
    host: SimHost = make_host()
    ns = foreign_ns(host, "fz")
    baseline = snapshot(host)

    @fuzz_settings(batch=20)
    @given(calls([str(ns)]))
    def request(call: Call) -> None:
        note(repr(call))
        status, ctype, body = send(host.socket, call)
        note(f"answer: {status} {body[:300]!r}")
        assert host.daemon is not None and host.daemon.poll() is None, "pontoond died"
        check_answer(status, ctype, body, also=DEPENDENCY_UNAVAILABLE)
        if status < 400:
            undo(host.socket, call, body)
        assert snapshot(host) == baseline

    run_for(request)


def test_body_over_the_limit_is_a_json_413_and_changes_nothing(make_host) -> None:
    host: SimHost = make_host()
    before = snapshot(host)
    body = json.dumps({"Name": "big", "Options": {"x": "y" * (1 << 20)}}).encode()
    status, ctype, answer = send(host.socket, Call("POST", "/networks/create", body))
    assert status == 413 and ctype.startswith("application/json")
    assert "Maximum request body size" in json.loads(answer)["message"]
    assert snapshot(host) == before
    assert send(host.socket, Call("GET", f"/networks/{quote('big')}"))[0] == 404
