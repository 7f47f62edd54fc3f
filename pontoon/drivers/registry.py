"""Which drivers exist, by name. The one place that lists them: a new driver
is a module under drivers/ and a line here."""

from __future__ import annotations

from pontoon.core.model import Network
from pontoon.drivers.base import DriverContext, NetworkDriver
from pontoon.drivers.bridge import BridgeDriver
from pontoon.drivers.macvlan import MacvlanDriver
from pontoon.drivers.overlay import OverlayDriver
from pontoon.errors import InvalidArgument

DRIVERS: tuple[type[NetworkDriver], ...] = (BridgeDriver, OverlayDriver, MacvlanDriver)
DEFAULT_DRIVER = BridgeDriver.name


class DriverRegistry:
    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self._drivers = {cls.name: cls(ctx) for cls in DRIVERS}

    def get(self, name: str) -> NetworkDriver:
        driver = self._drivers.get(name)
        if driver is None:
            known = ", ".join(self._drivers)
            raise InvalidArgument(f"unknown network driver {name!r} (known: {known})")
        return driver

    def of(self, net: Network) -> NetworkDriver:
        return self.get(net.driver)

    def names(self) -> list[str]:
        return list(self._drivers)
