"""A HID POS (usage page 0x8C) scanner gadget, read through hidraw and through pyusb."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from typing import Any

from hil.gadget import Gadgets
from hil.guest import Guest

REPORT_LENGTH = 64
#: Bar Code Scanner application collection with one 64-byte vendor-shaped input report.
HID_POS_DESCRIPTOR = bytes.fromhex(
    "06 8c 00"  # Usage Page (Bar Code Scanner, 0x8C)
    "09 02"  # Usage (Bar Code Scanner)
    "a1 01"  # Collection (Application)
    "09 12"  #   Usage (Scanned Data Report)
    "a1 02"  #   Collection (Logical)
    "15 00 26 ff 00"  # Logical Minimum 0, Maximum 255
    "75 08 95 40"  # Report Size 8, Report Count 64
    "09 fe"  #     Usage (Decoded Data)
    "82 02 01"  #     Input (Data, Variable, Absolute, Buffered Bytes)
    "c0"  #   End Collection
    "c0"  # End Collection
)
PID = 0x0C01


def scan_report(barcode: bytes) -> bytes:
    """One input report: length byte, then the decoded data, zero padded."""
    return bytes([len(barcode)]) + barcode.ljust(REPORT_LENGTH - 1, b"\0")


REPORTS = [scan_report(b"]d2" + b"0103400934567891172612311024AB12C"), scan_report(b"\x1d" * 8)]


def write_report(hidg: int, report: bytes, timeout: float = 10.0) -> None:
    """Guest side: one report into /dev/hidgN (non-blocking: a stuck host must not hang us)."""
    if not select.select([], [hidg], [], timeout)[1]:
        raise TimeoutError("hidg not writable: nobody polls the interrupt IN endpoint")
    os.write(hidg, report)


def through_hidraw(hidg: str, hidraw: str, reports: list[bytes]) -> dict[str, Any]:
    """In the guest: write *reports* on the gadget side, read them from hidraw."""
    received = []
    raw = os.open(hidraw, os.O_RDONLY | os.O_NONBLOCK)  # opening starts usbhid's polling
    gadget = os.open(hidg, os.O_WRONLY | os.O_NONBLOCK)
    try:
        for report in reports:
            write_report(gadget, report)
            if not select.select([raw], [], [], 10)[0]:
                raise TimeoutError(f"no report on {hidraw}")
            received.append(os.read(raw, 4096))
    finally:
        os.close(gadget)
        os.close(raw)
    descriptor = Path("/sys/class/hidraw") / Path(hidraw).name / "device" / "report_descriptor"
    return {"reports": received, "descriptor": descriptor.read_bytes()}


def through_pyusb(hidg: str, vid: int, pid: int, reports: list[bytes]) -> dict[str, Any]:
    """In the guest: detach usbhid, claim with pyusb, read the reports and descriptor."""
    import usb.core
    import usb.util

    dev = usb.core.find(idVendor=vid, idProduct=pid)
    if dev is None:
        raise LookupError(f"{vid:04x}:{pid:04x} not on the bus")
    detached = dev.is_kernel_driver_active(0)
    if detached:
        dev.detach_kernel_driver(0)
    received = []
    empty_reads = 0
    gadget = os.open(hidg, os.O_WRONLY | os.O_NONBLOCK)
    try:
        usb.util.claim_interface(dev, 0)
        # GET_DESCRIPTOR(Report) on the interface, as a host driver does before reading.
        descriptor = bytes(dev.ctrl_transfer(0x81, 0x06, 0x2200, 0, 512))
        endpoint = usb.util.find_descriptor(
            dev.get_active_configuration()[(0, 0)],
            custom_match=lambda e: (
                usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN
            ),
        )
        for report in reports:
            write_report(gadget, report)
            deadline = time.monotonic() + 10
            while True:
                try:
                    data = bytes(endpoint.read(REPORT_LENGTH, timeout=1000))
                except usb.core.USBTimeoutError:
                    if time.monotonic() > deadline:
                        raise
                    continue
                # A report of exactly wMaxPacketSize (64) is followed by a zero-length
                # packet; it carries no report, as on a real full-speed device.
                if data:
                    received.append(data)
                    break
                empty_reads += 1
    finally:
        os.close(gadget)
        usb.util.release_interface(dev, 0)
        if detached:
            dev.attach_kernel_driver(0)
        usb.util.dispose_resources(dev)
    return {"reports": received, "descriptor": descriptor, "reattached": detached,
            "empty_reads": empty_reads}  # fmt: skip


def test_hid_pos_scanner_reports_arrive_through_hidraw(guest: Guest, gadgets: Gadgets) -> None:
    scanner = gadgets.hid("hidpos", HID_POS_DESCRIPTOR, REPORT_LENGTH, pid=PID)
    result = guest.run(through_hidraw, scanner["hidg"], scanner["hidraw"], REPORTS)
    assert result["descriptor"] == HID_POS_DESCRIPTOR
    assert result["reports"] == REPORTS


def test_hid_pos_scanner_reports_arrive_through_pyusb(guest: Guest, gadgets: Gadgets) -> None:
    scanner = gadgets.hid("hidpos", HID_POS_DESCRIPTOR, REPORT_LENGTH, pid=PID)
    result = guest.run(through_pyusb, scanner["hidg"], scanner["vid"], PID, REPORTS)
    assert result["descriptor"] == HID_POS_DESCRIPTOR
    assert result["reports"] == REPORTS
    assert result["reattached"]
