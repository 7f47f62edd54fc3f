"""What each namespace's resolver may answer: DNS views keyed by owner.

A view holds the names of every attachment (here or, on global networks, on
other hosts) on the user-defined networks the asking owner shares with it,
by name and alias, with reverse entries. Views are cached until any
attachment or peer changes.
"""

from __future__ import annotations

from collections.abc import Callable

from pontoon.dns import upstream
from pontoon.dns.server import View
from pontoon.engine.state import State


class DnsViews:
    def __init__(self, state: State, default_upstreams: Callable[[], list[str]]) -> None:
        self.state = state
        self.default_upstreams = default_upstreams
        self._cache: dict[str, View] = {}
        state.on_change(self._cache.clear)

    def __call__(self, owner_key: str) -> View | None:
        view = self._cache.get(owner_key)
        if view is None:
            view = self._build(owner_key)
            if view is not None:
                self._cache[owner_key] = view
        return view

    def _build(self, owner_key: str) -> View | None:
        mine = self.state.of_owner(owner_key)
        if not mine:
            return None
        nets = [
            self.state.networks[a.network_id] for a in mine if a.network_id in self.state.networks
        ]
        shared = {n.id for n in nets if not n.default}
        names: dict[str, list[str]] = {}
        reverse: dict[str, str] = {}
        entries = [
            (a.network_id, a.dns_names, a.ips, a.owner.name)
            for a in self.state.attachments.values()
        ]
        entries += [(p.network_id, p.dns_names, p.ips, p.name) for p in self.state.remote.values()]
        for network_id, dns_names, ips, label in entries:
            if network_id not in shared:
                continue
            for name in dns_names:
                addrs = names.setdefault(name.lower(), [])
                addrs.extend(ip for ip in ips if ip not in addrs)
            for ip in ips:
                reverse.setdefault(ip, label)
        servers = next((a.dns_servers for a in mine if a.dns_servers), None)
        return View(
            names=names,
            reverse=reverse,
            upstreams=servers or self.default_upstreams() or upstream.host_nameservers(),
            external=any(not n.internal for n in nets),
        )
