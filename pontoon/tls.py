"""Mutual TLS for the remote API, for the daemon and its clients (stdlib only:
the CLI imports it and must start fast).

Both ends verify the other: the daemon accepts only clients whose certificate
its CA signed (CERT_REQUIRED), the client only a daemon whose certificate the
same CA signed for the address it dialled. Flags and files follow Docker's
(`--tlsverify --tlscacert --tlscert --tlskey`, `DOCKER_CERT_PATH` holding
ca.pem, cert.pem and key.pem), with PONTOON_ for DOCKER_.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TLS_PORT = 2376  # Docker's port for its API over TLS
CERT_PATH_ENV = "PONTOON_CERT_PATH"
TLS_VERIFY_ENV = "PONTOON_TLS_VERIFY"
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


class TlsError(ValueError):
    """A TLS setting or file that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """The CA that signs the peer, and our own certificate and key (PEM)."""

    ca: Path
    cert: Path
    key: Path

    def check(self) -> TlsFiles:
        """Fail early, naming the file, rather than deep in a handshake."""
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert),
                           ("key", self.key)):  # fmt: skip
            if not path.is_file():
                raise TlsError(f"TLS {what} {path} does not exist or is not a file")
            if not os.access(path, os.R_OK):
                raise TlsError(f"TLS {what} {path} is not readable")
        return self


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The daemon's side: clients must show a certificate signed by `files.ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, files)
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The client's side: the daemon's certificate must be signed by
    `files.ca` and name the address dialled; ours goes with every handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, files)
    return ctx


def _load(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    files.check()
    try:
        ctx.load_verify_locations(cafile=str(files.ca))
    except (ssl.SSLError, OSError) as exc:
        reason = ssl_error_text(exc)
        raise TlsError(f"cannot load TLS CA certificate {files.ca}: {reason}") from None
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"cannot load TLS certificate {files.cert} with key {files.key}: {ssl_error_text(exc)}"
        ) from None


def ssl_error_text(exc: BaseException) -> str:
    """OpenSSL's reason ('certificate verify failed: unable to get local
    issuer certificate'), not its tuple of codes and file positions."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def parse_tcp_host(url: str) -> tuple[str, int]:
    """`tcp://ADDR[:PORT]` -> (ADDR, PORT); IPv6 in brackets, port 2376 by default."""
    rest = url.removeprefix("tcp://")
    if rest.startswith("["):
        host, bracket, port = rest[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"invalid -H {url!r}: use tcp://[IPV6]:PORT")
        port = port[1:]
    else:
        host, _, port = rest.partition(":")
    if not _valid_host(host):
        raise ValueError(f"invalid -H {url!r}: bad address {host!r}")
    if not port:
        return host, DEFAULT_TLS_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid -H {url!r}: port {port!r} is not a number in 1-65535")
    return host, int(port)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME_RE.match(host))
    return True


def tls_files(
    verify: bool,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> TlsFiles | None:
    """The TLS files as Docker finds them: flags first, then
    ca.pem, cert.pem and key.pem in $PONTOON_CERT_PATH (default ~/.pontoon).
    TLS is on with --tlsverify, a non-empty $PONTOON_TLS_VERIFY, or any of
    the file flags."""
    env = os.environ if env is None else env
    if not (verify or env.get(TLS_VERIFY_ENV) or ca or cert or key):
        return None
    folder = Path(env.get(CERT_PATH_ENV) or Path.home() / ".pontoon")
    return TlsFiles(
        Path(ca) if ca else folder / "ca.pem",
        Path(cert) if cert else folder / "cert.pem",
        Path(key) if key else folder / "key.pem",
    )
