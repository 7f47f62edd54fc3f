r"""CNI ADD/DEL timings measured inside one simulated host's namespace.

Run by bench/cni.py as

    nsenter --net=/run/netns/ptb-HOST -- .venv/bin/python bench/_cni_worker.py \
        TOOL --host-netns /run/netns/ptb-HOST --workdir DIR [--daemon unix:///SOCK]

and driven over stdin/stdout with bench/_attach_worker.py's protocol (fill,
cycle, quit). Every container publishes one TCP port (host port 20000 + its
index -> 80), so that each tool does its port mapping too. TOOL is one of:

  pontoon   `pontoon-cni` ADD / DEL, exec'd as a runtime does (CNI_* in a
            clean environment, the configuration on stdin), against the
            pontoond given with --daemon (network `bench`, kernel mode);
  chain     Debian's bridge + host-local + portmap, run as libcni runs a
            conflist: each plugin exec'd in turn with the previous result,
            DEL in reverse order with the ADD's result; host-local's dataDir
            private to this run;
  netavark  podman's netavark `--config DIR setup|teardown NETNS` with its
            network options JSON on stdin (the addresses handed out here:
            netavark leaves IPAM to podman).

Each up is: make the namespace (pontoon.sandbox.netns, as bench/attach.py),
then the tool; each down: the tool, then remove the namespace. Process starts
are counted: that is what a runtime pays.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.append(str(HERE))

from _attach_worker import NETAVARK, serve  # noqa: E402
from common import Runner, inside_bench_host, log, on_signals_clean_up, unmount_all_under  # noqa: E402

from pontoon.cli import cni as cni_cli  # noqa: E402
from pontoon.sandbox import netns  # noqa: E402

CNI_DIR = Path("/usr/lib/cni")
CHAIN_SUBNET = "10.88.0.0/16"
NETAVARK_SUBNET = ipaddress.IPv4Network("10.89.0.0/16")
PORT_BASE = 20000
NETWORK = "bench"  # the pontoon network bench/cni.py makes (PONTOON_SUBNET there)

Handle = tuple[str, Path, Any]  # container id, its namespace, what DEL needs


def port_of(index: int) -> int:
    return PORT_BASE + index


def exec_plugin(plugin: Path, command: str, cid: str, sandbox: Path, conf: dict[str, Any]) -> Any:
    """One plugin execution as libcni does it; the parsed stdout."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": str(sandbox),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(CNI_DIR),
    }
    proc = subprocess.run(
        [str(plugin)], input=json.dumps(conf), env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{plugin.name} {command} failed: {proc.stdout.strip()} {proc.stderr}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


class ConflistHarness:
    """A conflist run the libcni way: ADD in order, DEL reversed."""

    def __init__(self, conflist: dict[str, Any], sandboxes: Path) -> None:
        self.conflist = conflist
        self.sandboxes = sandboxes
        sandboxes.mkdir(parents=True, exist_ok=True)

    def _conf(self, plugin: dict[str, Any], index: int, prev: Any) -> dict[str, Any]:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf |= {"name": self.conflist["name"], "cniVersion": self.conflist["cniVersion"]}
        if (plugin.get("capabilities") or {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": [
                {"hostPort": port_of(index), "containerPort": 80, "protocol": "tcp"}]}  # fmt: skip
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def prepare(self, index: int) -> tuple[str, Path, int]:
        cid = f"ptb{index:09d}"
        return cid, self.sandboxes / cid, index

    def up(self, spec: tuple[str, Path, int]) -> Handle:
        cid, sandbox, index = spec
        netns.create(sandbox)
        prev = None
        for plugin in self.conflist["plugins"]:
            conf = self._conf(plugin, index, prev)
            prev = exec_plugin(CNI_DIR / plugin["type"], "ADD", cid, sandbox, conf)
        return cid, sandbox, (index, prev)

    def down(self, handle: Handle) -> None:
        cid, sandbox, (index, result) = handle
        for plugin in reversed(self.conflist["plugins"]):
            conf = self._conf(plugin, index, result)
            exec_plugin(CNI_DIR / plugin["type"], "DEL", cid, sandbox, conf)
        netns.remove(sandbox)

    def forget(self, handle: Handle) -> None:
        pass

    def close(self) -> None:
        pass


def chain_conflist(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "ptbench",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "ptbcni0",
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "subnet": CHAIN_SUBNET,
                    "dataDir": str(workdir / "host-local"),
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def pontoon_conflist(daemon: str) -> dict[str, Any]:
    """What `pontoon cni install` writes, with the daemon's socket."""
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "pontoon",
                "network": NETWORK,
                "host": daemon,
                "capabilities": {"portMappings": True},
            }
        ],
    }


class PontoonCniHarness(ConflistHarness):
    def __init__(self, workdir: Path, daemon: str) -> None:
        super().__init__(pontoon_conflist(daemon), workdir / "sandboxes")
        # The conflist's type names the plugin; ours is not in /usr/lib/cni.
        self.plugin_dir = workdir / "bin"
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        # As `pontoon cni install` installs it: the launcher without `site`.
        plugin = self.plugin_dir / "pontoon"
        if not plugin.exists():
            plugin.write_text(cni_cli.launcher())
            plugin.chmod(0o755)

    def up(self, spec: tuple[str, Path, int]) -> Handle:
        cid, sandbox, index = spec
        netns.create(sandbox)
        conf = self._conf(self.conflist["plugins"][0], index, None)
        result = exec_plugin(self.plugin_dir / "pontoon", "ADD", cid, sandbox, conf)
        return cid, sandbox, (index, result)

    def down(self, handle: Handle) -> None:
        cid, sandbox, (index, result) = handle
        conf = self._conf(self.conflist["plugins"][0], index, result)
        exec_plugin(self.plugin_dir / "pontoon", "DEL", cid, sandbox, conf)
        netns.remove(sandbox)


class NetavarkHarness:
    """netavark 1.4 as podman drives it: `--config DIR setup NETNS` with the
    network options on stdin, `teardown` with the same options."""

    def __init__(self, workdir: Path) -> None:
        self.sandboxes = workdir / "sandboxes"
        self.sandboxes.mkdir(parents=True, exist_ok=True)
        self.confdir = workdir / "netavark"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETAVARK_FW": "iptables",
            "DBUS_SYSTEM_BUS_ADDRESS": "",  # never reach the host's firewalld
        }

    def prepare(self, index: int) -> tuple[str, Path, str]:
        cid = f"{index:064x}"
        net = NETAVARK_SUBNET
        options = {
            "container_id": cid,
            "container_name": f"c{index}",
            "port_mappings": [{"container_port": 80, "host_ip": "", "host_port": port_of(index),
                               "protocol": "tcp", "range": 1}],
            "networks": {"ptbench": {"interface_name": "eth0",
                                     "static_ips": [str(net.network_address + 2 + index)]}},
            "network_info": {"ptbench": {
                "name": "ptbench", "id": "ab" * 32, "driver": "bridge",
                "network_interface": "ptbnv0", "ipv6_enabled": False, "internal": False,
                "dns_enabled": False,
                "subnets": [{"subnet": str(net), "gateway": str(net.network_address + 1)}],
            }},
        }  # fmt: skip
        return cid, self.sandboxes / cid[-12:], json.dumps(options)

    def _run(self, verb: str, sandbox: Path, options: str) -> None:
        cmd = [str(NETAVARK), "--config", str(self.confdir), verb, str(sandbox)]
        proc = subprocess.run(cmd, input=options, env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"netavark {verb} failed: {proc.stdout.strip()} {proc.stderr}")

    def up(self, spec: tuple[str, Path, str]) -> tuple[str, Path, str]:
        _, sandbox, options = spec
        netns.create(sandbox)
        self._run("setup", sandbox, options)
        return spec

    def down(self, handle: tuple[str, Path, str]) -> None:
        _, sandbox, options = handle
        self._run("teardown", sandbox, options)
        netns.remove(sandbox)

    def forget(self, handle: Any) -> None:
        pass

    def close(self) -> None:
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=["pontoon", "chain", "netavark"])
    p.add_argument("--host-netns", type=Path, required=True, help="/run/netns/ptb-NAME")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--daemon", default="", help="pontoond's -H URL (tool pontoon)")
    return p.parse_args(argv)


def make_harness(args: argparse.Namespace) -> Any:
    if args.tool == "pontoon":
        return PontoonCniHarness(args.workdir, args.daemon)
    if args.tool == "chain":
        return ConflistHarness(chain_conflist(args.workdir), args.workdir / "sandboxes")
    return NetavarkHarness(args.workdir)


def main() -> int:
    args = parse_args()
    if not inside_bench_host(args.host_netns):
        log(f"refusing to run: not inside {args.host_netns} (a ptb-* namespace)")
        return 2
    on_signals_clean_up()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        harness = make_harness(args)
        print(json.dumps({"ready": True}), flush=True)
        serve(Runner(harness))
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    finally:
        # Background containers are not DELeted one by one: unpinning their
        # namespaces takes their veths along, and the host namespace (bridge,
        # rules) goes next; pontoond is killed with its host.
        unmount_all_under(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
