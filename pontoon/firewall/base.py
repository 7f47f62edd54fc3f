"""The interface the daemon uses to program packet filtering and NAT."""

from __future__ import annotations

import abc
import dataclasses


@dataclasses.dataclass(frozen=True)
class NetworkRules:
    """What the firewall needs to know about one bridge network."""

    bridge: str
    subnet: str
    internal: bool = False
    masquerade: bool = True


class Firewall(abc.ABC):
    @abc.abstractmethod
    def sync(self, networks: list[NetworkRules]) -> None:
        """Replace everything we own with exactly this state, atomically.
        Used at start-up: established flows keep their conntrack entries."""

    @abc.abstractmethod
    def add_network(self, net: NetworkRules) -> None: ...

    @abc.abstractmethod
    def remove_network(self, net: NetworkRules) -> None: ...

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove everything we own (used by tests and `lab down`)."""

    @abc.abstractmethod
    def dump(self) -> str:
        """Our rules in the backend's own syntax, for `inspect` and debugging."""
