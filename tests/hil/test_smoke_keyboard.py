"""Keyboards through the real input stack: uinput under grab, QEMU usb-kbd via evdev and pyusb."""

from __future__ import annotations

import select
from typing import Any

from hil.guest import Guest
from hil.guest_input import decode_boot_reports, read_evdev_line, read_usb_keyboard_reports
from hil.guestlib import evdev_by_name, wait_for
from hil.qmp import Qmp

#: A GS1 DataMatrix read as a keyboard wedge types it (GTIN, expiry, batch, serial).
SCAN = "0103400934567891172612311024AB12C21Q7XZ59Y\n"


def uinput_keys_under_grab(codes: list[int]) -> dict[str, Any]:
    """In the guest: a uinput keyboard types *codes*; one reader grabs, one does not."""
    from evdev import InputDevice, UInput, ecodes

    name = "hil-uinput-keyboard"
    ui = UInput({ecodes.EV_KEY: sorted(set(codes))}, name=name)
    try:
        path = wait_for(lambda: evdev_by_name(name), "uinput event node")
        grabber, bystander = InputDevice(path), InputDevice(path)

        def tap(code: int) -> None:
            ui.write(ecodes.EV_KEY, code, 1)
            ui.write(ecodes.EV_KEY, code, 0)
            ui.syn()

        def pending_presses(device: Any) -> list[int]:
            presses = []
            while select.select([device.fd], [], [], 0.2)[0]:
                presses += [e.code for e in device.read() if e.type == ecodes.EV_KEY and e.value]
            return presses

        grabber.grab()
        for code in codes:
            tap(code)
        grabbed = pending_presses(grabber)
        bystander_during_grab = pending_presses(bystander)
        grabber.ungrab()
        tap(codes[0])
        bystander_after_ungrab = pending_presses(bystander)
        grabber.close()
        bystander.close()
    finally:
        ui.close()
    return {
        "grabbed": grabbed,
        "bystander_during_grab": bystander_during_grab,
        "bystander_after_ungrab": bystander_after_ungrab,
    }


def test_uinput_keyboard_under_grab_reaches_only_the_grabbing_reader(guest: Guest) -> None:
    codes = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 28]  # KEY_1..KEY_0, KEY_ENTER
    seen = guest.run(uinput_keys_under_grab, codes)
    assert seen["grabbed"] == codes
    assert seen["bystander_during_grab"] == []
    assert seen["bystander_after_ungrab"] == codes[:1]


def test_usb_keyboard_typing_reaches_a_grabbed_evdev_reader(guest: Guest, qmp: Qmp) -> None:
    call = guest.submit(read_evdev_line)
    assert call.wait_notice() == "grabbed"
    qmp.type_text(SCAN, acked=call.last_notice)
    result = call.result()
    assert result["text"] == SCAN
    assert not result["dropped"]


def test_usb_keyboard_reports_reach_pyusb_after_detaching_the_kernel_driver(
    guest: Guest, qmp: Qmp
) -> None:
    call = guest.submit(read_usb_keyboard_reports)
    assert call.wait_notice() == "claimed"
    qmp.type_text(SCAN, acked=call.last_notice)
    result = call.result()
    assert decode_boot_reports(result["reports"]) == SCAN
    assert result["reattached"]
    # The kernel driver is back: the same keyboard types through evdev again.
    call = guest.submit(read_evdev_line)
    assert call.wait_notice() == "grabbed"
    qmp.type_text("42\n", acked=call.last_notice)
    assert call.result()["text"] == "42\n"
