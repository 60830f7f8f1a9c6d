"""The wedge decoder on evdev traces (tests/data/evdev, built from the documented format)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from scanfleet.drivers import keymaps as km
from scanfleet.drivers import virtual
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import Frame
from scanfleet.drivers.wedge import trace
from scanfleet.drivers.wedge.decoder import EventDecoder, KeyDecoder

DATA = Path(__file__).parents[1] / "data" / "evdev"
TRACES = sorted(p.name for p in DATA.glob("*.jsonl") if p.name != "human-typing.jsonl")


def decode(path: Path, **kw: object) -> list[Frame | DriverProblem]:
    header, events = trace.read_trace(path)
    return trace.decode_events(events, km.layout(header["layout"]), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TRACES)
def test_trace_decodes_to_exactly_the_expected_scans(name: str) -> None:
    header, _ = trace.read_trace(DATA / name)
    frames = [x.data.decode("utf-8") for x in decode(DATA / name) if isinstance(x, Frame)]
    assert frames == header["expect"]


@pytest.mark.parametrize("name", sorted(km.LAYOUTS))
def test_every_printable_ascii_character_survives_each_layout(name: str) -> None:
    got = decode(DATA / f"ascii-{name}.jsonl")
    assert got == [Frame(bytes(range(0x20, 0x7F)) + b"\r", got[0].t)]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["gs-ctrl-bracket-us", "gs-ctrl-plus-de", "gs-alt-0029"])
def test_gs_arrives_as_0x1d_however_it_was_typed(name: str) -> None:
    (frame,) = decode(DATA / f"{name}.jsonl")
    assert isinstance(frame, Frame)
    assert frame.data.count(b"\x1d") == 3
    assert frame.data.startswith(b"0106901234567892\x1d17")


def test_syn_dropped_discards_the_partial_scan_reports_the_loss_and_unsticks_shift() -> None:
    got = decode(DATA / "syn-dropped.jsonl")
    assert [type(x).__name__ for x in got] == ["Frame", "DriverProblem", "Frame"]
    problem = got[1]
    assert isinstance(problem, DriverProblem)
    assert problem.code == "overflow"
    # Shift's release was lost; without the EVIOCGKEY resync the last scan would be "!)…".
    assert got[2].data == b"0103400934567891\r"


def test_loss_is_counted_and_no_fragment_of_the_lost_scan_is_ever_a_read() -> None:
    _, events = trace.read_trace(DATA / "syn-dropped.jsonl")
    keys = KeyDecoder(km.US)
    decoder = EventDecoder(keys, lambda: ())
    frames = []
    for e in events:
        frames += [
            x.data for x in decoder.event(e.type, e.code, e.value, e.t) if isinstance(x, Frame)
        ]
    assert keys.stats.overflows == 1
    assert keys.stats.scans == 2
    assert all(
        f.decode().rstrip("\r") in {"83711700173703755001", "0103400934567891"} for f in frames
    )


def test_human_typing_is_rejected_when_a_key_interval_limit_is_set() -> None:
    got = decode(DATA / "human-typing.jsonl", max_key_interval=0.03)
    assert [p.code for p in got if isinstance(p, DriverProblem)] == ["human_typing"]
    assert not [f for f in got if isinstance(f, Frame)]
    assert [f.data for f in decode(DATA / "human-typing.jsonl") if isinstance(f, Frame)] == [
        b"12345\r"
    ]


def test_without_a_terminator_the_scan_ends_after_an_inter_key_silence() -> None:
    events = trace.type_text(km.US, "ABC", terminator=None)
    got = trace.decode_events(events, km.US, terminator="none", idle_timeout=0.05)
    assert [f.data for f in got if isinstance(f, Frame)] == [b"ABC"]


def test_keys_without_a_terminator_are_an_unterminated_problem_not_a_scan() -> None:
    events = trace.type_text(km.US, "ABC", terminator=None)
    got = trace.decode_events(events, km.US)
    assert [(type(x).__name__, getattr(x, "code", None)) for x in got] == [
        ("DriverProblem", "unterminated")
    ]


def test_a_key_the_layout_does_not_map_spoils_the_whole_scan_never_a_shorter_code() -> None:
    f1 = 59
    events, t = trace.tap([(frozenset(), 2), (frozenset(), f1), (frozenset(), 3)], 0.0, 0.002)
    events += trace.type_text(km.US, "9", t0=t)
    events += trace.type_text(km.US, "42", t0=t + 1.0)
    got = trace.decode_events(events, km.US)
    assert [p.code for p in got if isinstance(p, DriverProblem)] == ["garbage"]
    assert [f.data for f in got if isinstance(f, Frame)] == [b"42\r"]


def test_a_raw_event_record_round_trips_through_the_kernel_struct() -> None:
    event = trace.InputEvent(12.345678, 1, 30, 1)
    (back,) = trace.InputEvent.unpack_all(event.pack() + b"\x00\x01")
    assert (back.type, back.code, back.value) == (1, 30, 1)
    assert back.t == pytest.approx(12.345678, abs=1e-6)


def test_a_replayed_trace_arrives_through_the_virtual_driver() -> None:
    channel = f"evdev-replay-{uuid.uuid4().hex}"
    try:
        assert trace.replay(channel, DATA / "keypad.jsonl") == 1
        assert virtual.pending(channel) == 1
    finally:
        virtual.reset(channel)


def test_the_daemon_core_imports_neither_evdev_nor_pyusb() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, scanfleet.daemon.cli, scanfleet.daemon.runner, scanfleet.drivers;"
        "from scanfleet.daemon.cli import build_parser; build_parser();"
        "import scanfleet.drivers.wedge.decoder, scanfleet.drivers.usbhid;"
        "print(sorted(m for m in ('evdev', 'usb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_after_a_loss_keys_are_dropped_until_a_terminator_or_a_silence() -> None:
    # The lost stretch may have held the terminator: the keys that follow could be the
    # tail of the lost scan, so they are dropped up to Enter or an idle_timeout silence.
    lost = trace.syn_dropped(0.0)
    tail = trace.type_text(km.US, "55001", t0=0.01)  # tail of the lost scan + its Enter
    soon = trace.type_text(km.US, "111", t0=0.2)  # decoded: Enter ended the discard
    got = trace.decode_events([*lost, *tail, *soon], km.US, idle_timeout=0.1)
    assert [f.data for f in got if isinstance(f, Frame)] == [b"111\r"]
    no_enter = trace.type_text(km.US, "55001", t0=0.01, terminator=None)
    later = trace.type_text(km.US, "222", t0=1.0)  # after a silence: decoded
    got = trace.decode_events([*lost, *no_enter, *later], km.US, idle_timeout=0.1)
    assert [f.data for f in got if isinstance(f, Frame)] == [b"222\r"]
