"""The CLI's error contract (SPEC §4): one `Error: …` line on stderr, exit 1."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pontoon.cli.main import main


def run_cli(*argv: str) -> int:
    """Run the CLI in-process; the exit status it would give the shell."""
    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def no_host_from_environment(monkeypatch):
    monkeypatch.delenv("PONTOON_HOST", raising=False)


def test_missing_socket_is_one_error_line_and_exit_1(tmp_path, capsys):
    sock = tmp_path / "missing.sock"
    assert run_cli("-H", f"unix://{sock}", "network", "ls") == 1
    line = one_error_line(capsys)
    assert str(sock) in line and "is the daemon running?" in line


def test_socket_path_that_is_a_directory_is_one_error_line(tmp_path, capsys):
    assert run_cli("-H", f"unix://{tmp_path}", "ps") == 1
    one_error_line(capsys)


def test_pontoon_host_environment_variable_picks_the_socket(tmp_path, capsys, monkeypatch):
    sock = tmp_path / "env.sock"
    monkeypatch.setenv("PONTOON_HOST", f"unix://{sock}")
    assert run_cli("ps") == 1
    assert str(sock) in one_error_line(capsys)


def test_tcp_host_without_tls_is_refused(capsys):
    assert run_cli("-H", "tcp://127.0.0.1:2375", "ps") == 1
    assert "needs --tlsverify" in one_error_line(capsys)


def test_unknown_command_is_one_error_line_and_exit_1(capsys):
    assert run_cli("frobnicate") == 1
    assert "No such command 'frobnicate'" in one_error_line(capsys)


def test_missing_argument_is_one_error_line_and_exit_1(capsys):
    assert run_cli("network", "create") == 1
    assert "Missing argument 'NAME'" in one_error_line(capsys)


def test_bad_option_value_is_one_error_line_before_any_request(capsys):
    # A bare KEY is KEY="" (Docker's `-o encrypted`); an empty key is not.
    assert run_cli("-H", "unix:///nonexistent.sock", "network", "create", "-o", "=x", "n") == 1
    assert "invalid option '=x'" in one_error_line(capsys)


def test_help_exits_0(capsys):
    assert run_cli("--help") == 0
    out, err = capsys.readouterr()
    assert out.startswith("Usage: pontoon") and err == ""


def test_subcommand_help_exits_0(capsys):
    assert run_cli("network", "create", "-h") == 0
    assert "--subnet" in capsys.readouterr().out


def test_unusable_socket_path_is_one_error_line(capsys):
    assert run_cli("-H", "unix:///" + "x" * 200, "ps") == 1
    one_error_line(capsys)


# ------------------------------------------------ errors reported by the daemon


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """A unix-socket HTTP server answering every request with `reply`."""
    reply = {"status": 200, "body": b"[]", "type": "application/json"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(reply["status"])
            self.send_header("Content-Type", reply["type"])
            self.send_header("Content-Length", str(len(reply["body"])))
            self.end_headers()
            self.wfile.write(reply["body"])

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    path = str(tmp_path / "d.sock")
    server = _UnixHTTPServer(path, Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"unix://{path}", reply
    server.shutdown()
    server.server_close()


def test_daemon_error_message_is_printed(fake_daemon, capsys):
    host, reply = fake_daemon
    reply.update(status=409, body=json.dumps({"message": "network x exists"}).encode())
    assert run_cli("-H", host, "network", "rm", "x") == 1
    assert one_error_line(capsys) == "Error: network x exists"


def test_multi_line_daemon_error_keeps_only_the_first_line(fake_daemon, capsys):
    host, reply = fake_daemon
    reply.update(status=500, body=json.dumps({"message": "first\nsecond"}).encode())
    assert run_cli("-H", host, "ps") == 1
    assert one_error_line(capsys) == "Error: first"


def test_non_json_daemon_error_shows_the_body(fake_daemon, capsys):
    host, reply = fake_daemon
    reply.update(status=404, body=b"404: Not Found", type="text/plain")
    assert run_cli("-H", host, "ps") == 1
    assert one_error_line(capsys) == "Error: 404: Not Found"


def test_successful_request_exits_0(fake_daemon, capsys):
    host, _ = fake_daemon
    assert run_cli("-H", host, "ps", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == []
