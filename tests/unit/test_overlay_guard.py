"""The overlay's trust rules without a kernel: which hosts' VTEPs the agent
accepts from the store, and `-o encrypted` refused where the kernel cannot
encrypt (issue 15, items 1 and 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pontoon.cluster.agent import host_vtep
from pontoon.core.model import NetworkSpec
from pontoon.drivers import encryption
from pontoon.drivers.base import DriverContext
from pontoon.drivers.overlay import OverlayDriver
from pontoon.errors import InvalidArgument


def test_a_hosts_registration_gives_its_vtep():
    assert host_vtep("h1", json.dumps({"id": "h1", "vtep": "10.240.0.11"})) == "10.240.0.11"


@pytest.mark.parametrize(
    "value",
    [None, "", "not json", "[]", json.dumps({"id": "h1"}), json.dumps({"vtep": "0/0"}),
     json.dumps({"vtep": "10.0.0.1 -j ACCEPT"}), json.dumps({"vtep": 7})],
)  # fmt: skip
def test_a_registration_without_a_usable_vtep_adds_nothing(value):
    assert host_vtep("h1", value) == ""


def overlay() -> OverlayDriver:
    return OverlayDriver(DriverContext(ipr=None, netns_dir=Path("/nonexistent")))


def test_encrypted_is_refused_naming_what_the_kernel_lacks(monkeypatch):
    monkeypatch.setattr(encryption, "missing", lambda: ["IPsec ESP", "WireGuard"])
    with pytest.raises(InvalidArgument) as err:
        overlay().validate(NetworkSpec("ov", driver="overlay", options={"encrypted": ""}))
    text = str(err.value)
    assert "\n" not in text and "no IPsec ESP, no WireGuard" in text
    assert "without -o encrypted" in text


def test_encrypted_is_refused_even_where_the_kernel_could(monkeypatch):
    # Fail closed: pontoon does not encrypt yet, so it never pretends to.
    monkeypatch.setattr(encryption, "missing", lambda: [])
    with pytest.raises(InvalidArgument, match="not implemented"):
        overlay().validate(NetworkSpec("ov", driver="overlay", options={"encrypted": "true"}))


def test_without_encrypted_nothing_is_probed(monkeypatch):
    monkeypatch.setattr(encryption, "missing", lambda: pytest.fail("probed"))
    overlay().validate(NetworkSpec("ov", driver="overlay", options={"mtu": "1400"}))


def test_this_kernel_is_probed_without_touching_our_namespace():
    """The probes run in throwaway namespaces: whatever they find, the
    namespace we run in gains no xfrm state and no device."""
    before = devices()
    lacking = encryption.missing()
    assert isinstance(lacking, list)
    assert devices() == before


def devices() -> list[str]:
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)
