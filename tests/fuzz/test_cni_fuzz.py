"""Fuzzing the CNI plugin's inputs (pontoon/frontends/cni/protocol.py, driven
through `plugin.run`, the whole invocation): any environment and any
configuration on stdin end in exit 0 with the verb's output, or exit 1 with
the spec's error JSON from a check, never from the catch-all that reports a
bug ("internal error: ..."). The daemon is a fake that answers as pontoond
does and refuses, as pontoond would, a body its own parsers reject."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from pontoon.client import ApiError
from pontoon.errors import InvalidArgument
from pontoon.frontends.cni import plugin, protocol
from pontoon.frontends.fields import MAC_RE
from pontoon.portmap import spec as portspec
from tests.fuzz.budget import fuzz_settings, run_for
from tests.fuzz.mutate import mutated

ANSWER = {
    "Id": "5b0c",
    "interfaces": [{"name": "eth0", "mac": "02:42:0a:32:00:28", "sandbox": "/run/pontoon/netns/x"}],
    "ips": [{"address": "10.50.0.40/24", "interface": 0, "gateway": "10.50.0.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.50.0.1"}],
    "dns": {"nameservers": ["127.0.0.11"]},
}
VIEW = {
    "Id": "5b0c",
    "Network": "web",
    "NetworkID": "03e7",
    "Owner": {"Kind": "cni", "Id": "0123456789abcdef", "Name": "p"},
    "Netns": "/run/pontoon/netns/x",
    "Interface": "eth0",
    "Addresses": ["10.50.0.40/24"],
    "Status": "ready",
}

SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
IP_TEXT = st.sampled_from(["10.50.0.9", "10.50.0.9/24", "fd00::9", " 10.50.0.9 ", "nonsense", ""])


def some(strategy: st.SearchStrategy[Any], size: int = 2) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, max_size=size)


PORT_MAPPING = st.fixed_dictionaries(
    {"hostPort": st.integers(1, 65535), "containerPort": st.integers(1, 65535)},
    optional={
        "protocol": st.sampled_from(["tcp", "udp", "sctp", "TCP", "icmp", ""]),
        "hostIP": st.sampled_from(["", "127.0.0.1", "0.0.0.0", "::1", "10.0.0.300"]),
    },
)
RUNTIME = st.fixed_dictionaries(
    {},
    optional={
        "ips": some(IP_TEXT),
        "mac": st.sampled_from(["02:42:0a:32:00:09", "02:42", "ZZ:42:0a:32:00:09", ""]),
        "aliases": st.one_of(
            some(st.sampled_from(["db", "x.y", ""])),
            st.dictionaries(st.sampled_from(["podnet", "web"]), some(st.just("db"))),
        ),
        "portMappings": some(PORT_MAPPING, 3),
        "dns": st.fixed_dictionaries(
            {},
            optional={
                "servers": some(IP_TEXT),
                "searches": some(st.sampled_from(["example.com", "svc"])),
                "options": some(st.sampled_from(["ndots:5", "edns0"])),
            },
        ),
    },
)
PREV_RESULT = st.fixed_dictionaries(
    {
        "cniVersion": st.sampled_from(protocol.SUPPORTED_VERSIONS),
        "interfaces": some(st.fixed_dictionaries({"name": st.sampled_from(["eth0", "lo"])})),
        "ips": some(
            st.fixed_dictionaries(
                {"address": st.sampled_from(["10.9.0.2/24", "fd00::2/64"])},
                optional={"interface": st.integers(0, 2), "gateway": IP_TEXT},
            )
        ),
    },
    optional={
        "routes": some(st.fixed_dictionaries({"dst": st.just("0.0.0.0/0")})),
        "dns": st.fixed_dictionaries({"nameservers": some(IP_TEXT)}),
    },
)
CONFIG = st.fixed_dictionaries(
    {
        "cniVersion": st.sampled_from(protocol.SUPPORTED_VERSIONS),
        "name": st.just("podnet"),
        "type": st.just("pontoon"),
        "network": st.just("web"),
    },
    optional={
        "host": st.sampled_from(["unix:///run/x.sock", "/run/x.sock"]),
        "runtimeConfig": RUNTIME,
        "prevResult": PREV_RESULT,
        "cni.dev/valid-attachments": some(
            st.fixed_dictionaries(
                {"containerID": st.just("0123456789abcdef"), "ifname": st.just("eth0")}
            )
        ),
    },
)
ARGS = st.lists(
    st.one_of(
        st.sampled_from(
            ["IP=10.50.0.9", "IP=10.50.0.9,fd00::9", "IP=bad", "MAC=02:42:0a:32:00:09",
             "K8S_POD_NAME=p", "IgnoreUnknown=1", "FOO=1", "=x", "noequals", ""]
        ),
        st.text(max_size=10),
    ),
    max_size=3,
).map(";".join)  # fmt: skip


STDIN = st.one_of(
    mutated(CONFIG, JSON).map(lambda c: json.dumps(c).encode()),
    st.binary(max_size=40),
)


def environments(netns: str) -> st.SearchStrategy[dict[str, str]]:
    base = st.fixed_dictionaries(
        {
            "CNI_COMMAND": st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
            "CNI_CONTAINERID": st.just("0123456789abcdef"),
            "CNI_IFNAME": st.just("eth0"),
            "CNI_NETNS": st.just(netns),
            "CNI_ARGS": ARGS,
        }
    )
    # Only paths this harness made, or that do not exist: the plugin opens CNI_NETNS.
    odd = st.sampled_from(
        ["x", "", "-bad", "a/b", "a" * 16, "..", "a b", "e:0", "/nonexistent/ns", "rel-nothing"]
    )
    return mutated(base, odd, whole=False)


class FakeDaemon:
    """POST/GET/DELETE /attachments as pontoond answers them; a body the
    daemon's own field parsers would refuse is a 400, as there."""

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/attachments"
        json.dumps(body)  # what goes on the wire is JSON
        try:
            portspec.parse_all(body.get("Ports", []))
        except InvalidArgument as exc:
            raise ApiError(400, exc.message) from None
        if body.get("MAC") and not MAC_RE.fullmatch(body["MAC"]):
            raise ApiError(400, "invalid MAC address")
        assert protocol.valid_ifname(body["Ifname"])
        return json.loads(json.dumps(ANSWER))

    def get(self, path: str, **query: str) -> Any:
        return [dict(VIEW)] if path == "/attachments" else {}

    def delete(self, path: str, **query: str) -> None:
        return None


def invoke(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    out = io.StringIO()
    code = plugin.run(env, io.BytesIO(stdin), out)
    return code, out.getvalue()


def check_output(code: int, text: str) -> None:
    assert code in (0, 1)
    lines = text.splitlines()
    assert len(lines) <= 1 and (lines or code == 0)
    if not lines:
        return
    output = json.loads(lines[0])
    if code == 1:
        assert isinstance(output["code"], int) and isinstance(output["msg"], str)
        assert output["cniVersion"] in protocol.SUPPORTED_VERSIONS
        assert not output["msg"].startswith("internal error"), output


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    fake = FakeDaemon()
    monkeypatch.setattr(plugin, "daemon", lambda conf: fake)
    return fake


def test_any_invocation_is_output_or_the_error_json(fake_daemon, tmp_path: Path) -> None:
    netns = tmp_path / "ns"
    netns.touch()

    @fuzz_settings(batch=300)
    @given(environments(str(netns)), STDIN)
    def invocation(env: dict[str, str], stdin: bytes) -> None:
        note(f"env={env!r}\nstdin={stdin!r}")
        check_output(*invoke(env, stdin))

    run_for(invocation)
