"""The one conformance suite every driver runs (python-can's back2back idea).

Each harness puts a device that speaks the real wire protocol behind a driver: the
in-process virtual channel; the pty scanner simulator in every serial framing preset;
``struct input_event`` records through a FIFO (evdev); a USB scanner behind pyusb's
backend interface sending HID POS reports or boot-keyboard reports (usbhid); the SAM
reader simulator on a pty (idcard_serial) and behind the 64-byte USB wrapper
(idcard_usb). The same specification then runs against all of them: reads, timeouts,
close, context manager, feedback, wire problems, and DeviceGoneError for an absent or
unplugged device. The gadget HIL tests (tests/hil) run the USB drivers against a real
kernel and a real USB stack.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.config import DeviceConfigBase
from scanfleet.daemon.core.errors import DeviceGoneError
from scanfleet.drivers import keymaps, virtual
from scanfleet.drivers.base import Driver, DriverProblem, Read, Signal
from scanfleet.drivers.idcard.protocol import parse_frame
from scanfleet.drivers.idcard.reader import IdCardDeviceConfig
from scanfleet.drivers.idcard.text import CardRead
from scanfleet.drivers.idcard.usbhid import hid_reply_packets, parse_hid_request
from scanfleet.drivers.registry import open_driver
from scanfleet.drivers.serial import SerialDeviceConfig
from scanfleet.drivers.sim.idcard import SAMPLE_CARDS, IdCardSimulator, SamResponder
from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from scanfleet.drivers.usbhid import UsbHidDeviceConfig
from scanfleet.drivers.virtual import VirtualDeviceConfig
from scanfleet.drivers.wedge import trace as key_trace
from scanfleet.drivers.wedge.evdev import WedgeDeviceConfig
from support import usb_backend

TRACE = b"83711700173703755001"
BAD_READ = b"\x1b8"  # what the serial harnesses configure as their bad-read bytes


class Harness:
    """What every harness provides; the defaults fit a scanner with a feedback channel."""

    config: DeviceConfigBase
    feedback = True
    """The device has a feedback channel (a beep the driver can trigger)."""
    buffered = True
    """Several frames can be sent before the first is read (a card reader holds one card)."""
    garbage_code = "garbage"
    """The problem code :meth:`garbage` leads to."""

    def open(self, problems: list[DriverProblem] | None = None) -> Driver[Any]:
        return open_driver(self.config, on_problem=None if problems is None else problems.append)

    def identify(self, read: Read) -> object:
        """What of a read :meth:`send` returns as expected (the lossless bytes for scanners)."""
        return read.data

    def signals(self) -> Sequence[object]:
        """The feedback the device received so far."""
        raise NotImplementedError

    def feedback_for(self, signals: Sequence[Signal]) -> Sequence[object]:
        """What the device receives for *signals*, in the form :meth:`signals` lists it."""
        return list(signals)


class VirtualHarness(Harness):
    """A virtual channel: frames are injected, signals are listed."""

    def __init__(self, tmp_path: Path) -> None:
        self.channel = f"conformance-{uuid.uuid4().hex}"
        self.config = VirtualDeviceConfig(name="v", driver="virtual", channel=self.channel)

    def send(self, data: bytes) -> bytes:
        virtual.inject(self.channel, data)
        return data

    def garbage(self) -> None:
        virtual.inject_problem(self.channel, DriverProblem("garbage", "noise"))

    def signals(self) -> list[Signal]:
        return virtual.signals(self.channel)

    def unplug(self) -> None:
        virtual.unplug(self.channel)

    def absent_config(self) -> DeviceConfigBase:
        channel = f"absent-{uuid.uuid4().hex}"
        virtual.unplug(channel)
        return VirtualDeviceConfig(name="v", driver="virtual", channel=channel)

    def close(self) -> None:
        virtual.reset(self.channel)


class SerialHarness(Harness):
    """The pty simulator in one framing preset, bound by a by-id style symlink."""

    def __init__(self, tmp_path: Path, framing: str) -> None:
        self.framing = framing
        suffix = b"\t" if framing == "suffix" else b""
        self.sim = SerialScannerSimulator(
            framing=framing,
            suffix=suffix,
            auto=False,
            link=tmp_path / "usb-sim-scanner-if00",
            bad_read=BAD_READ,
        ).start()
        feedback = "ssi" if framing == "ssi" else "honeywell"
        self.config = SerialDeviceConfig.model_validate(
            {
                "name": "s",
                "driver": "serial",
                "port": self.sim.path,
                "framing": framing,
                "suffix_hex": suffix.hex() or None,
                "feedback": feedback,
                "bad_read_hex": None if framing == "ssi" else BAD_READ.hex(),
            }
        )
        self.tmp_path = tmp_path

    def send(self, data: bytes) -> bytes:
        self.sim.send(data)
        return {
            "cr": data + b"\r",
            "lf": data + b"\n",
            "crlf": data + b"\r\n",
            "suffix": data + b"\t",
            "stx_etx": b"\x02" + data + b"\x03",
        }.get(self.framing, data)

    def garbage(self) -> None:
        self.sim.write_raw(bytes(range(0x80, 0x98)))

    def signals(self) -> list[Signal]:
        kinds = {"good_read": Signal.GOOD_READ, "bad_read": Signal.BAD_READ}
        with self.sim._lock:
            return [kinds[e.kind] for e in self.sim.feedback if e.kind in kinds]

    def unplug(self) -> None:
        self.sim.disconnect()

    def absent_config(self) -> DeviceConfigBase:
        return self.config.model_copy(update={"port": str(self.tmp_path / "no-such-tty")})

    def close(self) -> None:
        self.sim.stop()


class EvdevFifoHarness(Harness):
    """The evdev driver reading real ``struct input_event`` records from a FIFO.

    Key events are typed as a US-layout scanner types them (2 ms per key, stamped with
    the monotonic clock as the kernel's EVIOCSCLOCKID would). A wedge scanner has no
    feedback channel; grabbing and ioctls are exercised in the HIL tests.
    """

    feedback = False

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "usb-sim-scanner-event-kbd"
        os.mkfifo(self.path)
        # O_RDWR keeps a writer on the FIFO from the start (no EOF before the first key).
        self._writer: int | None = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self.config = WedgeDeviceConfig(name="w", driver="evdev", path=str(self.path))
        self.tmp_path = tmp_path

    def _write(self, events: list[key_trace.InputEvent]) -> None:
        assert self._writer is not None
        os.write(self._writer, b"".join(e.pack() for e in events))

    def send(self, data: bytes) -> bytes:
        events = key_trace.type_text(keymaps.US, data.decode())
        now = time.monotonic()  # stamps end now, as the kernel's would have
        self._write([replace(e, t=now - events[-1].t + e.t) for e in events])
        return data + b"\r"

    def garbage(self) -> None:
        f1 = 59  # a key with no character: the scan it belongs to is dropped
        keys = [(frozenset[int](), f1), (frozenset[int](), keymaps.KEY_ENTER)]
        self._write(key_trace.tap(keys, time.monotonic() - 0.01, 0.002)[0])

    def signals(self) -> list[Signal]:
        return []

    def unplug(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    def absent_config(self) -> DeviceConfigBase:
        return self.config.model_copy(update={"path": str(self.tmp_path / "no-such-event")})

    def close(self) -> None:
        self.unplug()


HONEYWELL_BEEP_REPORT = bytes.fromhex("FD 03 16 07 0D")
"""Honeywell's HID beep: output report FD, length 3, serial command SYN BEL CR."""


def hidpos_input_reports(data: bytes, aim: bytes, code_id: int) -> list[bytes]:
    """HID POS scanned-data input reports as Honeywell sends them (reference section 4.2).

    Byte 0 report id 2, byte 1 length (at most 56), bytes 2-4 the AIM id, bytes 5-60
    the data, byte 61 the Honeywell code id, byte 62 zero, byte 63 1 when another
    report of the same scan follows.
    """
    chunks = [data[i : i + 56] for i in range(0, len(data), 56)] or [b""]
    reports = []
    for i, chunk in enumerate(chunks):
        report = bytearray(64)
        report[0], report[1] = 0x02, len(chunk)
        report[2:5] = aim
        report[5 : 5 + len(chunk)] = chunk
        report[61], report[63] = code_id, int(i < len(chunks) - 1)
        reports.append(bytes(report))
    return reports


class HidPosScanner(usb_backend.UsbDeviceModel):
    """A Honeywell-style scanner in HID POS mode: FE 01 enables it, FD reports beep it."""

    def __init__(self, pid: int = 0x0B61) -> None:
        super().__init__(0x0C2E, pid, serial="22001A0F55", product="Honeywell scanner")
        self.hidpos_enabled = False
        self.beeps: list[bytes] = []

    def on_control_out(
        self, request_type: int, request: int, value: int, index: int, data: bytes
    ) -> None:
        # HID SET_REPORT (class request 0x09 to the interface), feature report 0xFE.
        if (request_type, request, value) == (0x21, 0x09, 0x03FE) and data == b"\xfe\x01":
            self.hidpos_enabled = True
            return
        raise usb_backend.stall()

    def on_out(self, data: bytes) -> None:
        if data[0] == 0xFD:
            self.beeps.append(data[: 2 + data[1]])

    def scan(self, data: bytes, aim: bytes = b"]d2", code_id: int = ord("w")) -> None:
        assert self.hidpos_enabled, "the host never sent feature report FE 01"
        self.queue_in(*hidpos_input_reports(data, aim, code_id))


class UsbHidPosHarness(Harness):
    """The usbhid driver in ``hidpos`` mode against :class:`HidPosScanner` through pyusb.

    The scanner sends a GS1 DataMatrix (AIM ``]d2``); the driver's read carries the data
    without the AIM id, which it reports separately. Honeywell has one beep command, so
    a bad read is two beeps (the order of signals is not visible on the wire).
    """

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.device = HidPosScanner()
        usb_backend.install(monkeypatch, usb_backend.FakeUsbBackend(self.device))
        self.config = UsbHidDeviceConfig(
            name="u", driver="usbhid", usb="0c2e:0b61", mode="hidpos", feedback="honeywell"
        )

    def send(self, data: bytes) -> bytes:
        self.device.scan(data)
        return data

    def identify(self, read: Read) -> object:
        assert read.aim == "]d2"
        return read.data

    def garbage(self) -> None:
        report = bytearray(hidpos_input_reports(b"x" * 20, b"]d2", ord("w"))[0])
        report[1] = 60  # a length that cannot fit the report
        self.device.queue_in(bytes(report))

    def signals(self) -> list[bytes]:
        return list(self.device.beeps)

    def feedback_for(self, signals: Sequence[Signal]) -> list[bytes]:
        return [
            HONEYWELL_BEEP_REPORT for s in signals for _ in range(1 if s is Signal.GOOD_READ else 2)
        ]

    def unplug(self) -> None:
        self.device.unplug()

    def absent_config(self) -> DeviceConfigBase:
        return self.config.model_copy(update={"usb": "0c2e:0b62"})

    def close(self) -> None:
        pass


US_USAGES = {digit: 0x1E + i for i, digit in enumerate("1234567890")}
"""HID usages of the digit keys: 1-9 are 0x1E-0x26, 0 is 0x27 (reference section 4.4)."""
ENTER_USAGE, F1_USAGE = 0x28, 0x3A


class BootKeyboardScanner(usb_backend.UsbDeviceModel):
    """A keyboard-mode scanner: 8-byte boot reports, a press and a release per key."""

    def __init__(self) -> None:
        super().__init__(0x05E0, 0x1200, product="Symbol LS2208", packet_size=8, has_out=False)

    def press(self, usages: list[int]) -> None:
        reports = []
        for usage in usages:
            reports += [bytes((0, 0, usage, 0, 0, 0, 0, 0)), bytes(8)]
        self.queue_in(*reports)


class UsbKeyboardHarness(Harness):
    """The usbhid driver in ``keyboard`` mode: boot reports decoded through the US layout."""

    feedback = False

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.device = BootKeyboardScanner()
        usb_backend.install(monkeypatch, usb_backend.FakeUsbBackend(self.device))
        self.config = UsbHidDeviceConfig(name="k", driver="usbhid", usb="05e0:1200")

    def send(self, data: bytes) -> bytes:
        self.device.press([US_USAGES[c] for c in data.decode()] + [ENTER_USAGE])
        return data + b"\r"

    def garbage(self) -> None:
        self.device.press([F1_USAGE, ENTER_USAGE])  # a key with no character

    def signals(self) -> list[Signal]:
        return []

    def unplug(self) -> None:
        self.device.unplug()

    def absent_config(self) -> DeviceConfigBase:
        return self.config.model_copy(update={"usb": "05e0:1201"})

    def close(self) -> None:
        pass


CARDS = ["mainland", "hk_macau_taiwan", "foreign_2017", "foreign_2023"]


class IdCardHarness(Harness):
    """What both ID-card transports share: a card placed is a read; no feedback channel."""

    feedback = False
    buffered = False

    def __init__(self, responder: SamResponder) -> None:
        self.responder = responder
        self._placed = 0

    def send(self, data: bytes) -> str:
        # Each send is the next sample card; *data* only picks nothing (a card is a card).
        card = SAMPLE_CARDS[CARDS[self._placed % len(CARDS)]]
        self._placed += 1
        self.responder.remove()
        self.responder.place(card)
        return card.fields["id_number"]

    def identify(self, read: Read) -> object:
        assert isinstance(read, CardRead)
        assert read.data == b""  # personal data never travels as raw bytes
        return read.card.personal.plain()["id_number"]

    def signals(self) -> list[Signal]:
        return []


class IdCardSerialHarness(IdCardHarness):
    """The idcard_serial driver against the SAM reader simulator on a pty."""

    def __init__(self, tmp_path: Path) -> None:
        self.sim = IdCardSimulator().start()
        super().__init__(self.sim)
        self.config = IdCardDeviceConfig(
            name="id", driver="idcard_serial", port=self.sim.port, poll_interval_ms=300
        )
        self.tmp_path = tmp_path

    def garbage(self) -> None:
        self.sim.garble_next_reply(bytes.fromhex("13 37 00 FF 42"))

    def unplug(self) -> None:
        self.sim.stop()

    def absent_config(self) -> DeviceConfigBase:
        return self.config.model_copy(update={"port": str(self.tmp_path / "no-such-tty")})

    def close(self) -> None:
        self.sim.stop()


class IdCardUsbReader(usb_backend.UsbDeviceModel):
    """A SAM reader behind the 64-byte HID wrapper (Miaxis layout, reference section 1.9)."""

    def __init__(self, responder: SamResponder) -> None:
        super().__init__(0x10C4, 0x0007, product="ID card reader")
        self.responder = responder
        self.garble_next = False

    def on_out(self, data: bytes) -> None:
        body = parse_frame(parse_hid_request(data))
        packets = hid_reply_packets(self.responder.answer(body))
        if self.garble_next:
            self.garble_next = False
            first = bytearray(packets[0])
            first[8] ^= 0xFF  # a flipped byte: the packet's SUM16 no longer matches
            packets[0] = bytes(first)
        self.queue_in(*packets)


class IdCardUsbHarness(IdCardHarness):
    """The idcard_usb driver against :class:`IdCardUsbReader` through pyusb.

    A corrupt USB packet loses the whole reply: a ``malformed`` problem, not garbage.
    """

    garbage_code = "malformed"

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(SamResponder())
        self.device = IdCardUsbReader(self.responder)
        usb_backend.install(monkeypatch, usb_backend.FakeUsbBackend(self.device))
        self.config = IdCardDeviceConfig(name="id", driver="idcard_usb", poll_interval_ms=300)

    def garbage(self) -> None:
        self.device.garble_next = True

    def unplug(self) -> None:
        self.device.unplug()

    def absent_config(self) -> DeviceConfigBase:
        return self.config.model_copy(update={"usb": "10c4:0008"})

    def close(self) -> None:
        pass


HARNESSES = [
    "virtual",
    "evdev_fifo",
    "cr",
    "lf",
    "crlf",
    "suffix",
    "stx_etx",
    "idle",
    "honeywell_packet",
    "ssi",
    "usbhid_hidpos",
    "usbhid_keyboard",
    "idcard_serial",
    "idcard_usb",
]


@pytest.fixture(params=HARNESSES)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    made: Any
    if request.param == "virtual":
        made = VirtualHarness(tmp_path)
    elif request.param == "evdev_fifo":
        made = EvdevFifoHarness(tmp_path)
    elif request.param == "usbhid_hidpos":
        made = UsbHidPosHarness(tmp_path, monkeypatch)
    elif request.param == "usbhid_keyboard":
        made = UsbKeyboardHarness(tmp_path, monkeypatch)
    elif request.param == "idcard_serial":
        made = IdCardSerialHarness(tmp_path)
    elif request.param == "idcard_usb":
        made = IdCardUsbHarness(tmp_path, monkeypatch)
    else:
        made = SerialHarness(tmp_path, request.param)
    yield made
    made.close()


def read_one(driver: Driver[Any], timeout: float = 5.0) -> Read:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = driver.read(0.2)
        if got is not None:
            return got
    raise AssertionError("no frame within the timeout")


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_sent_frame_is_read_losslessly(harness: Any) -> None:
    with harness.open() as driver:
        expected = harness.send(TRACE)
        got = read_one(driver)
    assert harness.identify(got) == expected
    assert got.t_mono <= time.monotonic()
    assert got.time.tzinfo is not None


def test_frames_arrive_in_order(harness: Any) -> None:
    codes = [b"6901234567892", TRACE, b"89" + TRACE[2:]]
    with harness.open() as driver:
        if harness.buffered:
            expected = [harness.send(code) for code in codes]
            got = [harness.identify(read_one(driver)) for _ in codes]
        else:  # one at a time: a card reader holds one card
            expected, got = [], []
            for code in codes:
                expected.append(harness.send(code))
                got.append(harness.identify(read_one(driver)))
    assert got == expected


def test_read_returns_none_when_nothing_arrives_in_time(harness: Any) -> None:
    with harness.open() as driver:
        started = time.monotonic()
        assert driver.read(0.3) is None
        # A lower bound only: it blocked instead of returning at once.
        assert time.monotonic() - started >= 0.29


def test_close_is_idempotent_and_read_after_close_is_refused(harness: Any) -> None:
    driver = harness.open()
    driver.close()
    driver.close()
    assert driver.closed
    with pytest.raises(ValueError, match="closed"):
        driver.read(0.1)


def test_context_manager_closes_the_driver(harness: Any) -> None:
    with harness.open() as driver:
        assert not driver.closed
    assert driver.closed


def test_fileno_is_a_descriptor_or_none(harness: Any) -> None:
    with harness.open() as driver:
        fd = driver.fileno()
        assert fd is None or (isinstance(fd, int) and fd >= 0)


def test_good_and_bad_read_signals_reach_the_device_in_order(harness: Any) -> None:
    if not getattr(harness, "feedback", True):
        with harness.open() as driver:
            driver.signal(Signal.GOOD_READ)  # accepted and ignored: no feedback channel
            driver.signal(Signal.BAD_READ)
        assert harness.signals() == []
        return
    with harness.open() as driver:
        harness.send(TRACE)
        read_one(driver)
        driver.signal(Signal.GOOD_READ)
        driver.signal(Signal.BAD_READ)
        driver.signal(Signal.GOOD_READ)
        # SSI feedback is acknowledged through the read loop, as in the daemon.
        sent = [Signal.GOOD_READ, Signal.BAD_READ, Signal.GOOD_READ]
        expected = list(harness.feedback_for(sent))
        assert wait_for(lambda: (driver.read(0.05), len(harness.signals()) >= len(expected))[1])
    assert list(harness.signals()) == expected


def test_garbage_is_a_problem_never_a_read(harness: Any) -> None:
    problems: list[DriverProblem] = []
    with harness.open(problems) as driver:
        harness.garbage()
        assert driver.read(0.5) is None
        expected = harness.send(TRACE)
        assert harness.identify(read_one(driver)) == expected
    assert [p.code for p in problems] == [harness.garbage_code]


def test_opening_an_absent_device_fails_fast_with_device_gone(harness: Any) -> None:
    # "Fast" means no retry loop inside the driver: the worker owns backoff. The
    # pytest timeout bounds it; wall time is not asserted on a shared machine.
    with pytest.raises(DeviceGoneError):
        open_driver(harness.absent_config())


def test_unplugging_makes_read_raise_device_gone(harness: Any) -> None:
    def read_until_gone(driver: Driver[Any]) -> None:
        for _ in range(20):
            driver.read(0.2)

    driver = harness.open()
    try:
        harness.unplug()
        with pytest.raises(DeviceGoneError):
            read_until_gone(driver)
    finally:
        driver.close()


def test_usbhid_joins_continued_hidpos_reports_into_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = UsbHidPosHarness(tmp_path, monkeypatch)
    code = b"0106901234567892" + b"21" + b"A" * 80 + b"\x1d10LOT42"  # 106 bytes: two reports
    with harness.open() as driver:
        harness.send(code)
        got = read_one(driver)
        assert driver.read(0.2) is None  # one scan, one read
    assert (got.data, got.aim) == (code, "]d2")


def test_usbhid_takes_the_interface_from_the_kernel_and_gives_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = UsbHidPosHarness(tmp_path, monkeypatch)
    device = harness.device
    with harness.open():
        assert (device.kernel_driver_active, device.claimed) == (False, {0})
        assert device.hidpos_enabled
    assert (device.kernel_driver_active, device.claimed) == (True, set())
