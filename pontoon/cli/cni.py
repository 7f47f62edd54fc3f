"""`pontoon cni install|uninstall`: make pontoon networks usable by CNI
runtimes (Podman, containerd): the plugin linked as `pontoon` into their
plugin folder, one conflist per network."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from pontoon.client import Client, ref

DEFAULT_BIN_DIR = "/usr/lib/cni"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
PLUGIN_TYPE = "pontoon"
PLUGIN_EXE = "pontoon-cni"
# Podman 4.3 and containerd 1.6 load 0.4.0 or 1.0.0 conflists and reject a
# 1.1.0 result; the plugin answers in the version the conflist asks for.
CONFLIST_VERSION = "1.0.0"
CAPABILITIES = ("portMappings", "ips", "mac", "dns", "aliases")

bin_dir_option = click.option(
    "--bin-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_BIN_DIR,
    show_default=True,
    help="The runtime's CNI plugin folder.",
)
conf_dir_option = click.option(
    "--conf-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CONF_DIR,
    show_default=True,
    help="The runtime's CNI configuration folder.",
)


@click.group()
def cni() -> None:
    """Use pontoon networks from CNI runtimes (Podman, containerd)."""


def conflist_path(conf_dir: Path, network: str) -> Path:
    return conf_dir / f"pontoon-{network}.conflist"


def conflist(network: str, host: str | None) -> dict[str, object]:
    plugin: dict[str, object] = {"type": PLUGIN_TYPE, "network": network}
    if host:
        plugin["host"] = host
    plugin["capabilities"] = dict.fromkeys(CAPABILITIES, True)
    return {"cniVersion": CONFLIST_VERSION, "name": network, "plugins": [plugin]}


def plugin_executable() -> Path:
    beside = Path(sys.executable).parent / PLUGIN_EXE  # the venv's bin, unresolved
    if beside.is_file():
        return beside
    found = shutil.which(PLUGIN_EXE)
    if found is None:
        raise click.ClickException(
            f"{PLUGIN_EXE} is not installed (make install puts it in .venv/bin)"
        )
    return Path(found)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a runtime never reads half a conflist


@cni.command("install")
@bin_dir_option
@conf_dir_option
@click.argument("networks", nargs=-1, required=True)
@click.pass_context
def install(ctx: click.Context, bin_dir: Path, conf_dir: Path, networks: tuple[str, ...]) -> None:
    """Link the plugin as `pontoon` into BIN_DIR and write a conflist per NETWORK."""
    host = ctx.obj.get("host")
    client = Client(host)
    names = [client.get(f"/networks/{ref(n)}")["Name"] for n in networks]  # each must exist
    link = bin_dir / PLUGIN_TYPE
    if link.exists() and not link.is_symlink():
        raise click.ClickException(f"{link} exists and is not a link: remove it first")
    target = plugin_executable()
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    click.echo(f"{link} -> {target}")
    for name in names:
        path = conflist_path(conf_dir, name)
        _write(path, json.dumps(conflist(name, host), indent=2) + "\n")
        click.echo(str(path))


@cni.command("uninstall")
@bin_dir_option
@conf_dir_option
@click.argument("networks", nargs=-1)
def uninstall(bin_dir: Path, conf_dir: Path, networks: tuple[str, ...]) -> None:
    """Remove the plugin link and the conflists of NETWORKs (default: every pontoon one)."""
    paths = (
        [conflist_path(conf_dir, n) for n in networks]
        if networks
        else [p for p in sorted(conf_dir.glob("pontoon-*.conflist")) if _is_ours(p)]
    )
    for path in paths:
        if path.exists():
            path.unlink()
            click.echo(f"removed {path}")
    link = bin_dir / PLUGIN_TYPE
    if link.is_symlink() and Path(os.readlink(link)).name == PLUGIN_EXE:
        link.unlink()
        click.echo(f"removed {link}")


def _is_ours(path: Path) -> bool:
    try:
        plugins = json.loads(path.read_text()).get("plugins") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in plugins)
