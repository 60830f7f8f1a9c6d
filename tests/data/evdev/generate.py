"""Build the evdev and usbhid decoding traces from the documented formats.

These traces are *constructed*, not recorded: events in the order the kernel's
usbhid → evdev path reports them (MSC_SCAN, EV_KEY, SYN_REPORT per key transition;
protocols.md §3-4), boot reports per usbkbd.c, HID POS reports per the Honeywell
layout. Run ``.venv/bin/python tests/data/evdev/generate.py`` to rewrite them.
"""

from __future__ import annotations

from pathlib import Path

from scanfleet.drivers import keymaps as km
from scanfleet.drivers import usbhid
from scanfleet.drivers.wedge.trace import InputEvent, syn_dropped, tap, type_text, write_trace

HERE = Path(__file__).parent
USBHID = HERE.parent / "usbhid"
ASCII = "".join(map(chr, range(0x20, 0x7F)))
GS1 = "0106901234567892\x1d17260131\x1d10LOT42\x1d21SER0001"
TRACE20 = "83711700173703755001"
NOTE = "constructed from the documented event format (tests/data/evdev/generate.py)"


def _then(events: list[InputEvent], gap: float = 0.5) -> float:
    return (events[-1].t if events else 0.0) + gap


def evdev_traces() -> None:
    for name, layout in km.LAYOUTS.items():
        write_trace(
            HERE / f"ascii-{name}.jsonl",
            {"layout": name, "note": NOTE, "expect": [ASCII + "\r"]},
            type_text(layout, ASCII),
        )
    write_trace(
        HERE / "gs-ctrl-bracket-us.jsonl",
        {"layout": "us", "note": NOTE + "; GS typed as Ctrl+]", "expect": [GS1 + "\r"]},
        type_text(km.US, GS1),
    )
    write_trace(
        HERE / "gs-ctrl-plus-de.jsonl",
        {
            "layout": "de",
            "note": NOTE + "; GS typed as Ctrl + '+' (German)",
            "expect": [GS1 + "\r"],
        },
        type_text(km.DE, GS1),
    )
    # Alt held, keypad 0 0 2 9, Alt released: Windows-style Alt+0029 for each GS.
    events: list[InputEvent] = []
    t = 0.0
    for part in GS1.split("\x1d"):
        if events:
            seq = [InputEvent(t, 1, km.KEY_LEFTALT, 1), InputEvent(t, 0, 0, 0)]
            for digit in (km.KEY_KP0, km.KEY_KP0, km.KEY_KP2, km.KEY_KP9):
                t += 0.002
                seq += [InputEvent(t, 1, digit, 1), InputEvent(t, 0, 0, 0)]
                seq += [InputEvent(t, 1, digit, 0), InputEvent(t, 0, 0, 0)]
            t += 0.002
            seq += [InputEvent(t, 1, km.KEY_LEFTALT, 0), InputEvent(t, 0, 0, 0)]
            events += seq
            t += 0.002
        chunk = type_text(km.US, part, t0=t, terminator=None)
        events += chunk
        t = _then(chunk, 0.002)
    events += type_text(km.US, "", t0=t)
    write_trace(
        HERE / "gs-alt-0029.jsonl",
        {"layout": "us", "note": NOTE + "; GS typed as Alt+0029", "expect": [GS1 + "\r"]},
        events,
    )
    # Caps Lock on: plain letters come out upper case, Shift+letter lower case.
    caps, t = tap([(frozenset(), km.KEY_CAPSLOCK)], 0.0, 0.002)
    letters, t = tap(
        [
            (frozenset(), 30),
            (frozenset(), 48),
            (frozenset({km.KEY_LEFTSHIFT}), 46),
            (frozenset(), 2),
        ],
        t,
        0.002,
    )
    end = type_text(km.US, "", t0=t)
    write_trace(
        HERE / "capslock.jsonl",
        {"layout": "us", "note": NOTE + "; Caps Lock pressed first", "expect": ["ABc1\r"]},
        caps + letters + end,
    )
    # Keypad digits and keypad Enter (NumLock state is not consulted).
    pad = {str(v): k for k, v in km.KEYPAD_DIGITS.items()}
    keys = [(frozenset[int](), pad[d]) for d in TRACE20] + [(frozenset[int](), km.KEY_KPENTER)]
    events, _ = tap(keys, 0.0, 0.002)
    write_trace(
        HERE / "keypad.jsonl",
        {
            "layout": "us",
            "note": NOTE + "; keypad digits, keypad Enter",
            "expect": [TRACE20 + "\r"],
        },
        events,
    )
    # SYN_DROPPED in the middle of the second scan, while Shift is held (its release
    # is among the lost events); the third scan must decode exactly.
    first = type_text(km.US, TRACE20)
    t = _then(first)
    second = type_text(km.US, "ABC" + TRACE20, t0=t)
    cut = next(i for i, e in enumerate(second) if e.code == km.KEY_LEFTSHIFT and e.value == 1) + 3
    tail_start = len(second) // 2
    lost = [*second[:cut], *syn_dropped(second[cut].t), *second[tail_start:]]
    third = type_text(km.US, "0103400934567891", t0=_then(second))
    write_trace(
        HERE / "syn-dropped.jsonl",
        {
            "layout": "us",
            "note": NOTE + "; SYN_DROPPED mid-scan with Shift held, Shift release lost",
            "expect": [TRACE20 + "\r", "0103400934567891\r"],
        },
        first + lost + third,
    )
    write_trace(
        HERE / "human-typing.jsonl",
        {"layout": "us", "note": NOTE + "; 60 ms between keys", "expect": []},
        type_text(km.US, "12345", key_interval=0.06),
    )


def usbhid_traces() -> None:
    def timed(
        reports: list[bytes], t0: float = 0.0, step: float = 0.004
    ) -> list[tuple[float, bytes]]:
        return [(t0 + i * step, r) for i, r in enumerate(reports)]

    note = "constructed from the boot/HID POS report formats (tests/data/evdev/generate.py)"
    for name, layout in km.LAYOUTS.items():
        usbhid.write_trace(
            USBHID / f"boot-ascii-{name}.jsonl",
            {"mode": "keyboard", "layout": name, "note": note, "expect": [ASCII + "\r"]},
            timed(usbhid.boot_reports(layout, ASCII)),
        )
    # Right Shift (bit 5) and 6-key rollover: the next key goes down before the last is up.
    rollover = [
        bytes.fromhex("2000040000000000"),  # RShift + a → A
        bytes.fromhex("2000040500000000"),  # b down, a still held → B
        bytes.fromhex("0000050000000000"),  # Shift and a up, b held (no new key)
        bytes.fromhex("00001e0000000000"),  # b up, 1 down
        bytes.fromhex("00001e1f20212223"),  # 2..6 down, six keys at once
        bytes.fromhex("0000000000000000"),
        bytes.fromhex("0000280000000000"),
        bytes.fromhex("0000000000000000"),
    ]
    usbhid.write_trace(
        USBHID / "boot-rollover.jsonl",
        {"mode": "keyboard", "layout": "us", "note": note, "expect": ["AB123456\r"]},
        timed(rollover),
    )
    gs1 = GS1.encode("ascii") * 3  # 138 bytes: three reports with continuation
    usbhid.write_trace(
        USBHID / "hidpos-multi.jsonl",
        {"mode": "hidpos", "note": note, "expect": [gs1.decode("ascii")], "aim": "]d2"},
        timed(usbhid.hidpos_reports(gs1, "]d2"))
        + timed(usbhid.hidpos_reports(TRACE20.encode("ascii"), "]d1"), t0=1.0),
    )


if __name__ == "__main__":
    evdev_traces()
    usbhid_traces()
