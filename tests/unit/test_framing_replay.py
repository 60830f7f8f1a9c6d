"""Recorded serial traces replay through the real framer and the virtual driver."""

from __future__ import annotations

import uuid
from pathlib import Path

from scanfleet.drivers import virtual
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.registry import open_driver
from scanfleet.drivers.virtual import VirtualDeviceConfig

DATA = Path(__file__).resolve().parents[1] / "data" / "serial"


def test_recorded_cr_trace_replays_to_exactly_the_expected_frames() -> None:
    trace = DATA / "sim-cr-aim-noise.jsonl"
    expected = [bytes.fromhex(line) for line in trace.with_suffix(".expected").read_text().split()]
    channel = f"replay-{uuid.uuid4().hex}"
    problems: list[DriverProblem] = []
    config = VirtualDeviceConfig(name="replay", driver="virtual", channel=channel)
    try:
        with open_driver(config, on_problem=problems.append) as driver:
            assert virtual.replay(channel, trace, framing="cr") == len(expected)
            got = []
            while (read := driver.read(0)) is not None:
                got.append(read.data)
    finally:
        virtual.reset(channel)
    assert got == expected
    assert {p.code for p in problems} == {"garbage", "wrong_terminator"}
