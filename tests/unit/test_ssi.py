"""Zebra SSI from byte vectors: checksum, ACK/NAK, multipacket, command retransmission."""

from __future__ import annotations

import pytest

from scanfleet.drivers import ssi
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import Frame, Reply

TRACE = b"83711700173703755001"


def hexs(data: bytes) -> str:
    return data.hex(" ").upper()


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        # Vectors published in enioka_scan's SsiChecksumTest and motorola-ssi-scanner's tests.
        (ssi.ack(), "04 D0 04 00 FF 28"),
        (ssi.build_packet(0x10), "04 10 04 00 FF E8"),
        # protocols.md §5.4 COMPUTED frames.
        (ssi.beep(0x00), "05 E6 04 00 00 FF 11"),
        (ssi.beep(0x01), "05 E6 04 00 01 FF 10"),
        (ssi.beep(0x12), "05 E6 04 00 12 FE FF"),
        (ssi.build_packet(ssi.LED_ON, b"\x01"), "05 E7 04 00 01 FF 0F"),
        (ssi.build_packet(ssi.LED_ON, b"\x02"), "05 E7 04 00 02 FF 0E"),
        (ssi.build_packet(ssi.LED_OFF, b"\x01"), "05 E8 04 00 01 FF 0E"),
    ],
)
def test_packets_match_published_byte_vectors(packet: bytes, expected: str) -> None:
    assert hexs(packet) == expected
    assert ssi.checksum_ok(packet)


def test_param_send_turns_the_decode_beep_off_without_a_confirmation_beep() -> None:
    packet = ssi.param_send((ssi.PARAM_BEEP_AFTER_GOOD_DECODE, 0))
    assert packet[:7] == bytes((0x07, 0xC6, 0x04, 0x00, 0xFF, 0x38, 0x00))
    assert ssi.checksum_ok(packet)


def decoder(data: bytes, symbology: int = 0x03) -> list[bytes]:
    return ssi.decode_data_packets(data, symbology)


def test_decode_data_is_acked_at_once_and_framed_with_its_aim() -> None:
    framer = ssi.SsiFramer()
    events = framer.feed(decoder(TRACE)[0], 1.0)
    assert events[0] == Reply(ssi.ack())
    assert [(e.data, e.aim) for e in events if isinstance(e, Frame)] == [(TRACE, "]C0")]


def test_bad_checksum_is_naked_with_cause_resend_and_not_delivered() -> None:
    packet = bytearray(decoder(TRACE)[0])
    packet[-1] ^= 0x55
    framer = ssi.SsiFramer()
    events = framer.feed(bytes(packet), 1.0)
    assert Reply(ssi.nak(ssi.NAK_RESEND)) in events
    assert hexs(ssi.nak(ssi.NAK_RESEND))[:14] == "05 D1 04 00 01"
    assert [e.code for e in events if isinstance(e, DriverProblem)] == ["checksum"]
    assert not [e for e in events if isinstance(e, Frame)]
    retransmitted = ssi.with_retransmit_bit(decoder(TRACE)[0])
    assert [e.data for e in framer.feed(retransmitted, 1.1) if isinstance(e, Frame)] == [TRACE]


def test_long_data_arrives_as_a_multipacket_each_packet_acked_and_joined() -> None:
    data = bytes(b"0123456789"[i % 10] for i in range(600))
    packets = decoder(data, 0x1B)
    assert len(packets) == 3
    assert [p[3] & ssi.STATUS_CONTINUATION for p in packets] == [2, 2, 0]
    framer = ssi.SsiFramer()
    events = framer.feed(b"".join(packets), 1.0)
    assert events.count(Reply(ssi.ack())) == 3
    frames = [e for e in events if isinstance(e, Frame)]
    assert [(f.data, f.aim) for f in frames] == [(data, None)]


def test_retransmitted_copy_of_an_acked_packet_is_acked_but_not_delivered_twice() -> None:
    framer = ssi.SsiFramer()
    first = framer.feed(decoder(TRACE)[0], 1.0)
    again = framer.feed(ssi.with_retransmit_bit(decoder(TRACE)[0]), 2.0)
    assert len([e for e in first if isinstance(e, Frame)]) == 1
    assert again == [Reply(ssi.ack())]


def test_same_code_scanned_twice_is_two_frames() -> None:
    framer = ssi.SsiFramer()
    events = framer.feed(decoder(TRACE)[0] + decoder(TRACE)[0], 1.0)
    assert len([e for e in events if isinstance(e, Frame)]) == 2


def test_garbage_between_packets_is_skipped_and_reported() -> None:
    framer = ssi.SsiFramer()
    events = framer.feed(b"\x80\xff\x13\x99" + decoder(TRACE)[0], 1.0)
    assert [e.code for e in events if isinstance(e, DriverProblem)] == ["garbage"]
    assert [e.data for e in events if isinstance(e, Frame)] == [TRACE]


def test_partial_packet_then_silence_is_dropped() -> None:
    framer = ssi.SsiFramer(idle_timeout=0.05)
    assert framer.feed(decoder(TRACE)[0][:6], 1.0) == []
    assert [e.code for e in framer.poll(1.2) if isinstance(e, DriverProblem)] == ["garbage"]
    assert framer.deadline() is None


def test_host_command_waits_for_ack_and_queues_the_next_one() -> None:
    framer = ssi.SsiFramer()
    assert framer.command(ssi.beep(1), 1.0) == ssi.beep(1)
    assert framer.command(ssi.beep(0x12), 1.0) == b""
    assert framer.commands_in_flight == 2
    events = framer.feed(ssi.ack(source=ssi.SOURCE_DECODER), 1.1)
    assert events == [Reply(ssi.beep(0x12))]
    assert framer.feed(ssi.ack(source=ssi.SOURCE_DECODER), 1.2) == []
    assert framer.commands_in_flight == 0


def test_host_command_is_retransmitted_on_nak_resend_then_given_up() -> None:
    framer = ssi.SsiFramer(max_tries=3)
    framer.command(ssi.beep(1), 1.0)
    nak = ssi.nak(ssi.NAK_RESEND, source=ssi.SOURCE_DECODER)
    retry = ssi.with_retransmit_bit(ssi.beep(1))
    assert framer.feed(nak, 1.1) == [Reply(retry)]
    assert retry[3] & ssi.STATUS_RETRANSMIT
    assert framer.feed(nak, 1.2) == [Reply(retry)]
    events = framer.feed(nak, 1.3)
    assert [e.code for e in events if isinstance(e, DriverProblem)] == ["nak_storm"]
    assert framer.commands_in_flight == 0


def test_host_command_without_ack_is_retransmitted_after_the_timeout() -> None:
    framer = ssi.SsiFramer(ack_timeout=0.5)
    framer.command(ssi.beep(1), 1.0)
    assert framer.deadline() == pytest.approx(1.5)
    assert framer.poll(1.4) == []
    assert framer.poll(1.6) == [Reply(ssi.with_retransmit_bit(ssi.beep(1)))]


def test_nak_denied_drops_the_command_with_a_problem() -> None:
    framer = ssi.SsiFramer()
    framer.command(ssi.beep(1), 1.0)
    events = framer.feed(ssi.nak(ssi.NAK_DENIED, source=ssi.SOURCE_DECODER), 1.1)
    assert [e.code for e in events if isinstance(e, DriverProblem)] == ["nak"]
    assert framer.commands_in_flight == 0


def test_decode_data_longer_than_max_frame_is_reported_not_delivered() -> None:
    framer = ssi.SsiFramer(max_frame=300)
    events = framer.feed(b"".join(decoder(b"9" * 600)), 1.0)
    assert [e.code for e in events if isinstance(e, DriverProblem)] == ["over_long"]
    assert not [e for e in events if isinstance(e, Frame)]
    assert [e.data for e in framer.feed(decoder(TRACE)[0], 1.1) if isinstance(e, Frame)] == [TRACE]


@pytest.mark.parametrize(
    ("symbology", "aim"), [(0x03, "]C0"), (0x0F, "]C1"), (0x0B, "]E0"), (0x1B, None), (0x1C, None)]
)
def test_symbology_type_maps_to_aim_only_where_unambiguous(symbology: int, aim: str | None) -> None:
    events = ssi.SsiFramer().feed(decoder(b"12345", symbology)[0], 1.0)
    assert [e.aim for e in events if isinstance(e, Frame)] == [aim]


def test_resend_after_a_nak_is_delivered_even_when_it_repeats_the_previous_code() -> None:
    framer = ssi.SsiFramer()
    framer.feed(decoder(TRACE)[0], 1.0)
    damaged = bytearray(decoder(TRACE)[0])
    damaged[-2] ^= 0x01
    framer.feed(bytes(damaged), 1.1)
    events = framer.feed(ssi.with_retransmit_bit(decoder(TRACE)[0]), 1.2)
    assert [e.data for e in events if isinstance(e, Frame)] == [TRACE]
