"""The one conformance suite every driver runs (python-can's back2back idea).

Each harness puts a real device behind a driver: the in-process virtual channel, or
the pty scanner simulator in every serial framing preset. The same specification
then runs against all of them: reads, timeouts, close, context manager, feedback,
wire problems, and DeviceGoneError for an absent or unplugged device.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.config import SerialDeviceConfig, VirtualDeviceConfig, WedgeDeviceConfig
from scanfleet.daemon.core.errors import DeviceGoneError
from scanfleet.drivers import keymaps, open_driver, virtual
from scanfleet.drivers.base import Driver, DriverProblem, Read, Signal
from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from scanfleet.drivers.wedge import trace as key_trace

TRACE = b"83711700173703755001"
BAD_READ = b"\x1b8"  # what the serial harnesses configure as their bad-read bytes


class VirtualHarness:
    """A virtual channel: frames are injected, signals are listed."""

    def __init__(self, tmp_path: Path) -> None:
        self.channel = f"conformance-{uuid.uuid4().hex}"
        self.config: Any = VirtualDeviceConfig(name="v", driver="virtual", channel=self.channel)

    def open(self, problems: list[DriverProblem] | None = None) -> Driver:
        return open_driver(self.config, on_problem=None if problems is None else problems.append)

    def send(self, data: bytes) -> bytes:
        virtual.inject(self.channel, data)
        return data

    def garbage(self) -> None:
        virtual.inject_problem(self.channel, DriverProblem("garbage", "noise"))

    def signals(self) -> list[Signal]:
        return virtual.signals(self.channel)

    def unplug(self) -> None:
        virtual.unplug(self.channel)

    def absent_config(self) -> Any:
        channel = f"absent-{uuid.uuid4().hex}"
        virtual.unplug(channel)
        return VirtualDeviceConfig(name="v", driver="virtual", channel=channel)

    def close(self) -> None:
        virtual.reset(self.channel)


class SerialHarness:
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
        self.config: Any = SerialDeviceConfig(
            name="s",
            driver="serial",
            port=self.sim.path,
            framing=framing,
            suffix_hex=suffix.hex() or None,
            feedback=feedback,
            bad_read_hex=None if framing == "ssi" else BAD_READ.hex(),
        )
        self.tmp_path = tmp_path

    def open(self, problems: list[DriverProblem] | None = None) -> Driver:
        return open_driver(self.config, on_problem=None if problems is None else problems.append)

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

    def absent_config(self) -> Any:
        return self.config.model_copy(update={"port": str(self.tmp_path / "no-such-tty")})

    def close(self) -> None:
        self.sim.stop()


class EvdevFifoHarness:
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
        self.config: Any = WedgeDeviceConfig(name="w", driver="evdev", path=str(self.path))
        self.tmp_path = tmp_path

    def open(self, problems: list[DriverProblem] | None = None) -> Driver:
        return open_driver(self.config, on_problem=None if problems is None else problems.append)

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

    def absent_config(self) -> Any:
        return self.config.model_copy(update={"path": str(self.tmp_path / "no-such-event")})

    def close(self) -> None:
        self.unplug()


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
]


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made: Any
    if request.param == "virtual":
        made = VirtualHarness(tmp_path)
    elif request.param == "evdev_fifo":
        made = EvdevFifoHarness(tmp_path)
    else:
        made = SerialHarness(tmp_path, request.param)
    yield made
    made.close()


def read_one(driver: Driver, timeout: float = 5.0) -> Read:
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
    assert got.data == expected
    assert got.t_mono <= time.monotonic()
    assert got.time.tzinfo is not None


def test_frames_arrive_in_order(harness: Any) -> None:
    codes = [b"6901234567892", TRACE, b"89" + TRACE[2:]]
    with harness.open() as driver:
        expected = [harness.send(code) for code in codes]
        got = [read_one(driver).data for _ in codes]
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
        assert wait_for(lambda: (driver.read(0.05), len(harness.signals()) >= 3)[1])
    assert harness.signals() == [Signal.GOOD_READ, Signal.BAD_READ, Signal.GOOD_READ]


def test_garbage_is_a_problem_never_a_read(harness: Any) -> None:
    problems: list[DriverProblem] = []
    with harness.open(problems) as driver:
        harness.garbage()
        assert driver.read(0.5) is None
        expected = harness.send(TRACE)
        assert read_one(driver).data == expected
    assert [p.code for p in problems] == ["garbage"]


def test_opening_an_absent_device_fails_fast_with_device_gone(harness: Any) -> None:
    # "Fast" means no retry loop inside the driver: the worker owns backoff. The
    # pytest timeout bounds it; wall time is not asserted on a shared machine.
    with pytest.raises(DeviceGoneError):
        open_driver(harness.absent_config())


def test_unplugging_makes_read_raise_device_gone(harness: Any) -> None:
    def read_until_gone(driver: Driver) -> None:
        for _ in range(20):
            driver.read(0.2)

    driver = harness.open()
    try:
        harness.unplug()
        with pytest.raises(DeviceGoneError):
            read_until_gone(driver)
    finally:
        driver.close()
