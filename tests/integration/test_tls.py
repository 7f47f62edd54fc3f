"""The remote API over mutual TLS (issue 15, item 3): pontoond -H tcp://…
--tlsverify, called by the pontoon CLI and by curl, inside a test host's
namespace on its loopback. The good certificate works; a missing, expired or
foreign one, and plaintext HTTP, are refused; the unix socket keeps working."""

from __future__ import annotations

import datetime
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pontoon.lab import SimHost
from pontoon.lab.hosts import bin_path
from pontoon.lab.pki import Authority
from pontoon.tls import TlsFiles

pytestmark = pytest.mark.integration

PORT = 2376
URL = f"tcp://127.0.0.1:{PORT}"


class Certs:
    """A CA with the daemon's and a client's certificate, and the bad ones."""

    def __init__(self, directory: Path) -> None:
        self.ca = Authority.create(directory / "ca")
        self.daemon = self.ca.issue(directory / "daemon", "pontoond", ips=["127.0.0.1"])
        self.client = self.ca.issue(directory / "client", "admin", server=False)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        self.expired = self.ca.issue(
            directory / "expired", "old-admin", server=False,
            not_before=past, not_after=past + datetime.timedelta(days=1),
        )  # fmt: skip
        other = Authority.create(directory / "other-ca", "someone else's CA")
        self.foreign = other.issue(directory / "foreign", "intruder", server=False)
        # The daemon's CA, but a client of the other CA: a foreign *server*.
        self.foreign_view = TlsFiles(other.cert_path, self.client.cert, self.client.key)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


@pytest.fixture
def tls_host(make_host: Callable[..., SimHost], certs: Certs) -> SimHost:
    d = certs.daemon
    return make_host("-H", URL, "--tlsverify", "--tlscacert", str(d.ca),
                     "--tlscert", str(d.cert), "--tlskey", str(d.key))  # fmt: skip


def tls_args(files: TlsFiles) -> list[str]:
    return ["--tlsverify", "--tlscacert", str(files.ca), "--tlscert", str(files.cert),
            "--tlskey", str(files.key)]  # fmt: skip


def pontoon(
    host: SimHost, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in the host's namespace (its loopback is where the daemon listens)."""
    return subprocess.run(
        ["nsenter", f"--net={host.netns}", "--", bin_path("pontoon"), *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def curl(host: SimHost, *args: str) -> subprocess.CompletedProcess[str]:
    return host.sh("curl", "-sS", "--max-time", "10", *args, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def test_good_certificate_works_and_unix_socket_still_serves(tls_host: SimHost, certs: Certs):
    made = pontoon(tls_host, "-H", URL, *tls_args(certs.client),
                   "network", "create", "--subnet", "10.77.0.0/24", "remote")  # fmt: skip
    assert made.returncode == 0, made.stderr
    # Over the unix socket beside it, the same daemon sees that network.
    assert "remote" in tls_host.cli("network", "ls").stdout
    # curl, with the same client certificate, speaks to it too.
    c = certs.client
    out = curl(tls_host, "--cacert", str(c.ca), "--cert", str(c.cert), "--key", str(c.key),
               f"https://127.0.0.1:{PORT}/networks")  # fmt: skip
    assert out.returncode == 0 and '"remote"' in out.stdout, out.stderr
    assert pontoon(tls_host, "-H", URL, *tls_args(c), "network", "rm", "remote").returncode == 0


def test_docker_style_environment(tls_host: SimHost, certs: Certs):
    """PONTOON_HOST, PONTOON_TLS_VERIFY and PONTOON_CERT_PATH (ca.pem,
    cert.pem, key.pem) as DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH."""
    env = {"PONTOON_HOST": URL, "PONTOON_TLS_VERIFY": "1",
           "PONTOON_CERT_PATH": str(certs.client.cert.parent)}  # fmt: skip
    out = pontoon(tls_host, "network", "ls", env=env)
    assert out.returncode == 0 and "bridge" in out.stdout, out.stderr


def test_client_without_certificate_is_refused(tls_host: SimHost, certs: Certs):
    out = curl(tls_host, "--cacert", str(certs.client.ca), f"https://127.0.0.1:{PORT}/_ping")
    assert out.returncode != 0 and "OK" not in out.stdout


def test_expired_client_certificate_is_refused(tls_host: SimHost, certs: Certs):
    error = one_line_error(pontoon(tls_host, "-H", URL, *tls_args(certs.expired), "network", "ls"))
    assert "pontoond at tcp://127.0.0.1" in error
    e = certs.expired
    out = curl(tls_host, "--cacert", str(e.ca), "--cert", str(e.cert), "--key", str(e.key),
               f"https://127.0.0.1:{PORT}/_ping")  # fmt: skip
    assert out.returncode != 0 and "OK" not in out.stdout


def test_foreign_client_certificate_is_refused(tls_host: SimHost, certs: Certs):
    # The foreign client trusts the daemon's CA (so it gets as far as it can)
    # but shows a certificate of its own CA.
    f = TlsFiles(certs.client.ca, certs.foreign.cert, certs.foreign.key)
    error = one_line_error(pontoon(tls_host, "-H", URL, *tls_args(f), "network", "ls"))
    assert "pontoond at tcp://127.0.0.1" in error


def test_client_refuses_a_daemon_its_ca_did_not_sign(tls_host: SimHost, certs: Certs):
    out = pontoon(tls_host, "-H", URL, *tls_args(certs.foreign_view), "network", "ls")
    assert "certificate verify failed" in one_line_error(out)


def test_plaintext_http_to_the_tls_port_is_refused(tls_host: SimHost):
    out = curl(tls_host, f"http://127.0.0.1:{PORT}/networks")
    assert out.returncode != 0 and "bridge" not in out.stdout


def test_cli_never_sends_plaintext_over_tcp(tls_host: SimHost):
    error = one_line_error(pontoon(tls_host, "-H", URL, "network", "ls"))
    assert "--tlsverify" in error


def test_missing_certificate_file_is_a_clear_client_error(tls_host: SimHost, certs: Certs):
    c = certs.client
    args = ["--tlsverify", "--tlscacert", str(c.ca), "--tlscert", "/nonexistent/cert.pem",
            "--tlskey", str(c.key)]  # fmt: skip
    error = one_line_error(pontoon(tls_host, "-H", URL, *args, "network", "ls"))
    assert "/nonexistent/cert.pem does not exist" in error


def daemon_refuses(host: SimHost, *args: str) -> str:
    """pontoond started with `args` exits at once, non-zero, saying why."""
    proc = host.sh(bin_path("pontoond"), "--root", str(host.root), "--exec-root",
                   str(host.exec_root), *args, check=False, timeout=30)  # fmt: skip
    assert proc.returncode != 0
    return proc.stderr.strip().splitlines()[-1]


def test_daemon_will_not_serve_plaintext_tcp(make_host: Callable[..., SimHost]):
    host = make_host(start=False)
    assert "mutual TLS" in daemon_refuses(host, "-H", URL)
    assert not (host.root / "pontoon.db").exists()


def test_daemon_refuses_missing_or_bad_certificate_files(
    make_host: Callable[..., SimHost], certs: Certs
):
    host = make_host(start=False)
    d = certs.daemon
    flags = ["-H", URL, "--tlsverify", "--tlscacert", str(d.ca), "--tlscert", str(d.cert)]
    missing = daemon_refuses(host, *flags, "--tlskey", "/nonexistent/key.pem")
    assert "/nonexistent/key.pem does not exist" in missing
    # A key that is not the certificate's.
    wrong = daemon_refuses(host, *flags, "--tlskey", str(certs.client.key))
    assert "cannot load TLS certificate" in wrong


def test_exec_is_refused_over_tcp(tls_host: SimHost, certs: Certs):
    """exec enters a PID's namespaces on the caller's machine: never a remote one's."""
    out = pontoon(tls_host, "-H", URL, *tls_args(certs.client), "exec", "anything", "true")
    assert "unix socket" in one_line_error(out)


def test_attached_run_streams_its_output_over_tls(tls_host: SimHost, certs: Certs):
    """`run` without -d follows the logs and waits for the exit status over
    the TLS connection, with no read timeout cutting a quiet stream short."""
    out = pontoon(tls_host, "-H", URL, *tls_args(certs.client), "run", "--rm", "--name",
                  "talker", "--", "sh", "-c", "sleep 2; echo over-tls; exit 3")  # fmt: skip
    assert out.returncode == 3 and out.stdout.strip() == "over-tls", out.stderr
