"""Device drivers: one module per device family behind one Driver interface.

:data:`BACKENDS` maps a config's ``driver`` name to ``(module, class)``; only the
configured driver is imported (python-can's registry), so a missing hardware library
breaks that driver alone, never the daemon.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scanfleet.daemon.core.errors import DriverUnavailableError

if TYPE_CHECKING:
    from scanfleet.drivers.base import DeviceInfo, Driver, ProblemCallback

BACKENDS: dict[str, tuple[str, str]] = {
    "virtual": ("scanfleet.drivers.virtual", "VirtualDriver"),
    "serial": ("scanfleet.drivers.serial", "SerialDriver"),
    "idcard_serial": ("scanfleet.drivers.idcard.serial", "IdCardSerialDriver"),
    "idcard_usb": ("scanfleet.drivers.idcard.usbhid", "IdCardUsbDriver"),
    "evdev": ("scanfleet.drivers.wedge.evdev", "EvdevWedgeDriver"),
    "usbhid": ("scanfleet.drivers.usbhid", "UsbHidDriver"),
}


def driver_class(name: str) -> type[Driver]:
    """The Driver class registered as *name*, imported on first use.

    :raises DriverUnavailableError: unknown name, or its library cannot be imported.
    """
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise DriverUnavailableError(name, "a registered driver", "unknown driver") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise DriverUnavailableError(name, err.name or module_name, str(err)) from err
    cls: type[Driver] = getattr(module, class_name)
    return cls


def open_driver(config: Any, *, on_problem: ProblemCallback | None = None) -> Driver:
    """Open the device *config* describes with the driver its ``driver`` field names."""
    return driver_class(config.driver)(config, on_problem=on_problem)


def detect_all() -> list[DeviceInfo]:
    """Every device every importable driver can see (drivers that fail to import are skipped)."""
    found: list[DeviceInfo] = []
    for name in BACKENDS:
        try:
            cls = driver_class(name)
        except DriverUnavailableError:
            continue
        found.extend(cls.detect())
    return found
