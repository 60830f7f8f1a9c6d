"""Serial framing from byte vectors: frames, garbage, over-long, wrong terminators, resync."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import (
    RESYNC_SILENCE,
    DelimiterFramer,
    Frame,
    HoneywellPacketFramer,
    IdleFramer,
    frame_is_clean,
)
from scanfleet.drivers.framing_presets import make_framer

TRACE = b"83711700173703755001"
GS1 = b"]d2010304000000000117290101" + b"10ABC123\x1d21XYZ987"


def frames(events: Sequence[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Frame)]


def problems(events: Sequence[object]) -> list[str]:
    return [e.code for e in events if isinstance(e, DriverProblem)]


@pytest.mark.parametrize(
    ("framing", "terminator"), [("cr", b"\r"), ("lf", b"\n"), ("crlf", b"\r\n")]
)
def test_delimited_frames_keep_their_terminator(framing: str, terminator: bytes) -> None:
    framer = make_framer(framing)
    events = framer.feed(TRACE + terminator + GS1 + terminator, 1.0)
    assert frames(events) == [TRACE + terminator, GS1 + terminator]
    assert problems(events) == []


def test_frame_split_across_reads_is_joined() -> None:
    framer = make_framer("crlf")
    assert framer.feed(TRACE[:5], 1.0) == []
    assert framer.feed(TRACE[5:] + b"\r", 1.001) == []
    assert frames(framer.feed(b"\n", 1.002)) == [TRACE + b"\r\n"]


def test_lf_sent_to_a_cr_port_is_a_wrong_terminator_and_the_next_frame_survives() -> None:
    framer = make_framer("cr")
    events = framer.feed(b"6901234567892\n" + TRACE + b"\r", 1.0)
    assert problems(events) == ["wrong_terminator"]
    assert frames(events) == [TRACE + b"\r"]


def test_lone_cr_on_a_crlf_port_drops_only_that_frame() -> None:
    framer = make_framer("crlf")
    events = framer.feed(b"6901234567892\r" + TRACE + b"\r\n", 1.0)
    assert problems(events) == ["wrong_terminator"]
    assert frames(events) == [TRACE + b"\r\n"]


def test_crlf_scanner_on_a_cr_port_delivers_frames_and_reports_the_stray_lf() -> None:
    framer = make_framer("cr")
    events = framer.feed(TRACE + b"\r\n" + TRACE + b"\r\n", 1.0)
    assert frames(events) == [TRACE + b"\r", TRACE + b"\r"]
    assert problems(events) == ["wrong_terminator", "wrong_terminator"]


def test_wrong_baud_noise_then_silence_is_one_garbage_problem_and_resyncs() -> None:
    framer = make_framer("cr", idle_timeout=0.05)
    assert framer.feed(bytes(range(0x80, 0xA0)), 1.0) == []
    # In terminator framings silence is a safety net: never shorter than RESYNC_SILENCE.
    assert framer.deadline() == pytest.approx(1.0 + RESYNC_SILENCE)
    assert framer.poll(1.2) == []
    events = framer.poll(1.0 + RESYNC_SILENCE)
    assert problems(events) == ["garbage"]
    assert frames(framer.feed(TRACE + b"\r", 2.0)) == [TRACE + b"\r"]
    assert framer.deadline() is None


def test_noise_glued_to_a_frame_makes_that_frame_garbage_not_a_scan() -> None:
    framer = make_framer("cr")
    events = framer.feed(b"\xff\x00\x9c" + TRACE + b"\r" + TRACE + b"\r", 1.0)
    assert problems(events) == ["garbage"]
    assert frames(events) == [TRACE + b"\r"]


def test_over_long_frame_is_reported_once_and_the_stream_resyncs_at_its_terminator() -> None:
    framer = make_framer("cr", max_frame=64)
    events = framer.feed(b"9" * 1000, 1.0)
    events += framer.feed(b"9" * 1000 + b"\r" + TRACE + b"\r", 1.1)
    assert problems(events) == ["over_long"]
    assert frames(events) == [TRACE + b"\r"]


def test_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    framer = make_framer("cr", max_frame=20)
    assert frames(framer.feed(TRACE + b"\r", 1.0)) == [TRACE + b"\r"]
    assert problems(framer.feed(TRACE + b"1\r", 1.0)) == ["over_long"]


def test_unterminated_frame_followed_by_silence_is_reported_not_delivered() -> None:
    framer = make_framer("cr", idle_timeout=0.05)
    assert framer.feed(TRACE, 1.0) == []
    assert problems(framer.poll(2.0)) == ["unterminated"]


def test_a_sender_pausing_mid_frame_does_not_split_it() -> None:
    framer = make_framer("cr", idle_timeout=0.05)
    assert framer.feed(TRACE[:7], 1.0) == []
    assert framer.poll(1.3) == []
    assert frames(framer.feed(TRACE[7:] + b"\r", 1.3)) == [TRACE + b"\r"]


def test_bare_terminator_is_ignored() -> None:
    framer = make_framer("cr")
    assert framer.feed(b"\r\r", 1.0) == []


def test_stx_etx_frames_include_stx_and_etx_and_outside_bytes_are_garbage() -> None:
    framer = make_framer("stx_etx")
    events = framer.feed(b"xx\x02" + TRACE + b"\x03\x02" + GS1 + b"\x03", 1.0)
    assert frames(events) == [b"\x02" + TRACE + b"\x03", b"\x02" + GS1 + b"\x03"]
    assert problems(events) == ["garbage"]


def test_stx_without_etx_is_unterminated_when_the_next_stx_arrives() -> None:
    framer = make_framer("stx_etx")
    events = framer.feed(b"\x02" + TRACE[:8] + b"\x02" + TRACE + b"\x03", 1.0)
    assert problems(events) == ["unterminated"]
    assert frames(events) == [b"\x02" + TRACE + b"\x03"]


def test_custom_suffix_framing() -> None:
    framer = make_framer("suffix", suffix=b"\x09\x04")
    events = framer.feed(TRACE + b"\x09\x04" + b"6901234567892\x09\x04", 1.0)
    assert frames(events) == [TRACE + b"\x09\x04", b"6901234567892\x09\x04"]


def test_idle_framing_ends_a_frame_on_silence() -> None:
    framer = make_framer("idle", idle_timeout=0.05)
    assert framer.feed(TRACE[:10], 1.0) == []
    assert framer.feed(TRACE[10:], 1.02) == []
    assert framer.poll(1.05) == []
    assert frames(framer.poll(1.08)) == [TRACE]
    assert isinstance(framer, IdleFramer)


def test_gs1_separators_and_utf8_text_are_barcode_data() -> None:
    assert frame_is_clean(GS1)
    assert frame_is_clean("https://example.cn/药品?id=1".encode())
    assert frame_is_clean(b"[)>\x1e06\x1d1PABC\x1e\x04")


@pytest.mark.parametrize("junk", [b"\x00", b"\x07", b"\x7f", b"\xff\xfe", b"ab\xc3"])
def test_bytes_no_barcode_carries_are_not_clean(junk: bytes) -> None:
    assert not frame_is_clean(b"8371170" + junk)


def honeywell_packet(data: bytes, aim: bytes = b"C0", code_id: bytes = b"j") -> bytes:
    body = data + b"\r"
    payload = b"MSGGET" + b"%04d" % len(body) + code_id + aim + b"\x1d" + body
    return b"\x16\xfe" + len(payload).to_bytes(4, "little") + b"\r" + payload


def test_honeywell_packet_mode_yields_data_and_aim_from_the_header() -> None:
    framer = make_framer("honeywell_packet")
    assert isinstance(framer, HoneywellPacketFramer)
    events = framer.feed(honeywell_packet(TRACE) + honeywell_packet(GS1[3:], b"d2", b"w"), 1.0)
    assert [(e.data, e.aim) for e in events if isinstance(e, Frame)] == [
        (TRACE, "]C0"),
        (GS1[3:], "]d2"),
    ]


def test_honeywell_packet_mode_resyncs_after_garbage_and_split_reads() -> None:
    framer = make_framer("honeywell_packet")
    wire = b"\x80\x81garbage" + honeywell_packet(TRACE)
    events = []
    for i in range(len(wire)):
        events += framer.feed(wire[i : i + 1], 1.0)
    assert problems(events) == ["garbage"] * len(problems(events))
    assert problems(events)
    assert frames(events) == [TRACE]


def test_honeywell_packet_with_a_wrong_length_field_is_garbage() -> None:
    packet = bytearray(honeywell_packet(TRACE))
    packet[7 + 6 : 7 + 10] = b"0099"
    events = make_framer("honeywell_packet").feed(bytes(packet), 1.0)
    assert frames(events) == []
    assert problems(events) == ["garbage"]


def test_unknown_framing_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown framing"):
        make_framer("morse")
    with pytest.raises(ValueError, match="empty"):
        DelimiterFramer(b"")
