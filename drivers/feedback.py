"""Operator feedback presets: the bytes for "good read", "bad read" and "be quiet".

The daemon signals a good read only after the journal commit, so the scanner's own
decode beep (which means "decoded", not "recorded") should be off. Each preset knows
the command that turns it off on its model family; see docs/serial-scanners.md for
models where that is impossible.

============  =========================  ======================  ==========================
preset        good read                  bad read                silence at bind
============  =========================  ======================  ==========================
none          nothing                    nothing                 nothing (scanner keeps beeping)
honeywell     ``16 07 0D`` (SYN BEL CR)  ``bad_read_hex`` only   ``16 4D 0D`` ``BEPBEP0!``
ssi           BEEP 0x01 (SSI packet)     BEEP 0x12 (SSI packet)  PARAM_SEND param 0x38 = 0
custom        ``good_read_hex``          ``bad_read_hex``        nothing
============  =========================  ======================  ==========================

Honeywell serial has no documented error-tone command in our references, so its bad
read is silence unless ``bad_read_hex`` supplies the model's own (for instance the
Host-ACK razz of models that support it). ``good_read_hex``/``bad_read_hex`` override
the honeywell preset's bytes too. The Honeywell silence command ends in ``!`` (RAM):
it lasts until the scanner powers down, and the driver sends it again at every bind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from scanfleet.drivers import ssi
from scanfleet.drivers.base import Signal

HONEYWELL_BEEP = b"\x16\x07\x0d"
HONEYWELL_MENU_PREFIX = b"\x16\x4d\x0d"
HONEYWELL_GOOD_READ_BEEP_OFF = HONEYWELL_MENU_PREFIX + b"BEPBEP0!"
"""Menu command "good read beep off", temporary (``!`` = RAM)."""

SSI_GOOD_READ_BEEP = 0x01
SSI_BAD_READ_BEEP = 0x12
SSI_BEEP_OFF = ssi.param_send((ssi.PARAM_BEEP_AFTER_GOOD_DECODE, 0))


@dataclass(frozen=True)
class FeedbackPreset:
    """What a device is sent for each signal, and at bind time."""

    name: str
    good: bytes | None = None
    bad: bytes | None = None
    bind: tuple[bytes, ...] = ()
    """Commands sent once after opening (the scanner's own beep off)."""
    ssi_packets: bool = False
    """True when the commands are SSI packets the decoder acknowledges."""

    def command(self, signal: Signal) -> bytes | None:
        """The bytes for *signal*, or None when the preset has none."""
        return self.good if signal is Signal.GOOD_READ else self.bad


def _hex(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value else None


class FeedbackSettings(Protocol):
    """The feedback keys of a device config (SerialDeviceConfig has them)."""

    @property
    def feedback(self) -> str: ...
    @property
    def silence_scanner_beep(self) -> bool: ...
    @property
    def good_read_hex(self) -> str | None: ...
    @property
    def bad_read_hex(self) -> str | None: ...


def preset_for(config: FeedbackSettings) -> FeedbackPreset:
    """The preset a device config asks for (``feedback`` plus its hex overrides)."""
    name = config.feedback
    silence = config.silence_scanner_beep
    good_hex = _hex(config.good_read_hex)
    bad_hex = _hex(config.bad_read_hex)
    if name == "none":
        # Without a host beep the scanner's own beep is the only feedback: keep it.
        return FeedbackPreset("none")
    if name == "honeywell":
        return FeedbackPreset(
            "honeywell",
            good=good_hex or HONEYWELL_BEEP,
            bad=bad_hex,
            bind=(HONEYWELL_GOOD_READ_BEEP_OFF,) if silence else (),
        )
    if name == "ssi":
        return FeedbackPreset(
            "ssi",
            good=ssi.beep(SSI_GOOD_READ_BEEP),
            bad=ssi.beep(SSI_BAD_READ_BEEP),
            bind=(SSI_BEEP_OFF,) if silence else (),
            ssi_packets=True,
        )
    if name == "custom":
        return FeedbackPreset("custom", good=good_hex, bad=bad_hex)
    raise ValueError(f"unknown feedback preset {name!r}")
