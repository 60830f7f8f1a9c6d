"""The evdev wedge driver against the real input stack: a uinput scanner in the guest."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from hil.guest import Guest

NAME = "hil-wedge-scanner"


def _codes(n: int) -> list[str]:
    gs1 = [f"0106901234567892\x1d17260131\x1d10L{i:04d}\x1d21S{i:06d}" for i in range(n // 2)]
    trace20 = [f"837117001737{i:08d}" for i in range(n - n // 2)]
    return [c for pair in zip(gs1, trace20, strict=False) for c in pair]


def _scanner() -> Any:
    from evdev import UInput, ecodes

    return UInput({ecodes.EV_KEY: list(range(1, 128))}, name=NAME)


def _type(ui: Any, text: str, key_interval: float) -> None:
    from scanfleet.drivers import keymaps as km
    from scanfleet.drivers.wedge.trace import type_text

    for event in type_text(km.US, text, key_interval=0):
        if event.type == 4:
            continue  # MSC_SCAN: uinput devices declare no EV_MSC
        ui.write(event.type, event.code, event.value)
        if event.type == 0 and key_interval:
            time.sleep(key_interval / 2)  # two SYN_REPORTs (down, up) per key


def scanner_types_under_grab(n: int, key_interval: float) -> dict[str, Any]:
    """In the guest: a uinput scanner types *n* codes; the driver decodes them under grab
    while a second, non-grabbing reader watches the same node."""
    from evdev import InputDevice

    from hil.guestlib import evdev_by_name, wait_for
    from scanfleet.drivers.wedge.evdev import EvdevWedgeDriver, WedgeDeviceConfig

    codes = _codes(n)
    ui = _scanner()
    problems: list[str] = []
    reads: list[bytes] = []
    try:
        node = wait_for(lambda: evdev_by_name(NAME), "uinput event node")
        bystander = InputDevice(node)
        # A long silence limit: a TCG guest on a busy host can pause for 100+ ms.
        config = WedgeDeviceConfig(name="w", driver="evdev", path=node, idle_timeout_ms=3000)
        driver = EvdevWedgeDriver(config, on_problem=lambda p: problems.append(p.code))
        try:
            done = threading.Event()

            def reader() -> None:
                # A scanner's reader thread, as the daemon's DeviceWorker runs it, with
                # real-time priority so the guest's writer cannot starve it.
                os.sched_setaffinity(0, {0})
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
                while not done.is_set() or driver.read(0) is not None:
                    got = driver.read(0.5)
                    if got is not None:
                        reads.append(got.data)

            thread = threading.Thread(target=reader)
            thread.start()
            # The writer shares the reader's CPU: a reader with pending events preempts it,
            # and when the host deschedules that vCPU both stop together. (On two vCPUs a
            # host stall of the reader's alone would overflow 64 events in ~30 ms.)
            os.sched_setaffinity(0, {0})
            started = time.monotonic()
            for i, code in enumerate(codes):
                _type(ui, code, key_interval)
                # Scans follow one another as an operator scans packs: each one typed at
                # scanner speed, the next after this one is decoded (or 5 s).
                until = time.monotonic() + 5.0
                while len(reads) + driver.stats.overflows <= i and time.monotonic() < until:
                    time.sleep(0.01)
            time.sleep(1.0)
            done.set()
            thread.join(60)
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
            elapsed = time.monotonic() - started
            stats = driver.stats
        finally:
            driver.close()
        seen_by_bystander = 0
        # BlockingIOError: nothing pending, the grab kept every key from it.
        with contextlib.suppress(BlockingIOError):
            seen_by_bystander = sum(1 for e in bystander.read() if e.type == 1)
        bystander.close()
    finally:
        ui.close()
    return {
        "sent": [c.encode() + b"\r" for c in codes],
        "reads": reads,
        "problems": problems,
        "overflows": stats.overflows,
        "bystander": seen_by_bystander,
        "seconds": elapsed,
    }


def stalled_reader_loses_scans_but_never_misreads(scans: int) -> dict[str, Any]:
    """In the guest: the scanner types while the driver is open but nobody reads, then
    one more scan with the reader awake."""
    from hil.guestlib import evdev_by_name, wait_for
    from scanfleet.drivers.wedge.evdev import EvdevWedgeDriver, WedgeDeviceConfig

    codes = _codes(scans + 1)
    ui = _scanner()
    problems: list[str] = []
    reads: list[bytes] = []
    try:
        node = wait_for(lambda: evdev_by_name(NAME), "uinput event node")
        config = WedgeDeviceConfig(name="w", driver="evdev", path=node, idle_timeout_ms=3000)
        with EvdevWedgeDriver(config, on_problem=lambda p: problems.append(p.code)) as driver:
            for code in codes[:-1]:
                _type(ui, code, 0.0)  # the reader sleeps: the 64-event buffer overflows
            while (got := driver.read(0.5)) is not None:
                reads.append(got.data)
            reader = threading.Thread(target=lambda: reads.append(driver.read(10.0).data))  # type: ignore[union-attr]
            reader.start()
            time.sleep(0.2)
            _type(ui, codes[-1], 0.002)
            reader.join(20)
            overflows = driver.stats.overflows
    finally:
        ui.close()
    return {
        "sent": [c.encode() + b"\r" for c in codes],
        "reads": reads,
        "problems": problems,
        "overflows": overflows,
    }


def test_uinput_scanner_200_codes_decoded_exactly_under_grab(guest: Guest) -> None:
    result = guest.run(scanner_types_under_grab, 200, 0.002, timeout=240)
    summary = {k: v for k, v in result.items() if k not in ("sent", "reads")}
    assert result["problems"] == [], (summary, len(result["reads"]))
    assert result["reads"] == result["sent"]
    assert result["bystander"] == 0


def test_stalled_reader_counts_and_reports_the_loss_and_never_yields_a_wrong_code(
    guest: Guest,
) -> None:
    result = guest.run(stalled_reader_loses_scans_but_never_misreads, 3, timeout=120)
    assert result["overflows"] >= 1
    assert "overflow" in result["problems"]
    assert set(result["reads"]) <= set(result["sent"])
    assert result["reads"][-1] == result["sent"][-1]
