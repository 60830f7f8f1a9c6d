"""The driver registry: drivers own their config models; reading a config loads no hardware."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import get_args, get_origin

import pytest

from scanfleet.daemon.core.config import Config, DeviceConfigBase, parse_config
from scanfleet.daemon.core.errors import ConfigError, DriverUnavailableError
from scanfleet.drivers import registry
from scanfleet.drivers.base import Driver

EVERY_DRIVER = """
[[devices]]
name = "v"
driver = "virtual"

[[devices]]
name = "s"
driver = "serial"
port = "/dev/ttyUSB0"

[[devices]]
name = "is"
driver = "idcard_serial"
port = "/dev/ttyUSB1"

[[devices]]
name = "iu"
driver = "idcard_usb"

[[devices]]
name = "w"
driver = "evdev"
path = "/dev/input/event3"

[[devices]]
name = "u"
driver = "usbhid"
usb = "0c2e:0b61"
"""


@pytest.mark.parametrize("name", list(registry.BACKENDS))
def test_each_registered_driver_takes_its_own_config_model(name: str) -> None:
    model = registry.config_model(name)
    cls = registry.driver_class(name)
    assert issubclass(model, DeviceConfigBase)
    assert issubclass(cls, Driver)
    assert cls.driver_name == name
    # The model is defined with the driver (same package), not in the daemon.
    assert model.__module__.rsplit(".", 1)[0] == cls.__module__.rsplit(".", 1)[0]
    assert not model.__module__.startswith("scanfleet.daemon")
    # The class is declared Driver[Model] with the model the registry names.
    generic = [
        base
        for klass in cls.__mro__
        for base in klass.__dict__.get("__orig_bases__", ())
        if get_origin(base) is Driver
    ]
    assert [get_args(base) for base in generic] == [(model,)]


def test_every_driver_parses_into_its_model() -> None:
    config = parse_config(EVERY_DRIVER)
    got = {d.driver: type(d) for d in config.devices}
    assert got == {name: registry.config_model(name) for name in registry.BACKENDS}


def test_the_union_has_each_model_once_in_registry_order() -> None:
    models = registry.config_models()
    assert len(models) == len(set(models))
    assert [m.__name__ for m in models] == [
        "VirtualDeviceConfig",
        "SerialDeviceConfig",
        "IdCardDeviceConfig",
        "WedgeDeviceConfig",
        "UsbHidDeviceConfig",
    ]


def test_unknown_driver_lists_the_registry() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config('[[devices]]\nname = "x"\ndriver = "bluetooth"\n')
    (problem,) = err.value.problems
    assert problem.path == "devices[0].driver"
    assert problem.message == (
        "unknown or missing driver; known drivers: "
        "virtual, serial, idcard_serial, idcard_usb, evdev, usbhid"
    )
    with pytest.raises(DriverUnavailableError):
        registry.driver_class("bluetooth")


def test_a_registration_whose_model_does_not_accept_the_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        registry.BACKENDS,
        "serial2",
        registry.Backend("scanfleet.drivers.serial", "SerialDriver", "SerialDeviceConfig"),
    )
    with pytest.raises(TypeError, match="does not accept 'serial2'"):
        registry.config_model("serial2")


def test_open_driver_passes_the_typed_config() -> None:
    config = Config.model_validate(
        {"devices": [{"name": "v", "driver": "virtual", "channel": "registry-test"}]}
    )
    (device,) = config.devices
    with registry.open_driver(device) as driver:
        assert driver.config is device
        assert driver.driver_name == "virtual"


def _fresh_python(code: str) -> str:
    # A fresh interpreter: the test process has long imported the drivers and pyserial.
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout


def test_reading_a_config_imports_no_hardware_library() -> None:
    code = f"""
import json, sys
from scanfleet.daemon.core.config import parse_config
from scanfleet.drivers import registry
registry.complete_config()
parse_config({EVERY_DRIVER!r})
heavy = ("serial", "usb", "evdev", "cryptography")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""
    assert json.loads(_fresh_python(code)) == []


def test_the_configuration_does_not_import_the_drivers_and_says_when_they_are_missing() -> None:
    # drivers/ sits above the configuration: the registry completes it, never the reverse.
    code = """
import json, sys
from scanfleet.daemon.core import config
loaded = sorted(m for m in sys.modules if m.startswith("scanfleet.drivers"))
try:
    config.parse_config('[[devices]]\\nname = "v"\\ndriver = "virtual"\\n')
except RuntimeError as err:
    print(json.dumps([loaded, str(err)]))
"""
    loaded, message = json.loads(_fresh_python(code))
    assert loaded == []
    assert "scanfleet.drivers.registry.complete_config()" in message
