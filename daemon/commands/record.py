"""``scanfleet record``: capture a scanner's raw key events or HID reports to a trace file.

The trace replays through the virtual driver (``scanfleet.drivers.wedge.trace.replay``,
``scanfleet.drivers.usbhid.replay``) and through the unit tests' decoder, so a field
problem (a layout, a lost key, an odd report) can be reproduced exactly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``record`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "record",
        help="capture a wedge or USB-HID scanner's raw events to a replayable trace",
        description=(
            "Open DEVICE exclusively (evdev grab, or libusb claim with the kernel driver "
            "detached and re-attached after) and write every raw key event or HID report "
            "to FILE as JSON lines until --seconds pass or SIGINT/SIGTERM. DEVICE is an "
            "input event node (/dev/input/by-id/...-event-kbd) or usb:VID:PID."
        ),
    )
    parser.add_argument("device", help="/dev/input/... node, or usb:VID:PID[:SERIAL]")
    parser.add_argument("-o", "--output", type=Path, required=True, help="trace file to write")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument(
        "--layout", default="us", choices=["us", "uk", "de", "fr"], help="scanner keyboard country"
    )
    parser.add_argument(
        "--mode", default="keyboard", choices=["keyboard", "hidpos"], help="USB report format"
    )
    parser.add_argument("--note", default="", help="free text stored in the trace header")
    parser.set_defaults(func=_run)


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _run(args: argparse.Namespace) -> int:
    from scanfleet.daemon.core.errors import ScanfleetError

    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    end = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        if args.device.startswith("usb:"):
            count = _record_usb(args, stop, end)
        else:
            count = _record_evdev(args, stop, end)
    except ScanfleetError as err:
        print(f"scanfleet record: {err}", file=sys.stderr)
        return 1
    print(f"recorded {count} records to {args.output}", file=sys.stderr)
    return 0


def _remaining(end: float | None) -> float:
    return 0.5 if end is None else max(0.0, min(0.5, end - time.monotonic()))


def _done(stop: _Stop, end: float | None) -> bool:
    return stop.requested or (end is not None and time.monotonic() >= end)


def _record_evdev(args: argparse.Namespace, stop: _Stop, end: float | None) -> int:
    from scanfleet.drivers.wedge.evdev import EvdevWedgeDriver, WedgeDeviceConfig
    from scanfleet.drivers.wedge.trace import InputEvent, write_trace

    config = WedgeDeviceConfig(name="record", driver="evdev", path=args.device, layout=args.layout)
    events: list[InputEvent] = []
    with EvdevWedgeDriver(config) as driver:
        print(f"recording {driver.port}; scan now", file=sys.stderr)
        while not _done(stop, end):
            events += driver.read_events(_remaining(end))
    header = {"layout": args.layout, "note": args.note or f"recorded from {args.device}"}
    write_trace(args.output, header, events)
    return len(events)


def _record_usb(args: argparse.Namespace, stop: _Stop, end: float | None) -> int:
    from scanfleet.drivers.usbhid import UsbHidDeviceConfig, UsbHidDriver, write_trace

    config = UsbHidDeviceConfig(
        name="record", driver="usbhid", usb=args.device[4:], mode=args.mode, layout=args.layout
    )
    reports: list[tuple[float, bytes]] = []
    with UsbHidDriver(config) as driver:
        print(f"recording {driver.port}; scan now", file=sys.stderr)
        while not _done(stop, end):
            report = driver.read_report(_remaining(end) or 0.001)
            if report is not None:
                reports.append((time.monotonic(), report))
    header = {
        "mode": args.mode,
        "layout": args.layout,
        "note": args.note or f"recorded from {args.device}",
    }
    write_trace(args.output, header, reports)
    return len(reports)
