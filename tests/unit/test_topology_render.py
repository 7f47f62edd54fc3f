"""`pontoon topology` rendering (issue 16): the host's links and addresses,
where each published port listens and who serves it, and the seed's veth
pairs (container eth0 <-> host vethXXX <-> bridge). No kernel here: the
topology is the daemon's JSON, written out."""

from __future__ import annotations

import copy
import shutil
import subprocess

import pytest

from pontoon.cli import topology as draw

LINKS = [
    {"name": "lo", "kind": "loopback", "state": "unknown", "addresses": ["127.0.0.1/8"],
     "master": ""},
    {"name": "eth0", "kind": "veth", "state": "up", "addresses": ["198.51.100.1/24"],
     "master": ""},
    {"name": "pt-web", "kind": "bridge", "state": "up", "addresses": ["10.50.0.1/24"],
     "master": ""},
    {"name": "vethaaa", "kind": "veth", "state": "up", "addresses": [], "master": "pt-web"},
    {"name": "vethbbb", "kind": "veth", "state": "up", "addresses": [], "master": "pt-web"},
    {"name": "dummy9", "kind": "dummy", "state": "down", "addresses": [], "master": ""},
]  # fmt: skip


def endpoint(container: str, ip: str, veth: str) -> dict:
    return {"container": container, "ifname": "eth0", "ip": ip, "mac": "02:42:0a:32:00:02",
            "host_ifname": veth}  # fmt: skip


def port(host: str, cport: int, proto: str = "tcp") -> dict:
    return {"host": host, "container": cport, "proto": proto, "container_ip": "10.50.0.3",
            "bridge": "pt-web"}  # fmt: skip


def topo(proxy: bool) -> dict:
    return {
        "host": {"id": "", "vtep": "", "socket": "/x.sock", "userland_proxy": proxy,
                 "links": copy.deepcopy(LINKS)},
        "networks": [{
            "name": "web", "driver": "bridge", "subnet": "10.50.0.0/24", "gateway": "10.50.0.1",
            "internal": False, "present": True, "bridge": "pt-web",
            "endpoints": [endpoint("c1", "10.50.0.2", "vethaaa"),
                          endpoint("pub", "10.50.0.3", "vethbbb")],
        }],
        "containers": [
            {"name": "c1", "id": "c1", "sandbox": "", "ports": []},
            {"name": "pub", "id": "pub", "sandbox": "",
             "ports": [port("0.0.0.0:12580", 80), port("127.0.0.1:8080", 80)]},
        ],
    }  # fmt: skip


def ways(t: dict, host: str) -> dict[str, tuple[str, str]]:
    p = next(p for c in t["containers"] for p in c["ports"] if p["host"] == host)
    return {w["address"]: (w["link"], w["served_by"]) for w in draw.entrances(t, p)}


def test_entrances_in_proxy_mode():
    t = topo(proxy=True)
    assert ways(t, "0.0.0.0:12580") == {
        "127.0.0.1": ("lo", draw.PROXY),  # our output chain leaves loopback to the proxy
        "198.51.100.1": ("eth0", draw.KERNEL_IN),
        "10.50.0.1": ("pt-web", draw.KERNEL_IN),  # hairpin: DNAT in both modes
    }
    assert ways(t, "127.0.0.1:8080") == {"127.0.0.1": ("lo", draw.PROXY)}


def test_entrances_in_kernel_mode():
    t = topo(proxy=False)
    assert ways(t, "0.0.0.0:12580")["127.0.0.1"] == ("lo", draw.KERNEL_OUT)
    assert ways(t, "127.0.0.1:8080") == {"127.0.0.1": ("lo", draw.KERNEL_OUT)}


def test_links_drawn_are_the_hosts_own():
    names = [link["name"] for link in draw.drawn_links(topo(proxy=True))]
    assert names == ["lo", "eth0"]  # bridges and veths are drawn as such; down and bare: not


def test_text_shows_links_ports_and_veth_pairs():
    text = draw.to_text({"host": topo(proxy=True)})
    assert "host host (userland proxy on)" in text
    assert "  link eth0 198.51.100.1/24" in text and "  link lo 127.0.0.1/8" in text
    assert "    pub:eth0 10.50.0.3 <-> vethbbb <-> pt-web" in text
    assert "  published 0.0.0.0:12580/tcp -> pub:80 (eth0 10.50.0.3 via pt-web)" in text
    assert "    in at 198.51.100.1 (eth0) from outside: kernel DNAT (prerouting)" in text
    assert "    in at 127.0.0.1 (lo) from this host: userland proxy" in text


def test_dot_edges_follow_a_packet_in():
    dot = draw.to_dot({"host": topo(proxy=True)})
    edges = {line.strip().split(" [")[0]: line for line in dot.splitlines() if " -> " in line}
    # outside -> eth0 -> the port -> the bridge -> vethbbb -> pub's eth0
    assert '"host:link:eth0" -> "host:port:0.0.0.0:12580:tcp"' in edges
    assert "kernel DNAT (prerouting)" in edges['"host:link:eth0" -> "host:port:0.0.0.0:12580:tcp"']
    assert "userland proxy" in edges['"host:link:lo" -> "host:port:127.0.0.1:8080:tcp"']
    assert "to pub 10.50.0.3:80" in edges['"host:port:0.0.0.0:12580:tcp" -> "host:net:web"']
    assert '"host:net:web" -> "host:veth:vethbbb"' in edges
    assert '"host:veth:vethbbb" -> "host:ctr:pub:eth0"' in edges
    assert '"host:link:pt-web" -> "host:port:0.0.0.0:12580:tcp"' not in edges  # in the label
    assert "from containers (hairpin): kernel DNAT (prerouting)" in dot


def test_dot_keeps_nodes_in_their_clusters():
    """A node belongs to the first subgraph naming it: the containers' eths
    must be declared in their container's cluster, not where an edge is."""
    dot = draw.to_dot({"host": topo(proxy=True)})
    cluster = dot[dot.index('subgraph "cluster:host:ctr:pub"') :]
    assert dot.index('"host:ctr:pub:eth0" [') > dot.index('subgraph "cluster:host:ctr:pub"')
    assert '"host:ctr:pub:eth0" [' in cluster.split("}")[0]
    first = dot.index('"host:ctr:pub:eth0"')
    assert first == dot.index('"host:ctr:pub:eth0" [')


def overlay_host(vtep: str, peer_vtep: str) -> dict:
    t = topo(proxy=True)
    t["host"]["vtep"] = vtep
    t["host"]["links"][1]["addresses"] = [f"{vtep}/24"]
    t["networks"].append({
        "name": "net1", "driver": "overlay", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1",
        "internal": False, "present": True, "namespace": "/run/x/netns/1-abc", "bridge": "br0",
        "vxlan": "vxlan256", "vni": 256, "endpoints": [endpoint("net1c1", "10.0.0.2", "veth1")],
        "peers": [{"container": "net1c2", "ip": "10.0.0.3", "vtep": peer_vtep}],
    })  # fmt: skip
    return t


def test_lab_hosts_join_at_their_underlay_links():
    hosts = {"h1": overlay_host("10.10.0.11", "10.10.0.12"),
             "h2": overlay_host("10.10.0.12", "10.10.0.11")}  # fmt: skip
    dot = draw.to_dot(hosts)
    assert '"h1:link:eth0" -> "h2:link:eth0" [dir=both color=blue' in dot
    assert '"h1:link:eth0" -> "h1:net1:vxlan"' in dot
    assert 'label="overlay namespace 1-abc"' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz")
def test_graphviz_renders_it():
    hosts = {"h1": overlay_host("10.10.0.11", "10.10.0.12"),
             "h2": overlay_host("10.10.0.12", "10.10.0.11")}  # fmt: skip
    for source in (draw.to_dot({"host": topo(proxy=False)}), draw.to_dot(hosts)):
        proc = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True)
        assert proc.returncode == 0 and "<svg" in proc.stdout, proc.stderr


def test_svg_without_graphviz_says_what_to_do(monkeypatch):
    import click

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(click.ClickException, match="needs Graphviz"):
        draw.to_svg({"host": topo(proxy=True)})
