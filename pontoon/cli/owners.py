"""`pontoon ps` beyond pontoon's own containers: the namespaces attached for
other owners (a CNI runtime's containers, dockerd's endpoints), one entry per
owner, grouped from GET /attachments."""

from __future__ import annotations

from typing import Any

from pontoon.client import ApiError, Client

PONTOON = "pontoon"


def attachments(client: Client) -> list[dict[str, Any]]:
    """Every attachment; none from a daemon older than /attachments (a
    release-1 daemon during an upgrade), whose only owners are containers."""
    try:
        return list(client.get("/attachments"))
    except ApiError as exc:
        if exc.status == 404:
            return []
        raise


def other_owners(attachments: list[dict[str, Any]], kind: str = "") -> list[dict[str, Any]]:
    """`ps --format json` entries for owners that are not pontoon containers,
    in the containers' shape plus `Owner` and the attachments' IDs."""
    owners: dict[tuple[str, str], dict[str, Any]] = {}
    for att in attachments:
        owner = att["Owner"]
        if owner["Kind"] == PONTOON or (kind and owner["Kind"] != kind):
            continue
        entry = owners.setdefault((owner["Kind"], owner["Id"]), {
            "Id": owner["Id"], "Name": owner["Name"] or owner["Id"][:12], "Command": [],
            "State": "attached", "Owner": owner, "Netns": att["Netns"],
            "Networks": [], "IPs": [], "Attachments": [],
        })  # fmt: skip
        entry["Networks"].append(att["Network"])
        entry["IPs"] += [a.split("/", 1)[0] for a in att["Addresses"]]
        entry["Attachments"].append(att["Id"])
    return list(owners.values())


def row(entry: dict[str, Any]) -> list[str]:
    """One `ps` table row; pontoon's containers have no Owner key."""
    owner = entry.get("Owner", {}).get("Kind", PONTOON)
    status = entry["State"]
    if status == "exited":
        status = f"exited ({entry['ExitCode']})"
    return [
        entry["Id"][:12],
        entry["Name"],
        " ".join(entry["Command"])[:40],
        status,
        ",".join(entry["Networks"]),
        ",".join(entry["IPs"]),
        owner,
    ]
