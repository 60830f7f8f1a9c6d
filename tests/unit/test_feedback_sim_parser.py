"""The simulator's view of the host: feedback bytes parsed, replies owed, frames encoded."""

from __future__ import annotations

import pytest

from scanfleet.drivers import ssi
from scanfleet.drivers.feedback import HONEYWELL_BEEP, HONEYWELL_GOOD_READ_BEEP_OFF
from scanfleet.drivers.framing import Frame
from scanfleet.drivers.framing_presets import make_framer
from scanfleet.drivers.sim.wire import HostBytes, encode_frame


def test_honeywell_beeps_and_beep_off_are_recognised_across_split_writes() -> None:
    host = HostBytes(ssi_mode=False)
    wire = HONEYWELL_GOOD_READ_BEEP_OFF + HONEYWELL_BEEP * 2
    replies = []
    for i in range(len(wire)):
        replies += host.feed(wire[i : i + 1], float(i))
    assert [e.kind for e in host.events] == ["beep_off", "good_read", "good_read"]
    assert replies == [b"BEPBEP0\x06!"]
    assert not host.own_beep


def test_configured_bad_read_bytes_are_told_apart_from_the_good_read() -> None:
    host = HostBytes(ssi_mode=False, bad_read=b"\x1b8")
    host.feed(HONEYWELL_BEEP + b"\x1b8" + b"\x00", 1.0)
    assert [e.kind for e in host.events] == ["good_read", "bad_read", "unknown"]


def test_ssi_feedback_is_acked_and_parsed() -> None:
    host = HostBytes(ssi_mode=True)
    wire = ssi.beep(0x01) + ssi.beep(0x12) + ssi.param_send((0x38, 0)) + ssi.ack()
    replies = host.feed(wire, 1.0)
    assert [e.kind for e in host.events] == ["good_read", "bad_read", "beep_off", "ack"]
    assert replies == [ssi.ack(source=ssi.SOURCE_DECODER)] * 3
    assert host.acks == ["ack"]


def test_ssi_packet_with_a_bad_checksum_is_naked_by_the_scanner() -> None:
    host = HostBytes(ssi_mode=True)
    damaged = ssi.beep(1)[:-1] + b"\x00"
    assert host.feed(damaged, 1.0) == [ssi.nak(source=ssi.SOURCE_DECODER)]


@pytest.mark.parametrize("framing", ["cr", "lf", "crlf", "stx_etx", "honeywell_packet"])
def test_encoded_frames_are_what_the_driver_framer_delivers(framing: str) -> None:
    wire, expected, aim = encode_frame(framing, b"83711700173703755001", "]C0")
    events = make_framer(framing).feed(wire, 1.0)
    assert [(e.data, e.aim) for e in events if isinstance(e, Frame)] == [(expected, aim)]
