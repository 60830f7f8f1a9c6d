"""``scanfleet devices``: serial and input devices, their USB ids and stable paths."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``devices`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "devices",
        help="list serial and input devices and which look like scanners",
        description=(
            "List serial ports (/dev/ttyUSB*, ttyACM*, real UARTs) and input devices "
            "(/dev/input/event*) with vid:pid, stable by-id/by-path links and a guess "
            "whether each is a barcode scanner. Reads sysfs only; opens nothing."
        ),
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--scanners", action="store_true", help="only devices that look like scanners"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from scanfleet.drivers.discovery import input_devices, serial_devices

    groups = {"serial": serial_devices(), "input": input_devices()}
    if args.scanners:
        groups = {k: [d for d in v if d.looks_like_scanner] for k, v in groups.items()}
    if args.json:
        doc = {k: [dataclasses.asdict(d) for d in v] for k, v in groups.items()}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    for title, devices in groups.items():
        print(f"{title} devices:")
        if not devices:
            print("  none found")
            continue
        for dev in devices:
            mark = "scanner?" if dev.looks_like_scanner else "        "
            ident = dev.vid_pid or "-"
            label = " ".join(x for x in (dev.manufacturer, dev.product) if x) or dev.name or ""
            print(f"  {mark} {dev.path:<22} {ident:<9} {label}")
            for link in dev.links:
                print(f"           {link}")
            if dev.reason:
                print(f"           ({dev.reason})")
    return 0
