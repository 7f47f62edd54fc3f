"""`pontoon topology` on a real host (issue 16): the host's links and
addresses, where each published port listens and who serves it, and the
veth pairs, in the JSON and in the dot the svg is drawn from."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from pontoon.cli import topology as draw
from tests.integration.helpers import HOST_ADDR, add_outside, inspect

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("proxy", ["true", "false"], ids=["proxy", "kernel"])
def test_topology_shows_how_a_packet_gets_in(make_host, proxy):
    host = make_host(f"--userland-proxy={proxy}")
    add_outside(make_host, host)
    host.cli("network", "create", "--subnet", "10.58.0.0/24", "web")
    host.cli("run", "-d", "--name", "pub", "--net", "web", "-p", "12580:80",
             "-p", "127.0.0.1:8080:80", "--", "sleep", "infinity")  # fmt: skip
    ep = inspect(host, "pub")["NetworkSettings"]["Networks"]["web"]

    topo = host.cli_json("topology", "--format", "json")["host"]
    links = {link["name"]: link for link in topo["host"]["links"]}
    assert links["lo"]["addresses"] == ["127.0.0.1/8", "::1/128"]
    assert links["eth0"]["addresses"] == [f"{HOST_ADDR}/24"]
    assert links[ep["HostInterface"]]["master"]  # the host's veth, on the bridge
    assert topo["host"]["userland_proxy"] is (proxy == "true")
    (pub,) = [c for c in topo["containers"] if c["name"] == "pub"]
    any_port = next(p for p in pub["ports"] if p["host"] == "0.0.0.0:12580")
    assert any_port["container_ip"] == ep["IPAddress"]

    ways = {w["address"]: w["served_by"] for w in draw.entrances(topo, any_port)}
    assert ways[HOST_ADDR] == draw.KERNEL_IN
    assert ways["127.0.0.1"] == (draw.PROXY if proxy == "true" else draw.KERNEL_OUT)

    dot = host.cli("topology", "--format", "dot").stdout
    bridge = links[ep["HostInterface"]]["master"]
    assert '"host:link:eth0" -> "host:port:0.0.0.0:12580:tcp"' in dot
    assert '"host:port:0.0.0.0:12580:tcp" -> "host:net:web"' in dot
    assert f'"host:net:web" -> "host:veth:{ep["HostInterface"]}"' in dot
    assert f'"host:veth:{ep["HostInterface"]}" -> "host:ctr:pub:eth0"' in dot
    assert f'label="{bridge}\\nweb 10.58.0.0/24' in dot

    text = host.cli("topology").stdout
    assert f"  link eth0 {HOST_ADDR}/24" in text
    assert f"    pub:eth0 {ep['IPAddress']} <-> {ep['HostInterface']} <-> {bridge}" in text
    if shutil.which("dot"):
        svg = host.cli("topology", "--format", "svg").stdout
        assert ET.fromstring(svg).tag.endswith("svg")
        assert HOST_ADDR in svg
