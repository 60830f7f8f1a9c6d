"""Boot keyboard and HID POS report decoding on traces (tests/data/usbhid)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanfleet.drivers import keymaps as km
from scanfleet.drivers import usbhid
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import Frame

DATA = Path(__file__).parents[1] / "data" / "usbhid"


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.jsonl")))
def test_trace_decodes_to_exactly_the_expected_scans(name: str) -> None:
    header, _ = usbhid.read_trace(DATA / name)
    frames = [x for x in usbhid.decode_trace(DATA / name) if isinstance(x, Frame)]
    assert [f.data.decode("utf-8") for f in frames][: len(header["expect"])] == header["expect"]


def test_every_modifier_bit_is_its_own_key() -> None:
    boot = usbhid.BootKeyboard()
    assert boot.report(bytes((0xFF, 0, 0, 0, 0, 0, 0, 0))) == [
        (code, 1) for code in km.HID_MODIFIER_KEYS
    ]
    assert boot.report(bytes(8)) == [(code, 0) for code in km.HID_MODIFIER_KEYS]


def test_right_shift_shifts_like_left_shift() -> None:
    decoder = usbhid.ReportDecoder("keyboard", km.US)
    out = []
    for report in ("2000040000000000", "0000000000000000", "0000280000000000", "00" * 8):
        out += decoder.report(bytes.fromhex(report), 0.0)
    assert out == [Frame(b"A\r", 0.0)]


def test_error_rollover_reports_change_nothing() -> None:
    boot = usbhid.BootKeyboard()
    boot.report(bytes.fromhex("0000040000000000"))
    assert boot.report(bytes.fromhex("0000010101010101")) == []
    assert boot.report(bytes(8)) == [(30, 0)]


def test_hid_pos_continuations_join_into_one_scan_with_the_first_reports_aim() -> None:
    data = bytes(range(0x30, 0x30 + 70))
    reports = usbhid.hidpos_reports(data, "]d2")
    assert [r[63] for r in reports] == [1, 0]
    assert reports[0][:5] == b"\x02\x38]d2"
    decoder = usbhid.ReportDecoder("hidpos", km.US)
    got = [x for r in reports for x in decoder.report(r, 1.0)]
    assert got == [Frame(data, 1.0, aim="]d2")]


def test_hid_pos_reports_of_other_ids_and_command_replies_are_not_scans() -> None:
    decoder = usbhid.ReportDecoder("hidpos", km.US)
    assert decoder.report(bytes((0x04,)) + bytes(63), 0.0) == []
    reply = usbhid.hidpos_reports(b"BEPLVL3\x06.", "]Z6")
    assert decoder.report(reply[0], 0.0) == []


def test_a_hid_pos_length_that_overruns_the_report_is_garbage() -> None:
    decoder = usbhid.ReportDecoder("hidpos", km.US)
    bad = bytearray(usbhid.hidpos_reports(b"123", "]E0")[0])
    bad[1] = 60
    (problem,) = decoder.report(bytes(bad), 0.0)
    assert isinstance(problem, DriverProblem)
    assert problem.code == "garbage"
