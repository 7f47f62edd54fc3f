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
from pontoon.daemon.config import DaemonConfig, parse_host
from pontoon.errors import PontoonError
from pontoon.firewall import Tunnel
from pontoon.sandbox import netns

if TYPE_CHECKING:
    from pontoon.engine.engine import Engine
    from pontoon.engine.kernel import Kernel

log = logging.getLogger("pontoond")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", default="/var/lib/pontoon", show_default=True, help="State directory.")
@click.option("--exec-root", default="/run/pontoon", show_default=True, help="Runtime directory.")
@click.option(
    "-H",
    "--host",
    "host",
    default="unix:///run/pontoon/pontoon.sock",
    show_default=True,
    help="API socket (unix:///PATH).",
)
@click.option("--cluster-store", default="", help="etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
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
    "--docker-plugin",
    is_flag=True,
    help="Also serve Docker's network and IPAM plugin protocol (driver `pontoon`).",
)
@click.option(
    "--docker-plugin-dir",
    default="/run/docker/plugins",
    show_default=True,
    help="Where dockerd looks for plugin sockets.",
)
@click.option(
    "--docker-host",
    default="unix:///var/run/docker.sock",
    show_default=True,
    help="dockerd's API socket (the plugin asks it for names).",
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
    host: str,
    cluster_store: str,
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
    docker_plugin: bool,
    docker_plugin_dir: str,
    docker_host: str,
    log_level: str,
) -> None:
    """The pontoon daemon: container networks for this host."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pyroute2 logs every netlink message at debug level: far too much for ours.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    try:
        config = DaemonConfig(
            root=Path(root).resolve(),
            exec_root=Path(exec_root).resolve(),
            socket=parse_host(host).resolve(),
            cluster_store=cluster_store,
            cluster_advertise=cluster_advertise,
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
            docker_plugin=docker_plugin,
            docker_plugin_dir=Path(docker_plugin_dir).resolve(),
            docker_host=_check_docker_host(docker_host),
        )
    except (ValueError, PontoonError) as exc:
        raise click.UsageError(str(exc)) from None
    if cluster_store:
        from pontoon.store.etcd import parse_url

        try:
            parse_url(cluster_store)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if os.geteuid() != 0:
        raise click.UsageError("pontoond must run as root")
    raise_fd_limit()
    # Before any thread exists: setns(CLONE_NEWNS) refuses threaded processes.
    # A Docker plugin stays in dockerd's mount namespace, where Docker's
    # sandbox paths and plugin directory are.
    if not docker_plugin:
        netns.join_host_mount_ns()
    sys.exit(asyncio.run(serve(config)))


def raise_fd_limit() -> None:
    """Every published port and every sandbox resolver holds descriptors: use
    the hard limit, not the 1,024 a shell usually hands down."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _check_metrics_addr(addr: str) -> str:
    if not addr:
        return ""
    _, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid --metrics-addr {addr!r}: use HOST:PORT")
    return addr


def _check_docker_host(url: str) -> str:
    if not url.startswith("unix:///"):
        raise ValueError(f"invalid --docker-host {url!r}: use unix:///PATH")
    return url


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
    config.socket.parent.mkdir(parents=True, exist_ok=True)
    config.socket.unlink(missing_ok=True)
    site = web.UnixSite(runner, str(config.socket))
    await site.start()
    os.chmod(config.socket, 0o660)
    plugin, plugin_runner = None, None
    if config.docker_plugin:
        from pontoon.frontends.docker.dockerd import Dockerd
        from pontoon.frontends.docker.plugin import DockerPlugin
        from pontoon.frontends.docker.plugin import serve as serve_plugin

        plugin = DockerPlugin(engine, Dockerd(config.docker_host))
        await plugin.load()
        plugin_runner = await serve_plugin(plugin, config.docker_plugin_dir)
        await plugin.start()
    (config.exec_root / "pontoond.pid").write_text(f"{os.getpid()}\n")
    metrics_runner = None
    if config.metrics_addr:
        from pontoon.daemon import metrics

        metrics_runner = await metrics.start(metrics.Sources(engine, runtime), config.metrics_addr)
    log.info("pontoond ready on %s (root %s)", config.socket, config.root)

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
    if plugin is not None and plugin_runner is not None:
        await plugin_runner.cleanup()
        await plugin.close()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await runtime.close()
    await engine.close()
    await store.close()
    kernel.close()
    config.socket.unlink(missing_ok=True)
    os.close(lock_fd)
    return 0


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
    from pontoon.store.etcd import EtcdStore
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
    store = TimedStore(EtcdStore.from_url(config.cluster_store), "cluster")
    agent = ClusterAgent(store, host_id(config.root), vtep, config.cluster_ttl)
    agent.listener = engine
    engine.join_cluster(agent, vtep, config.vxlan_port, mtu)
    log.info("cluster store %s, VTEP %s, VXLAN port %d", config.cluster_store, vtep,
             config.vxlan_port)  # fmt: skip


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
    cli(standalone_mode=True)
