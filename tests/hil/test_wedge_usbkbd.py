"""QEMU's usb-kbd typed through QMP, read by the evdev wedge driver and the pyusb driver."""

from __future__ import annotations

from typing import Any

from hil.guest import Guest
from hil.qmp import Qmp

CODE = "83711700173703755001"
QEMU_KBD = "0627:0001"


def read_one_with(driver_name: str, timeout: float = 60.0) -> dict[str, Any]:
    """In the guest: open QEMU's usb-kbd with the named driver, notify, read one scan."""
    from hil.agent import notify
    from hil.guestlib import wait_node
    from scanfleet.drivers.registry import open_driver
    from scanfleet.drivers.usbhid import UsbHidDeviceConfig
    from scanfleet.drivers.wedge.evdev import WedgeDeviceConfig

    wait_node(0x0627, 0x0001, "input")
    # QMP keys are paced by a busy host: allow long gaps (Enter ends the scan anyway).
    config: Any = (
        WedgeDeviceConfig(name="kbd", driver="evdev", usb=QEMU_KBD, idle_timeout_ms=3000)
        if driver_name == "evdev"
        else UsbHidDeviceConfig(name="kbd", driver="usbhid", usb=QEMU_KBD, idle_timeout_ms=3000)
    )
    problems: list[str] = []
    with open_driver(config, on_problem=lambda p: problems.append(p.code)) as driver:
        notify("open")
        got = driver.read(timeout)
    # After a pyusb claim the kernel driver must be back: the keyboard is an input again.
    return {
        "data": None if got is None else got.data,
        "problems": problems,
        "input_back": bool(wait_node(0x0627, 0x0001, "input")),
    }


def test_usb_keyboard_scan_decoded_by_the_evdev_wedge_driver(guest: Guest, qmp: Qmp) -> None:
    call = guest.submit(read_one_with, "evdev")
    assert call.wait_notice() == "open"
    qmp.type_text(CODE + "\n", pace=0.025)
    result = call.result()
    assert result["data"] == CODE.encode() + b"\r"
    assert result["problems"] == []


def test_usb_keyboard_scan_decoded_by_the_pyusb_driver_and_kernel_driver_reattached(
    guest: Guest, qmp: Qmp
) -> None:
    call = guest.submit(read_one_with, "usbhid")
    assert call.wait_notice() == "open"
    qmp.type_text(CODE + "\n", pace=0.025)
    result = call.result()
    assert result["problems"] == []
    assert result["data"] == CODE.encode() + b"\r"
    assert result["input_back"]
