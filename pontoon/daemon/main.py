"""`pontoond`: parse flags, take the host, reconcile, serve the API."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pontoon import ipam
from pontoon.daemon.config import DaemonConfig, parse_hosts
from pontoon.errors import PontoonError, os_error_text
from pontoon.firewall import Tunnel
from pontoon.sandbox import netns
from pontoon.tls import CERT_PATH_ENV, TlsFiles, server_context, tls_files

if TYPE_CHECKING:
    from aiohttp import web

    from pontoon.engine.engine import Engine
    from pontoon.engine.kernel import Kernel

log = logging.getLogger("pontoond")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", default="/var/lib/pontoon", show_default=True, help="State directory.")
@click.option("--exec-root", default="/run/pontoon", show_default=True, help="Runtime directory.")
@click.option(
    "-H",
    "--host",
    "hosts",
    multiple=True,
    default=["unix:///run/pontoon/pontoon.sock"],
    show_default=True,
    help="API socket unix:///PATH, or tcp://ADDR:PORT with --tlsverify (repeatable).",
)
@click.option("--tlsverify", is_flag=True, help="Serve TCP with mutual TLS (clients need a "
              "certificate signed by --tlscacert).")  # fmt: skip
@click.option("--tlscacert", default=None, help="CA that signs clients.  [default: "
              "$PONTOON_CERT_PATH/ca.pem, ~/.pontoon/ca.pem]")  # fmt: skip
@click.option("--tlscert", default=None, help="The daemon's certificate (cert.pem).")
@click.option("--tlskey", default=None, help="The daemon's key (key.pem).")
@click.option("--cluster-store", default="", help="etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
@click.option(
    "--cluster-store-opt",
    "cluster_store_opts",
    multiple=True,
    help="TLS to etcd: kv.cacertfile=FILE, kv.certfile=FILE, kv.keyfile=FILE (repeatable).",
)
@click.option("--cluster-advertise", default="", help="Interface or IP other hosts reach us at.")
@click.option("--userland-proxy", type=click.BOOL, default=True, show_default=True)
@click.option(
    "--userland-proxy-workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Proxy worker processes.  [default: one per CPU]",
)
@click.option(
    "--firewall-backend",
    type=click.Choice(["nftables", "iptables"]),
    default="nftables",
    show_default=True,
)
@click.option(
    "--firewall-check-interval",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    hidden=True,
    help="Seconds between checks that re-apply our firewall rules if something else "
    "removed or changed them (0: never).",
)
@click.option("--bip", default=ipam.DEFAULT_BIP, show_default=True, help="Default bridge CIDR.")
@click.option(
    "--default-address-pool", "pools", multiple=True, help="base=CIDR,size=N (repeatable)."
)
@click.option("--dns", "dns", multiple=True, help="Upstream DNS server for containers.")
@click.option(
    "--metrics-addr",
    default="127.0.0.1:9323",
    show_default=True,
    help="Prometheus metrics listener (HOST:PORT; empty to disable).",
)
@click.option("--vxlan-port", type=click.IntRange(1, 65535), default=4789, show_default=True)
@click.option(
    "--cluster-ttl",
    type=click.IntRange(2, 3600),
    default=15,
    show_default=True,
    hidden=True,
    help="Seconds before a silent host's endpoints are removed cluster-wide.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def cli(
    root: str,
    exec_root: str,
    hosts: tuple[str, ...],
    tlsverify: bool,
    tlscacert: str | None,
    tlscert: str | None,
    tlskey: str | None,
    cluster_store: str,
    cluster_store_opts: tuple[str, ...],
    cluster_advertise: str,
    userland_proxy: bool,
    userland_proxy_workers: int | None,
    firewall_backend: str,
    firewall_check_interval: float,
    bip: str,
    pools: tuple[str, ...],
    dns: tuple[str, ...],
    metrics_addr: str,
    vxlan_port: int,
    cluster_ttl: int,
    log_level: str,
) -> None:
    """The pontoon daemon: container networks for this host."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pyroute2 logs every netlink message at debug level: far too much for ours.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    # gRPC's C core prints its own lines on stderr (each refused TLS record,
    # each reconnect); the store reports what matters in our log.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if log_level == "debug" else "NONE")
    try:
        # $PONTOON_TLS_VERIFY is the CLI's; the daemon serves TLS only when told.
        env = {k: v for k, v in os.environ.items() if k == CERT_PATH_ENV}
        tls = _check_tls(tls_files(tlsverify, tlscacert, tlscert, tlskey, env))
        socket, tcp_hosts = parse_hosts(list(hosts), tls)
        config = DaemonConfig(
            root=Path(root).resolve(),
            exec_root=Path(exec_root).resolve(),
            socket=socket.resolve() if socket else None,
            tcp_hosts=tcp_hosts,
            tls=tls,
            cluster_store=cluster_store,
            cluster_advertise=cluster_advertise,
            cluster_store_opts=list(cluster_store_opts),
            userland_proxy=userland_proxy,
            userland_proxy_workers=userland_proxy_workers,
            firewall_backend=firewall_backend,
            firewall_check_interval=firewall_check_interval,
            bip=_check_bip(bip),
            pools=[ipam.parse_pool(p) for p in pools] or list(ipam.DEFAULT_POOLS),
            vxlan_port=vxlan_port,
            cluster_ttl=cluster_ttl,
            metrics_addr=_check_metrics_addr(metrics_addr),
            dns=[str(ipam.parse_address(d, "DNS server")) for d in dns],
            log_level=log_level,
        )
    except (ValueError, PontoonError) as exc:
        raise click.UsageError(str(exc)) from None
    if cluster_store:
        from pontoon.store.etcd import parse_store_opts, parse_url

        try:
            parse_url(cluster_store)
            parse_store_opts(cluster_store_opts)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    elif cluster_store_opts:
        raise click.UsageError("--cluster-store-opt needs --cluster-store")
    if os.geteuid() != 0:
        raise click.UsageError("pontoond must run as root")
    raise_fd_limit()
    # Before any thread exists: setns(CLONE_NEWNS) refuses threaded processes.
    netns.join_host_mount_ns()
    sys.exit(asyncio.run(serve(config)))


def raise_fd_limit() -> None:
    """Every published port and every sandbox resolver holds descriptors: use
    the hard limit, not the 1,024 a shell usually hands down."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _check_tls(files: TlsFiles | None) -> TlsFiles | None:
    """Load the files once now: a bad one is a flag error, not a failed start."""
    if files is not None:
        server_context(files)
    return files


def _check_metrics_addr(addr: str) -> str:
    if not addr:
        return ""
    _, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid --metrics-addr {addr!r}: use HOST:PORT")
    return addr


def _check_bip(bip: str) -> str:
    import ipaddress

    try:
        iface = ipaddress.IPv4Interface(bip)
    except ValueError:
        raise ValueError(f"invalid --bip {bip!r}: expected an address with prefix") from None
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise ValueError(f"invalid --bip {bip!r}: the address must be a host address")
    return bip


def _soon(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
    """Run a coroutine on the daemon's loop from another thread, not waiting."""
    asyncio.run_coroutine_threadsafe(coro, loop)


def take_lock(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "pontoond.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise click.ClickException(f"another pontoond is using --root {root}") from None
    return fd


async def serve(config: DaemonConfig) -> int:
    from aiohttp import web

    from pontoon.engine.engine import Engine
    from pontoon.engine.kernel import Kernel
    from pontoon.engine.reconcile import reconcile
    from pontoon.frontends.api.server import Api
    from pontoon.runtime.containers import Runtime
    from pontoon.store.sqlite import SQLiteStore
    from pontoon.store.timed import TimedStore

    lock_fd = take_lock(config.root)
    if config.cluster_store_opts:
        await check_store_tls(config)
    config.exec_root.mkdir(parents=True, exist_ok=True)
    netns.ensure_own_mount(config.netns_dir)
    store = TimedStore(SQLiteStore(config.db_path), "local")
    kernel = Kernel(config.firewall_backend, config.userland_proxy)
    await kernel.call(kernel.setup)
    engine = Engine(config, store, kernel)
    runtime = Runtime(config, store, engine)
    if config.userland_proxy:
        from pontoon.proxy.client import DaemonProxy

        loop = asyncio.get_running_loop()
        engine.ports.proxy = DaemonProxy(
            config.exec_root / "proxy.sock",
            config.exec_root / "proxy.log",
            workers=config.userland_proxy_workers,
            # From the proxy's watcher thread, once a new proxy runs.
            on_restart=lambda: _soon(engine.restore_proxy(), loop),
        )
    await runtime.load()
    await engine.state.load(runtime.sandbox_of)
    await runtime.upgrade()
    if config.cluster_store:
        await join_cluster(config, engine)
    await runtime.reconcile()
    await reconcile(engine, runtime.keep_namespaces())
    async with engine.lock:
        await engine.networks.ensure_default(config.bip)
    if engine.cluster is not None:
        await engine.cluster.start()
    checker = None
    if config.firewall_check_interval > 0:
        checker = asyncio.create_task(check_firewall(kernel, config.firewall_check_interval))

    runner = web.AppRunner(Api(config, engine, runtime).app(), access_log=None)
    await runner.setup()
    await listen(runner, config)
    (config.exec_root / "pontoond.pid").write_text(f"{os.getpid()}\n")
    metrics_runner = None
    if config.metrics_addr:
        from pontoon.daemon import metrics

        metrics_runner = await metrics.start(metrics.Sources(engine, runtime), config.metrics_addr)
    log.info("pontoond ready on %s (root %s)", listeners(config), config.root)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    await stop.wait()
    log.info("shutting down; containers keep running")
    if checker is not None:
        checker.cancel()
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await runtime.close()
    await engine.close()
    await store.close()
    kernel.close()
    if config.socket is not None:
        config.socket.unlink(missing_ok=True)
    os.close(lock_fd)
    return 0


async def listen(runner: web.AppRunner, config: DaemonConfig) -> None:
    """The unix socket (0660), and each TCP address with mutual TLS only."""
    from aiohttp import web

    if config.socket is not None:
        config.socket.parent.mkdir(parents=True, exist_ok=True)
        config.socket.unlink(missing_ok=True)
        await web.UnixSite(runner, str(config.socket)).start()
        os.chmod(config.socket, 0o660)
    if not config.tcp_hosts:
        return
    assert config.tls is not None  # parse_hosts refuses TCP without it
    context = server_context(config.tls)
    for host, port in config.tcp_hosts:
        try:
            await web.TCPSite(runner, host, port, ssl_context=context).start()
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on tcp://{host}:{port}: {os_error_text(exc)}"
            ) from None


def listeners(config: DaemonConfig) -> str:
    urls = [f"unix://{config.socket}"] if config.socket is not None else []
    urls += [f"tcp://{h}:{p} (mutual TLS)" for h, p in config.tcp_hosts]
    return ", ".join(urls)


async def check_firewall(kernel: Kernel, interval: float) -> None:
    """Every `interval` seconds, re-apply our firewall rules if something else
    (`nft flush ruleset`, another tool) removed or changed them. On the kernel
    thread, like every other firewall call, so it never interleaves with one."""
    while True:
        await asyncio.sleep(interval)
        try:
            await kernel.call(kernel.firewall.check)
        except Exception:  # a failed check is retried at the next interval
            log.exception("firewall check failed")


async def join_cluster(config: DaemonConfig, engine: Engine) -> None:
    """Global networks: our VTEP, the etcd store and the cluster agent."""
    from pontoon.cluster.agent import ClusterAgent
    from pontoon.drivers.overlay import prepare_underlay
    from pontoon.store.etcd import EtcdStore, parse_store_opts
    from pontoon.store.timed import TimedStore

    try:
        vtep, mtu = await engine.kernel.call(
            prepare_underlay,
            engine.kernel.ipr,
            config.cluster_advertise or "eth0",
            config.vxlan_port,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    # Applied by the start-up sync, which follows.
    engine.kernel.firewall.tunnel = Tunnel(vtep, config.vxlan_port)
    tls = parse_store_opts(config.cluster_store_opts)
    store = TimedStore(EtcdStore.from_url(config.cluster_store, tls=tls), "cluster")
    agent = ClusterAgent(store, host_id(config.root), vtep, config.cluster_ttl)
    agent.listener = engine
    engine.join_cluster(agent, vtep, config.vxlan_port, mtu)
    log.info("cluster store %s, VTEP %s, VXLAN port %d", config.cluster_store, vtep,
             config.vxlan_port)  # fmt: skip


async def check_store_tls(config: DaemonConfig) -> None:
    """Before anything is made: a certificate etcd refuses (missing, expired,
    another CA's) stops the daemon with the reason, within the store's time
    budget, instead of a daemon retrying forever."""
    from pontoon.store.etcd import EtcdStore, parse_store_opts

    tls = parse_store_opts(config.cluster_store_opts)
    store = EtcdStore.from_url(config.cluster_store, tls=tls)
    try:
        await store.check_access()
    except PontoonError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        await store.close()


def host_id(root: Path) -> str:
    """This host's identity in the cluster, stable across restarts."""
    path = root / "host-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        import secrets

        value = secrets.token_hex(16)
        path.write_text(value + "\n")
        return value


def dump_tasks() -> None:
    """`kill -USR1 <pontoond>` logs where every task and thread is waiting."""
    import faulthandler
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(file=out)
        log.warning("task %s:\n%s", task.get_name(), out.getvalue())
    faulthandler.dump_traceback(all_threads=True)


def main() -> None:
    try:
        cli.main(prog_name="pontoond", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        # One line, as the CLI's: a script or a unit file's log shows why.
        print(f"Error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
