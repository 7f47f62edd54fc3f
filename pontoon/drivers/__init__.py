"""Network drivers: how a network and an endpoint become kernel devices."""

from pontoon.drivers.base import NetworkDriver, mac_for

__all__ = ["NetworkDriver", "mac_for"]
