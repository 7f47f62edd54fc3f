"""Requests to the HTTP API for the fuzzers: every route that takes a body or
a reference, with bodies built from the fields each handler reads (docs/api.md)
whose values are the right type most of the time and anything at all
otherwise, plus unknown fields, and raw bodies that are not JSON objects.

What could reach the host is pinned (the real-daemon harness runs these):
`Cmd` is always SAFE_CMD and `Env` empty, a namespace is one the test made
or a path that does not exist, `NetnsFd` is absent or no open descriptor, and
a trace never watches live traffic."""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.fuzz.mutate import mutated

# What every container the fuzzers run runs. The harnesses remove it again.
SAFE_CMD = ["sleep", "30"]

SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
ANY_JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def usually(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int = 6):
    """`rare` once in `one_in` draws (one_of would split evenly)."""
    return st.integers(0, one_in - 1).flatmap(lambda n: rare if n == one_in - 1 else common)


def field(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return usually(strategy, ANY_JSON)


NAMES = st.sampled_from(["web", "fz1", "bridge", "nope", "", "bad name", "-x", "a" * 65, "03e7"])
SUBNETS = st.sampled_from(
    ["10.77.0.0/24", "10.77.0.0/33", "10.77.0.1/24", "10.77.1.0/30", "fd77::/64", "nonsense", ""]
)
ADDRS = st.sampled_from(["10.77.0.9", "10.77.0.1", "10.99.0.9", "fd77::9", "256.0.0.1", "x", ""])
PORTS = st.sampled_from(["80", "8080:80", "127.0.0.1::80/udp", "1-3:1-2", "80/icmp", "x", "0"])
OPTIONS = st.dictionaries(
    st.sampled_from(["mtu", "com.docker.network.driver.mtu", "bridge.name", "parent", "bogus"]),
    st.sampled_from(["1400", "20", "99999999999999999999", "lo", "fzbr0", ""]),
    max_size=2,
)
STRINGS = st.lists(st.sampled_from(["db", "x.y", "", "-bad", "a" * 70]), max_size=3)


def obj(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A body with some of `fields` (each mostly well-typed) and maybe an unknown one."""
    return st.fixed_dictionaries(
        {}, optional={**{k: field(v) for k, v in fields.items()}, "Unknown": ANY_JSON}
    )


def network_create() -> st.SearchStrategy[dict[str, Any]]:
    subnet = st.fixed_dictionaries(
        {}, optional={"Subnet": field(SUBNETS), "Gateway": field(ADDRS), "IPRange": field(SUBNETS)}
    )
    return obj(
        {
            "Name": NAMES,
            "Driver": st.sampled_from(["bridge", "macvlan", "overlay", "host", ""]),
            "Subnet": SUBNETS,
            "Gateway": ADDRS,
            "IPRange": SUBNETS,
            "Subnets": st.lists(subnet, max_size=2),
            "Internal": st.booleans(),
            "Options": OPTIONS,
        }
    )


def container_run() -> st.SearchStrategy[dict[str, Any]]:
    body = obj(
        {
            "Name": NAMES,
            "Networks": st.lists(NAMES, max_size=2),
            "IPAddress": ADDRS,
            "IPv6Address": ADDRS,
            "Aliases": STRINGS,
            "Hostname": st.sampled_from(["h", "-bad-", "a" * 64, ""]),
            "Dns": st.lists(ADDRS, max_size=2),
            "AutoRemove": st.booleans(),
            "Ports": st.lists(PORTS, max_size=2),
        }
    )
    # Never a program of the fuzzer's choosing, nor an environment for it.
    # Not `true` either: a command that exits before the runtime finds its
    # PID 1 is reported as "container failed to start" (a 500, a race in the runtime).
    return body.map(lambda b: {**b, "Cmd": SAFE_CMD, "Env": []})


def attachment_create(netns: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    owner = st.fixed_dictionaries(
        {},
        optional={
            "Kind": field(st.sampled_from(["cni", "docker", "pontoon", "bogus", ""])),
            "Id": field(st.sampled_from(["fz-owner", "fz-other", ""])),
            "Name": field(st.sampled_from(["fz", "", "bad name"])),
        },
    )
    body = obj(
        {
            "Network": NAMES,
            "Ifname": st.sampled_from(["eth0", "eth1", "a" * 16, "a/b", ""]),
            "Owner": owner,
            "IPs": st.lists(ADDRS, max_size=2),
            "MAC": st.sampled_from(["02:42:0a:4d:00:09", "02:42", "ZZ:00:00:00:00:00", ""]),
            "Aliases": STRINGS,
            "Names": STRINGS,
            "Ports": st.lists(PORTS, max_size=2),
            "DefaultRoute": st.booleans(),
            "GatewayBridge": st.booleans(),
            "DNS": st.booleans(),
            "Upstreams": st.lists(ADDRS, max_size=2),
        }
    )
    # Only namespaces the test made, or paths that do not exist.
    where = st.one_of(
        st.fixed_dictionaries({"Netns": st.sampled_from([*netns, "/nonexistent/ns", ""])}),
        st.fixed_dictionaries({"NetnsFd": st.sampled_from([-1, 10**6, 2**40, True, "3", None])}),
        st.just({}),
    )
    return st.tuples(body, where).map(lambda pair: {**pair[0], **pair[1]})


def trace() -> st.SearchStrategy[dict[str, Any]]:
    return obj(
        {
            "From": st.sampled_from(["host", "fz", "netns:fz-nonexistent", "", "nope"]),
            "To": st.sampled_from(["10.77.0.9", "host:80", "fz:80/tcp", "x:99999", ""]),
            "Proto": st.sampled_from(["", "icmp", "tcp", "udp", "gre"]),
            # A live trace watches for up to 300 s: only refused values here.
            "Live": st.sampled_from([0, -1, 301, 10**400, 1e308, "5", True]),
            "Family": st.sampled_from([0, 4, 6, 5, "6", None, 10**400]),
        }
    )


def connect() -> st.SearchStrategy[dict[str, Any]]:
    return obj({"Container": NAMES, "IPAddress": ADDRS, "IPv6Address": ADDRS, "Aliases": STRINGS})


# Well-formed bodies, to be broken in a few places (tests/fuzz/mutate.py): the
# checks behind the first one are reached too, down to the engine's.
BASE_NETWORK = st.fixed_dictionaries(
    {
        "Name": st.sampled_from(["fz1", "fz2"]),
        "Driver": st.just("bridge"),
        "Subnet": st.integers(0, 255).map(lambda n: f"10.77.{n}.0/24"),
        "Internal": st.booleans(),
    },
    optional={"Gateway": st.just("10.77.0.1"), "Options": st.just({"mtu": "1400"})},
)
BASE_RUN = st.fixed_dictionaries(
    {"Name": st.just("fzc"), "Networks": st.just(["bridge"])},
    optional={
        "Hostname": st.just("fzhost"),
        "Dns": st.just(["10.0.0.1"]),
        "AutoRemove": st.booleans(),
        "Ports": st.sampled_from([["80"], ["127.0.0.1:18080:80/udp"], ["18081-18082:81-82"]]),
    },
)


def base_attachment(netns: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "Network": st.just("bridge"),
            "Netns": st.sampled_from(netns),
            "Owner": st.just({"Kind": "cni", "Id": "fz-owner", "Name": "fz"}),
        },
        optional={
            "Ifname": st.sampled_from(["eth0", "net1"]),
            "IPs": st.just(["172.17.0.77"]),
            "MAC": st.just("02:42:ac:11:00:4d"),
            "Aliases": st.just(["fzalias"]),
            "Names": st.just(["fzname"]),
            "Ports": st.sampled_from([["80"], ["127.0.0.1:18090:80/udp"]]),
            "DefaultRoute": st.booleans(),
            "GatewayBridge": st.booleans(),
            "DNS": st.booleans(),
            "Upstreams": st.just(["10.0.0.1"]),
        },
    )


BROKEN = st.one_of(ANY_JSON, st.sampled_from(["", "x", "10.77.0.0/33", "256.1.1.1", -1, 2**64]))


def pinned(path: str, body: Any, netns: list[str]) -> Any:
    """A body with what could reach the host put back to what the test allows
    (module docstring), whatever a mutation did to it."""
    if not isinstance(body, dict):
        return body
    if path == "/containers/run":
        return {**body, "Cmd": SAFE_CMD, "Env": []}
    if path == "/attachments":
        body = dict(body)
        if isinstance(body.get("Netns"), str) and body["Netns"] not in netns:
            body["Netns"] = "/nonexistent/ns"
        fd = body.get("NetnsFd")
        if isinstance(fd, int) and not isinstance(fd, bool) and 0 <= fd < 2**40:
            body["NetnsFd"] = 2**40  # no such descriptor
        return body
    return body


def broken_calls(netns: list[str]) -> st.SearchStrategy[Call]:
    routes = [
        ("/networks/create", BASE_NETWORK),
        ("/containers/run", BASE_RUN),
        ("/attachments", base_attachment(netns)),
    ]
    return st.one_of(
        mutated(base, BROKEN).map(
            lambda body, path=path: Call("POST", path, encode(pinned(path, body, netns)))
        )
        for path, base in routes
    )


@dataclasses.dataclass
class Call:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) < 300 else self.body[:300] + b"..."
        return f"Call({self.method} {self.path} body={body!r} headers={self.headers})"


RAW_BODIES = st.one_of(
    st.binary(max_size=30),  # not UTF-8, not JSON
    st.sampled_from(
        [b"{oops", b"[]", b"null", b"5", b'"x"', b"\xff\xfe{}", b'{"Name": 1e999}',
         b'{"Name": "\\ud800"}', b'{"Live": ' + b"9" * 5000 + b"}", b"[" * 100_000,
         b'{"a": ' * 5000 + b"1" + b"}" * 5000]
    ),
    ANY_JSON.map(lambda v: json.dumps(v).encode()),
)  # fmt: skip
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain; charset=bogus-x", ""]
)


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def calls(netns: list[str]) -> st.SearchStrategy[Call]:
    """One request to any route."""
    ref = NAMES.map(lambda r: quote(r, safe=""))
    posts = st.one_of(
        network_create().map(lambda b: Call("POST", "/networks/create", encode(b))),
        st.tuples(ref, st.sampled_from(["connect", "disconnect"]), connect()).map(
            lambda t: Call("POST", f"/networks/{t[0]}/{t[1]}", encode(t[2]))
        ),
        container_run().map(lambda b: Call("POST", "/containers/run", encode(b))),
        attachment_create(netns).map(lambda b: Call("POST", "/attachments", encode(b))),
        trace().map(lambda b: Call("POST", "/trace", encode(b))),
    )
    raw = st.tuples(
        st.sampled_from(["/networks/create", "/containers/run", "/attachments", "/trace"]),
        RAW_BODIES,
        CONTENT_TYPES,
    ).map(lambda t: Call("POST", t[0], t[1], {"Content-Type": t[2]} if t[2] else {}))
    deletes = st.one_of(
        ref.map(lambda r: Call("DELETE", f"/networks/{r}")),
        ref.map(lambda r: Call("DELETE", f"/containers/{r}?force=1")),
        ref.map(lambda r: Call("DELETE", f"/attachments/{r}")),
        st.tuples(st.sampled_from(["", "cni", "bogus"]), st.sampled_from(["", "fz-owner"])).map(
            lambda t: Call("DELETE", f"/attachments?owner_kind={t[0]}&owner_id={t[1]}")
        ),
    )
    reads = st.one_of(
        ref.map(lambda r: Call("GET", f"/networks/{r}")),
        ref.map(lambda r: Call("GET", f"/containers/{r}/json")),
        ref.map(lambda r: Call("GET", f"/attachments/{r}")),
        st.sampled_from(
            [Call("GET", "/nothing/here"), Call("PUT", "/networks"), Call("PATCH", "/trace")]
        ),
    )
    return st.one_of(posts, broken_calls(netns), raw, deletes, reads)


def check_answer(status: int, ctype: str, body: bytes, also: tuple[int, ...] = ()) -> None:
    """A success, or the API's JSON error: 4xx (or a status in `also`),
    `{"message": one line}`."""
    if status < 400:
        return
    assert 400 <= status < 500 or status in also, (status, body[:500])
    assert ctype.startswith("application/json"), (status, ctype, body[:200])
    error = json.loads(body)
    assert list(error) == ["message"] and isinstance(error["message"], str), error
    assert error["message"] and "\n" not in error["message"], error
