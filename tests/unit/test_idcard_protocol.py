"""SAM frame builder and parser, from the reference byte vectors and built frames."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanfleet.drivers.idcard.protocol import (
    MAX_LEN,
    PREAMBLE,
    CardAuthenticationError,
    CardData,
    ChecksumError,
    Command,
    FrameError,
    FrameParser,
    Garbage,
    IdCardProtocolError,
    LengthError,
    MalformedReplyError,
    NoCardError,
    PreambleError,
    ReadFailedError,
    SamFaultError,
    SelectFailedError,
    Status,
    build_frame,
    join_card_data,
    parse_frame,
    parse_reply,
    reply,
    request,
    split_card_data,
    status_error,
)
from scanfleet.drivers.idcard.text import CardType, encode_text

VECTORS = json.loads(
    (Path(__file__).parents[1] / "data" / "idcard" / "vectors.json").read_text(encoding="utf-8")
)
REQUESTS = {Command[name]: frame for name, frame in VECTORS["requests"].items()}
REPLIES = [(r["frame"], r["status"], bytes.fromhex(r["data"])) for r in VECTORS["replies"]]


@pytest.mark.parametrize(("command", "expected"), REQUESTS.items(), ids=lambda v: str(v))
def test_request_frames_match_the_reference_bytes(command: Command, expected: str) -> None:
    assert request(command) == bytes.fromhex(expected)


def test_set_baud_rate_frame_matches_the_reference() -> None:
    assert build_frame(b"\x60\x00") == bytes.fromhex(VECTORS["set_baud_115200"])


@pytest.mark.parametrize(("frame", "status", "data"), REPLIES)
def test_reference_replies_parse_to_status_and_data(frame: str, status: int, data: bytes) -> None:
    raw = bytes.fromhex(frame)
    got = parse_reply(parse_frame(raw))
    assert (got.status, got.data) == (status, data)
    assert reply(status, data) == raw


def _card_reply(card_type: CardType, command: Command, fp_len: int = 1024) -> tuple[bytes, bytes]:
    number = "USA110085010100" if card_type is CardType.FOREIGN_2017 else "11010519491231002X"
    text = encode_text(card_type, {"name": "测试", "id_number": number})
    photo = bytes(range(256)) * 4
    card = CardData(text, photo, bytes([7]) * fp_len if command is Command.READ_FULL else b"")
    return reply(Status.OK, join_card_data(card, command)), text


@pytest.mark.parametrize("card_type", list(CardType))
def test_read_reply_of_every_card_type_has_the_reference_header_and_size(
    card_type: CardType,
) -> None:
    frame, text = _card_reply(card_type, Command.READ_BASE)
    header = VECTORS["read_headers"]["READ_BASE"]
    assert frame.startswith(bytes.fromhex(header["prefix"]))
    assert len(frame) == header["total"]
    sections = split_card_data(parse_reply(parse_frame(frame)).data)
    assert sections.text == text
    assert len(sections.photo) == 1024
    assert sections.fingerprint == b""


@pytest.mark.parametrize(("fp_len", "total"), [(1024, 2321), (512, 1809), (0, 1297)])
def test_read_with_fingerprint_reply_sizes_match_the_reference(fp_len: int, total: int) -> None:
    frame, _ = _card_reply(CardType.MAINLAND, Command.READ_FULL, fp_len)
    assert len(frame) == total
    if fp_len == 1024:
        header = VECTORS["read_headers"]["READ_FULL_1024"]
        assert frame.startswith(bytes.fromhex(header["prefix"]))
    sections = split_card_data(parse_reply(parse_frame(frame)).data, Command.READ_FULL)
    assert len(sections.fingerprint) == fp_len


def test_read_reply_whose_section_lengths_do_not_add_up_is_malformed() -> None:
    data = join_card_data(CardData(bytes(256), bytes(1024)))[:-1]
    with pytest.raises(MalformedReplyError):
        split_card_data(data)


def test_strict_parser_names_each_defect() -> None:
    good = request(Command.FIND)
    with pytest.raises(PreambleError):
        parse_frame(b"\x00" + good[1:])
    with pytest.raises(LengthError):
        parse_frame(good + b"\x00")
    with pytest.raises(ChecksumError):
        parse_frame(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(MalformedReplyError):
        parse_reply(b"\x00\x01\x90")


def test_status_codes_map_to_named_errors() -> None:
    assert isinstance(status_error(0x80), NoCardError)
    assert isinstance(status_error(0x81), SelectFailedError)
    assert isinstance(status_error(0x41), ReadFailedError)
    for code in (0x31, 0x32, 0x33):
        assert isinstance(status_error(code), CardAuthenticationError)
    for code in (0x60, 0x66, 0x47):
        assert isinstance(status_error(code), SamFaultError)
    err = status_error(0x33, Command.READ_BASE)
    assert err.status == 0x33
    assert "0x33" in str(err)
    assert "READ_BASE" in str(err)


def test_every_documented_status_has_a_meaning() -> None:
    for status in Status:
        assert "undocumented" not in str(status_error(status))


def test_parser_resyncs_after_garbage_and_a_stray_leading_byte() -> None:
    select_ok = bytes.fromhex("AA AA AA 96 69 00 0C 00 00 90 00 00 00 00 00 00 00 00 9C")
    # A stray "AA 00" before a frame (seen in the wild) and junk between frames.
    stream = b"\x13\x37" + b"\xaa\x00" + select_ok + b"junk\xaa\xaa" + request(Command.FIND)
    parser = FrameParser()
    items = parser.feed(stream)
    frames = [i for i in items if isinstance(i, bytes)]
    assert frames == [select_ok[7:-1], request(Command.FIND)[7:-1]]
    assert any(isinstance(i, Garbage) for i in items)


def test_parser_finds_a_frame_hidden_inside_a_corrupt_one() -> None:
    good = reply(Status.OK, b"\x01\x02")
    corrupt = bytearray(reply(Status.OK, bytes(40)))
    corrupt[-1] ^= 0xFF
    # The corrupt frame's LEN swallows the good one; the parser must back off and find it.
    parser = FrameParser()
    items = parser.feed(bytes(corrupt[:20]) + good + bytes(corrupt[20 + len(good) :]))
    assert good[7:-1] in [i for i in items if isinstance(i, bytes)]


def test_parser_reassembles_a_frame_fed_one_byte_at_a_time() -> None:
    frame, _ = _card_reply(CardType.FOREIGN_2023, Command.READ_BASE)
    parser = FrameParser()
    got: list[bytes | Garbage] = []
    for b in frame:
        got += parser.feed(bytes([b]))
    assert got == [frame[7:-1]]
    assert len(parser) == 0


def test_parser_rejects_a_preamble_followed_by_an_absurd_length() -> None:
    parser = FrameParser()
    items = parser.feed(PREAMBLE + (MAX_LEN + 1).to_bytes(2, "big") + request(Command.FIND))
    assert items[-1] == request(Command.FIND)[7:-1]
    assert isinstance(items[0], Garbage)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_bytes_make_the_strict_parser_raise_only_protocol_errors(data: bytes) -> None:
    for candidate in (data, PREAMBLE + data, PREAMBLE + len(data).to_bytes(2, "big") + data):
        try:
            body = parse_frame(candidate)
        except FrameError:
            continue
        with contextlib.suppress(IdCardProtocolError):
            parse_reply(body)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([PREAMBLE, PREAMBLE[:3], b"\x00\x03", b"\xff\xff"]),
            st.builds(lambda b: reply(Status.OK, b), st.binary(max_size=60)),
        ),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_fuzzed_streams_never_make_the_incremental_parser_raise(
    parts: list[bytes], chunk: int
) -> None:
    stream = b"".join(parts)
    parser = FrameParser()
    for i in range(0, len(stream), chunk):
        for item in parser.feed(stream[i : i + chunk]):
            if isinstance(item, bytes):
                # Whatever it yields is a body whose frame passes the strict checks.
                assert parse_frame(build_frame(item)) == item


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=3, max_size=80), min_size=1, max_size=6), st.binary(max_size=30))
def test_valid_frames_between_garbage_are_all_recovered(bodies: list[bytes], junk: bytes) -> None:
    # Garbage without the preamble's first byte cannot start a false frame.
    junk = junk.replace(b"\xaa", b"")
    stream = b"".join(junk + build_frame(b) for b in bodies)
    got = [i for i in FrameParser().feed(stream) if isinstance(i, bytes)]
    assert got == bodies
