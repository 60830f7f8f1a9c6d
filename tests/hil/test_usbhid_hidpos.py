"""A HID POS scanner gadget (usage page 0x8C) read by the pyusb driver, with a beep back."""

from __future__ import annotations

import os
import select
from typing import Any

from hil.gadget import Gadgets
from hil.guest import Guest

REPORT_LENGTH = 64
PID = 0x0C02
#: Bar Code Scanner collection: 64-byte scanned-data input and 64-byte output report.
DESCRIPTOR = bytes.fromhex(
    "06 8c 00 09 02 a1 01"  # Usage Page 0x8C, Usage (Bar Code Scanner), Collection
    "09 12 15 00 26 ff 00 75 08 95 40 09 fe 82 02 01"  # 64-byte Decoded Data input
    "09 86 95 40 91 02"  # 64-byte output (Sound Good Read Beep usage)
    "c0"
)
GS1 = b"0106901234567892\x1d17260131\x1d10LOT42\x1d21SER0001" * 3  # 3 reports


def _open_when_listed(driver_class: Any, config: Any, timeout: float = 10.0) -> Any:
    """In the guest: open the driver once libusb lists the device.

    The hidraw node exists before libusb's device list has caught up with the plug
    (seen once in a full run on a loaded machine: "no USB device"); the daemon retries
    such an open on the next hotplug wake-up, this test retries it here.
    """
    import time

    from scanfleet.daemon.core.errors import DeviceGoneError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return driver_class(config)
        except DeviceGoneError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def scan_and_beep(hidg: str, vid: int, pid: int, data: bytes) -> dict[str, Any]:
    """In the guest: gadget sends *data* as HID POS reports; the driver reads it and beeps."""
    import threading

    from scanfleet.drivers import usbhid
    from scanfleet.drivers.base import Signal
    from scanfleet.drivers.usbhid import UsbHidDeviceConfig

    config = UsbHidDeviceConfig(
        name="pos", driver="usbhid", usb=f"{vid:04x}:{pid:04x}", mode="hidpos", feedback="honeywell"
    )
    gadget = os.open(hidg, os.O_RDWR | os.O_NONBLOCK)
    out: list[bytes] = []
    try:
        with _open_when_listed(usbhid.UsbHidDriver, config) as driver:
            result: list[Any] = []
            reader = threading.Thread(target=lambda: result.append(driver.read(20)))
            reader.start()
            for report in usbhid.hidpos_reports(data, "]d2"):
                if not select.select([], [gadget], [], 10)[1]:
                    raise TimeoutError("hidg not writable")
                os.write(gadget, report)
            reader.join(30)
            driver.signal(Signal.GOOD_READ)
            if select.select([gadget], [], [], 10)[0]:
                out.append(os.read(gadget, 4096))
            scan = result[0]
    finally:
        os.close(gadget)
    return {"data": scan.data, "aim": scan.aim, "output": out}


def test_hid_pos_multi_report_scan_with_aim_and_a_beep_received_by_the_gadget(
    guest: Guest, gadgets: Gadgets
) -> None:
    scanner = gadgets.hid("hidpos_scanner", DESCRIPTOR, REPORT_LENGTH, pid=PID)
    result = guest.run(scan_and_beep, scanner["hidg"], scanner["vid"], PID, GS1)
    assert result["data"] == GS1
    assert result["aim"] == "]d2"
    assert result["output"][0][:5] == bytes.fromhex("FD 03 16 07 0D")
