"""IPv6 host IPs in the CNI plugin's port mappings (issue 13): Debian's
Podman 4.3 (CNI backend) passes `-p [::1]:PORT:80`, `-p [IPV6]:PORT:80` and
`-p PORT:80` to `pontoon-cni` as runtimeConfig.portMappings (hostIP "::1",
the address, or none); pontoon publishes them as its own `-p` does: `::1`
served by the userland proxy, a mapping without hostIP on 0.0.0.0 and `::`.
And the same through the plugin exec'd as a runtime does, in kernel mode."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.helpers import snapshot
from tests.integration.portmap_helpers import PROBE
from tests.integration.test_cni_plugin import cni, plugin_conf
from tests.integration.test_cni_podman import SITE, cni_owners, fetch, install
from tests.integration.test_ipv6 import UPLINK_HOST, UPLINK_PEER, add_uplink6

pytestmark = pytest.mark.integration

SUBNET4, SUBNET6 = "10.73.0.0/24", "fd00:73::/64"


def dual_stack_network(host, name: str = "p6") -> None:
    host.cli("network", "create", "--ipv6", "--subnet", SUBNET4, "--subnet", SUBNET6, name)


def ports_of(engines, owner_id: str) -> list[str]:
    """`pontoon port` of a CNI owner (its container ID)."""
    return engines.host.cli("port", owner_id).stdout.splitlines()


def test_podman_publishes_on_ipv6_loopback_an_ipv6_address_and_both_families(
    make_host, make_engine_host
):
    engines = make_engine_host()
    host = engines.host
    dual_stack_network(host)
    install(engines, "p6")
    engines.import_image("podman")
    outside = add_uplink6(make_host, host)  # host: 198.51.100.1 and 2001:db8:77::1
    clean = snapshot(host)

    argv = ["run", "-d", "--name", "web", "--network", "p6", "-p", "[::1]:18091:80",
            "-p", f"[{UPLINK_HOST}]:18092:80", "-p", "18093:80", "pontoon/busybox",
            "sh", "-c", SITE]  # fmt: skip
    web_id = engines.podman(*argv).stdout.strip()
    (owner,) = cni_owners(engines)
    assert owner["Owner"]["Id"] == web_id
    assert sorted(ports_of(engines, web_id)) == [
        "80/tcp -> 0.0.0.0:18093",
        "80/tcp -> [2001:db8:77::1]:18092",
        "80/tcp -> [::1]:18091",
        "80/tcp -> [::]:18093",
    ]
    # [::1]: the host itself, through the proxy (netavark and portmap cannot).
    assert "pontoon-site" in fetch(host, "http://[::1]:18091/")
    # The host's IPv6 address, from the outside; and no-hostIP on both families.
    for url in (f"http://[{UPLINK_HOST}]:18092/", f"http://[{UPLINK_HOST}]:18093/",
                "http://198.51.100.1:18093/"):  # fmt: skip
        assert "pontoon-site" in fetch(outside, url), url
    # Bound to one address only: not on the host's other ones.
    assert "pontoon-site" not in fetch(outside, "http://198.51.100.1:18092/")

    engines.podman("rm", "-f", "-t0", "web")
    assert cni_owners(engines) == []
    assert snapshot(host) == clean


def test_plugin_exec_with_ipv6_host_ips_in_kernel_mode(make_host, foreign_ns):
    """The plugin run as a runtime runs it, a portmap capability argument in
    runtimeConfig, in kernel mode: IPv6 DNAT keeps the client's address."""
    host = make_host("--userland-proxy=false")
    dual_stack_network(host)
    outside = add_uplink6(make_host, host)
    clean = snapshot(host)
    ns = foreign_ns(host, "pod")
    conf = plugin_conf(host, "p6", runtimeConfig={"portMappings": [
        {"hostPort": 18094, "containerPort": 80, "protocol": "tcp", "hostIP": UPLINK_HOST},
        {"hostPort": 18095, "containerPort": 80, "protocol": "tcp"},
    ]})  # fmt: skip
    rc, result = cni(host, "ADD", conf, "pod6", ns)
    assert rc == 0, result
    server = subprocess.Popen(
        ["nsenter", f"--net={ns}", "--", sys.executable, "-c", ECHO_BOTH],
    )
    try:
        for port in (18094, 18095):
            out = outside.sh("python3", "-c", PROBE, UPLINK_HOST, str(port), "tcp", "5").stdout
            assert out.split() == [f"peer={UPLINK_PEER}", f"from={UPLINK_HOST}"], port
        out = outside.sh("python3", "-c", PROBE, "198.51.100.1", "18095", "tcp", "5").stdout
        assert out.split() == ["peer=198.51.100.2", "from=198.51.100.1"]
        # ::1 has no kernel path: the mapping is refused in one line, nothing made.
        bad = plugin_conf(host, "p6", runtimeConfig={"portMappings": [
            {"hostPort": 18096, "containerPort": 80, "hostIP": "::1"}]})  # fmt: skip
        rc, err = cni(host, "ADD", bad, "pod7", foreign_ns(host, "pod7"))
        assert rc == 1 and err["code"] != 0 and "::1" in err["msg"], err
    finally:
        server.kill()
        server.wait()
    assert cni(host, "DEL", {**conf, "prevResult": result}, "pod6", ns) == (0, None)
    assert snapshot(host) == clean


# portmap_helpers.SERVER listens on IPv4 only: this one takes both families.
ECHO_BOTH = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "s.bind(('::', 80)); s.listen(16)\n"
    "while True:\n"
    "    c, a = s.accept(); c.recv(100)\n"
    "    ip = a[0].removeprefix('::ffff:'); c.sendall(f'peer={ip}\\n'.encode()); c.close()\n"
)
