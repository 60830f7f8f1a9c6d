"""Hotplug without polling: a device worker sleeps until its device can be there again.

Pseudo-terminals make no udev events, so these tests exercise the inotify source (the
one that covers configured paths udev cannot see); the udev source runs in the QEMU
guest (tests/hil/test_udev_hotplug.py). The figures asserted are what the old 2 s
polling reopen could not reach.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.intake.devices import DeviceState, DeviceWorker, Incoming
from scanfleet.drivers import hotplug
from scanfleet.drivers.hotplug import DeviceWatch
from scanfleet.drivers.serial import SerialDeviceConfig
from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator

pytestmark = pytest.mark.integration


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _context_switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text(encoding="ascii")
    return sum(
        int(line.split()[1])
        for line in status.splitlines()
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
    )


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[DeviceWatch]:
    w = DeviceWatch("serial", [str(tmp_path / "by-id" / "scanner")])
    yield w
    w.close()


def test_a_path_that_appears_wakes_the_watch_at_once(tmp_path: Path, watch: DeviceWatch) -> None:
    watch.arm()
    assert "inotify" in watch.sources
    # The by-id folder itself does not exist yet (udev removes it with the last device):
    # the watch sits on the nearest folder and follows the new one.
    threading.Timer(0.2, (tmp_path / "by-id").mkdir).start()
    started = time.monotonic()
    assert watch.wait(0.5, time.monotonic()) == "inotify by-id"
    threading.Timer(0.2, lambda: (tmp_path / "by-id" / "scanner").symlink_to("/dev/null")).start()
    assert watch.wait(0.5, time.monotonic()) == "inotify scanner"
    assert time.monotonic() - started < 1.0


def test_wake_ends_a_wait_from_another_thread(watch: DeviceWatch) -> None:
    watch.arm()
    threading.Timer(0.1, watch.wake).start()
    started = time.monotonic()
    assert watch.wait(0.5, time.monotonic()) == "wake"
    assert time.monotonic() - started < 1.0


def test_with_an_event_source_an_absent_device_is_not_polled(watch: DeviceWatch) -> None:
    watch.arm()
    result: list[str | None] = []
    waiter = threading.Thread(target=lambda: result.append(watch.wait(0.05, time.monotonic())))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive(), "the watch polled although inotify watches the folder"
    watch.wake()
    waiter.join(5.0)
    assert result == ["wake"]


def test_a_busy_device_and_a_device_no_source_sees_are_retried_at_the_backoff_pace(
    watch: DeviceWatch,
) -> None:
    watch.arm()
    started = time.monotonic()
    assert watch.wait(0.05, time.monotonic(), failing=True) is None
    blind = DeviceWatch("virtual")
    try:
        blind.arm()
        assert blind.sources == []
        assert blind.wait(0.05, time.monotonic()) is None
    finally:
        blind.close()
    assert time.monotonic() - started < 1.0


def test_without_udev_the_watch_uses_no_udev_monitor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hotplug, "UDEV_CONTROL", tmp_path / "no-udev-here")
    w = DeviceWatch("serial", [str(tmp_path / "scanner")])
    try:
        w.arm()
        assert w.sources == ["inotify"]
    finally:
        w.close()


def test_a_replugged_pty_scanner_is_rebound_within_a_fraction_of_a_second(
    tmp_path: Path,
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", link=link, rate=50, seed=3)
    out: queue.Queue[Incoming | None] = queue.Queue()
    config = SerialDeviceConfig(name="counter", driver="serial", port=str(link))
    worker = DeviceWorker(config, out, AlarmSet())
    worker.start()
    try:
        assert _wait(lambda: worker.state is DeviceState.BOUND, 10)
        sim.disconnect(drain=0)
        assert _wait(lambda: worker.state is DeviceState.ABSENT, 5)
        # Long enough for a polling reopen to have backed off to its 2 s cap; absent,
        # the worker sleeps until the folder changes.
        time.sleep(0.2)
        before = _context_switches(worker._thread)
        time.sleep(3.0)
        assert _context_switches(worker._thread) - before <= 1
        sim.reconnect()
        replugged = time.monotonic()
        assert _wait(lambda: worker.state is DeviceState.BOUND, 5)
        rebound = time.monotonic() - replugged
        assert rebound < 0.5, f"rebound after {rebound:.2f} s"
        # Bound and idle, the worker sleeps in its read.
        time.sleep(0.2)
        before = _context_switches(worker._thread)
        time.sleep(2.0)
        assert _context_switches(worker._thread) - before <= 1
        # And stop() wakes the blocked read at once.
        stopping = time.monotonic()
        worker.stop()
        assert time.monotonic() - stopping < 1.0
        assert not worker._thread.is_alive()
    finally:
        worker.stop()
        sim.stop()
    assert os.path.lexists(link) is False
