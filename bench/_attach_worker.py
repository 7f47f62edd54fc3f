r"""Attach/detach timings measured inside one simulated host's namespace.

Run by bench/attach.py as

    nsenter --net=/run/netns/ptb-HOST -- .venv/bin/python bench/_attach_worker.py \
        TOOL --host-netns /run/netns/ptb-HOST --workdir DIR

and driven over stdin/stdout, one JSON object a line: it answers {"ready"},
then {"op": "fill", "size": N} (attach background containers until N are) with
{"fill_s"}, {"op": "cycle", "n": K} (time K bring-ups and tear-downs of one
more container) with {"up_ms": [...], "down_ms": [...]}, and {"op": "quit"}
with clean-up. Errors come back as {"error"}.

with TOOL one of:
  pontoon   the daemon's engine, in process: netns.create + Engine.attach to
            bring up, Engine.detach_owner + netns.remove to tear down (what
            every front end does);
  cni       the reference CNI plugins (bridge + host-local), ADD/DEL;
  netavark  podman's netavark, setup/teardown.

For cni and netavark the container namespace is created and removed with the
same code pontoon uses (pontoon.sandbox.netns: unshare + bind mount in a
thread, what `ip netns add` does without the fork), and both count in the
timings, as they do for pontoon.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# bench/ holds modules named like packages (dns.py shadows dnspython): keep it
# off the front of the path and find our helpers at its end.
HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.append(str(HERE))

from common import (  # noqa: E402
    Runner,
    inside_bench_host,
    log,
    on_signals_clean_up,
    unmount_all_under,
)

from pontoon.core.model import Owner, new_id  # noqa: E402
from pontoon.sandbox import netns  # noqa: E402

CNI_DIR = Path("/usr/lib/cni")
NETAVARK = Path("/usr/lib/podman/netavark")
CNI_SUBNET = "10.88.0.0/16"
NETAVARK_SUBNET = ipaddress.IPv4Network("10.89.0.0/16")


# ---------------------------------------------------------------- pontoon


class PontoonHarness:
    """The daemon's composition (pontoon/daemon/main.py serve()) minus the API,
    driven in process on our own event loop."""

    def __init__(self, workdir: Path) -> None:
        from pontoon.daemon.config import DaemonConfig

        self.config = DaemonConfig(
            root=workdir / "root", exec_root=workdir / "run", socket=workdir / "unused.sock"
        )
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._open())

    async def _open(self) -> None:
        from pontoon.engine.engine import Engine
        from pontoon.engine.kernel import Kernel
        from pontoon.engine.reconcile import reconcile
        from pontoon.store.sqlite import SQLiteStore

        self.config.netns_dir.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteStore(self.config.db_path)
        self.kernel = Kernel(self.config.firewall_backend)
        await self.kernel.call(self.kernel.setup)
        self.engine = Engine(self.config, self.store, self.kernel)
        await self.engine.state.load(lambda _: "")
        await reconcile(self.engine, set())
        async with self.engine.lock:
            await self.engine.networks.ensure_default(self.config.bip)

    def prepare(self, index: int) -> tuple[Owner, Path]:
        owner_id = new_id()
        return Owner("pontoon", owner_id, f"b{index}"), self.config.netns_dir / owner_id[:12]

    def up(self, handle: tuple[Owner, Path]) -> tuple[Owner, Path]:
        return self.loop.run_until_complete(self._up(handle))

    async def _up(self, handle: tuple[Owner, Path]) -> tuple[Owner, Path]:
        """A front end's bring-up: the namespace, then its attachment."""
        from pontoon.engine.attachments import AttachRequest

        owner, path = handle
        await self.kernel.call(netns.create, path)
        await self.engine.attach(AttachRequest("bridge", str(path), "eth0", owner))
        return handle

    def down(self, handle: tuple[Owner, Path]) -> None:
        owner, path = handle
        self.loop.run_until_complete(self.engine.detach_owner(owner.key))
        self.loop.run_until_complete(self.kernel.call(netns.remove, path))

    def forget(self, handle: tuple[Owner, Path]) -> None:
        """Nothing: the engine keeps no record once the owner detached."""

    def close(self) -> None:
        async def work() -> None:
            await self.engine.close()
            await self.store.close()

        try:
            self.loop.run_until_complete(work())
            self.kernel.close()
        finally:
            self.loop.close()


# -------------------------------------------------------------------- CNI


def cni_config(workdir: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "ptbench",
            "type": "bridge",
            "bridge": "ptbcni0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": {
                "type": "host-local",
                "subnet": CNI_SUBNET,
                "dataDir": str(workdir / "cni-ipam"),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
    )


def run_plugin(cmd: list[str], stdin: str, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout.strip()} "
            f"{proc.stderr.strip()}"
        )


class CniHarness:
    def __init__(self, workdir: Path) -> None:
        self.sandboxes = workdir / "sandboxes"
        self.sandboxes.mkdir(parents=True, exist_ok=True)
        self.config = cni_config(workdir)

    def _env(self, command: str, cid: str, sandbox: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": str(sandbox),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(CNI_DIR),
        }

    def prepare(self, index: int) -> tuple[str, Path]:
        cid = f"ptb{index:09d}"
        return cid, self.sandboxes / cid

    def up(self, spec: tuple[str, Path]) -> tuple[str, Path]:
        cid, sandbox = spec
        netns.create(sandbox)
        run_plugin([str(CNI_DIR / "bridge")], self.config, self._env("ADD", cid, sandbox))
        return spec

    def down(self, handle: tuple[str, Path]) -> None:
        cid, sandbox = handle
        run_plugin([str(CNI_DIR / "bridge")], self.config, self._env("DEL", cid, sandbox))
        netns.remove(sandbox)

    def forget(self, handle: tuple[str, Path]) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------- netavark


def netavark_options(cid: str, ip: str) -> str:
    net = NETAVARK_SUBNET
    return json.dumps(
        {
            "container_id": cid,
            "container_name": f"c{cid[-9:]}",
            "port_mappings": [],
            "networks": {"ptbench": {"interface_name": "eth0", "static_ips": [ip]}},
            "network_info": {
                "ptbench": {
                    "name": "ptbench",
                    "id": "ab" * 32,
                    "driver": "bridge",
                    "network_interface": "ptbnv0",
                    "subnets": [{"subnet": str(net), "gateway": str(net.network_address + 1)}],
                    "ipv6_enabled": False,
                    "internal": False,
                    "dns_enabled": False,
                }
            },
        }
    )


class NetavarkHarness:
    """netavark leaves IPAM to podman: addresses are handed out here, in order,
    which costs netavark nothing (podman's own IPAM is not in its figures)."""

    def __init__(self, workdir: Path) -> None:
        self.sandboxes = workdir / "sandboxes"
        self.sandboxes.mkdir(parents=True, exist_ok=True)
        self.confdir = workdir / "netavark"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETAVARK_FW": "iptables",  # what 1.4 picks anyway; no firewalld lookup
            "DBUS_SYSTEM_BUS_ADDRESS": "",  # never reach the host's firewalld
        }

    def _cmd(self, verb: str, sandbox: Path) -> list[str]:
        return [str(NETAVARK), "--config", str(self.confdir), verb, str(sandbox)]

    def prepare(self, index: int) -> tuple[str, Path]:
        cid = f"{index:064x}"
        ip = str(NETAVARK_SUBNET.network_address + 2 + index)
        return netavark_options(cid, ip), self.sandboxes / cid[-12:]

    def up(self, spec: tuple[str, Path]) -> tuple[str, Path]:
        options, sandbox = spec
        netns.create(sandbox)
        run_plugin(self._cmd("setup", sandbox), options, self.env)
        return spec

    def down(self, handle: tuple[str, Path]) -> None:
        options, sandbox = handle
        run_plugin(self._cmd("teardown", sandbox), options, self.env)
        netns.remove(sandbox)

    def forget(self, handle: tuple[str, Path]) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------- main

HARNESSES = {"pontoon": PontoonHarness, "cni": CniHarness, "netavark": NetavarkHarness}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=sorted(HARNESSES))
    p.add_argument("--host-netns", type=Path, required=True, help="/run/netns/ptb-NAME")
    p.add_argument("--workdir", type=Path, required=True)
    return p.parse_args(argv)


def handle(runner: Runner, request: dict[str, Any]) -> dict[str, Any]:
    if request["op"] == "fill":
        return {"fill_s": runner.fill(int(request["size"]))}
    if request["op"] == "cycle":
        ups, downs = runner.cycle(int(request["n"]))
        return {"up_ms": ups, "down_ms": downs}
    raise ValueError(f"unknown request {request!r}")


def serve(runner: Runner) -> None:
    """One JSON request per line on stdin, one JSON answer per line on stdout,
    until "quit" or end of input."""
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            return
        try:
            answer = handle(runner, request)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


def main() -> int:
    args = parse_args()
    if not inside_bench_host(args.host_netns):
        log(f"refusing to run: not inside {args.host_netns} (a ptb-* namespace)")
        return 2
    # ^C, or SIGTERM from the parent, must still run the clean-up below.
    on_signals_clean_up()
    args.workdir.mkdir(parents=True, exist_ok=True)
    harness: Any = None
    try:
        harness = HARNESSES[args.tool](args.workdir)
        print(json.dumps({"ready": True}), flush=True)
        serve(Runner(harness))
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    finally:
        try:
            if harness is not None:
                harness.close()
        finally:
            # Background containers are not detached one by one (500 CNI DELs
            # take a minute): unpinning their namespaces takes their veths with
            # them, and the host namespace with its bridge and rules goes next.
            unmount_all_under(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
