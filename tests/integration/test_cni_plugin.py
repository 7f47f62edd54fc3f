"""pontoon-cni driven exactly as the CNI spec says (environment + stdin),
from the runtime's network namespace (a make_host host), against a real
pontoond, with namespaces made by `unshare --net=FILE` as a runtime makes
them. Chaining runs Debian's plugins through a small libcni-like runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pontoon.lab import SimHost
from tests.integration.helpers import (
    HOST_ADDR,
    add_outside,
    can_ping,
    in_ns,
    inspect,
    resolve,
    snapshot,
)
from tests.integration.portmap_helpers import PROBE, SERVER

pytestmark = pytest.mark.integration

PLUGIN = Path(sys.executable).parent / "pontoon-cni"
PONTOON = Path(sys.executable).parent / "pontoon"
DEBIAN_PLUGINS = Path("/usr/lib/cni")
SUBNET = "10.60.0.0/24"


# -- the runtime's side -----------------------------------------------------------------


def cni(
    host: SimHost,
    command: str,
    conf: dict[str, Any],
    container: str = "",
    netns: Path | str = "",
    ifname: str = "eth0",
    args: str = "",
    plugin: Path = PLUGIN,
    cni_path: str = "",
) -> tuple[int, Any]:
    """One plugin execution as a runtime does it: CNI_* in a clean
    environment, the configuration on stdin, in the runtime's namespace."""
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": cni_path or "/dev/null"}
    if container:
        env |= {"CNI_CONTAINERID": container, "CNI_IFNAME": ifname, "CNI_NETNS": str(netns)}
    if args:
        env["CNI_ARGS"] = args
    proc = subprocess.run(
        ["nsenter", f"--net={host.netns}", "--", str(plugin)],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def plugin_conf(host: SimHost, network: str = "web", version: str = "1.0.0", **extra: Any) -> dict:
    return {
        "cniVersion": version,
        "name": f"cni-{network}",
        "type": "pontoon",
        "network": network,
        "host": host.host_url,
        **extra,
    }


def run_conflist(
    host: SimHost,
    conflist: dict[str, Any],
    command: str,
    container: str,
    netns: Path | str,
    bin_dir: Path,
    runtime_config: dict[str, Any] | None = None,
    cached: Any = None,
) -> Any:
    """libcni's AddNetworkList / CheckNetworkList / DelNetworkList: each
    plugin in order (DEL: reversed), with name, cniVersion, the runtimeConfig
    its capabilities allow and the previous result injected."""
    plugins = conflist["plugins"]
    order = list(reversed(plugins)) if command == "DEL" else plugins
    prev = None if command == "ADD" else cached
    for plugin in order:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf |= {"name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        caps = plugin.get("capabilities") or {}
        wanted = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
        if wanted:
            conf["runtimeConfig"] = wanted
        if prev is not None:
            conf["prevResult"] = prev
        rc, out = cni(host, command, conf, container, netns,
                      plugin=bin_dir / plugin["type"], cni_path=str(bin_dir))  # fmt: skip
        assert rc == 0, (plugin["type"], command, out)
        if command == "ADD":
            prev = out
    return prev


@pytest.fixture
def servers() -> Iterator[Callable[[Path, str], None]]:
    """servers(netns, "80/tcp"): portmap_helpers.SERVER in a namespace, killed by PID after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(netns: Path, *ports: str) -> None:
        started.append(
            subprocess.Popen(
                ["nsenter", f"--net={netns}", "--", sys.executable, "-c", SERVER, *ports]
            )
        )

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def probe(where: SimHost, addr: str, port: int) -> str:
    return where.sh("python3", "-c", PROBE, addr, str(port), "tcp", "5", check=False).stdout


def web_host(make_host: Callable[..., SimHost], *daemon_args: str) -> SimHost:
    host = make_host(*daemon_args)
    host.cli("network", "create", "--subnet", SUBNET, "web")
    return host


# -- the verbs ---------------------------------------------------------------------------


def test_version_answers_every_supported_version_without_a_daemon(make_host):
    host = make_host(start=False)
    rc, out = cni(host, "VERSION", {"cniVersion": "1.1.0"})
    assert rc == 0
    assert out == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del_in_each_result_version(make_host, foreign_ns, version):
    host = web_host(make_host)
    clean = snapshot(host)
    ns = foreign_ns(host, "v")
    conf = plugin_conf(host, version=version)

    rc, result = cni(host, "ADD", conf, "ctr1", ns)
    assert rc == 0, result
    assert result["cniVersion"] == version
    veth = inspect(host, "web")["Containers"]["ctr1"]["HostInterface"]
    assert result["interfaces"] == [
        {"name": "eth0", "mac": result["interfaces"][0]["mac"], "sandbox": str(ns)},
        {"name": veth},  # the host end, for `bandwidth`
    ]
    (ip,) = result["ips"]
    assert ip["address"].startswith("10.60.0.") and ip["gateway"] == "10.60.0.1"
    assert ip["interface"] == 0
    assert ("version" in ip) == (version == "0.4.0")
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.60.0.1"}]
    assert result["dns"] == {"nameservers": ["127.0.0.11"]}
    assert ip["address"] in in_ns(ns, "ip", "-o", "-4", "addr", "show", "eth0").stdout

    assert cni(host, "CHECK", {**conf, "prevResult": result}, "ctr1", ns) == (0, None)
    # ADD fails when the interface exists; the first attachment is untouched.
    rc, err = cni(host, "ADD", conf, "ctr1", ns)
    assert rc == 1 and err["code"] == 999 and "already attached to web" in err["msg"]
    assert ip["address"] in in_ns(ns, "ip", "-o", "-4", "addr", "show", "eth0").stdout

    assert cni(host, "DEL", {**conf, "prevResult": result}, "ctr1", ns) == (0, None)
    assert cni(host, "DEL", conf, "ctr1", ns) == (0, None)  # idempotent
    rc, err = cni(host, "CHECK", {**conf, "prevResult": result}, "ctr1", ns)
    assert rc == 1 and err["code"] == 3
    assert "eth0" not in in_ns(ns, "ip", "-o", "link").stdout
    assert snapshot(host) == clean


def test_add_fails_when_the_namespace_already_has_the_interface(make_host, foreign_ns):
    host = web_host(make_host)
    clean = snapshot(host)
    ns = foreign_ns(host, "taken")
    in_ns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    rc, err = cni(host, "ADD", plugin_conf(host), "ctr1", ns)
    assert rc == 1 and err["msg"] and "\n" not in err["msg"]
    assert snapshot(host) == clean


def test_two_networks_in_one_container_and_del_after_a_failed_add(make_host, foreign_ns):
    """DEL is by owner, network and ifname: the runtime's clean-up DEL after a
    refused ADD leaves the container's other network alone."""
    host = web_host(make_host)
    host.cli("network", "create", "--subnet", "10.61.0.0/24", "back")
    ns = foreign_ns(host, "two")
    web, back = plugin_conf(host), plugin_conf(host, "back")
    assert cni(host, "ADD", web, "ctr2", ns)[0] == 0
    rc, _ = cni(host, "ADD", back, "ctr2", ns, ifname="eth0")
    assert rc == 1
    assert cni(host, "DEL", back, "ctr2", ns, ifname="eth0") == (0, None)
    assert "10.60.0." in in_ns(ns, "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert cni(host, "ADD", back, "ctr2", ns, ifname="eth1")[0] == 0
    assert cni(host, "DEL", web, "ctr2", ns) == (0, None)
    links = in_ns(ns, "ip", "-o", "link").stdout
    assert "eth1" in links and "eth0" not in links
    assert cni(host, "DEL", back, "ctr2", ns, ifname="eth1") == (0, None)


def test_name_resolution_ping_and_a_published_port(make_host, foreign_ns, servers):
    host = web_host(make_host)
    outside = add_outside(make_host, host)
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    clean = snapshot(host)
    ns = foreign_ns(host, "pod")
    conf = plugin_conf(host, runtimeConfig={
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "aliases": {"cni-web": ["db"]},
        "mac": "02:00:00:00:aa:01",
    })  # fmt: skip
    rc, result = cni(host, "ADD", conf, "0123456789abcdef", ns, args="IgnoreUnknown=1;"
                     "K8S_POD_NAME=pod1;K8S_POD_NAMESPACE=default;IP=10.60.0.77")  # fmt: skip
    assert rc == 0, result
    assert result["ips"][0]["address"] == "10.60.0.77/24"
    assert result["interfaces"][0]["mac"] == "02:00:00:00:aa:01"

    c1 = inspect(host, "c1")["NetworkSettings"]["Networks"]["web"]["IPAddress"]
    assert resolve(ns, "c1") == [c1]
    assert in_ns(ns, "ping", "-c1", "-W2", c1, check=False).returncode == 0
    assert can_ping(host, "c1", "pod1") and can_ping(host, "c1", "db")

    servers(ns, "80/tcp")
    assert "peer=" in probe(outside, HOST_ADDR, 18080)

    assert cni(host, "DEL", {**conf, "prevResult": result}, "0123456789abcdef", ns) == (0, None)
    assert snapshot(host) == clean


def test_a_second_interface_on_the_same_network_is_refused_and_its_del_harmless(
    make_host, foreign_ns
):
    """Multus may ADD one container twice with different ifnames; on one
    pontoon network that would give the container's name two addresses and
    two default routes, so the second ADD is refused (as Docker refuses a
    second connect), and the runtime's clean-up DEL leaves the first alone."""
    host = web_host(make_host)
    ns = foreign_ns(host, "twice")
    conf = plugin_conf(host)
    rc, first = cni(host, "ADD", conf, "multi", ns)
    assert rc == 0, first
    clean = snapshot(host)
    rc, err = cni(host, "ADD", conf, "multi", ns, ifname="net1")
    assert rc == 1 and err["code"] == 999
    assert err["msg"].endswith("already attached to web as eth0: one interface per network")
    assert snapshot(host) == clean
    assert cni(host, "DEL", conf, "multi", ns, ifname="net1") == (0, None)
    assert snapshot(host) == clean
    assert in_ns(ns, "ping", "-c1", "-W2", "10.60.0.1", check=False).returncode == 0
    assert cni(host, "CHECK", {**conf, "prevResult": first}, "multi", ns) == (0, None)
    assert cni(host, "DEL", conf, "multi", ns) == (0, None)


def test_del_succeeds_when_namespace_or_network_is_gone(make_host, foreign_ns):
    host = web_host(make_host)
    host.cli("network", "create", "--subnet", "10.61.0.0/24", "back")
    clean = snapshot(host)
    ns = foreign_ns(host, "gone")
    conf = plugin_conf(host)
    assert cni(host, "ADD", conf, "ctr3", ns)[0] == 0
    # The runtime deletes the namespace first, and DELs with an empty CNI_NETNS.
    subprocess.run(["umount", str(ns)], check=True)
    ns.unlink()
    assert cni(host, "DEL", conf, "ctr3", "") == (0, None)
    assert snapshot(host) == clean
    # A network removed since: DEL has nothing to do and says so by succeeding.
    host.cli("network", "rm", "back")
    assert cni(host, "DEL", plugin_conf(host, "back"), "ctr3", "") == (0, None)


def test_gc_detaches_only_this_networks_stale_attachments(make_host, foreign_ns):
    host = web_host(make_host)
    host.cli("network", "create", "--subnet", "10.61.0.0/24", "back")
    web, back = plugin_conf(host, version="1.1.0"), plugin_conf(host, "back", version="1.1.0")
    for name in ("keep", "stale"):
        assert cni(host, "ADD", web, name, foreign_ns(host, name))[0] == 0
    assert cni(host, "ADD", back, "other", foreign_ns(host, "other"))[0] == 0
    valid = {"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert cni(host, "GC", {**web, **valid}) == (0, None)
    listed = host.cli_json("network", "inspect", "web")[0]["Containers"]
    assert sorted(listed) == ["keep"]
    assert sorted(host.cli_json("network", "inspect", "back")[0]["Containers"]) == ["other"]


def test_errors_are_the_specs_json_and_leave_nothing(make_host, foreign_ns, tmp_path):
    host = web_host(make_host)
    clean = snapshot(host)
    ns = foreign_ns(host, "err")
    good = plugin_conf(host)
    cases: list[tuple[Any, dict[str, str], int, str]] = [
        ("{not json", {}, 6, "cannot decode"),
        ({**good, "cniVersion": "9.9.9"}, {}, 1, "incompatible CNI version"),
        ({k: v for k, v in good.items() if k != "network"}, {}, 7, "needs `network`"),
        ({**good, "network": "nope"}, {}, 7, "no such network: nope"),
        (good, {"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
        (good, {"CNI_IFNAME": "a/b"}, 4, "CNI_IFNAME"),
        (good, {"CNI_NETNS": str(tmp_path / "missing")}, 4, "CNI_NETNS"),
        (good, {"CNI_ARGS": "FOO=1"}, 4, "unknown argument FOO"),
        (good, {"CNI_ARGS": "IP=10.99.0.5"}, 7, "not usable in network web"),
        ({**good, "runtimeConfig": {"portMappings": [{"hostPort": 0}]}}, {}, 7, "port mapping"),
        (good, {"CNI_COMMAND": "FROB"}, 4, "CNI_COMMAND"),
    ]
    for conf, env, code, words in cases:
        stdin = conf if isinstance(conf, str) else json.dumps(conf)
        full = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad",
                "CNI_IFNAME": "eth0", "CNI_NETNS": str(ns), **env}  # fmt: skip
        proc = subprocess.run(["nsenter", f"--net={host.netns}", "--", str(PLUGIN)],
                              input=stdin, env=full, capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 1, (env, proc.stdout)
        out = json.loads(proc.stdout)
        assert (out["code"], words in out["msg"]) == (code, True), (conf, env, out)
        assert "Traceback" not in proc.stdout + proc.stderr and "\n" not in out["msg"]
    assert snapshot(host) == clean

    assert cni(host, "STATUS", plugin_conf(host, version="1.1.0")) == (0, None)
    rc, err = cni(host, "STATUS", plugin_conf(host, "nope", version="1.1.0"))
    assert (rc, err["code"]) == (1, 50)
    host.stop_daemon()
    rc, err = cni(host, "STATUS", plugin_conf(host, version="1.1.0"))
    assert (rc, err["code"], "cannot reach pontoond" in err["msg"]) == (1, 50, True)
    rc, err = cni(host, "ADD", good, "ctr4", ns)
    assert (rc, err["code"], err["cniVersion"]) == (1, 11, "1.0.0")
    rc, err = cni(host, "DEL", good, "ctr4", ns)
    assert (rc, err["code"]) == (1, 11)


# -- chaining ------------------------------------------------------------------------------


def test_chained_with_debians_tuning_portmap_and_firewall(make_host, foreign_ns, servers, tmp_path):
    host = web_host(make_host)
    outside = add_outside(make_host, host)
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    subprocess.run([str(PONTOON), "-H", host.host_url, "cni", "install", "--bin-dir",
                    str(bin_dir), "--conf-dir", str(conf_dir), "web"], check=True)  # fmt: skip
    for name in ("tuning", "portmap", "firewall"):
        (bin_dir / name).symlink_to(DEBIAN_PLUGINS / name)
    conflist = json.loads((conf_dir / "pontoon-web.conflist").read_text())
    assert conflist["cniVersion"] == "1.0.0" and conflist["plugins"][0]["network"] == "web"
    # portmap publishes here, so pontoon is not told about the ports.
    del conflist["plugins"][0]["capabilities"]["portMappings"]
    conflist["plugins"] += [
        {"type": "tuning", "mtu": 1400},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "firewall", "backend": "iptables"},
    ]
    clean = {k: v for k, v in snapshot(host).items() if k != "nft"}
    ns = foreign_ns(host, "chain")
    rc_cfg = {"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]}

    result = run_conflist(host, conflist, "ADD", "chained", ns, bin_dir, rc_cfg)
    assert result["interfaces"][0]["sandbox"] == str(ns)
    assert "mtu 1400" in in_ns(ns, "ip", "link", "show", "eth0").stdout
    servers(ns, "80/tcp")
    assert "peer=" in probe(outside, HOST_ADDR, 18081)
    # Debian's portmap (1.1.1) fails its own CHECK on an IPv4-only container
    # ("could not check ipv6 dnat"), so CHECK runs the chain without it.
    checked = {**conflist, "plugins": conflist["plugins"][:2]}
    run_conflist(host, checked, "CHECK", "chained", ns, bin_dir, rc_cfg, cached=result)

    run_conflist(host, conflist, "DEL", "chained", ns, bin_dir, rc_cfg, cached=result)
    run_conflist(host, conflist, "DEL", "chained", ns, bin_dir, rc_cfg, cached=result)
    address = result["ips"][0]["address"].split("/")[0]
    assert address not in host.sh("nft", "list", "ruleset").stdout
    assert {k: v for k, v in snapshot(host).items() if k != "nft"} == clean

    subprocess.run([str(PONTOON), "cni", "uninstall", "--bin-dir", str(bin_dir),
                    "--conf-dir", str(conf_dir)], check=True)  # fmt: skip
    assert sorted(p.name for p in bin_dir.iterdir()) == ["firewall", "portmap", "tuning"]
    assert list(conf_dir.iterdir()) == []


def test_chained_with_debians_bandwidth_which_shapes_the_host_veth(make_host, foreign_ns):
    host = web_host(make_host)
    bin_dir = Path(host.exec_root) / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "pontoon").symlink_to(PLUGIN)
    (bin_dir / "bandwidth").symlink_to(DEBIAN_PLUGINS / "bandwidth")
    conflist = {"cniVersion": "1.0.0", "name": "web", "plugins": [
        {"type": "pontoon", "network": "web", "host": host.host_url},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ]}  # fmt: skip
    limits = {"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000,
                            "egressRate": 4_000_000, "egressBurst": 40_000}}  # fmt: skip
    clean = snapshot(host)
    ns = foreign_ns(host, "shaped")

    result = run_conflist(host, conflist, "ADD", "shaped", ns, bin_dir, limits)
    veth = inspect(host, "web")["Containers"]["shaped"]["HostInterface"]
    assert {"name": veth} in result["interfaces"]
    qdiscs = host.sh("tc", "qdisc", "show", "dev", veth).stdout
    assert "tbf" in qdiscs and "ingress" in qdiscs, qdiscs
    ifbs = host.sh("ip", "-o", "link", "show", "type", "ifb").stdout
    assert ifbs.strip(), "bandwidth made no ifb for egress"
    assert in_ns(ns, "ping", "-c1", "-W2", "10.60.0.1", check=False).returncode == 0
    run_conflist(host, conflist, "CHECK", "shaped", ns, bin_dir, limits, cached=result)

    run_conflist(host, conflist, "DEL", "shaped", ns, bin_dir, limits, cached=result)
    run_conflist(host, conflist, "DEL", "shaped", ns, bin_dir, limits, cached=result)
    assert host.sh("ip", "-o", "link", "show", "type", "ifb").stdout == ""
    assert host.sh("ip", "link", "show", veth, check=False).returncode != 0
    assert snapshot(host) == clean


def test_pontoon_after_another_plugin_passes_its_prev_result_through(make_host, foreign_ns):
    host = web_host(make_host)
    ns = foreign_ns(host, "second")
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo0", "sandbox": str(ns)}],
        "ips": [{"address": "192.0.2.5/32", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]},
    }
    rc, result = cni(host, "ADD", {**plugin_conf(host), "prevResult": prev}, "ctr5", ns)
    assert rc == 0, result
    assert [i["name"] for i in result["interfaces"]][:2] == ["lo0", "eth0"]
    assert "sandbox" not in result["interfaces"][2]  # the host's veth end
    assert result["ips"][0] == prev["ips"][0] and result["ips"][1]["interface"] == 1
    assert result["dns"]["nameservers"] == ["127.0.0.11", "192.0.2.53"]
    assert cni(host, "DEL", plugin_conf(host), "ctr5", ns) == (0, None)


# -- ownership: ps, network inspect, topology, trace -------------------------------------------


def test_cni_attachments_show_with_their_owner_and_trace_from_and_to_them(make_host, foreign_ns):
    host = web_host(make_host)
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    pod, other = foreign_ns(host, "own1"), foreign_ns(host, "own2")
    long_id = "0123456789abcdef0123"
    rc, first = cni(host, "ADD", plugin_conf(host), long_id, pod, args="K8S_POD_NAME=pod1")
    assert rc == 0, first
    rc, second = cni(host, "ADD", plugin_conf(host), "ctr-b", other)
    assert rc == 0, second
    pod_ip, other_ip = (r["ips"][0]["address"].split("/")[0] for r in (first, second))

    listed = {e["Name"]: e for e in host.cli_json("ps", "--format", "json")}
    assert sorted(listed) == ["c1", "ctr-b", "pod1"]
    assert listed["pod1"]["Owner"] == {"Kind": "cni", "Id": long_id, "Name": "pod1"}
    assert (listed["pod1"]["Networks"], listed["pod1"]["IPs"]) == (["web"], [pod_ip])
    assert "Owner" not in listed["c1"]
    assert [e["Name"] for e in host.cli_json("ps", "--owner", "cni", "--format", "json")] == [
        "pod1", "ctr-b"]  # fmt: skip
    assert [e["Name"] for e in host.cli_json("ps", "--owner", "pontoon", "--format", "json")] == [
        "c1"]  # fmt: skip
    table = host.cli("ps").stdout
    assert "OWNER" in table and "0123456789ab" in table and "cni" in table

    members = host.cli_json("network", "inspect", "web")[0]["Containers"]
    assert members[long_id]["Owner"] == {"Kind": "cni", "Id": long_id, "Name": "pod1"}
    assert members[long_id]["IPv4Address"] == first["ips"][0]["address"]

    topo = host.cli_json("topology", "--format", "json")["host"]
    (web,) = [n for n in topo["networks"] if n["name"] == "web"]
    owners = {ep["container"]: (ep["owner"], ep["owner_id"]) for ep in web["endpoints"]}
    assert owners["pod1"] == ("cni", long_id) and owners["c1"][0] == "pontoon"
    assert "pod1:eth0" in host.cli("topology").stdout
    assert "(cni 0123456789ab)" in host.cli("topology").stdout

    def trace(*args: str) -> dict[str, Any]:
        return json.loads(host.cli("trace", "--json", *args).stdout)

    attachment_id = host.cli_json("ps", "--owner", "cni", "--format", "json")[1]["Attachments"][0]
    for source, target in [("pod1", "c1"), ("c1", long_id), (long_id[:12], other_ip),
                           ("c1", attachment_id), (attachment_id, "pod1"),
                           (pod_ip, "c1")]:  # fmt: skip
        assert trace("--from", source, "--to", target)["verdict"] == "delivered", (source, target)

    for ns, cid in ((pod, long_id), (other, "ctr-b")):
        assert cni(host, "DEL", plugin_conf(host), cid, ns) == (0, None)
    assert host.cli_json("ps", "--owner", "cni", "--format", "json") == []
