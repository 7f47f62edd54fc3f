"""Bad input: one `Error:` line, exit 1, and nothing left behind (SPEC §4, §10)."""

from __future__ import annotations

import pytest

from tests.integration.helpers import snapshot

pytestmark = pytest.mark.integration

BAD_COMMANDS = [
    ("network", "create", "bad name!"),
    ("network", "create", "--subnet", "10.50.0.0/33", "n"),
    ("network", "create", "--subnet", "10.50.0.1/24", "n"),  # host bits set
    ("network", "create", "--subnet", "10.50.0.0/25", "web"),  # duplicate name
    ("network", "create", "--subnet", "10.50.0.128/25", "n"),  # overlaps web
    ("network", "create", "--subnet", "172.17.5.0/24", "n"),  # overlaps bridge
    ("network", "create", "--subnet", "10.90.0.0/24", "--gateway", "10.91.0.1", "n"),
    ("network", "create", "--subnet", "10.90.0.0/24", "--ip-range", "10.91.0.0/25", "n"),
    ("network", "create", "--gateway", "10.90.0.1", "n"),
    ("network", "create", "-d", "macvlan", "n"),
    ("network", "create", "-d", "overlay", "n"),
    ("network", "create", "-o", "bogus=1", "n"),
    ("network", "create", "-o", "mtu=20", "n"),
    ("network", "create", "-o", "com.docker.network.bridge.name=lo", "n"),
    ("network", "rm", "nope"),
    ("network", "rm", "bridge"),
    ("network", "rm", "web"),  # has an endpoint
    ("network", "inspect", "nope"),
    ("network", "connect", "nope", "c1"),
    ("network", "connect", "web", "nope"),
    ("network", "connect", "web", "c1"),  # already connected
    ("network", "disconnect", "bridge", "c1"),  # not connected
    ("run", "-d", "--name", "c1", "--", "true"),  # duplicate name
    ("run", "-d", "--name", "bad/name", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "nope", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "web", "--ip", "10.99.0.5", "--", "true"),
    ("run", "-d", "--name", "x", "--net", "web", "--ip", "10.50.0.2", "--", "true"),  # taken
    ("run", "-d", "--name", "x", "--net", "web", "--ip", "10.50.0.1", "--", "true"),  # gateway
    ("run", "-d", "--name", "x", "--net", "web", "--ip", "nonsense", "--", "true"),
    ("run", "-d", "--name", "x", "--ip", "172.17.0.9", "--", "true"),  # default bridge
    ("run", "-d", "--name", "x", "--hostname", "-bad-", "--", "true"),
    ("run", "-d", "--name", "x", "--dns", "not-an-ip", "--", "true"),
    ("run", "-d", "--name", "x", "-e", "=novar", "--", "true"),
    ("run", "-d", "--name", "x", "-e", "PONTOON_INIT=exec sh", "--", "true"),  # the shim's own
    ("run", "-d", "--name", "x", "--net", "web", "--net", "web", "--", "true"),
    ("run", "-d", "--name", "x", "--", "/nonexistent/program"),
    ("exec", "nope", "true"),
    ("inspect", "nope"),
    ("logs", "nope"),
    ("rm", "nope"),
    ("rm", "c1"),  # running, no -f
    ("frobnicate",),
    ("network", "frobnicate"),
    ("run",),
]


def test_bad_input_is_one_error_line_and_leaves_nothing(make_host):
    host = make_host()
    host.cli("network", "create", "--subnet", "10.50.0.0/24", "web")
    host.cli("run", "-d", "--name", "c1", "--net", "web", "--", "sleep", "infinity")
    before = snapshot(host)
    failures = []
    for args in BAD_COMMANDS:
        proc = host.cli(*args, check=False)
        lines = proc.stderr.splitlines()
        ok = (
            proc.returncode == 1
            and len(lines) == 1
            and lines[0].startswith("Error: ")
            and proc.stdout == ""
        )
        if not ok:
            failures.append(f"{args}: rc={proc.returncode} out={proc.stdout!r} err={proc.stderr!r}")
        after = snapshot(host)
        if after != before:
            changed = [k for k in before if before[k] != after[k]]
            failures.append(f"{args} changed {changed}")
            before = after
    assert not failures, "\n".join(failures)


def test_daemon_refuses_bad_flags(make_host):
    host = make_host(start=False)
    for flags in (["--bip", "10.0.0.0/8"], ["--default-address-pool", "base=10.0.0.0/8"],
                  ["-H", "tcp://0.0.0.0:2375"]):  # fmt: skip
        with pytest.raises(RuntimeError):
            host.start_daemon(*flags, timeout=5)
