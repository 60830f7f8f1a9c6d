"""A stalled reader on a real USB keyboard (configfs gadget → usbhid → evdev)."""

from __future__ import annotations

import threading
import time
from typing import Any

from hil.gadget import Gadgets
from hil.guest import Guest
from hil.guestlib import wait_node
from hil.test_wedge_hotplug import BOOT_KEYBOARD, type_on_gadget

PID = 0x0D11
CODES = ["83711700173703755011", "83711700173703755012", "83711700173703755013"]


def gadget_types_while_the_reader_sleeps(hidg: str, vid: int, pid: int) -> dict[str, Any]:
    """In the guest: the driver is open (grabbed) but nobody reads while the gadget types
    two scans (≈ 126 events each, the kernel keeps 64); then one scan with a live reader."""
    from scanfleet.drivers.wedge.evdev import EvdevWedgeDriver, WedgeDeviceConfig

    config = WedgeDeviceConfig(
        name="w", driver="evdev", usb=f"{vid:04x}:{pid:04x}", idle_timeout_ms=3000
    )
    problems: list[str] = []
    reads: list[bytes] = []
    with EvdevWedgeDriver(config, on_problem=lambda p: problems.append(p.code)) as driver:
        for code in CODES[:-1]:
            type_on_gadget(hidg, code)
        while (got := driver.read(0.5)) is not None:
            reads.append(got.data)
        late: list[Any] = []
        reader = threading.Thread(target=lambda: late.append(driver.read(20.0)))
        reader.start()
        # If the lost stretch held a terminator, keys stay discarded until a silence of
        # idle_timeout (3 s here): the operator's re-scan comes after that pause.
        time.sleep(3.5)
        type_on_gadget(hidg, CODES[-1])
        reader.join(30)
        overflows = driver.stats.overflows
    return {
        "reads": reads,
        "last": late[0].data if late and late[0] is not None else None,
        "problems": problems,
        "overflows": overflows,
    }


def test_gadget_keyboard_outrunning_a_sleeping_reader_is_a_counted_loss_never_a_wrong_code(
    guest: Guest, gadgets: Gadgets
) -> None:
    scanner = gadgets.hid("wedge_stall", BOOT_KEYBOARD, 8, pid=PID, protocol=1, subclass=1)
    guest.run(wait_node, scanner["vid"], PID, "input")
    result = guest.run(gadget_types_while_the_reader_sleeps, scanner["hidg"], scanner["vid"], PID)
    assert result["overflows"] >= 1
    assert "overflow" in result["problems"]
    sent = {c.encode() + b"\r" for c in CODES}
    assert set(result["reads"]) <= sent  # whatever survived is exact
    assert result["last"] == CODES[-1].encode() + b"\r"
