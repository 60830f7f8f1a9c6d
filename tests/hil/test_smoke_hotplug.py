"""Unplug and replug: QEMU USB devices through QMP, gadgets through their UDC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil.gadget import Gadgets
from hil.guest import Guest
from hil.guest_input import QEMU_KBD_PID, QEMU_KBD_VID, read_evdev_line
from hil.guestlib import tty_by_driver, usb_device, wait_for, wait_gone, wait_node
from hil.qmp import Qmp, QmpError
from hil.streams import ByteStream
from hil.test_smoke_hid_pos import HID_POS_DESCRIPTOR, REPORT_LENGTH, REPORTS, through_hidraw
from hil.test_smoke_serial import check_both_ways
from hil.vm import FTDI_CHARDEV, FTDI_ID, KEYBOARD_ID, USB_BUS


def wait_ftdi_gone() -> None:
    """In the guest: wait until no tty is bound to ftdi_sio any more."""
    wait_for(lambda: tty_by_driver("ftdi_sio") is None, "ftdi_sio tty removed")


@pytest.fixture
def replug_guard(qmp: Qmp) -> Iterator[None]:
    """Put back any QEMU device a failed test left unplugged, for the tests after it."""
    yield
    for device_id, driver, props in (
        (KEYBOARD_ID, "usb-kbd", {"bus": USB_BUS}),
        (FTDI_ID, "usb-serial", {"bus": USB_BUS, "chardev": FTDI_CHARDEV, "always-plugged": True}),
    ):
        try:
            qmp.execute("qom-get", path=f"/machine/peripheral/{device_id}", property="type")
        except QmpError:
            qmp.device_add(driver, device_id, **props)


def test_usb_keyboard_unplugged_and_replugged_types_again(
    guest: Guest, qmp: Qmp, replug_guard: None
) -> None:
    first = guest.run(wait_node, QEMU_KBD_VID, QEMU_KBD_PID, "input")
    qmp.device_del(KEYBOARD_ID)
    guest.run(wait_gone, QEMU_KBD_VID, QEMU_KBD_PID)
    qmp.device_add("usb-kbd", KEYBOARD_ID, bus=USB_BUS)
    second = guest.run(wait_node, QEMU_KBD_VID, QEMU_KBD_PID, "input")
    assert first.startswith("/dev/input/event")
    assert second.startswith("/dev/input/event")
    call = guest.submit(read_evdev_line)
    assert call.wait_notice() == "grabbed"
    qmp.type_text("0104\n", acked=call.last_notice)
    assert call.result()["text"] == "0104\n"


def test_usb_serial_unplugged_and_replugged_carries_bytes_again(
    guest: Guest, qmp: Qmp, usb_serial: ByteStream, replug_guard: None
) -> None:
    qmp.device_del(FTDI_ID)
    guest.run(wait_ftdi_gone)
    qmp.device_add(
        "usb-serial", FTDI_ID, bus=USB_BUS, chardev=FTDI_CHARDEV, **{"always-plugged": True}
    )
    tty = check_both_ways(guest, usb_serial, None, "ftdi_sio")
    assert tty.startswith("/dev/ttyUSB")


def test_hid_gadget_unplugged_and_replugged_reports_again(guest: Guest, gadgets: Gadgets) -> None:
    scanner = gadgets.hid("replug", HID_POS_DESCRIPTOR, REPORT_LENGTH, pid=0x0C02)
    gadgets.unplug("replug")
    assert guest.run(usb_device, scanner["vid"], scanner["pid"]) is None
    hidraw = gadgets.replug("replug")
    result = guest.run(through_hidraw, scanner["hidg"], hidraw, REPORTS)
    assert result["reports"] == REPORTS
