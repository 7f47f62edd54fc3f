"""`pontoon trace -6` on a dual-stack network (issue 13): the header and the
containers' hops name the traced family's addresses, not the IPv4 ones."""

from __future__ import annotations

import pytest

from tests.integration.test_ipv6 import dual_stack, sleeper, v6_of

pytestmark = pytest.mark.integration


def test_trace_names_the_traced_familys_addresses(make_host):
    host = make_host()
    dual_stack(host, "d", "10.91.0.0/24", "fd00:91::/64")
    sleeper(host, "c1", "--net", "d")
    sleeper(host, "c2", "--net", "d")
    c1_6, c2_6 = v6_of(host, "c1", "d"), v6_of(host, "c2", "d")
    out = host.cli("trace", "-6", "--from", "c1", "--to", "c2").stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"trace icmp from c1 ({c1_6}) to c2 ({c2_6})")
    assert f"1. container c1 eth0 {c1_6} " in out and f"container c2 eth0 {c2_6} " in out
    assert "10.91.0." not in out and "verdict: delivered" in out
    # Unsaid: IPv4 on a dual-stack network, as before.
    out4 = host.cli("trace", "--from", "c1", "--to", "c2").stdout
    assert out4.startswith("trace icmp from c1 (10.91.0.2) to c2 (10.91.0.3)")
    assert "fd00:91::" not in out4
    # JSON: the source's address of the family.
    data = host.cli_json("trace", "-6", "--from", "c1", "--to", f"[{c2_6}]:9/udp", "--json")
    assert data["from"]["ip"] == c1_6 and data["to"]["ip"] == c2_6
