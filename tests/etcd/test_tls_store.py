"""The etcd store over TLS with a client certificate (issue 15, item 2),
against a real etcd with --client-cert-auth on 127.0.0.1, and Docker's
--cluster-store-opt parsing."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from pontoon.errors import PontoonError
from pontoon.lab.etcd import EtcdServer, free_tcp_port
from pontoon.lab.pki import Authority
from pontoon.store import etcd as etcd_module
from pontoon.store.etcd import EtcdStore, StoreTls, parse_store_opts
from pontoon.tls import TlsFiles
from tests.etcd.conftest import new_server, running


class Pki:
    def __init__(self, directory: Path) -> None:
        ca = Authority.create(directory / "ca")
        self.member = ca.issue(directory / "member", "etcd", ips=["127.0.0.1"])
        self.client = ca.issue(directory / "client", "h1", server=False)
        self.foreign = Authority.create(directory / "other").issue(directory / "f", "x")


def opts(files: TlsFiles) -> list[str]:
    return [f"kv.cacertfile={files.ca}", f"kv.certfile={files.cert}", f"kv.keyfile={files.key}"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EtcdServer]:
    server = new_server(tmp_path_factory.mktemp("etcd-tls") / "data")
    server.tls = pki.member
    with running(server):
        yield server


def store(server: EtcdServer, tls: StoreTls | None, **kwargs) -> EtcdStore:
    return EtcdStore([("127.0.0.1", server.client_port)], "/tls-test", tls=tls, **kwargs)


async def test_good_certificate_reads_writes_and_watches(tls_etcd: EtcdServer, pki: Pki):
    s = store(tls_etcd, parse_store_opts(opts(pki.client)))
    try:
        await s.check_access()
        _, revision = await s.list_prefix("/w/")
        await s.put("/w/a", "1")
        assert (await s.get("/w/a")).value == "1"
        events = s.watch("/w/", revision + 1)
        event = await asyncio.wait_for(anext(events), 5)
        assert (event.kind, event.key, event.value) == ("put", "/w/a", "1")
        await events.aclose()
    finally:
        await s.close()


async def test_no_client_certificate_is_refused(tls_etcd: EtcdServer, pki: Pki):
    s = store(tls_etcd, parse_store_opts([f"kv.cacertfile={pki.client.ca}"]))
    try:
        with pytest.raises(PontoonError, match="refused our client certificate"):
            await s.check_access()
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("ca", "identity", "message"),
    [
        # etcd refuses a client certificate another CA signed...
        ("client", "foreign", r"refused our client certificate \(.*f/cert.pem\)"),
        # ... and we refuse an etcd whose certificate our CA did not sign.
        ("foreign", "client", r"not signed by kv\.cacertfile"),
    ],
)
async def test_a_certificate_from_another_ca_is_refused(
    tls_etcd: EtcdServer, pki: Pki, ca: str, identity: str, message: str
):
    theirs: TlsFiles = getattr(pki, identity)
    tls = parse_store_opts([f"kv.cacertfile={getattr(pki, ca).ca}", f"kv.certfile={theirs.cert}",
                            f"kv.keyfile={theirs.key}"])  # fmt: skip
    s = store(tls_etcd, tls)
    try:
        with pytest.raises(PontoonError, match=message):
            await s.check_access()
    finally:
        await s.close()


async def test_plaintext_client_gets_nothing(tls_etcd: EtcdServer):
    s = store(tls_etcd, None, timeout=1.0)
    try:
        with pytest.raises(PontoonError):
            await s.get("/x")
    finally:
        await s.close()


async def test_etcd_down_is_not_a_tls_failure(pki: Pki):
    """check_access leaves an unreachable etcd to the usual retries."""
    s = EtcdStore([("127.0.0.1", free_tcp_port())], tls=parse_store_opts(opts(pki.client)),
                  timeout=1.0)  # fmt: skip
    try:
        await s.check_access()
    finally:
        await s.close()


# ------------------------------------------------------------------ options


def test_no_options_no_tls():
    assert parse_store_opts([]) is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["kv.path=/x"], "unsupported --cluster-store-opt 'kv.path'"),
        (["kv.cacertfile"], "needs a file"),
        (["kv.certfile=/a", "kv.keyfile=/b"], "need kv.cacertfile"),
        (["kv.cacertfile=/a", "kv.certfile=/b"], "go together"),
        (["kv.cacertfile=/nonexistent/ca.pem"], "/nonexistent/ca.pem: No such file"),
    ],
)
def test_bad_options(given, message):
    with pytest.raises(ValueError, match=message):
        parse_store_opts(given)


def test_not_pem(tmp_path: Path):
    (tmp_path / "ca.pem").write_text("hello")
    with pytest.raises(ValueError, match="not a PEM file"):
        parse_store_opts([f"kv.cacertfile={tmp_path}/ca.pem"])


def test_expired_certificate_is_named(tmp_path: Path):
    ca = Authority.create(tmp_path / "ca")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=5)
    old = ca.issue(tmp_path / "old", "h1", not_before=past,
                   not_after=past + datetime.timedelta(days=1))  # fmt: skip
    with pytest.raises(ValueError, match="expired on"):
        parse_store_opts(opts(old))


def test_not_yet_valid_certificate_is_named(tmp_path: Path):
    ca = Authority.create(tmp_path / "ca")
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5)
    new = ca.issue(tmp_path / "new", "h1", not_before=future,
                   not_after=future + datetime.timedelta(days=1))  # fmt: skip
    with pytest.raises(ValueError, match="not valid before"):
        parse_store_opts(opts(new))


# ------------------------------------------------------------------ gRPC's words

REFUSED = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:52395: "
    "Unwrap failed (TSI_DATA_CORRUPTED)"
)
UNSIGNED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:52395: Tls "
    "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
    "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK"
)


def test_grpc_tls_failures_in_our_words():
    assert etcd_module._tls_reason(REFUSED).startswith("etcd refused our client certificate")
    assert etcd_module._tls_reason(UNSIGNED) == (
        "etcd's certificate is not signed by kv.cacertfile (unable to get local issuer certificate)"
    )
    assert etcd_module._tls_reason("failed to connect: Connection refused") is None
