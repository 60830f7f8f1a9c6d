"""The serial driver against the pty scanner simulator: real ptys, real bytes, real unplugs."""

from __future__ import annotations

import os
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.errors import DeviceGoneError
from scanfleet.daemon.core.model import Kind
from scanfleet.drivers import ssi
from scanfleet.drivers.base import Driver, DriverProblem, Read, Signal
from scanfleet.drivers.registry import open_driver
from scanfleet.drivers.serial import SerialDeviceConfig
from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator

pytestmark = pytest.mark.integration


def serial_config(path: str, **kw: Any) -> SerialDeviceConfig:
    return SerialDeviceConfig(name="counter", driver="serial", port=path, **kw)


def read_n(driver: Driver, n: int, timeout: float, signal: bool = True) -> list[Read]:
    reads: list[Read] = []
    end = time.monotonic() + timeout
    while len(reads) < n and time.monotonic() < end:
        got = driver.read(0.5)
        if got is not None:
            reads.append(got)
            if signal:
                driver.signal(Signal.GOOD_READ)
    return reads


def drain(driver: Driver, seconds: float) -> list[Read]:
    """Keep reading (so SSI ACKs for our feedback are processed) for *seconds*."""
    extra: list[Read] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = driver.read(0.1)
        if got is not None:
            extra.append(got)
    return extra


@pytest.fixture
def sims() -> Iterator[list[SerialScannerSimulator]]:
    made: list[SerialScannerSimulator] = []
    yield made
    for sim in made:
        sim.stop()


def test_thousand_mixed_codes_over_cr_arrive_exactly_and_each_gets_one_good_read(
    sims: list[SerialScannerSimulator],
) -> None:
    sim = SerialScannerSimulator(framing="cr", aim=True, rate=2000, count=1000, seed=4).start()
    sims.append(sim)
    problems: list[DriverProblem] = []
    with open_driver(
        serial_config(sim.path, feedback="honeywell"), on_problem=problems.append
    ) as d:
        reads = read_n(d, 1000, timeout=120)
        assert sim.wait_done(10)
        reads += drain(d, 1.0)
    assert [r.data for r in reads] == [s.frame for s in sim.sent]
    assert all(
        r.data.startswith(s.sample.aim.encode()) for r, s in zip(reads, sim.sent, strict=True)
    )
    assert {s.sample.kind for s in sim.sent} >= {Kind.TRACE20, Kind.GS1, Kind.EAN13}
    assert problems == []
    assert len(sim.events("good_read")) == 1000
    assert not sim.own_beep, "the bind command turned the scanner's own beep off"


def test_thousand_codes_in_ssi_mode_are_acked_framed_and_beeped(
    sims: list[SerialScannerSimulator],
) -> None:
    sim = SerialScannerSimulator(
        framing="ssi", rate=2000, count=1000, seed=5, corrupt_every=100
    ).start()
    sims.append(sim)
    problems: list[DriverProblem] = []
    with open_driver(
        serial_config(sim.path, framing="ssi", feedback="ssi"), on_problem=problems.append
    ) as d:
        reads = read_n(d, 1000, timeout=180)
        assert sim.wait_done(10)
        reads += drain(d, 1.5)
    assert [(r.data, r.aim) for r in reads] == [(s.frame, s.aim) for s in sim.sent]
    assert all(s.acked for s in sim.sent)
    # Every decode packet was ACKed, plus one ACK for each of the 10 resent packets.
    assert len(sim.events("ack")) == 1000
    assert sim.naks_received == 10
    assert {p.code for p in problems} == {"checksum"}
    assert len(sim.events("good_read")) == 1000
    assert not sim.own_beep
    assert sim.events("beep_off")[0].data[:7] == bytes.fromhex("07c60400ff3800")
    assert any(
        e.data == ssi.param_send((ssi.PARAM_DECODE_DATA_FORMAT, 1)) for e in sim.events("param")
    )


def test_long_ssi_code_arrives_as_multipacket(sims: list[SerialScannerSimulator]) -> None:
    sim = SerialScannerSimulator(framing="ssi", auto=False).start()
    sims.append(sim)
    long_code = b"]d2" + b"01" + b"0" * 600
    with open_driver(serial_config(sim.path, framing="ssi", feedback="ssi")) as d:
        sim.send(long_code, aim="]d2")
        reads = read_n(d, 1, timeout=20, signal=False)
    assert [r.data for r in reads] == [long_code]
    # 605 bytes = three DECODE_DATA packets, each acknowledged.
    assert wait_until(lambda: len(sim.events("ack")) == 3, 5)


class Worker:
    """What the daemon's device worker does: read; on DeviceGoneError close and reopen."""

    def __init__(self, config: SerialDeviceConfig) -> None:
        self.config = config
        self.reads: list[Read] = []
        self.problems: list[tuple[int, str]] = []
        self.opens = 0
        self.gone = 0
        self.gone_reasons: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _problem_reporter(self, instance: int) -> Callable[[DriverProblem], None]:
        """Record problems with the number of the driver instance that reported them."""

        def report(problem: DriverProblem) -> None:
            self.problems.append((instance, problem.code))

        return report

    def run(self) -> None:
        delay = 0.1
        while not self.stop.is_set():
            try:
                driver = open_driver(self.config, on_problem=self._problem_reporter(self.opens))
            except DeviceGoneError:
                self.stop.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.opens += 1
            delay = 0.1
            try:
                while not self.stop.is_set():
                    got = driver.read(0.5)
                    if got is not None:
                        self.reads.append(got)
                        driver.signal(Signal.GOOD_READ)
            except DeviceGoneError as err:
                self.gone += 1
                self.gone_reasons.append(str(err))
            finally:
                driver.close()


def wait_until(condition: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_noise_overlong_wrong_terminators_and_a_replug_lose_no_complete_frame(
    sims: list[SerialScannerSimulator], tmp_path: Path
) -> None:
    link = tmp_path / "usb-Sim_Scanner_0001-if00-port0"
    sim = SerialScannerSimulator(
        framing="cr",
        aim=True,
        rate=200,
        count=300,
        seed=6,
        link=link,
        noise_every=60,
        overlong_every=45,
        wrong_terminator_every=70,
    ).start()
    sims.append(sim)
    worker = Worker(serial_config(str(link), feedback="honeywell"))
    worker.thread.start()
    try:
        assert wait_until(lambda: len(worker.reads) >= 100, 60)
        # Mid-stream: the simulator finishes the code on the wire, then the cable goes.
        sim.disconnect()
        assert wait_until(lambda: worker.gone == 1, 10)

        # The device is absent: the worker retries with backoff and must not spin.
        cpu_before, wall_before = time.process_time(), time.monotonic()
        time.sleep(2.0)
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        assert cpu < 0.25 * wall, f"{cpu:.3f} s CPU in {wall:.3f} s while the device was absent"

        sim.reconnect()
        assert sim.wait_done(60)
        clean = [s for s in sim.sent if s.clean]
        assert wait_until(lambda: len(worker.reads) >= len(clean), 30)
    finally:
        worker.stop.set()
        worker.thread.join(10)
    assert worker.opens == 2, worker.gone_reasons
    assert [r.data for r in worker.reads] == [s.frame for s in clean]
    assert len(clean) < len(sim.sent)
    codes = {code for _, code in worker.problems}
    assert codes >= {"garbage", "over_long", "wrong_terminator"}
    for instance in (0, 1):
        mine = [code for i, code in worker.problems if i == instance]
        assert len(mine) == len(set(mine)), f"repeats were re-reported: {mine}"


def test_every_framing_preset_delivers_the_simulated_mix(
    sims: list[SerialScannerSimulator],
) -> None:
    for framing in ("lf", "crlf", "stx_etx", "honeywell_packet"):
        sim = SerialScannerSimulator(framing=framing, aim=True, rate=500, count=100, seed=7).start()
        sims.append(sim)
        with open_driver(serial_config(sim.path, framing=framing, feedback="honeywell")) as d:
            reads = read_n(d, 100, timeout=60)
            assert sim.wait_done(10)
            reads += drain(d, 0.5)
        expected = [(s.frame, s.aim) for s in sim.sent]
        assert [(r.data, r.aim) for r in reads] == expected, framing
        assert len(sim.events("good_read")) == 100, framing


def test_a_late_reply_to_the_beep_off_command_is_not_glued_to_the_first_scan() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    problems: list[DriverProblem] = []
    try:
        with open_driver(
            serial_config(path, feedback="honeywell"), on_problem=problems.append
        ) as d:
            # Nobody answered during bind; now the scanner wakes up and answers, then scans.
            assert os.read(master, 64) == bytes.fromhex("164d0d") + b"BEPBEP0!"
            os.write(master, b"BEPBEP0\x06!")
            os.write(master, b"]C083711700173703755001\r")
            reads = read_n(d, 1, timeout=10, signal=False)
    finally:
        os.close(master)
    assert [r.data for r in reads] == [b"]C083711700173703755001\r"]
    assert problems == []
