"""The idcard_serial driver against the simulated SAM reader on a real pty."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from scanfleet.daemon.core.errors import DeviceGoneError, DriverTimeoutError
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.idcard.protocol import Command, Status
from scanfleet.drivers.idcard.reader import IdCardDeviceConfig
from scanfleet.drivers.idcard.serial import IdCardSerialDriver
from scanfleet.drivers.idcard.text import CardRead, CardType
from scanfleet.drivers.sim.idcard import SAMPLE_CARDS, IdCardSimulator

pytestmark = pytest.mark.integration


def _config(port: str, **kw: object) -> IdCardDeviceConfig:
    return IdCardDeviceConfig.model_validate(
        {"name": "idreader", "driver": "idcard_serial", "port": port, "poll_interval_ms": 300, **kw}
    )


@pytest.fixture
def sim() -> Iterator[IdCardSimulator]:
    with IdCardSimulator() as s:
        yield s


def _read_card(driver: IdCardSerialDriver, timeout: float = 10.0) -> CardRead:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        read = driver.read(0.5)
        if read is not None:
            assert isinstance(read, CardRead)
            return read
    raise AssertionError("no card read")


def _polls(driver: IdCardSerialDriver, n: int) -> list[object]:
    return [driver.read(1.0) for _ in range(n)]


@pytest.mark.parametrize("name", ["mainland", "hk_macau_taiwan", "foreign_2017", "foreign_2023"])
def test_a_card_of_each_type_is_read_and_decoded(sim: IdCardSimulator, name: str) -> None:
    sample = SAMPLE_CARDS[name]
    with IdCardSerialDriver(_config(sim.port)) as driver:
        sim.place(sample)
        read = _read_card(driver)
    assert read.card.card_type is CardType(name)
    assert read.card.personal.plain()["id_number"] == sample.fields["id_number"]
    assert read.photo == sample.photo()
    assert read.data == b""
    assert read.port == sim.port


def test_read_with_fingerprint_uses_30_10_and_keeps_the_block(sim: IdCardSimulator) -> None:
    with IdCardSerialDriver(_config(sim.port, read_fingerprint=True)) as driver:
        sim.place(SAMPLE_CARDS["mainland"])
        read = _read_card(driver)
    assert sim.count(Command.READ_FULL) == 1
    assert sim.count(Command.READ_BASE) == 0
    assert read.fingerprint == SAMPLE_CARDS["mainland"].fingerprint()


@pytest.mark.parametrize("find_after_read", ["fail", "found"])
def test_a_card_left_on_the_reader_is_read_once(find_after_read: str) -> None:
    with (
        IdCardSimulator(find_after_read=find_after_read) as sim,  # type: ignore[arg-type]
        IdCardSerialDriver(_config(sim.port)) as driver,
    ):
        sim.place(SAMPLE_CARDS["mainland"])
        _read_card(driver)
        assert _polls(driver, 4) == [None] * 4
        assert sim.count(Command.READ_BASE) == 1
        # Taken off and placed again: a new presentation, read again.
        sim.remove()
        assert _polls(driver, 2) == [None, None]
        sim.place(SAMPLE_CARDS["mainland"])
        _read_card(driver)
        assert sim.count(Command.READ_BASE) == 2


def test_polls_are_spaced_by_the_poll_interval(sim: IdCardSimulator) -> None:
    with IdCardSerialDriver(_config(sim.port, poll_interval_ms=400)) as driver:
        start = len(sim.requests)
        first = time.monotonic()
        _polls(driver, 3)
        elapsed = time.monotonic() - first
    finds = sim.requests[start:].count(Command.FIND)
    # Never more finds than the interval allows (a lower bound on spacing, not a timing claim).
    assert finds <= int(elapsed / 0.4) + 1


def test_a_failed_read_is_a_problem_not_a_read_and_needs_the_card_replaced(
    sim: IdCardSimulator,
) -> None:
    problems: list[DriverProblem] = []
    with IdCardSerialDriver(_config(sim.port), on_problem=problems.append) as driver:
        sim.inject(Command.READ_BASE, Status.READ_FAILED)
        sim.place(SAMPLE_CARDS["mainland"])
        assert all(r is None for r in _polls(driver, 3))
        assert [p.code for p in problems] == ["card_read_failed"]
        assert "0x41" in problems[0].message
        sim.remove()
        _polls(driver, 1)
        sim.place(SAMPLE_CARDS["mainland"])
        _read_card(driver)


def test_a_card_that_fails_authentication_is_reported_by_name(sim: IdCardSimulator) -> None:
    problems: list[DriverProblem] = []
    with IdCardSerialDriver(_config(sim.port), on_problem=problems.append) as driver:
        sim.inject(Command.READ_BASE, Status.SAM_AUTH_CARD_FAILED)
        sim.place(SAMPLE_CARDS["mainland"])
        _polls(driver, 2)
    assert problems
    assert "SAM failed to authenticate the card" in problems[0].message


def test_line_noise_is_skipped_and_reported_without_its_bytes() -> None:
    problems: list[DriverProblem] = []
    with (
        IdCardSimulator(noise=0.7, seed=3) as sim,
        IdCardSerialDriver(_config(sim.port), on_problem=problems.append) as driver,
    ):
        for name in ("mainland", "foreign_2023"):
            sim.place(SAMPLE_CARDS[name])
            read = _read_card(driver)
            expected = SAMPLE_CARDS[name].fields["id_number"]
            assert read.card.personal.plain()["id_number"] == expected
            sim.remove()
            _polls(driver, 1)
    assert {p.code for p in problems} >= {"garbage"}
    assert all(p.data == b"" for p in problems)


def test_a_slow_reader_times_out_per_command_then_recovers(sim: IdCardSimulator) -> None:
    problems: list[DriverProblem] = []
    with IdCardSerialDriver(
        _config(sim.port, command_timeout_ms=200), on_problem=problems.append
    ) as driver:
        sim.delay = 0.5
        assert _polls(driver, 1) == [None]
        assert [p.code for p in problems] == ["no_reply"]
        sim.delay = 0.0
        time.sleep(0.6)  # let the late reply arrive; the next command drains it
        sim.place(SAMPLE_CARDS["mainland"])
        _read_card(driver)


def test_a_silent_port_is_not_bound_as_a_reader(sim: IdCardSimulator) -> None:
    sim.delay = 2.0
    with pytest.raises(DriverTimeoutError):
        IdCardSerialDriver(_config(sim.port, command_timeout_ms=200))


def test_a_vanished_reader_raises_device_gone(sim: IdCardSimulator) -> None:
    driver = IdCardSerialDriver(_config(sim.port))
    try:
        sim.stop()
        with pytest.raises(DeviceGoneError):
            _polls(driver, 5)
    finally:
        driver.close()


def test_a_missing_port_is_device_gone() -> None:
    with pytest.raises(DeviceGoneError):
        IdCardSerialDriver(_config("/dev/does-not-exist-idcard"))
