"""ID-card readers through real guest kernel drivers: the idcard_serial driver on the
FTDI usb-serial (ftdi_sio), and the idcard_usb driver (pyusb/libusb) on a USB-HID gadget
with the readers' 64-byte wrapper layout. The reader side is the protocol simulator."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.agent import notify
from hil.gadget import Gadgets
from hil.guest import Guest
from hil.guestlib import tty_by_driver, wait_for
from hil.streams import ByteStream
from scanfleet.drivers.idcard.protocol import Command, FrameParser
from scanfleet.drivers.sim.idcard import SAMPLE_CARDS, SamResponder

CARDS = ["mainland", "foreign_2023"]
PACKET = 64
#: Vendor-defined collection with one 64-byte input and one 64-byte output report, no ids.
IDCARD_HID_DESCRIPTOR = bytes.fromhex(
    "06 00 ff"  # Usage Page (Vendor 0xFF00)
    "09 01"  # Usage (1)
    "a1 01"  # Collection (Application)
    "15 00 26 ff 00"  # Logical Minimum 0, Maximum 255
    "75 08 95 40"  # Report Size 8, Report Count 64
    "09 01 81 02"  # Usage (1), Input (Data, Variable, Absolute)
    "09 01 91 02"  # Usage (1), Output (Data, Variable, Absolute)
    "c0"  # End Collection
)
PID = 0x1D01


def _summary(read: Any) -> dict[str, Any]:
    plain = read.card.personal.plain()
    return {"card_type": str(read.card.card_type), "id_number": plain["id_number"]}


def _read_cards(driver: Any, wants: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < wants and time.monotonic() < deadline:
        read = driver.read(1.0)
        if read is not None:
            out.append(_summary(read))
    return out


def cards_over_tty(driver_name: str, wants: int) -> list[dict[str, Any]]:
    """In the guest: bind idcard_serial to the tty of *driver_name* and read *wants* cards."""
    from scanfleet.drivers.idcard.reader import IdCardDeviceConfig
    from scanfleet.drivers.idcard.serial import IdCardSerialDriver

    path = wait_for(lambda: tty_by_driver(driver_name), f"tty of {driver_name}")
    config = IdCardDeviceConfig(
        name="idreader", driver="idcard_serial", port=path, poll_interval_ms=300
    )
    with IdCardSerialDriver(config) as driver:
        notify("bound")
        return _read_cards(driver, wants)


def _serve_stream(stream: ByteStream, responder: SamResponder, stop: threading.Event) -> None:
    parser = FrameParser()
    while not stop.is_set():
        try:
            data = stream.read(1, timeout=0.2)
        except TimeoutError:
            continue
        for item in parser.feed(data):
            if isinstance(item, bytes):
                stream.write(responder.answer(item))


@pytest.fixture
def reader_on_ftdi(usb_serial: ByteStream) -> Iterator[SamResponder]:
    responder = SamResponder()
    stop = threading.Event()
    thread = threading.Thread(target=_serve_stream, args=(usb_serial, responder, stop))
    thread.start()
    yield responder
    stop.set()
    thread.join(5)


def test_idcard_serial_reads_cards_through_the_ftdi_usb_serial_driver(
    guest: Guest, reader_on_ftdi: SamResponder
) -> None:
    call = guest.submit(cards_over_tty, "ftdi_sio", len(CARDS))
    assert call.wait_notice() == "bound"
    for name in CARDS:
        reads_before = reader_on_ftdi.count(Command.READ_BASE)
        reader_on_ftdi.place(SAMPLE_CARDS[name])
        deadline = time.monotonic() + 30
        while reader_on_ftdi.count(Command.READ_BASE) == reads_before:
            assert time.monotonic() < deadline, "the driver never read the card"
            time.sleep(0.05)
        reader_on_ftdi.remove()
        time.sleep(0.7)  # a couple of empty polls: the next card is a new presentation
    got = call.result()
    assert [(g["card_type"], g["id_number"]) for g in got] == [
        (name, SAMPLE_CARDS[name].fields["id_number"]) for name in CARDS
    ]


def cards_over_hid_gadget(hidg: str, vid: int, pid: int, names: list[str]) -> list[dict[str, Any]]:
    """In the guest: run :func:`hid_session` in a fresh interpreter.

    libusb keeps a device list per process; a libusb context left in the long-lived
    agent would outlive this test's gadget and confuse later pyusb tests.
    """
    tests_dir = str(Path(__file__).resolve().parents[1])
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from hil.test_idcard_hil import hid_session; "
        "print(json.dumps(hid_session(*json.loads(sys.argv[2]))))"
    )
    args = json.dumps([hidg, vid, pid, names])
    done = subprocess.run(
        [sys.executable, "-c", code, tests_dir, args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"hid_session failed ({done.returncode}): {done.stderr[-3000:]}")
    result: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def hid_session(hidg: str, vid: int, pid: int, names: list[str]) -> list[dict[str, Any]]:
    """The gadget side answers as a reader; idcard_usb reads through libusb."""
    from scanfleet.drivers.idcard.protocol import parse_frame
    from scanfleet.drivers.idcard.reader import IdCardDeviceConfig
    from scanfleet.drivers.idcard.usbhid import (
        IdCardUsbDriver,
        hid_reply_packets,
        parse_hid_request,
    )

    responder = SamResponder()
    stop = threading.Event()
    gadget = os.open(hidg, os.O_RDWR | os.O_NONBLOCK)

    def serve() -> None:
        while not stop.is_set():
            if not select.select([gadget], [], [], 0.2)[0]:
                continue
            request = os.read(gadget, PACKET)
            for packet in hid_reply_packets(
                responder.answer(parse_frame(parse_hid_request(request)))
            ):
                if not select.select([], [gadget], [], 5)[1]:
                    raise TimeoutError("hidg not writable: the host stopped polling")
                os.write(gadget, packet)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    out: list[dict[str, Any]] = []
    try:
        config = IdCardDeviceConfig(
            name="idreader-usb", driver="idcard_usb", usb=f"{vid:04x}:{pid:04x}",
            poll_interval_ms=300,
        )  # fmt: skip
        with IdCardUsbDriver(config) as driver:
            for name in names:
                responder.place(SAMPLE_CARDS[name])
                out += _read_cards(driver, 1, timeout=30)
                responder.remove()
                _read_cards(driver, 1, timeout=0.7)
    finally:
        stop.set()
        thread.join(5)
        os.close(gadget)
    return out


def test_idcard_usb_reads_cards_through_a_hid_gadget_with_the_64_byte_layout(
    guest: Guest, gadgets: Gadgets
) -> None:
    reader = gadgets.hid("idcard", IDCARD_HID_DESCRIPTOR, PACKET, pid=PID)
    got = guest.run(cards_over_hid_gadget, reader["hidg"], reader["vid"], PID, CARDS)
    assert [(g["card_type"], g["id_number"]) for g in got] == [
        (name, SAMPLE_CARDS[name].fields["id_number"]) for name in CARDS
    ]
