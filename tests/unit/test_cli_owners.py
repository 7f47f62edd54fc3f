"""`pontoon ps` entries for owners that are not pontoon containers."""

from __future__ import annotations

from typing import Any

import pytest

from pontoon.cli import owners
from pontoon.client import ApiError


def attachment(kind: str, owner_id: str, name: str, network: str, address: str) -> dict:
    return {"Id": f"{owner_id}-{network}", "Network": network, "Netns": f"/run/netns/{owner_id}",
            "Owner": {"Kind": kind, "Id": owner_id, "Name": name},
            "Addresses": [address]}  # fmt: skip


def test_one_entry_per_owner_with_its_networks_and_addresses():
    listed = [
        attachment("cni", "a" * 64, "pod1", "web", "10.0.0.2/24"),
        attachment("pontoon", "c" * 64, "c1", "web", "10.0.0.3/24"),
        attachment("cni", "a" * 64, "pod1", "back", "10.1.0.2/24"),
        attachment("docker", "d1", "", "web", "10.0.0.4/24"),
    ]
    entries = owners.other_owners(listed)
    assert [(e["Name"], e["Networks"], e["IPs"]) for e in entries] == [
        ("pod1", ["web", "back"], ["10.0.0.2", "10.1.0.2"]),
        ("d1", ["web"], ["10.0.0.4"]),
    ]
    assert entries[0]["Attachments"] == ["a" * 64 + "-web", "a" * 64 + "-back"]
    assert [e["Name"] for e in owners.other_owners(listed, "docker")] == ["d1"]
    assert owners.row(entries[0]) == ["a" * 12, "pod1", "", "attached", "web,back",
                                      "10.0.0.2,10.1.0.2", "cni"]  # fmt: skip


class OldDaemon:
    def __init__(self, status: int) -> None:
        self.status = status

    def get(self, path: str, **query: Any) -> Any:
        raise ApiError(self.status, f"{path}: nope")


def test_a_daemon_without_attachments_has_no_other_owners():
    assert owners.attachments(OldDaemon(404)) == []  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        owners.attachments(OldDaemon(500))  # type: ignore[arg-type]
