"""The driver registry: one line per driver, and the ``[[devices]]`` union built from it.

:data:`BACKENDS` maps a config's ``driver`` name to the module that implements it, the
:class:`~scanfleet.drivers.base.Driver` class in it and the config model it takes (a
:class:`~scanfleet.drivers.base.DeviceConfigBase` subclass defined next to the driver).
The configuration (daemon/core/config.py) sits below the drivers and never imports them:
:func:`complete_config`, called once at the program's start (the CLI, the test suite),
hands it the config models, and ``[[devices]]`` entries are validated against their
union, discriminated by ``driver``.

That imports every driver module for its config model, so driver modules import their
hardware library (pyserial, pyusb, python-evdev) only when a device is opened
(python-can's registry does the same): a missing library makes that driver
unavailable, never the configuration unreadable.

Adding a driver: a module with its config model and Driver class, one line here, and
its tests (docs/drivers.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, get_args, get_origin

from scanfleet.daemon.core.config import DeviceConfigBase, register_device_models
from scanfleet.daemon.core.errors import DriverUnavailableError
from scanfleet.drivers.base import DeviceInfo, Driver, ProblemCallback


@dataclass(frozen=True)
class Backend:
    """Where a driver lives: its module, its Driver class and its config model."""

    module: str
    driver: str
    config: str


BACKENDS: dict[str, Backend] = {
    "virtual": Backend("scanfleet.drivers.virtual", "VirtualDriver", "VirtualDeviceConfig"),
    "serial": Backend("scanfleet.drivers.serial", "SerialDriver", "SerialDeviceConfig"),
    "idcard_serial": Backend(
        "scanfleet.drivers.idcard.serial", "IdCardSerialDriver", "IdCardDeviceConfig"
    ),
    "idcard_usb": Backend(
        "scanfleet.drivers.idcard.usbhid", "IdCardUsbDriver", "IdCardDeviceConfig"
    ),
    "evdev": Backend("scanfleet.drivers.wedge.evdev", "EvdevWedgeDriver", "WedgeDeviceConfig"),
    "usbhid": Backend("scanfleet.drivers.usbhid", "UsbHidDriver", "UsbHidDeviceConfig"),
}
"""Driver name → backend, in the order ``scanfleet devices`` and error messages list them."""


def driver_names() -> list[str]:
    """Every registered driver name (the values ``driver`` may take)."""
    return list(BACKENDS)


def config_model(name: str) -> type[DeviceConfigBase]:
    """The config model of driver *name* (imports its module).

    :raises KeyError: no driver is registered as *name*.
    :raises TypeError: the registered model does not accept *name* as its ``driver``.
    """
    backend = BACKENDS[name]
    model = getattr(importlib.import_module(backend.module), backend.config)
    if not (isinstance(model, type) and issubclass(model, DeviceConfigBase)):
        raise TypeError(f"{backend.module}.{backend.config} is not a DeviceConfigBase")
    if name not in _driver_literals(model):
        raise TypeError(f"{model.__name__}.driver does not accept {name!r}")
    return model


def _driver_literals(model: type[DeviceConfigBase]) -> tuple[object, ...]:
    annotation = model.model_fields["driver"].annotation
    return get_args(annotation) if get_origin(annotation) is Literal else ()


@cache
def config_models() -> tuple[type[DeviceConfigBase], ...]:
    """Each distinct config model, in registry order (two drivers may share one)."""
    models: list[type[DeviceConfigBase]] = []
    for name in BACKENDS:
        model = config_model(name)
        if model not in models:
            models.append(model)
    return tuple(models)


def complete_config() -> None:
    """Let the configuration accept every registered driver's ``[[devices]]`` entries."""
    register_device_models(config_models())


def driver_class(name: str) -> type[Driver[Any]]:
    """The Driver class registered as *name*.

    :raises DriverUnavailableError: no driver is registered as *name*, or its module
        cannot be imported.
    """
    try:
        backend = BACKENDS[name]
    except KeyError:
        raise DriverUnavailableError(name, "a registered driver", "unknown driver") from None
    try:
        module = importlib.import_module(backend.module)
    except ImportError as err:
        raise DriverUnavailableError(name, err.name or backend.module, str(err)) from err
    cls: type[Driver[Any]] = getattr(module, backend.driver)
    return cls


def open_driver(
    config: DeviceConfigBase, *, on_problem: ProblemCallback | None = None
) -> Driver[Any]:
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
