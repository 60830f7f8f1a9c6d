"""Key-event traces: the file format, a typist that turns text into events, and replay.

An evdev trace (``tests/data/evdev/*.jsonl``, ``scanfleet record``) is JSON lines: a
header ``{"trace": "evdev", "layout": "us", "terminator": "enter", "note": "…"}``
and then one object per input event ``{"t": seconds, "type": 1, "code": 30,
"value": 1}`` exactly as ``struct input_event`` carried it. Replaying a trace runs the
real decoder and injects what it yields into a virtual channel.

:func:`type_text` builds the events a keyboard-mode scanner sends for a text, in the
order the kernel's usbhid/uinput path reports them (``EV_MSC/MSC_SCAN`` with the HID
usage, ``EV_KEY``, ``SYN_REPORT``), for tests and the HIL uinput scanner.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanfleet.drivers import keymaps as km
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import Frame
from scanfleet.drivers.wedge.decoder import (
    EV_KEY,
    EV_MSC,
    EV_SYN,
    SYN_DROPPED,
    SYN_REPORT,
    EventDecoder,
    KeyDecoder,
)

MSC_SCAN = 4
INPUT_EVENT = struct.Struct("@llHHi")
"""``struct input_event`` on 64-bit Linux: timeval (sec, usec), type, code, value."""


@dataclass(frozen=True)
class InputEvent:
    """One ``struct input_event``."""

    t: float
    type: int
    code: int
    value: int

    def pack(self) -> bytes:
        """The kernel's binary form."""
        sec = int(self.t)
        return INPUT_EVENT.pack(sec, round((self.t - sec) * 1e6), self.type, self.code, self.value)

    @classmethod
    def unpack_all(cls, data: bytes) -> list[InputEvent]:
        """Every whole event in *data* (a trailing fragment is ignored)."""
        size = INPUT_EVENT.size
        return [
            cls(sec + usec / 1e6, type_, code, value)
            for sec, usec, type_, code, value in INPUT_EVENT.iter_unpack(
                data[: len(data) - len(data) % size]
            )
        ]


def _press(code: int, value: int, t: float) -> list[InputEvent]:
    usage = km.KEY_TO_HID_USAGE.get(code)
    if usage is None and code in km.HID_MODIFIER_KEYS:
        usage = 0xE0 + km.HID_MODIFIER_KEYS.index(code)
    scan = [InputEvent(t, EV_MSC, MSC_SCAN, 0x70000 | usage)] if usage is not None else []
    return [*scan, InputEvent(t, EV_KEY, code, value), InputEvent(t, EV_SYN, SYN_REPORT, 0)]


def tap(
    keys: Iterable[tuple[frozenset[int], int]], t: float, key_interval: float
) -> tuple[list[InputEvent], float]:
    """Events for pressing each (modifiers, key) in turn; returns them and the next time."""
    events: list[InputEvent] = []
    for mods, code in keys:
        for mod in sorted(mods):
            events += _press(mod, 1, t)
        events += _press(code, 1, t)
        events += _press(code, 0, t)
        for mod in sorted(mods):
            events += _press(mod, 0, t)
        t += key_interval
    return events, t


def type_text(
    layout: km.Layout,
    text: str,
    *,
    t0: float = 0.0,
    key_interval: float = 0.002,
    terminator: int | None = km.KEY_ENTER,
) -> list[InputEvent]:
    """The events a scanner set to *layout* sends for *text* (then *terminator*).

    :raises ValueError: a character the layout cannot type.
    """
    keys = km.key_sequence(layout, text, terminator)
    events, _ = tap(keys, t0, key_interval)
    return events


def syn_dropped(t: float) -> list[InputEvent]:
    """What a reader sees where the kernel dropped events."""
    return [InputEvent(t, EV_SYN, SYN_DROPPED, 0)]


def write_trace(path: Path, header: dict[str, Any], events: Iterable[InputEvent]) -> None:
    """Write an evdev trace file."""
    lines = [json.dumps({"trace": "evdev", **header}, ensure_ascii=False)]
    lines += [
        json.dumps({"t": round(e.t, 6), "type": e.type, "code": e.code, "value": e.value})
        for e in events
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_trace(path: Path) -> tuple[dict[str, Any], list[InputEvent]]:
    """Header and events of an evdev trace file.

    :raises ValueError: not an evdev trace.
    """
    header: dict[str, Any] = {}
    events: list[InputEvent] = []
    for line in _lines(path):
        record = json.loads(line)
        if "trace" in record:
            if record["trace"] != "evdev":
                raise ValueError(f"{path}: a {record['trace']!r} trace, not evdev")
            header = record
            continue
        events.append(
            InputEvent(float(record["t"]), record["type"], record["code"], record["value"])
        )
    return header, events


def _lines(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield line


def decode_events(
    events: Iterable[InputEvent],
    layout: km.Layout,
    *,
    terminator: str = "enter",
    idle_timeout: float = 0.1,
    max_key_interval: float | None = None,
    held_after_drop: Iterable[int] = (),
) -> list[Frame | DriverProblem]:
    """Run events through the real decoder, honouring the silences between them."""
    keys = KeyDecoder(
        layout, terminator=terminator, idle_timeout=idle_timeout, max_key_interval=max_key_interval
    )
    held = tuple(held_after_drop)
    decoder = EventDecoder(keys, lambda: held)
    out: list[Frame | DriverProblem] = []
    last = 0.0
    for event in events:
        out += keys.poll(event.t)
        out += decoder.event(event.type, event.code, event.value, event.t)
        last = event.t
    out += keys.poll(last + idle_timeout + 1.0)
    return out


def replay(channel: str, trace: Path) -> int:
    """Decode an evdev trace and inject its scans (and problems) into a virtual channel."""
    from scanfleet.drivers import virtual

    header, events = read_trace(trace)
    count = 0
    for item in decode_events(
        events,
        km.layout(header.get("layout", "us")),
        terminator=header.get("terminator", "enter"),
    ):
        if isinstance(item, Frame):
            virtual.inject(channel, item.data)
            count += 1
        else:
            virtual.inject_problem(channel, item)
    return count
