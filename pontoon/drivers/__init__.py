"""Network drivers: how a network and an attachment become kernel devices.
`registry` lists them; `base` is the contract."""

from pontoon.drivers.base import Capabilities, DriverContext, NetworkDriver, Peer

__all__ = ["Capabilities", "DriverContext", "NetworkDriver", "Peer"]
