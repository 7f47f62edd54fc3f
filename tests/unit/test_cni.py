"""The CNI plugin's pure logic: CNI_ARGS, the environment, runtimeConfig to
an attachment request, results per version, error JSON, its imports."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pontoon.cli import cni as cni_cli
from pontoon.frontends.cni import plugin, result
from pontoon.frontends.cni.protocol import (
    CniError,
    attach_request,
    parse_args,
    parse_config,
    parse_environment,
    port_spec,
    short_id,
)

DAEMON_ANSWER = {
    "Id": "5b0c",
    "interfaces": [{"name": "eth0", "mac": "02:42:0a:32:00:28", "sandbox": "/run/pontoon/netns/x"}],
    "ips": [
        {"address": "10.50.0.40/24", "interface": 0, "gateway": "10.50.0.1"},
        {"address": "fd00::28/64", "interface": 0, "gateway": "fd00::1"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.50.0.1"}],
    "dns": {"nameservers": ["127.0.0.11"]},
}


def code_of(call, *args, **kwargs) -> int:
    with pytest.raises(CniError) as err:
        call(*args, **kwargs)
    return err.value.code


def conf(**extra):
    return parse_config({"cniVersion": "1.0.0", "name": "podnet", "network": "web", **extra})


def env(**extra):
    base = {"CNI_CONTAINERID": "0123456789abcdef", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}
    return parse_environment({**base, **extra}, need_netns=True)


# -- arguments and environment -------------------------------------------------------------


def test_cni_args_known_unknown_and_ignored():
    assert parse_args("IP=10.0.0.5;K8S_POD_NAME=p") == {"IP": "10.0.0.5", "K8S_POD_NAME": "p"}
    assert parse_args("") == {}
    assert code_of(parse_args, "FOO=1") == 4
    assert parse_args("IgnoreUnknown=1;FOO=1")["FOO"] == "1"
    assert parse_args("IgnoreUnknown=true;FOO=1")["FOO"] == "1"
    assert code_of(parse_args, "IP") == 4


@pytest.mark.parametrize(
    "extra",
    [
        {"CNI_CONTAINERID": ""},
        {"CNI_CONTAINERID": "-starts-with-dash"},
        {"CNI_IFNAME": ""},
        {"CNI_IFNAME": "x" * 16},
        {"CNI_IFNAME": "a:b"},
        {"CNI_IFNAME": ".."},
        {"CNI_NETNS": ""},
    ],
)
def test_invalid_environment_is_code_4_naming_the_variable(extra):
    with pytest.raises(CniError) as err:
        env(**extra)
    assert err.value.code == 4 and next(iter(extra)) in err.value.msg


def test_del_needs_no_namespace():
    base = {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    assert parse_environment(base, need_netns=False).netns == ""


def test_config_validation_codes():
    assert code_of(parse_config, {"network": "web"}) == 7
    assert code_of(parse_config, {"cniVersion": "0.2.0", "network": "web"}) == 1
    assert code_of(parse_config, {"cniVersion": "1.0.0"}) == 7
    assert parse_config({"cniVersion": "1.0.0"}, need_network=False).network == ""
    assert code_of(parse_config, {"cniVersion": "1.0.0", "network": "w", "host": "tcp://x"}) == 7
    assert code_of(parse_config, {"cniVersion": "1.0.0", "network": "w", "prevResult": []}) == 7
    assert conf(unknownKey=1, host="unix:///run/p.sock").host == "unix:///run/p.sock"
    gc = conf(**{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert gc.valid_attachments == {("a", "eth0")}


# -- the attachment request ----------------------------------------------------------------


def test_owner_is_the_container_named_by_pod_or_short_id():
    assert attach_request(conf(), env())["Owner"] == {
        "Kind": "cni",
        "Id": "0123456789abcdef",
        "Name": "0123456789ab",
    }
    named = attach_request(conf(), env(CNI_ARGS="K8S_POD_NAME=web-1;IgnoreUnknown=1"))
    assert named["Owner"]["Name"] == "web-1"


@pytest.mark.parametrize(
    ("container_id", "name"),
    [
        ("f" * 64, "f" * 12),  # Podman, Docker: the short ID their users see
        ("default-t1", "default-t1"),  # ctr run --cni: NAMESPACE-ID, whole
        ("a.b" * 5, "a.ba.ba.ba.b"),  # not a DNS label: cut as before
        ("x" * 64, "x" * 12),
    ],
)
def test_a_container_without_a_pod_name_is_named_by_its_id(container_id: str, name: str):
    assert short_id(container_id) == name


def test_runtime_config_becomes_the_request():
    rc = {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"},
        ],
        "ips": ["10.50.0.9/24"],
        "mac": "02:AA:00:00:00:01",
        "dns": {"servers": ["192.0.2.53"], "searches": ["example"]},
        "aliases": {"podnet": ["db", "db", "cache"], "other": ["x"]},
    }
    body = attach_request(
        conf(runtimeConfig=rc), env(CNI_ARGS="IP=10.50.0.7;MAC=02:00:00:00:00:02")
    )
    assert body["Ports"] == ["8080:80/tcp", "127.0.0.1:5353:53/udp"]
    assert body["IPs"] == ["10.50.0.9"]  # the capability wins over CNI_ARGS
    assert body["MAC"] == "02:aa:00:00:00:01"
    assert body["Upstreams"] == ["192.0.2.53"]
    assert body["Aliases"] == ["db", "cache"]


def test_cni_args_address_and_mac_and_alias_list():
    body = attach_request(
        conf(runtimeConfig={"aliases": ["a1"]}),
        env(CNI_ARGS="IP=10.50.0.7/24,fd00::7;MAC=02:00:00:00:00:02"),
    )
    assert body["IPs"] == ["10.50.0.7", "fd00::7"]
    assert body["MAC"] == "02:00:00:00:00:02"
    assert body["Aliases"] == ["a1"]


@pytest.mark.parametrize(
    "mapping",
    [
        {"hostPort": 0, "containerPort": 80},
        {"hostPort": 80},
        {"hostPort": True, "containerPort": 80},
        {"hostPort": 80, "containerPort": 80, "hostIP": "nope"},
        {"hostPort": 80, "containerPort": 80, "hostIP": "fe80::1%eth0"},
        {"hostPort": 80, "containerPort": 80, "hostIP": "::ffff:10.0.0.1"},
        {"hostPort": 80, "containerPort": 80, "hostIP": "[::1]"},
        "80:80",
    ],
)
def test_bad_port_mappings_are_invalid_configuration(mapping):
    assert code_of(port_spec, mapping) == 7


@pytest.mark.parametrize(
    ("host_ip", "spec"),
    [
        ("", "8080:80/udp"),  # both families, as `-p 8080:80` (Docker 27+)
        ("0.0.0.0", "0.0.0.0:8080:80/udp"),
        ("::", "[::]:8080:80/udp"),
        ("::1", "[::1]:8080:80/udp"),
        ("2001:DB8:0::7", "[2001:db8::7]:8080:80/udp"),
    ],
)
def test_port_mappings_of_either_family_become_specs(host_ip: str, spec: str):
    mapping = {"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": host_ip}
    assert port_spec(mapping) == spec


def test_bad_addresses_and_macs_are_invalid_configuration():
    assert code_of(attach_request, conf(runtimeConfig={"ips": ["10.0.0.300"]}), env()) == 7
    assert code_of(attach_request, conf(runtimeConfig={"mac": "zz"}), env()) == 7
    assert code_of(attach_request, conf(runtimeConfig={"aliases": "db"}), env()) == 7


# -- results -------------------------------------------------------------------------------


def test_results_per_version():
    ours = result.from_daemon(DAEMON_ANSWER, "/var/run/netns/pod", {"searches": ["example"]})
    assert ours["interfaces"][0]["sandbox"] == "/var/run/netns/pod"
    assert ours["dns"] == {"nameservers": ["127.0.0.11"], "search": ["example"]}
    old = result.for_version(ours, "0.4.0")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert old["cniVersion"] == "0.4.0"
    for version in ("1.0.0", "1.1.0"):
        new = result.for_version(ours, version)
        assert new["cniVersion"] == version
        assert all("version" not in ip for ip in new["ips"])
    # A 0.4.0 result converted back drops the version again.
    assert "version" not in result.for_version(old, "1.0.0")["ips"][0]


def test_merge_keeps_the_previous_result_in_front():
    ours = result.from_daemon(DAEMON_ANSWER, "/ns", {})
    prev = {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "br0"}, {"name": "veth0"}],
        "ips": [{"version": "4", "address": "192.0.2.5/24", "interface": 1}],
        "dns": {"nameservers": ["192.0.2.53", "127.0.0.11"]},
    }
    merged = result.merge(prev, ours)
    assert [i["name"] for i in merged["interfaces"]] == ["br0", "veth0", "eth0"]
    assert [ip["interface"] for ip in merged["ips"]] == [1, 2, 2]
    assert merged["dns"]["nameservers"] == ["127.0.0.11", "192.0.2.53"]
    assert result.merge(None, ours) is ours


def test_addresses_of_a_sandbox_interface():
    ours = result.from_daemon(DAEMON_ANSWER, "/ns", {})
    assert result.addresses_of(ours, "eth0") == {"10.50.0.40/24", "fd00::28/64"}
    assert result.addresses_of(ours, "eth1") == set()
    assert result.addresses_of(None, "eth0") == set()


# -- the protocol --------------------------------------------------------------------------


def run(environ: dict[str, str], stdin: bytes) -> tuple[int, dict]:
    out = io.StringIO()
    code = plugin.run(environ, io.BytesIO(stdin), out)
    return code, json.loads(out.getvalue())


def test_version_answers_even_undecodable_input():
    code, out = run({"CNI_COMMAND": "VERSION"}, b"garbage")
    assert code == 0 and out["cniVersion"] == "1.1.0" and "0.4.0" in out["supportedVersions"]
    assert run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')[1]["cniVersion"] == "0.4.0"


def test_errors_are_the_specs_json():
    code, out = run({"CNI_COMMAND": "ADD"}, b"{nope")
    assert code == 1 and out == {
        "cniVersion": "1.1.0",
        "code": 6,
        "msg": out["msg"],
        "details": out["details"],
    }
    code, out = run({}, b'{"cniVersion":"0.4.0","network":"web"}')
    assert (code, out["code"], out["cniVersion"]) == (1, 4, "0.4.0")
    assert "CNI_COMMAND" in out["msg"]


def test_check_needs_0_4_0():
    environ = {
        "CNI_COMMAND": "CHECK",
        "CNI_CONTAINERID": "c",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": "/x",
    }
    code, out = run(environ, b'{"cniVersion":"0.3.1","network":"web"}')
    assert (code, out["code"]) == (1, 1)


def test_a_bug_is_reported_as_json_not_a_traceback(monkeypatch):
    def boom(*args):
        raise KeyError("Owner")

    monkeypatch.setattr(plugin, "dispatch", boom)
    code, out = run({"CNI_COMMAND": "ADD"}, b'{"cniVersion":"1.0.0","network":"web"}')
    assert (code, out["code"]) == (1, 999) and "KeyError" in out["msg"]


def test_the_plugin_imports_only_the_standard_library():
    code = (
        "import sys, pontoon.frontends.cni.plugin as p, pontoon.client\n"
        "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())  # fmt: skip
    heavy = {"aiohttp", "click", "pyroute2", "rich", "dns", "nftables", "aetcd", "yarl"}
    assert loaded & heavy == set()


# -- pontoon cni install / uninstall -----------------------------------------------------------


def test_conflist_shape():
    listed = cni_cli.conflist("web", None)
    assert listed["cniVersion"] == "1.0.0" and listed["name"] == "web"
    (entry,) = listed["plugins"]
    assert entry["type"] == "pontoon" and entry["network"] == "web" and "host" not in entry
    assert set(entry["capabilities"]) == {"portMappings", "ips", "mac", "dns", "aliases"}
    assert (
        cni_cli.conflist("web", "unix:///run/x.sock")["plugins"][0]["host"] == "unix:///run/x.sock"
    )


def test_uninstall_removes_only_pontoons_files(tmp_path: Path):
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (bin_dir / "pontoon").symlink_to("/opt/x/.venv/bin/pontoon-cni")
    (conf_dir / "pontoon-web.conflist").write_text(json.dumps(cni_cli.conflist("web", None)))
    (conf_dir / "pontoon-foreign.conflist").write_text('{"plugins": [{"type": "bridge"}]}')
    (conf_dir / "10-bridge.conflist").write_text("{}")
    args = ["cni", "uninstall", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir)]
    from pontoon.cli.main import cli

    outcome = CliRunner().invoke(cli, args)
    assert outcome.exit_code == 0, outcome.output
    assert list(bin_dir.iterdir()) == []
    assert sorted(p.name for p in conf_dir.iterdir()) == [
        "10-bridge.conflist",
        "pontoon-foreign.conflist",
    ]


def test_launcher_runs_the_plugin_without_site(tmp_path: Path):
    plugin = tmp_path / "pontoon"
    plugin.write_text(cni_cli.launcher())
    plugin.chmod(0o755)
    assert plugin.read_text().splitlines()[0].endswith(" -S")
    proc = subprocess.run(
        [str(plugin)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True, check=True
    )
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]


def test_uninstall_removes_the_launcher_and_nothing_foreign(tmp_path: Path):
    from pontoon.cli.main import cli

    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (bin_dir / "pontoon").write_text(cni_cli.launcher())
    args = ["cni", "uninstall", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert list(bin_dir.iterdir()) == []
    (bin_dir / "pontoon").write_text("#!/bin/sh\necho someone else's\n")
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert [p.name for p in bin_dir.iterdir()] == ["pontoon"]


# -- regressions the fuzzer (tests/fuzz/test_cni_fuzz.py) found ------------------------


@pytest.mark.parametrize(
    "prev",
    [
        {"interfaces": None},  # len(None) in merge
        {"ips": [5]},
        {"ips": [{"interface": 0}]},  # no address: KeyError for 0.3.x results
        {"ips": [{"address": "nonsense"}]},  # ValueError for 0.3.x results
        {"ips": [{"address": "10.0.0.2/24", "interface": "0"}]},  # str + int
        {"routes": {}},
        {"dns": []},
        {"dns": {"nameservers": "10.0.0.1"}},
    ],
)
def test_malformed_prev_result_is_invalid_configuration_not_a_bug(prev):
    assert code_of(conf, prevResult=prev) == 7


def test_well_formed_prev_result_is_kept():
    prev = {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.2/24", "interface": 0}]}
    assert conf(prevResult=prev).prev_result == prev


@pytest.mark.parametrize(
    "dns", [{"servers": 5}, {"servers": "10.0.0.1"}, {"searches": 1}, {"options": [1]}, "x"]
)
def test_malformed_runtime_dns_is_invalid_configuration_not_a_bug(dns):
    # {"servers": 5} raised TypeError building the request.
    assert code_of(attach_request, conf(runtimeConfig={"dns": dns}), env()) == 7
