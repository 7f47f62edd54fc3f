"""The lab's engine hosts: dockerd, podman and containerd run inside a
simulated host's own namespaces, see only that host's devices, and leave
nothing behind (the session's leak check covers mounts, processes and
cgroups)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_dockerd_runs_containers_inside_the_host(make_engine_host):
    engines = make_engine_host(start=False)
    assert engines.exec("ls", "/sys/class/net").stdout.split() == ["lo"]
    engines.start_dockerd()
    image = engines.import_image("docker")
    out = engines.docker("run", "--rm", image, "ping", "-c1", "-W2", "172.17.0.1").stdout
    assert "1 packets received" in out
    # docker0 was made in the host's namespace, not the machine's.
    assert "docker0" in engines.host.sh("ip", "-o", "link").stdout


def test_podman_and_ctr_run_containers_inside_the_host(make_engine_host):
    engines = make_engine_host(start=False)
    image = engines.import_image("podman")
    out = engines.podman("run", "--rm", image, "ip", "-4", "-o", "addr").stdout
    assert "eth0" in out  # podman's own CNI bridge, in the host
    engines.start_containerd()
    engines.import_image("ctr")
    out = engines.ctr("run", "--rm", image, "t1", "echo", "hello").stdout
    assert out.strip() == "hello"


def test_two_engine_hosts_keep_their_folders_apart(make_engine_host):
    first, second = make_engine_host(start=False), make_engine_host(start=False)
    first.exec("touch", "/run/docker/plugins-marker")
    assert second.exec("ls", "/run/docker").stdout.strip() == ""
    assert first.private.joinpath("run_docker", "plugins-marker").exists()
