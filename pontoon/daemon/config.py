"""Daemon configuration, from pontoond's flags (SPEC §3)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pontoon import ipam
from pontoon.tls import TlsFiles, parse_tcp_host


@dataclasses.dataclass
class DaemonConfig:
    root: Path = Path("/var/lib/pontoon")
    exec_root: Path = Path("/run/pontoon")
    socket: Path | None = Path("/run/pontoon/pontoon.sock")  # None: no unix socket
    tcp_hosts: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # mutual TLS
    tls: TlsFiles | None = None  # --tlsverify's CA, certificate and key
    cluster_store: str = ""
    cluster_advertise: str = ""
    cluster_store_opts: list[str] = dataclasses.field(default_factory=list)  # kv.*file=FILE
    userland_proxy: bool = True
    userland_proxy_workers: int | None = None  # None: one per CPU
    firewall_backend: str = "nftables"
    firewall_check_interval: float = 10.0  # seconds between checks of our rules; 0: none
    bip: str = ipam.DEFAULT_BIP
    pools: list[ipam.Pool] = dataclasses.field(default_factory=lambda: list(ipam.DEFAULT_POOLS))
    vxlan_port: int = 4789
    cluster_ttl: int = 15
    metrics_addr: str = "127.0.0.1:9323"
    dns: list[str] = dataclasses.field(default_factory=list)  # default upstream resolvers
    log_level: str = "info"

    @property
    def db_path(self) -> Path:
        return self.root / "pontoon.db"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def netns_dir(self) -> Path:
        return self.exec_root / "netns"

    def container_dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id


def parse_host(url: str) -> Path:
    """-H: only unix sockets (a plaintext TCP API is what not to ship)."""
    if url.startswith("unix://"):
        path = url.removeprefix("unix://")
        if not path.startswith("/"):
            raise ValueError(f"invalid -H {url!r}: use unix:///ABSOLUTE/PATH")
        return Path(path)
    if url.startswith("/"):
        return Path(url)
    raise ValueError(
        f"unsupported -H {url!r}: use unix:///PATH, or tcp://ADDR:PORT with --tlsverify "
        "(mutual TLS)"
    )


def parse_hosts(urls: list[str], tls: TlsFiles | None) -> tuple[Path | None, list[tuple[str, int]]]:
    """Every -H: at most one unix socket, and TCP listeners only with mutual
    TLS (a plaintext TCP API would hand the host to anyone who can connect)."""
    sockets: list[Path] = []
    tcp: list[tuple[str, int]] = []
    for url in urls:
        if url.startswith("tcp://"):
            if tls is None:
                raise ValueError(
                    f"refusing to serve -H {url} without --tlsverify: the remote API is only "
                    "served over mutual TLS (--tlsverify --tlscacert --tlscert --tlskey)"
                )
            tcp.append(parse_tcp_host(url))
        else:
            sockets.append(parse_host(url))
    if len(sockets) > 1:
        raise ValueError("give at most one unix socket with -H")
    return (sockets[0] if sockets else None), tcp
