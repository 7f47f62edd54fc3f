"""Fuzzing the HTTP API's request parsing in-process: the real aiohttp app
(pontoon/frontends/api/server.py) served by aiohttp's test server, its engine
and runtime calls replaced by fakes that accept whatever they are handed but
check it is well typed. Every answer is a success from a fake or the API's
JSON error with a 4xx status: never a 500, never a plain-text page.

tests/integration/test_api_fuzz_daemon.py runs the same requests against a
real pontoond and checks that a refused one leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, note
from hypothesis import strategies as st

from pontoon.core.model import Network, NetworkSpec, Owner
from pontoon.daemon.config import DaemonConfig
from pontoon.engine.attachments import AttachRequest
from pontoon.engine.engine import Engine
from pontoon.errors import PontoonError
from pontoon.frontends.api.server import Api
from pontoon.portmap.spec import PortRequest
from pontoon.runtime.containers import Runtime
from pontoon.store.sqlite import SQLiteStore
from tests.fuzz.api_requests import Call, calls, check_answer, usually
from tests.fuzz.budget import fuzz_settings, run_for

FAKE_ID = "f" * 64


def strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class Fakes:
    """The engine's and runtime's mutating calls, as the API makes them."""

    async def create_network(self, spec: NetworkSpec) -> Any:
        assert isinstance(spec.name, str) and isinstance(spec.driver, str)
        assert isinstance(spec.internal, bool)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec.options.items())
        for sub in spec.subnets:
            assert all(isinstance(x, str) for x in (sub.subnet, sub.gateway, sub.ip_range))
        return SimpleNamespace(id=FAKE_ID)

    async def attach(self, req: AttachRequest) -> Any:
        assert isinstance(req.network, str) and req.network
        assert isinstance(req.netns, str) and req.netns
        assert isinstance(req.owner, Owner)
        assert all(isinstance(x, str) for x in (req.owner.kind, req.owner.id, req.owner.name))
        assert all(strings(x) for x in (req.ips, req.aliases, req.names, req.upstreams))
        assert all(isinstance(p, PortRequest) for p in req.ports)
        assert all(isinstance(x, bool) for x in (req.primary, req.gateway, req.dns))
        return SimpleNamespace(to_dict=lambda: {"Id": FAKE_ID})

    async def run(self, **kwargs: Any) -> Any:
        for key in ("command", "networks", "aliases", "env", "dns", "ports"):
            assert strings(kwargs[key]), key
        assert all(isinstance(kwargs[k], str) for k in ("name", "ip", "hostname"))
        assert isinstance(kwargs.get("ip6", ""), str)
        assert isinstance(kwargs["auto_remove"], bool)
        return SimpleNamespace(id=FAKE_ID)

    async def connect(
        self, net: str, ctr: str, ip: str = "", ip6: str = "", aliases: Any = None
    ) -> None:
        assert all(isinstance(x, str) for x in (net, ctr, ip, ip6)) and strings(aliases)

    async def refs(self, *refs: Any, **flags: Any) -> None:
        assert all(isinstance(r, str) for r in refs)

    async def trace(
        self, inv: Any, src: str, dst: str, proto: str, live: float, family: int = 0
    ) -> Any:
        assert all(isinstance(x, str) for x in (src, dst, proto))
        assert isinstance(live, float) and 0 <= live <= 300
        assert family in (0, 4, 6)
        return {}


@pytest.fixture
def client(loop, offline_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    engine = offline_engine
    cfg = engine.config
    runtime = Runtime(cfg, engine.store, engine)
    fakes = Fakes()
    for name, fake in [("create_network", fakes.create_network), ("attach", fakes.attach),
                       ("remove_network", fakes.refs), ("detach", fakes.refs),
                       ("detach_owner", fakes.refs)]:  # fmt: skip
        monkeypatch.setattr(engine, name, fake)
    for name, fake in [("run", fakes.run), ("connect", fakes.connect),
                       ("disconnect", fakes.refs), ("remove", fakes.refs)]:  # fmt: skip
        monkeypatch.setattr(runtime, name, fake)
    monkeypatch.setattr("pontoon.trace.run.trace", fakes.trace)
    # NetnsFd names a descriptor of the caller; the test server is on TCP.
    monkeypatch.setattr("pontoon.frontends.api.server._peer_pid", lambda request: 1)
    client = TestClient(TestServer(Api(cfg, engine, runtime).app()), loop=loop)
    loop.run_until_complete(client.start_server())
    yield client
    loop.run_until_complete(client.close())


async def send(client: TestClient, call: Call) -> tuple[int, str, bytes]:
    resp = await client.request(call.method, call.path, data=call.body, headers=call.headers)
    return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def test_any_request_is_a_success_or_a_json_4xx(loop, client: TestClient) -> None:
    @fuzz_settings(batch=100)
    @given(calls(["/run/netns/fz"]))
    def request(call: Call) -> None:
        note(repr(call))
        check_answer(*loop.run_until_complete(send(client, call)))

    run_for(request)


def test_container_run_validation_refuses_or_accepts_what_can_be_exec(tmp_path: Path) -> None:
    """The runtime's check of a run request (Runtime._validate: nothing is
    created or started there, so any command may be fed): a PontoonError
    with a 4xx status, or a container whose command, environment and
    hostname a process can be started with."""
    cfg = DaemonConfig(root=tmp_path / "root", exec_root=tmp_path / "run")
    store = SQLiteStore(cfg.db_path)
    engine = Engine(cfg, store, SimpleNamespace(ipr=None))  # type: ignore[arg-type]
    runtime = Runtime(cfg, store, engine)
    engine.state.networks["n" * 64] = Network(id="n" * 64, name="bridge", driver="bridge")
    text = st.one_of(st.sampled_from(["", "a\0b", "x y", "-x", "\n"]), st.text(max_size=8))
    program = st.sampled_from(["sh", "/bin/sh", "true", "nope", "/nonexistent", "a\0b", ""])
    command = st.tuples(program, st.lists(text, max_size=3)).map(lambda t: [t[0], *t[1]])
    env = st.lists(
        st.one_of(st.sampled_from(["A=1", "PATH=/nonexistent", "=x", "A", "A=\0"]), text),
        max_size=2,
    )
    name, hostname = usually(st.just(""), text), usually(st.just(""), text)
    networks = usually(st.just([]), st.lists(st.sampled_from(["bridge", "nope"]), max_size=2))
    dns = usually(st.just([]), st.lists(st.sampled_from(["10.0.0.1", "x", ""]), max_size=2))
    ports = usually(st.just([]), st.lists(st.sampled_from(["80", "8080:80", "x"]), max_size=2))

    @fuzz_settings(batch=200)
    @given(name, command, networks, env, hostname, dns, ports)
    def validate(name, command, networks, env, hostname, dns, ports) -> None:  # type: ignore[no-untyped-def]
        note(f"{name=} {command=} {networks=} {env=} {hostname=} {dns=} {ports=}")
        try:
            c = runtime._validate(name, command, networks, "", [], hostname, env, dns, False, ports)
        except PontoonError as exc:
            assert 400 <= exc.status < 500 and "\n" not in exc.message, exc.message
            return
        for item in [*c.command, *c.env, c.hostname]:
            assert "\0" not in item, item
        assert all(e.partition("=")[0] for e in c.env)

    try:
        run_for(validate)
    finally:
        asyncio.run(store.close())
