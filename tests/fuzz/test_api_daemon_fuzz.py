"""Fuzzing a real pontoond's API (in a throwaway host namespace, over its unix
socket) with the requests of tests/fuzz/api_requests.py: the daemon answers
each with a success or its JSON error, never a 500, and stays up; a refused
request changes nothing (links, addresses, routes, rules, sandboxes, store,
container directories: tests/integration/helpers.snapshot), and what a
successful one made is removed by the matching DELETE, leaving the host as it
was."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import given, note

from pontoon.lab import SimHost
from tests.fuzz.api_requests import Call, calls, check_answer
from tests.fuzz.budget import fuzz_settings, run_for
from tests.fuzz.daemon import send, undo
from tests.integration.helpers import snapshot

pytestmark = pytest.mark.integration

# Documented: no free subnet or address left (docs/api.md). Never a 500.
DEPENDENCY_UNAVAILABLE = (503,)


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
