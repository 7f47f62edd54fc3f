"""`pontoon cni install|uninstall`: make pontoon networks usable by CNI
runtimes (Podman, containerd): the plugin installed as `pontoon` into their
plugin folder, one conflist per network.

What is installed is a launcher of a few lines rather than a link to the
`pontoon-cni` console script: runtimes exec the plugin for every container,
and the plugin needs only the standard library, so the launcher starts
Python without `site` (no site-packages scan, no .pth hooks) and puts
pontoon's own folder on the path: about half of the plugin's start time."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

import pontoon
from pontoon.client import Client, ref

DEFAULT_BIN_DIR = "/usr/lib/cni"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
PLUGIN_TYPE = "pontoon"
PLUGIN_EXE = "pontoon-cni"
# Podman 4.3 and containerd 1.6 load 0.4.0 or 1.0.0 conflists and reject a
# 1.1.0 result; the plugin answers in the version the conflist asks for.
CONFLIST_VERSION = "1.0.0"
CAPABILITIES = ("portMappings", "ips", "mac", "dns", "aliases")
LAUNCHER_MARK = "# pontoon CNI plugin launcher (pontoon cni install)"

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


def launcher() -> str:
    """The plugin's launcher: this interpreter without `site`, this
    pontoon's folder on the path."""
    interpreter = Path(sys.executable)  # the venv's, unresolved: its stdlib
    package_root = Path(pontoon.__file__).resolve().parent.parent
    return (
        f"#!{interpreter} -S\n"
        f"{LAUNCHER_MARK}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(package_root)!r})\n"
        "from pontoon.frontends.cni.plugin import main\n"
        "sys.exit(main())\n"
    )


def _is_launcher(path: Path) -> bool:
    if path.is_symlink():  # what releases before the launcher installed
        return Path(os.readlink(path)).name == PLUGIN_EXE
    try:
        return LAUNCHER_MARK in path.read_text(errors="replace").splitlines()[1:2]
    except (OSError, IndexError):
        return False


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)  # a runtime never reads half a file


@cni.command("install")
@bin_dir_option
@conf_dir_option
@click.argument("networks", nargs=-1, required=True)
@click.pass_context
def install(ctx: click.Context, bin_dir: Path, conf_dir: Path, networks: tuple[str, ...]) -> None:
    """Install the plugin as `pontoon` into BIN_DIR and write a conflist per NETWORK."""
    host = ctx.obj.get("host")
    client = Client(host)
    names = [client.get(f"/networks/{ref(n)}")["Name"] for n in networks]  # each must exist
    plugin = bin_dir / PLUGIN_TYPE
    if (plugin.exists() or plugin.is_symlink()) and not _is_launcher(plugin):
        raise click.ClickException(f"{plugin} exists and is not pontoon's: remove it first")
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    plugin.unlink(missing_ok=True)
    _write(plugin, launcher(), 0o755)
    click.echo(str(plugin))
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
    plugin = bin_dir / PLUGIN_TYPE
    if _is_launcher(plugin):
        plugin.unlink()
        click.echo(f"removed {plugin}")


def _is_ours(path: Path) -> bool:
    try:
        plugins = json.loads(path.read_text()).get("plugins") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in plugins)
