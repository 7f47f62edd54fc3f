"""`pontoon`: the CLI (SPEC §4). Errors are one `Error: …` line and exit 1."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from typing import Any

import click

from pontoon.cli import cni as cni_commands
from pontoon.client import ApiError, Client, ref
from pontoon.errors import os_error_text

CONTEXT = {"help_option_names": ["-h", "--help"]}


def client(ctx: click.Context) -> Client:
    return Client(ctx.obj.get("host"), ctx.obj.get("tls"))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=4))


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Docker-style columns, no borders."""
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 3, 0, 0))
    for h in headers:
        t.add_column(h, no_wrap=True, overflow="fold")
    for row in rows:
        t.add_row(*row)
    Console(
        soft_wrap=True, highlight=False, width=max(shutil.get_terminal_size().columns, 200)
    ).print(t)


@click.group(context_settings=CONTEXT)
@click.option(
    "-H", "--host", envvar="PONTOON_HOST",
    help="Daemon: unix:///PATH, lab://HOST, or tcp://ADDR:PORT with --tlsverify.",
)  # fmt: skip
@click.option("--tlsverify", is_flag=True, help="Mutual TLS to a tcp:// daemon "
              "(also: PONTOON_TLS_VERIFY=1).")  # fmt: skip
@click.option("--tlscacert", help="CA that signs the daemon.  [default: $PONTOON_CERT_PATH/"
              "ca.pem, ~/.pontoon/ca.pem]")  # fmt: skip
@click.option("--tlscert", help="Client certificate.  [default: …/cert.pem]")
@click.option("--tlskey", help="Client key.  [default: …/key.pem]")
@click.version_option(package_name="pontoon")
@click.pass_context
def cli(
    ctx: click.Context,
    host: str | None,
    tlsverify: bool,
    tlscacert: str | None,
    tlscert: str | None,
    tlskey: str | None,
) -> None:
    """pontoon: container networks for Linux."""
    from pontoon.tls import tls_files

    ctx.obj = {"host": host, "tls": tls_files(tlsverify, tlscacert, tlscert, tlskey)}


# ---------------------------------------------------------------- networks


@cli.group()
def network() -> None:
    """Manage networks."""


@network.command("create")
@click.option("-d", "--driver", default="bridge", show_default=True)
@click.option("--subnet", "subnets", multiple=True, help="CIDR, one per address family.")
@click.option("--gateway", "gateways", multiple=True, help="Matched to the subnet holding it.")
@click.option("--ip-range", "ip_ranges", multiple=True, help="Matched to the subnet holding it.")
@click.option("--ipv6", is_flag=True, help="Give the network an IPv6 subnet too.")
@click.option("--ipv4", type=click.BOOL, default=True, help="--ipv4=false: IPv6 only.")
@click.option("--internal", is_flag=True)
@click.option(
    "-o", "--opt", "opts", multiple=True, help="Driver option KEY=VALUE (a bare KEY: empty value)."
)
@click.argument("name")
@click.pass_context
def network_create(
    ctx: click.Context,
    driver: str,
    subnets: tuple[str, ...],
    gateways: tuple[str, ...],
    ip_ranges: tuple[str, ...],
    ipv6: bool,
    ipv4: bool,
    internal: bool,
    opts: tuple[str, ...],
    name: str,
) -> None:
    """Create a network and print its ID."""
    from pontoon.errors import PontoonError
    from pontoon.ipam.pools import match_to_subnets

    options = {}
    for opt in opts:
        # A bare KEY is KEY="" as with Docker (`-o encrypted`).
        key, _, value = opt.partition("=")
        if not key:
            raise click.UsageError(f"invalid option {opt!r}: use KEY=VALUE")
        options[key] = value
    if (gateways or ip_ranges) and not subnets:
        raise click.UsageError("--gateway and --ip-range need --subnet")
    try:
        config = match_to_subnets(subnets, gateways, ip_ranges)
    except PontoonError as exc:
        raise click.UsageError(str(exc)) from None
    out = client(ctx).post(
        "/networks/create",
        {
            "Name": name,
            "Driver": driver,
            "Subnets": config,
            "EnableIPv4": ipv4,
            "EnableIPv6": ipv6,
            "Internal": internal,
            "Options": options,
        },
    )
    click.echo(out["Id"])


@network.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def network_ls(ctx: click.Context, fmt: str) -> None:
    """List networks."""
    nets = client(ctx).get("/networks")
    if fmt == "json":
        emit_json(nets)
        return
    table(
        ["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"],
        [[n["Id"][:12], n["Name"], n["Driver"], n["Scope"], n["Subnet"]] for n in nets],
    )


@network.command("inspect")
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_inspect(ctx: click.Context, fmt: str, names: tuple[str, ...]) -> None:
    """Show networks in detail (a JSON array)."""
    c = client(ctx)
    emit_json([c.get(f"/networks/{ref(n)}") for n in names])


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove networks."""
    c = client(ctx)
    for name in names:
        c.delete(f"/networks/{ref(name)}")
        click.echo(name)


@network.command("connect")
@click.option("--ip", default="")
@click.option("--ip6", default="")
@click.option("--alias", "aliases", multiple=True)
@click.argument("net")
@click.argument("container")
@click.pass_context
def network_connect(
    ctx: click.Context, ip: str, ip6: str, aliases: tuple[str, ...], net: str, container: str
) -> None:
    """Connect a running container to a network (hot-plugs ethN)."""
    client(ctx).post(
        f"/networks/{ref(net)}/connect",
        {"Container": container, "IPAddress": ip, "IPv6Address": ip6, "Aliases": list(aliases)},
    )


@network.command("disconnect")
@click.argument("net")
@click.argument("container")
@click.pass_context
def network_disconnect(ctx: click.Context, net: str, container: str) -> None:
    """Disconnect a container from a network."""
    client(ctx).post(f"/networks/{ref(net)}/disconnect", {"Container": container})


# -------------------------------------------------------------- containers


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background, print the ID.")
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@click.option("--name", default="")
@click.option("--net", "--network", "nets", multiple=True)
@click.option("--ip", default="")
@click.option("--ip6", default="")
@click.option("--network-alias", "aliases", multiple=True)
@click.option("-p", "--publish", "ports", multiple=True)
@click.option("--hostname", default="")
@click.option("--dns", multiple=True)
@click.option("-e", "--env", "env", multiple=True)
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def run(
    ctx: click.Context,
    detach: bool,
    auto_remove: bool,
    name: str,
    nets: tuple[str, ...],
    ip: str,
    ip6: str,
    aliases: tuple[str, ...],
    ports: tuple[str, ...],
    hostname: str,
    dns: tuple[str, ...],
    env: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a new container."""
    c = client(ctx)
    out = c.post(
        "/containers/run",
        {
            "Name": name,
            "Cmd": list(command),
            "Networks": list(nets),
            "IPAddress": ip,
            "IPv6Address": ip6,
            "Aliases": list(aliases),
            "Ports": list(ports),
            "Hostname": hostname,
            "Dns": list(dns),
            "Env": [_env_item(e) for e in env],
            # Without -d the CLI removes the container itself after reading
            # its exit status, so the daemon must not race it.
            "AutoRemove": auto_remove and detach,
        },
    )
    cid = out["Id"]
    if detach:
        click.echo(cid)
        return
    try:
        _copy_logs(c, cid, follow=True)
        code = c.post(f"/containers/{cid}/wait")["StatusCode"]
    except KeyboardInterrupt:
        code = 130
        if auto_remove:
            c.delete(f"/containers/{cid}", force="1")
        sys.exit(code)
    if auto_remove:
        c.delete(f"/containers/{cid}", force="1")
    sys.exit(code)


def _env_item(item: str) -> str:
    if "=" in item:
        return item
    # Docker semantics: `-e NAME` passes the CLI's own value.
    return f"{item}={os.environ.get(item, '')}"


def _copy_logs(c: Client, cid: str, follow: bool) -> None:
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for stream, data in c.stream(f"/containers/{ref(cid)}/logs", follow="1" if follow else "0"):
        target = out if stream == 1 else err
        target.write(data)
        target.flush()


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def exec_(ctx: click.Context, name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a running container; its exit status passes through."""
    c = client(ctx)
    if c.tcp is not None:
        # nsenter works on this machine's PIDs: a remote daemon's would name
        # another process here.
        raise click.ClickException("exec needs the daemon's own machine: use its unix socket")
    info = c.get(f"/containers/{ref(name)}/json")
    pid = info["State"]["Pid"]
    if not info["State"]["Running"] or not pid:
        raise click.ClickException(f"container {name} is not running")
    args = ["nsenter", "-t", str(pid), "-n", "-m", "-u", "-i", "-p", "--", *command]
    sys.stdout.flush()
    os.execvp("nsenter", args)


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Also exited containers.")
@click.option("--owner", "owner_kind", type=click.Choice(["pontoon", "cni", "docker"]),
              default=None, help="Only this owner's (default: every owner's).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def ps(ctx: click.Context, show_all: bool, owner_kind: str | None, fmt: str) -> None:
    """List containers, and the namespaces attached for other owners (CNI)."""
    from pontoon.cli import owners

    c = client(ctx)
    entries = []
    if owner_kind in (None, owners.PONTOON):
        entries += c.get("/containers/json", **({"all": "1"} if show_all else {}))
    if owner_kind != owners.PONTOON:
        entries += owners.other_owners(owners.attachments(c), owner_kind or "")
    if fmt == "json":
        emit_json(entries)
        return
    headers = ["CONTAINER ID", "NAME", "COMMAND", "STATUS", "NETWORKS", "IPS", "OWNER"]
    table(headers, [owners.row(e) for e in entries])


@cli.command()
@click.argument("name")
@click.pass_context
def port(ctx: click.Context, name: str) -> None:
    """List a container's published ports (also a Docker or CNI container's)."""
    api = client(ctx)
    try:
        ports = api.get(f"/containers/{ref(name)}/json")["NetworkSettings"]["Ports"] or {}
    except ApiError as exc:
        found = _foreign_ports(api, name) if exc.status == 404 else None
        if found is None:
            raise
        ports = found

    def order(item: tuple[str, object]) -> tuple[int, str]:
        port, _, proto = item[0].partition("/")
        return int(port), proto

    for cport, bindings in sorted(ports.items(), key=order):
        for b in bindings or []:
            host = f"[{b['HostIp']}]" if ":" in b["HostIp"] else b["HostIp"]
            click.echo(f"{cport} -> {host}:{b['HostPort']}")


def _foreign_ports(api: Client, name: str) -> dict[str, list[dict[str, str]]] | None:
    """The ports of a container another runtime runs on pontoon's networks
    (dockerd, a CNI runtime), from its attachments; None if it has none."""
    atts = [
        a for a in api.get("/attachments")
        if a["Owner"]["Kind"] != "pontoon" and name in (a["Owner"]["Name"], a["Owner"]["Id"])
    ]  # fmt: skip
    if not atts:
        return None
    ports: dict[str, list[dict[str, str]]] = {}
    for att in atts:
        for p in att["Ports"]:
            binding = {"HostIp": p["host_ip"], "HostPort": str(p["host_port"])}
            ports.setdefault(f"{p['container_port']}/{p['proto']}", []).append(binding)
    return ports


@cli.command()
@click.option("-f", "--follow", is_flag=True)
@click.argument("name")
@click.pass_context
def logs(ctx: click.Context, follow: bool, name: str) -> None:
    """Show a container's output."""
    _copy_logs(client(ctx), name, follow)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, fmt: str, names: tuple[str, ...]) -> None:
    """Show containers or networks in detail (a JSON array)."""
    c = client(ctx)
    out = []
    for name in names:
        try:
            out.append(c.get(f"/containers/{ref(name)}/json"))
        except ApiError as exc:
            if exc.status != 404:
                raise
            try:
                out.append(c.get(f"/networks/{ref(name)}"))
            except ApiError as exc2:
                if exc2.status != 404:
                    raise
                raise ApiError(404, f"no such container or network: {name}") from None
    emit_json(out)


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, names: tuple[str, ...]) -> None:
    """Remove containers."""
    c = client(ctx)
    for name in names:
        c.delete(f"/containers/{ref(name)}", **({"force": "1"} if force else {}))
        click.echo(name)


# ------------------------------------------------------------------ trace


@cli.command()
@click.option("--from", "source", required=True, help="Container, `host` or netns:NAME.")
@click.option("--to", "target", required=True, help="Container, IP, or host:PORT [/PROTO].")
@click.option("--proto", type=click.Choice(["icmp", "tcp", "udp"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--live", type=click.FloatRange(0, 300), default=0,
              help="Follow real traffic of the flow for SECONDS instead of probing.")  # fmt: skip
@click.option("-6", "--ipv6", "ipv6", is_flag=True, help="Trace to a container's IPv6 address.")
@click.pass_context
def trace(
    ctx: click.Context,
    source: str,
    target: str,
    proto: str | None,
    as_json: bool,
    live: float,
    ipv6: bool,
) -> None:
    """Send a probe (or watch real traffic) and show where it goes: devices,
    netfilter hooks and rules, NAT, the userland proxy, the verdict. Targets:
    a container (its IPv4 address, or IPv6 with -6 or on an IPv6-only
    network), an address (IPv6 as [ADDR]:PORT), or host:PORT."""
    payload = {"From": source, "To": target, "Proto": proto or "", "Live": live,
               "Family": 6 if ipv6 else 0}  # fmt: skip
    result = client(ctx).post("/trace", payload)
    if as_json:
        emit_json(result)
        return
    from pontoon.trace.render import render

    click.echo(render(result))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "svg", "json"]), default="text")
@click.option("--lab", "lab_name", default=None, help="Draw every host of this lab.")
@click.pass_context
def topology(ctx: click.Context, fmt: str, lab_name: str | None) -> None:
    """Hosts, networks, namespaces, bridges, veths, VXLAN links and published ports."""
    from pontoon.cli import topology as draw

    hosts = {}
    if lab_name:
        from pontoon.lab.cluster import LabError, LabState

        try:
            state = LabState.load(lab_name)
        except LabError as exc:
            raise click.ClickException(str(exc)) from None
        for host in state.hosts:
            hosts[host.name] = Client(f"unix://{host.socket}").get("/topology")
    else:
        hosts["host"] = client(ctx).get("/topology")
    if fmt == "json":
        emit_json(hosts)
    elif fmt == "dot":
        click.echo(draw.to_dot(hosts))
    elif fmt == "svg":
        click.echo(draw.to_svg(hosts))
    else:
        click.echo(draw.to_text(hosts))


# -------------------------------------------------------------------- lab


@cli.group()
def lab() -> None:
    """Simulated hosts on this machine: namespaces, an etcd, a pontoond each."""


@lab.command("up")
@click.option("--hosts", "count", type=click.IntRange(1, 50), default=2, show_default=True)
@click.option("--subnet", default="10.10.0.0/24", show_default=True, help="The underlay.")
@click.option("--name", default="lab", show_default=True)
@click.option("--userland-proxy", type=click.BOOL, default=True, show_default=True)
@click.option("--tls", is_flag=True, help="A CA and certificates: etcd with client-certificate "
              "authentication, each host's API also on eth0:2376 over mutual TLS.")  # fmt: skip
@click.option("--etcd-members", type=click.IntRange(1, 7), default=1, show_default=True,
              help="etcd members in the lab's cluster.")  # fmt: skip
@click.option("--docker", is_flag=True, help="Also a dockerd per host, on pontoon's plugin.")
@click.option(
    "--ipv6-underlay",
    is_flag=True,
    help="Hosts get a ULA IPv6 address too and advertise it: VXLAN over IPv6.",
)
def lab_up(
    count: int,
    subnet: str,
    name: str,
    userland_proxy: bool,
    tls: bool,
    etcd_members: int,
    docker: bool,
    ipv6_underlay: bool,
) -> None:
    """Build N hosts on an underlay bridge, start etcd and one pontoond per host."""
    from pontoon.lab import cluster

    up = functools.partial(cluster.up, tls=tls, etcd_members=etcd_members, docker=docker,
                           ipv6_underlay=ipv6_underlay)  # fmt: skip
    proxy = f"--userland-proxy={str(userland_proxy).lower()}"
    state = _lab_call(up, name, count, subnet, [proxy])
    prefix = "lab://" if name == "lab" else f"lab://{name}/"
    for host in state.hosts:
        click.echo(f"{host.name}  {host.vtep:<15} pontoon -H {prefix}{host.name}")
        if host.docker:
            click.echo(f"    /usr/bin/docker -H {host.engines().docker_host}")
    click.echo(f"etcd {state.etcd_url}")
    if tls:
        click.echo(
            f"certificates {state.certs} (the admin's: PONTOON_CERT_PATH={state.certs}/client)"
        )


@lab.command("down")
@click.option("--name", default="lab", show_default=True)
def lab_down(name: str) -> None:
    """Remove every host, daemon, container and etcd of the lab."""
    from pontoon.lab import cluster

    _lab_call(cluster.down, name)


@lab.command("status")
@click.option("--name", default="lab", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def lab_status(name: str, fmt: str) -> None:
    """Hosts, daemons and etcd of the lab."""
    from pontoon.lab import cluster

    info = _lab_call(cluster.status, name)
    if fmt == "json":
        emit_json(info)
        return
    click.echo(f"lab {info['lab']}: underlay {info['subnet']}, etcd {info['etcd']['url']} "
               f"({'healthy' if info['etcd']['healthy'] else 'DOWN'})"
               f"{', TLS' if info['tls'] else ''}")  # fmt: skip
    if len(info["etcd"]["members"]) > 1:
        click.echo("etcd members: " + ", ".join(
            f"{m['name']} {'leader' if m['leader'] else 'up' if m['running'] else 'DOWN'}"
            for m in info["etcd"]["members"]))  # fmt: skip
    table(
        ["HOST", "ADDRESS", "DAEMON", "NETNS", "USE"],
        [[h["host"], h["address"], h["daemon"], h["netns"], f"-H {h['ref']}"]
         for h in info["hosts"]],
    )  # fmt: skip


def _lab_call(fn: Any, *args: Any) -> Any:
    from pontoon.lab.cluster import LabError

    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (it builds network namespaces)")
    try:
        return fn(*args)
    except (LabError, RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None


cli.add_command(cni_commands.cni)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="pontoon", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        _fail(exc.format_message())
    except ApiError as exc:
        _fail(exc.message)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:
        # exec's nsenter, topology's dot, a file: what failed, in words.
        _fail(os_error_text(exc))


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"Error: {first}", file=sys.stderr)
    sys.exit(1)
