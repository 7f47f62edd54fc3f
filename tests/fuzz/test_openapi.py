"""docs/openapi.yaml against a running pontoond: schemathesis generates
requests for every operation from the description, sends them to a daemon in a
throwaway host namespace over its unix socket, and checks each answer: no
5xx, a status the description lists, its content type and body schema. The
requests are those the description allows and those it does not.

What could reach the host is pinned, as in tests/fuzz/api_requests.py: a
container runs SAFE_CMD with no environment, an attachment names the test's
own namespace (never a descriptor), a trace starts from the host and never
watches live traffic; whatever a request made is deleted right after it, and
the host is checked unchanged at the end."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import given, note
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from schemathesis import Case, GenerationMode, checks
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from pontoon.lab import SimHost
from tests.fuzz.api_requests import SAFE_CMD, Call
from tests.fuzz.budget import fuzz_settings, run_for
from tests.fuzz.daemon import undo
from tests.integration.helpers import snapshot

pytestmark = pytest.mark.integration

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
BASE_URL = "http://pontoond"
# Not positive_data_acceptance: a schema-valid body can still name a network
# that is not there or an address outside its subnet, which the API refuses
# with a documented 400 that no schema can foresee.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


class _UnixConnection(HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)  # type: ignore[arg-type]
        sock.connect(self.unix_path)
        self.sock = sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self.unix_path, 30)


class UnixAdapter(HTTPAdapter):
    """requests over a unix socket: every URL goes to `path`."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.pool = _UnixPool(str(path), 30)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> _UnixPool:
        return self.pool

    def close(self) -> None:
        self.pool.close()
        super().close()


def pin(case: Case, netns: Path) -> None:
    """Keep the request to what the test allows (module docstring)."""
    body = case.body if isinstance(case.body, dict) else None
    if body is None:
        return
    if (case.method, case.path) == ("POST", "/containers/run"):
        body.update(Cmd=SAFE_CMD, Env=[])
    elif (case.method, case.path) == ("POST", "/attachments"):
        body.pop("NetnsFd", None)
        body["Netns"] = str(netns)
    elif (case.method, case.path) == ("POST", "/trace"):
        body.update(From="host", Live=0)


def undo_case(host: SimHost, case: Case, response: Any) -> None:
    if response.status_code < 300 and case.method == "POST":
        body = case.body if isinstance(case.body, dict) else {}
        call = Call("POST", case.formatted_path, json.dumps(body).encode())
        undo(host.socket, call, response.content)


def test_the_daemon_answers_as_docs_openapi_yaml_says(make_host, foreign_ns) -> None:
    host: SimHost = make_host()
    netns = foreign_ns(host, "oa")
    baseline = snapshot(host)
    schema = schemathesis.openapi.from_path(SCHEMA_PATH)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Negative cases (wrong types, missing required fields, bodies that are
    # not objects) too: the API refuses them with its JSON error, or, being
    # lenient where docs/api.md says so (unknown fields, truthy booleans),
    # takes them; either way no 5xx and an answer as described.
    cases = st.one_of([op.as_strategy(mode) for op in operations for mode in GenerationMode])
    session = requests.Session()
    session.mount(BASE_URL, UnixAdapter(host.socket))

    @fuzz_settings(batch=30)
    @given(cases)
    def conforms(case: Case) -> None:
        pin(case, netns)
        note(f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}")
        response = case.call(base_url=BASE_URL, session=session, timeout=30)
        note(f"answer: {response.status_code} {response.content[:300]!r}")
        try:
            case.validate_response(response, checks=CHECKS)
        finally:
            undo_case(host, case, response)
        assert host.daemon is not None and host.daemon.poll() is None, "pontoond died"

    try:
        run_for(conforms)
    finally:
        session.close()
    assert snapshot(host) == baseline


def test_views_of_live_objects_conform(make_host, foreign_ns) -> None:
    """Generated references rarely name anything: here each view is read of
    a network, a container and an attachment that exist."""
    host: SimHost = make_host()
    netns = foreign_ns(host, "ob")
    baseline = snapshot(host)
    schema = schemathesis.openapi.from_path(SCHEMA_PATH)
    session = requests.Session()
    session.mount(BASE_URL, UnixAdapter(host.socket))

    def check(method: str, path: str, status: int, **parts: Any) -> Any:
        case = schema[path][method].Case(**parts)
        response = case.call(base_url=BASE_URL, session=session, timeout=30)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == status, (method, path, response.text)
        try:
            return json.loads(response.content)
        except ValueError:  # 204, text, the log stream
            return None

    web = {"ref": "web"}
    box = {"ref": "box"}
    check(
        "POST",
        "/networks/create",
        201,
        body={"Name": "web", "Subnet": "10.77.0.0/24", "Options": {"mtu": "1400"}},
    )
    check(
        "POST",
        "/containers/run",
        201,
        body={
            "Name": "box",
            "Cmd": SAFE_CMD,
            "Networks": ["web"],
            "IPAddress": "10.77.0.10",
            "Aliases": ["db"],
            "Ports": ["127.0.0.1:8080:80"],
        },
    )
    owner = {"Kind": "cni", "Id": "oa-pod", "Name": "pod"}
    made = check("POST", "/attachments", 201,
                 body={"Network": "web", "Netns": str(netns), "Owner": owner})  # fmt: skip
    try:
        check(
            "POST",
            "/networks/{ref}/connect",
            204,
            path_parameters={"ref": "bridge"},
            body={"Container": "box"},
        )
        for path, parts in [
            ("/_ping", {}),
            ("/version", {}),
            ("/networks", {}),
            ("/topology", {}),
            ("/networks/{ref}", {"path_parameters": web}),
            ("/networks/{ref}", {"path_parameters": {"ref": "bridge"}}),
            ("/containers/json", {"query": {"all": "1"}}),
            ("/containers/{ref}/json", {"path_parameters": box}),
            ("/containers/{ref}/logs", {"path_parameters": box}),
            ("/attachments", {"query": {"owner_kind": "cni"}}),
            ("/attachments/{id}", {"path_parameters": {"id": made["Id"]}}),
        ]:
            check("GET", path, 200, **parts)
        check("POST", "/trace", 200, body={"From": "box", "To": "10.77.0.1"})
        check(
            "POST",
            "/networks/{ref}/disconnect",
            204,
            path_parameters={"ref": "bridge"},
            body={"Container": "box"},
        )
        check("DELETE", "/containers/{ref}", 409, path_parameters=box)  # running, no force
    finally:
        check("DELETE", "/attachments", 204, query={"owner_kind": "cni", "owner_id": "oa-pod"})
        check("DELETE", "/containers/{ref}", 204, path_parameters=box, query={"force": "1"})
        check("POST", "/containers/{ref}/wait", 404, path_parameters=box)
        check("DELETE", "/networks/{ref}", 204, path_parameters=web)
        session.close()
    assert snapshot(host) == baseline
