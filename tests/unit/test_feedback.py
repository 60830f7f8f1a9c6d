"""Feedback presets: the bytes each preset sends for good read, bad read and at bind."""

from __future__ import annotations

from typing import Any

import pytest

from scanfleet.drivers import ssi
from scanfleet.drivers.base import Signal
from scanfleet.drivers.feedback import preset_for
from scanfleet.drivers.serial import SerialDeviceConfig


def config(**kw: Any) -> SerialDeviceConfig:
    return SerialDeviceConfig(name="counter", driver="serial", port="/dev/ttyUSB0", **kw)


def test_honeywell_good_read_is_syn_bel_cr_and_bind_turns_the_decode_beep_off() -> None:
    preset = preset_for(config(feedback="honeywell"))
    assert preset.command(Signal.GOOD_READ) == bytes.fromhex("16070d")
    assert preset.command(Signal.BAD_READ) is None
    assert preset.bind == (bytes.fromhex("164d0d") + b"BEPBEP0!",)


def test_honeywell_bad_read_comes_from_bad_read_hex_when_the_model_has_one() -> None:
    preset = preset_for(config(feedback="honeywell", bad_read_hex="1b38"))
    assert preset.command(Signal.BAD_READ) == b"\x1b8"


def test_ssi_signals_are_beep_packets_and_bind_sets_parameter_56_to_zero() -> None:
    preset = preset_for(config(feedback="ssi", framing="ssi"))
    assert preset.command(Signal.GOOD_READ) == bytes.fromhex("05e6040001ff10")
    assert preset.command(Signal.BAD_READ) == bytes.fromhex("05e6040012feff")
    assert preset.bind == (ssi.param_send((0x38, 0x00)),)
    assert preset.ssi_packets


def test_custom_preset_sends_the_configured_hex_and_nothing_at_bind() -> None:
    preset = preset_for(config(feedback="custom", good_read_hex="07", bad_read_hex="0707"))
    assert preset.command(Signal.GOOD_READ) == b"\x07"
    assert preset.command(Signal.BAD_READ) == b"\x07\x07"
    assert preset.bind == ()


@pytest.mark.parametrize("feedback", ["honeywell", "ssi"])
def test_scanner_beep_is_left_alone_when_silencing_is_off(feedback: str) -> None:
    assert preset_for(config(feedback=feedback, silence_scanner_beep=False)).bind == ()


def test_none_preset_never_silences_the_scanner_it_cannot_replace() -> None:
    preset = preset_for(config(feedback="none", silence_scanner_beep=True))
    assert preset.bind == ()
    assert preset.command(Signal.GOOD_READ) is None
