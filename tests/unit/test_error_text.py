"""Kernel errors reach users as words, not as raw (errno, text) tuples (issue 16)."""

from __future__ import annotations

import asyncio
import errno

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pyroute2 import NetlinkError

from pontoon.cli import main as cli_main
from pontoon.errors import os_error_text
from pontoon.frontends.api.server import errors


def test_netlink_error_in_words():
    text = os_error_text(NetlinkError(errno.ENETUNREACH, "Network is unreachable"))
    assert text == "network is unreachable (ENETUNREACH)"


def test_os_error_names_the_file():
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", "dot")
    assert os_error_text(exc) == "no such file or directory: dot (ENOENT)"


def test_plain_exception_keeps_its_text():
    assert os_error_text(RuntimeError("boom")) == "boom"


def answer(exc: BaseException) -> tuple[int, dict]:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    async def go() -> tuple[int, dict]:
        app = web.Application(middlewares=[errors])
        app.router.add_post("/trace", handler)
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/trace")
            return resp.status, await resp.json()

    return asyncio.run(go())


def test_middleware_turns_kernel_errors_into_one_line():
    status, body = answer(NetlinkError(errno.ENETUNREACH, "Network is unreachable"))
    assert status == 500
    assert body["message"] == "POST /trace failed: network is unreachable (ENETUNREACH)"
    status, body = answer(PermissionError(errno.EPERM, "Operation not permitted"))
    assert body["message"] == "POST /trace failed: operation not permitted (EPERM)"


def test_cli_reports_an_os_error_in_one_line(monkeypatch, capsys):
    def refuse(self, url, **query):
        raise PermissionError(errno.EACCES, "Permission denied", "/run/x")

    monkeypatch.setattr(cli_main.Client, "get", refuse)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["-H", "unix:///run/x", "ps"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "Error: permission denied: /run/x (EACCES)\n"
