"""Guest-side keyboard readers (python-evdev, pyusb) and US-layout decoding.

Run inside the guest. A reader grabs or claims the device, tells the host it is ready
(``notify``) and collects keys until Enter, so the host types only into a live reader.
"""

from __future__ import annotations

import select
import time
from typing import Any

from hil.agent import notify
from hil.guestlib import wait_node

#: QEMU's usb-kbd.
QEMU_KBD_VID = 0x0627
QEMU_KBD_PID = 0x0001

_US_PAIRS = {
    "MINUS": "-_", "EQUAL": "=+", "DOT": ".>", "COMMA": ",<", "SLASH": "/?",
    "SEMICOLON": ";:", "APOSTROPHE": "'\"", "SPACE": "  ",
}  # fmt: skip
_SHIFTED_DIGITS = ")!@#$%^&*("
#: HID keyboard usages (boot protocol) -> unshifted/shifted characters; 0x28 is Enter.
HID_USAGES = {
    **{0x04 + i: (chr(97 + i), chr(65 + i)) for i in range(26)},
    **{0x1E + i: (str((i + 1) % 10), _SHIFTED_DIGITS[(i + 1) % 10]) for i in range(10)},
    0x28: ("\n", "\n"),
    0x2C: (" ", " "),
    0x2D: ("-", "_"),
    0x2E: ("=", "+"),
    0x36: (",", "<"),
    0x37: (".", ">"),
    0x38: ("/", "?"),
}


def evdev_char(code: int, shifted: bool) -> str | None:
    """Character for evdev key *code* on a US layout, None for modifiers and others."""
    from evdev import ecodes  # imported in the guest only; the host needs no evdev

    name = ecodes.KEY.get(code)
    if not isinstance(name, str) or not name.startswith("KEY_"):
        return None
    key = name[4:]
    if key == "ENTER":
        return "\n"
    if len(key) == 1 and key.isalpha():
        return key if shifted else key.lower()
    if len(key) == 1 and key.isdigit():
        return _SHIFTED_DIGITS[int(key)] if shifted else key
    pair = _US_PAIRS.get(key)
    return None if pair is None else pair[1 if shifted else 0]


def read_evdev_line(node: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Grab an evdev keyboard (default: QEMU's usb-kbd), notify "grabbed", read to Enter.

    Notifies the running count of keys pressed (for ``Qmp.type_text(acked=...)``).
    Returns the typed text and whether the kernel dropped events (SYN_DROPPED).
    """
    from evdev import InputDevice, ecodes

    path = node or wait_node(QEMU_KBD_VID, QEMU_KBD_PID, "input")
    device = InputDevice(path)
    text, dropped, pressed = "", False, 0
    shifts: set[int] = set()
    try:
        device.grab()
        notify("grabbed")
        deadline = time.monotonic() + timeout
        while not text.endswith("\n"):
            if not select.select([device.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"no Enter from {path} within {timeout} s; got {text!r}")
            for event in device.read():
                if event.type == ecodes.EV_SYN and event.code == ecodes.SYN_DROPPED:
                    dropped = True
                if event.type != ecodes.EV_KEY:
                    continue
                if event.code in (ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT):
                    (shifts.add if event.value else shifts.discard)(event.code)
                elif event.value == 1:
                    char = evdev_char(event.code, bool(shifts))
                    text += char if char is not None else f"<{event.code}>"
                    pressed += 1
                    notify(pressed)  # the host's acknowledged typing counts these
        # The Enter key-up follows; leave no key held for the next reader.
        time.sleep(0.1)
        while select.select([device.fd], [], [], 0)[0]:
            list(device.read())
    finally:
        device.close()  # closing releases the grab
    return {"text": text, "dropped": dropped, "node": path}


def decode_boot_reports(reports: list[bytes]) -> str:
    """Text typed in a sequence of 8-byte boot-keyboard reports (new usages = presses)."""
    text, held = "", set[int]()
    for report in reports:
        shifted = bool(report[0] & 0x22)
        now = {u for u in report[2:] if u}
        for usage in sorted(now - held):
            pair = HID_USAGES.get(usage)
            text += f"<{usage:#x}>" if pair is None else pair[1 if shifted else 0]
        held = now
    return text


def read_usb_keyboard_reports(timeout: float = 60.0) -> dict[str, Any]:
    """Claim QEMU's usb-kbd with pyusb (kernel driver detached), notify "claimed" once
    stale reports are drained, then read boot reports until Enter is released, notifying
    the running count of keys pressed.

    The kernel driver is re-attached afterwards.
    """
    import usb.core
    import usb.util

    dev = usb.core.find(idVendor=QEMU_KBD_VID, idProduct=QEMU_KBD_PID)
    if dev is None:
        raise LookupError("QEMU usb-kbd not on the bus")
    detached = dev.is_kernel_driver_active(0)
    if detached:
        dev.detach_kernel_driver(0)
    reports: list[bytes] = []
    stale = 0
    try:
        usb.util.claim_interface(dev, 0)
        endpoint = 0x81
        while True:  # reports queued before the claim would corrupt the scan
            try:
                dev.read(endpoint, 8, timeout=100)
                stale += 1
            except usb.core.USBTimeoutError:
                break
        notify("claimed")
        deadline = time.monotonic() + timeout
        seen_enter = False
        held: set[int] = set()
        pressed = 0
        while time.monotonic() < deadline:
            try:
                report = bytes(dev.read(endpoint, 8, timeout=500))
            except usb.core.USBTimeoutError:
                continue
            reports.append(report)
            now = {u for u in report[2:] if u}
            pressed += len(now - held)
            held = now
            notify(pressed)  # the host's acknowledged typing counts these
            seen_enter = seen_enter or 0x28 in report[2:]
            if seen_enter and not any(report):
                break
        else:
            raise TimeoutError(f"no Enter release in {timeout} s: {decode_boot_reports(reports)!r}")
    finally:
        usb.util.release_interface(dev, 0)
        if detached:
            dev.attach_kernel_driver(0)
        usb.util.dispose_resources(dev)
    return {"reports": reports, "stale": stale, "reattached": detached}
