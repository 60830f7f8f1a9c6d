"""The 64-byte HID wrapper around SAM frames (pure framing; the pyusb I/O is HIL)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanfleet.drivers.idcard.protocol import (
    CardData,
    Command,
    FrameError,
    Status,
    join_card_data,
    parse_frame,
    reply,
    request,
)
from scanfleet.drivers.idcard.usbhid import (
    PACKET,
    HidPacketError,
    HidReassembler,
    hid_reply_packets,
    hid_request,
    parse_hid_request,
    sum16,
)


def test_find_request_packet_layout() -> None:
    packet = hid_request(request(Command.FIND))
    assert len(packet) == PACKET
    frame = bytes.fromhex("AA AA AA 96 69 00 03 20 01 22")
    head = bytes([0x88, 0x00, 0x00, 0x0B, 0x00, 0xB1])
    assert packet[:16] == head + frame
    assert packet[16:18] == sum16(packet[3:16]).to_bytes(2, "little")
    assert packet[18:] == bytes(PACKET - 18)
    assert parse_hid_request(packet) == frame


def test_a_short_reply_fits_one_packet() -> None:
    frame = reply(Status.CARD_FOUND, bytes(4))
    (packet,) = hid_reply_packets(frame)
    assert packet[0] == 0xAA
    assembler = HidReassembler()
    assert assembler.add(packet) == parse_frame(frame)


def test_a_card_read_spans_packets_and_reassembles() -> None:
    frame = reply(Status.OK, join_card_data(CardData(bytes(range(256)), bytes(1024))))
    packets = hid_reply_packets(frame)
    assert len(packets) == -(-len(frame) // 54) == 24
    assembler = HidReassembler()
    results = [assembler.add(p) for p in packets]
    assert results[:-1] == [None] * 23
    assert results[-1] == parse_frame(frame)


def test_a_corrupted_packet_is_refused() -> None:
    (packet,) = hid_reply_packets(reply(Status.OK))
    bad = bytearray(packet)
    bad[6] ^= 1
    with pytest.raises(HidPacketError):
        HidReassembler().add(bytes(bad))


@given(st.binary(min_size=0, max_size=PACKET))
def test_fuzzed_packets_raise_only_frame_errors(packet: bytes) -> None:
    with contextlib.suppress(FrameError):
        HidReassembler().add(packet)
