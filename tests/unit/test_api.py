"""The HTTP API's request validation, error format and log framing, served by
aiohttp's test server over an engine with no kernel (nothing here touches one)."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pontoon.core import model
from pontoon.daemon.config import DaemonConfig
from pontoon.engine.engine import Engine
from pontoon.frontends.api.server import MAX_BODY, Api
from pontoon.runtime.containers import Runtime
from pontoon.store.sqlite import SQLiteStore

CID = "ab" * 32


@dataclasses.dataclass
class Parts:
    config: DaemonConfig
    engine: Engine
    runtime: Runtime


@pytest.fixture
def svc(tmp_path: Path) -> Parts:
    cfg = DaemonConfig(root=tmp_path / "root", exec_root=tmp_path / "run")
    store = SQLiteStore(cfg.db_path)
    engine = Engine(cfg, store, SimpleNamespace(ipr=None))  # type: ignore[arg-type]
    yield Parts(cfg, engine, Runtime(cfg, store, engine))
    asyncio.run(store.close())


def add_container(svc: Parts, state: str = model.EXITED, **logs: bytes) -> model.Container:
    c = model.Container(
        id=CID, name="web", hostname="web", command=["sleep", "1"], state=state, exit_code=3
    )
    svc.runtime.containers[c.id] = c
    cdir = svc.config.container_dir(c.id)
    cdir.mkdir(parents=True)
    for stream, data in logs.items():
        (cdir / f"{stream}.log").write_bytes(data)
    return c


def call(svc: Parts, method: str, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
    async def go() -> tuple[int, str, bytes]:
        async with TestClient(TestServer(Api(svc.config, svc.engine, svc.runtime).app())) as client:
            resp = await client.request(method, path, **kwargs)
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    return asyncio.run(go())


def frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        stream, length = struct.unpack(">BxxxL", data[:8])
        out.append((stream, data[8 : 8 + length]))
        data = data[8 + length :]
    return out


def test_ping(svc):
    assert call(svc, "GET", "/_ping")[::2] == (200, b"OK")


def test_version_reports_configuration(svc):
    status, _, body = call(svc, "GET", "/version")
    assert status == 200
    assert b'"FirewallBackend": "nftables"' in body and b'"UserlandProxy": true' in body


def test_unknown_network_is_404_with_json_message(svc):
    status, ctype, body = call(svc, "GET", "/networks/nope")
    assert (status, body) == (404, b'{"message": "no such network: nope"}')
    assert ctype.startswith("application/json")


def test_invalid_json_body_is_400(svc):
    status, _, body = call(svc, "POST", "/networks/create", data=b"{oops")
    assert (status, body) == (400, b'{"message": "request body is not valid JSON"}')


def test_non_object_body_is_400(svc):
    status, _, body = call(svc, "POST", "/networks/create", json=["x"])
    assert (status, body) == (400, b'{"message": "request body must be a JSON object"}')


def test_wrongly_typed_field_is_400(svc):
    status, _, body = call(svc, "POST", "/networks/create", json={"Name": 5})
    assert (status, body) == (400, b'{"message": "Name must be a string"}')


def test_options_must_map_strings_to_strings(svc):
    status, _, _ = call(svc, "POST", "/networks/create", json={"Name": "n", "Options": {"a": 1}})
    assert status == 400


def test_invalid_network_name_is_400(svc):
    status, _, body = call(svc, "POST", "/networks/create", json={"Name": "bad name"})
    assert status == 400 and b"invalid network name" in body


def test_malformed_port_spec_is_400(svc):
    payload = {"Name": "web", "Cmd": ["true"], "Ports": ["80:80:80:80"]}
    status, _, body = call(svc, "POST", "/containers/run", json=payload)
    assert status == 400 and b"invalid port specification" in body


def test_unknown_route_is_a_json_404(svc):
    status, ctype, body = call(svc, "GET", "/nothing/here")
    assert (status, body) == (404, b'{"message": "no such route: GET /nothing/here"}')
    assert ctype.startswith("application/json")


def test_wrong_method_is_a_json_405(svc):
    status, _, body = call(svc, "PUT", "/networks")
    assert (status, body) == (405, b'{"message": "method PUT not allowed on /networks"}')


# -- regressions the fuzzer (tests/fuzz/test_api_fuzz.py) found --------------------------


def test_body_over_the_size_limit_is_a_json_413(svc):
    status, ctype, body = call(svc, "POST", "/networks/create", data=b" " * (MAX_BODY + 1))
    assert status == 413 and ctype.startswith("application/json")
    assert b"Maximum request body size 1048576 exceeded" in body


def test_bogus_charset_is_ignored_not_a_500(svc):
    # LookupError from aiohttp's request.json() decoding with the named charset.
    headers = {"Content-Type": "application/json; charset=bogus-x"}
    status, _, body = call(svc, "POST", "/networks/create", data=b'{"Name": 5}', headers=headers)
    assert (status, body) == (400, b'{"message": "Name must be a string"}')


def test_non_utf8_body_is_invalid_json(svc):
    status, _, body = call(svc, "POST", "/networks/create", data=b'{"Name": "\xff\xfe"}')
    assert (status, body) == (400, b'{"message": "request body is not valid JSON"}')


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"a": ' * 5000 + b"1" + b"}" * 5000])
def test_json_nested_too_deep_is_invalid_json_not_a_500(svc, data):
    # RecursionError from the JSON decoder.
    status, _, body = call(svc, "POST", "/networks/create", data=data)
    assert (status, body) == (400, b'{"message": "request body is not valid JSON"}')


@pytest.mark.parametrize("live", [10**400, 1e308, -1, 301, "5"])
def test_trace_live_out_of_range_is_400_not_a_500(svc, live):
    # float(10**400) raised OverflowError before the range check.
    status, _, body = call(svc, "POST", "/trace", json={"From": "host", "To": "x", "Live": live})
    assert (status, body) == (400, b'{"message": "Live must be a number of seconds, 0-300"}')


def test_unexpected_exception_is_500_with_message(svc, monkeypatch):
    def boom(ref: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(svc.engine, "find_network", boom)
    status, _, body = call(svc, "GET", "/networks/x")
    assert (status, body) == (500, b'{"message": "internal error: boom"}')


def test_container_list_hides_exited_unless_all(svc):
    add_container(svc)
    assert call(svc, "GET", "/containers/json")[2] == b"[]"
    assert b'"State": "exited"' in call(svc, "GET", "/containers/json?all=1")[2]


def test_inspect_exited_container(svc):
    add_container(svc)
    status, _, body = call(svc, "GET", "/containers/web/json")
    assert status == 200
    assert b'"Status": "exited", "Running": false, "Pid": 0, "ExitCode": 3' in body


def test_wait_returns_exit_status(svc):
    add_container(svc)
    assert call(svc, "POST", "/containers/web/wait")[::2] == (200, b'{"StatusCode": 3}')


def test_removing_a_running_container_without_force_is_409(svc):
    add_container(svc, state=model.RUNNING)
    status, _, body = call(svc, "DELETE", "/containers/web")
    assert status == 409 and b"use rm -f" in body


def test_remove_exited_container_then_it_is_gone(svc):
    add_container(svc)
    assert call(svc, "DELETE", "/containers/web")[0] == 204
    assert call(svc, "GET", "/containers/web/json")[0] == 404


def test_logs_are_framed_with_stream_and_length(svc):
    add_container(svc, stdout=b"hello\n", stderr=b"oops\n")
    status, ctype, body = call(svc, "GET", "/containers/web/logs")
    assert (status, ctype) == (200, "application/vnd.pontoon.raw-stream")
    assert body == b"\x01\0\0\0\0\0\0\x06hello\n\x02\0\0\0\0\0\0\x05oops\n"


def test_logs_of_a_container_without_output_is_empty(svc):
    add_container(svc)
    assert call(svc, "GET", "/containers/web/logs")[::2] == (200, b"")


def test_followed_logs_of_exited_container_return_everything(svc):
    add_container(svc, stdout=b"x" * (3 << 20))
    got = frames(call(svc, "GET", "/containers/web/logs?follow=1")[2])
    assert sum(len(chunk) for _, chunk in got) == 3 << 20


def test_logs_without_follow_return_everything(svc):
    add_container(svc, stdout=b"x" * (3 << 20))
    got = frames(call(svc, "GET", "/containers/web/logs")[2])
    assert sum(len(chunk) for _, chunk in got) == 3 << 20


def test_attachment_needs_a_namespace(svc):
    payload = {"Network": "n", "Owner": {"Kind": "cni", "Id": "x"}}
    status, _, body = call(svc, "POST", "/attachments", json=payload)
    assert status == 400 and b"Netns" in body


def test_attachment_owner_must_be_an_object(svc):
    status, _, body = call(svc, "POST", "/attachments", json={"Owner": "cni"})
    assert status == 400 and b"Owner must be an object" in body


def test_attachment_bad_mac_is_400(svc):
    payload = {"Network": "n", "Netns": "/x", "MAC": "zz", "Owner": {"Kind": "cni", "Id": "x"}}
    status, _, body = call(svc, "POST", "/attachments", json=payload)
    assert (status, body) == (400, b'{"message": "invalid MAC address \'zz\'"}')


def test_detaching_an_unknown_attachment_is_no_error(svc):
    assert call(svc, "DELETE", "/attachments/" + "cd" * 32)[0] == 204


def test_detaching_by_owner_needs_kind_and_id(svc):
    assert call(svc, "DELETE", "/attachments?owner_kind=cni")[0] == 400
    assert call(svc, "DELETE", "/attachments?owner_kind=cni&owner_id=gone")[0] == 204


def test_attachment_list_is_empty_without_attachments(svc):
    assert call(svc, "GET", "/attachments?owner_kind=docker")[::2] == (200, b"[]")


def test_unknown_reference_with_a_newline_is_still_a_one_line_message(svc):
    # Found by schemathesis (tests/fuzz/test_openapi.py): the reference was
    # echoed as it came, a newline included.
    status, _, body = call(svc, "GET", "/networks/a%0Ab")
    assert (status, body) == (404, b'{"message": "no such network: \'a\\\\nb\'"}')


def test_command_argument_with_a_nul_is_400_not_a_500_at_start(svc):
    # Found by tests/fuzz/test_api_fuzz.py: validation took it, exec refused it.
    status, _, body = call(svc, "POST", "/containers/run", json={"Cmd": ["sh", "-c\u0000x"]})
    assert status == 400 and b"NUL" in body
    assert svc.runtime.containers == {}
