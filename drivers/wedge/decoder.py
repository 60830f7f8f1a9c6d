"""Key events in, scans out: the decoder shared by the evdev and boot-keyboard HID drivers.

:class:`KeyDecoder` turns key presses (Linux key codes, down/up, with timestamps) into
characters through a :mod:`~scanfleet.drivers.keymaps` layout, tracking both Shifts,
Caps Lock, Ctrl, Alt and AltGr, dead keys, keypad digits and Alt + keypad decimal codes
(Alt+0029 → GS). A scan ends at the configured terminator key (Enter/keypad Enter/Tab)
or, with no terminator, after an inter-key silence.

:class:`EventDecoder` sits in front of it for evdev event streams: it honours
``SYN_DROPPED`` (the kernel's 64-event buffer overflowed) by discarding the partial
scan and everything up to the next scan boundary, so a lost key can never produce a
shorter, wrong code; the loss is counted and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scanfleet.drivers import keymaps as km
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import Frame

log = logging.getLogger(__name__)

EV_SYN, EV_KEY, EV_MSC, EV_LED = 0x00, 0x01, 0x04, 0x11
SYN_REPORT, SYN_DROPPED = 0, 3
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2

TERMINATORS: dict[str, frozenset[int]] = {
    "enter": frozenset((km.KEY_ENTER, km.KEY_KPENTER)),
    "tab": frozenset((km.KEY_TAB,)),
    "enter_or_tab": frozenset((km.KEY_ENTER, km.KEY_KPENTER, km.KEY_TAB)),
    "none": frozenset(),
}
_TERMINATOR_BYTES = {km.KEY_ENTER: b"\r", km.KEY_KPENTER: b"\r", km.KEY_TAB: b"\t"}
MAX_SCAN_CHARS = 4096

DecodedEvent = Frame | DriverProblem


@dataclass
class DecoderStats:
    """Counters a driver exposes (and tests read)."""

    scans: int = 0
    overflows: int = 0
    """SYN_DROPPED incidents: scans lost to a reader that fell behind."""
    human_typing: int = 0
    """Key sequences rejected as typed by a person (inter-key time over the limit)."""
    garbage: int = 0


class KeyDecoder:
    """Key presses → scans for one device. Not thread-safe: one reader feeds it."""

    def __init__(
        self,
        layout: km.Layout,
        *,
        terminator: str = "enter",
        idle_timeout: float = 0.1,
        max_key_interval: float | None = None,
        stats: DecoderStats | None = None,
    ) -> None:
        self.layout = layout
        self.terminators = TERMINATORS[terminator]
        self.idle_timeout = idle_timeout
        self.max_key_interval = max_key_interval
        self.stats = stats if stats is not None else DecoderStats()
        self.held: set[int] = set()
        self.caps = False
        self._chars: list[str] = []
        self._started = False
        self._last_t = 0.0
        self._slow = False
        self._dead: str | None = None
        self._alt_digits: str | None = None
        self._discarding = False

    # -- state -----------------------------------------------------------------------

    def resync(self, held: Iterable[int], caps: bool | None = None) -> None:
        """Replace the key state with the device's (after SYN_DROPPED or at open)."""
        self.held = set(held)
        if caps is not None:
            self.caps = caps
        if km.ALT_KEY not in self.held:
            self._alt_digits = None

    def overflow(self, t: float) -> DriverProblem:
        """Events were lost: drop the partial scan and ignore keys up to the next boundary."""
        self.stats.overflows += 1
        partial = self._text().encode("utf-8")
        self._reset()
        self._discarding = True
        self._last_t = t
        return DriverProblem(
            "overflow",
            "key events lost (evdev buffer overflow); the scan in progress was discarded",
            partial[:64],
        )

    def deadline(self) -> float | None:
        """When :meth:`poll` has work to do (end of an inter-key silence), else None."""
        if self._started or self._discarding:
            return self._last_t + self.idle_timeout
        return None

    def poll(self, now: float) -> list[DecodedEvent]:
        """Handle inter-key silence: end a terminator-less scan, or drop a fragment."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        if self._discarding:
            self._discarding = False
            self._reset()
            return []
        if not self.terminators:
            return self._complete(b"", self._last_t)
        partial = self._text().encode("utf-8")
        self._reset()
        self.stats.garbage += 1
        return [DriverProblem("unterminated", "keys without a terminator key", partial[:64])]

    # -- keys ------------------------------------------------------------------------

    def key(self, code: int, value: int, t: float) -> list[DecodedEvent]:
        """One key event: *value* 0 up, 1 down, 2 autorepeat (ignored)."""
        if value == KEY_UP:
            self.held.discard(code)
            if code == km.ALT_KEY and self._alt_digits is not None:
                digits, self._alt_digits = self._alt_digits, None
                return self._alt_code(digits, t)
            return []
        if value != KEY_DOWN:
            return []
        self.held.add(code)
        if code in km.MODIFIER_KEYS:
            if code == km.ALT_KEY:
                self._alt_digits = ""
            return []
        if code == km.KEY_CAPSLOCK:
            self.caps = not self.caps
            return []
        if code == km.KEY_NUMLOCK:
            return []
        self._touch(t)
        if self._discarding:
            if code in self.terminators:
                self._discarding = False
                self._reset()
            return []
        if self._alt_digits is not None and km.ALT_KEY in self.held and code in km.KEYPAD_DIGITS:
            self._alt_digits += str(km.KEYPAD_DIGITS[code])
            return []
        if code in self.terminators and not self._ctrl():
            return self._complete(_TERMINATOR_BYTES[code], t)
        ch = self._char(code)
        if ch is None:
            return self._garbage(f"key code {code} has no character in layout {self.layout.name}")
        return self._add(ch)

    def _touch(self, t: float) -> None:
        if not self._started:
            self._started = True
            self._slow = False
        elif self.max_key_interval is not None and t - self._last_t > self.max_key_interval:
            self._slow = True
        self._last_t = t

    def _ctrl(self) -> bool:
        return bool(self.held & km.CTRL_KEYS)

    def _char(self, code: int) -> str | None:
        layout = self.layout
        if self._ctrl():
            if code in km.CTRL_POSITIONS:
                return km.CTRL_POSITIONS[code]
            letter = layout.plain.get(code, "")
            if len(letter) == 1 and "a" <= letter <= "z":
                return chr(ord(letter) - 0x60)
            return None
        if code in km.KEYPAD_DIGITS:
            return str(km.KEYPAD_DIGITS[code])
        if code in km.KEYPAD_SYMBOLS:
            return km.KEYPAD_SYMBOLS[code]
        if code in (km.KEY_ENTER, km.KEY_KPENTER):
            return "\r"
        if code == km.KEY_TAB:
            return "\t"
        shift = bool(self.held & km.SHIFT_KEYS)
        altgr = km.ALTGR_KEY in self.held
        ch = layout.char(code, shift=shift, altgr=altgr, caps=self.caps)
        if ch is None:
            return None
        if layout.is_dead(code, shift=shift, altgr=altgr):
            pending, self._dead = self._dead, ch
            return pending or ""
        if self._dead is not None:
            accent, self._dead = self._dead, None
            # Dead key + Space is the accent alone; scanners never compose letters.
            return accent if ch == " " else accent + ch
        return ch

    def _alt_code(self, digits: str, t: float) -> list[DecodedEvent]:
        if not digits:
            return []
        self._touch(t)
        value = int(digits)
        if value == 0 or value > 255:
            return self._garbage(f"Alt+{digits} is not a character code")
        if value < 0x20:
            ch = chr(value)
        else:
            # Windows convention: a leading 0 selects the ANSI code page, else the OEM one.
            codec = "cp1252" if digits.startswith("0") else "cp437"
            ch = bytes([value]).decode(codec, errors="replace")
        if ch == "\ufffd":
            return self._garbage(f"Alt+{digits} is undefined in the code page")
        return self._add(ch)

    def _add(self, ch: str) -> list[DecodedEvent]:
        if not ch:
            return []
        self._chars.append(ch)
        if len(self._chars) > MAX_SCAN_CHARS:
            partial = self._text().encode("utf-8")
            self._reset()
            return [DriverProblem("over_long", "no terminator after 4096 characters", partial[:64])]
        return []

    def _garbage(self, message: str) -> list[DecodedEvent]:
        # The scan lost a character: drop the rest of it too, so it can never be a
        # shorter (wrong) code.
        self.stats.garbage += 1
        partial = self._text().encode("utf-8")[:64]
        self._reset()
        self._discarding = True
        return [DriverProblem("garbage", message, partial)]

    def _complete(self, terminator: bytes, t: float) -> list[DecodedEvent]:
        data = self._text().encode("utf-8")
        slow = self._slow
        self._reset()
        if not data:
            return []  # a lone Enter: nothing scanned
        if slow:
            self.stats.human_typing += 1
            return [DriverProblem("human_typing", "keys typed slower than a scanner", data[:64])]
        self.stats.scans += 1
        return [Frame(data + terminator, t)]

    def _text(self) -> str:
        return "".join(self._chars) + (self._dead or "")

    def _reset(self) -> None:
        self._chars.clear()
        self._started = False
        self._slow = False
        self._dead = None


class EventDecoder:
    """evdev events (type, code, value, time) → scans, with SYN_DROPPED handling.

    *resync* returns the device's currently held keys (``EVIOCGKEY``); it is called
    at the SYN_REPORT that ends a dropped stretch, as the kernel documentation asks.
    """

    def __init__(self, keys: KeyDecoder, resync: Callable[[], Iterable[int]] | None) -> None:
        self.keys = keys
        self._resync = resync
        self._dropping = False

    def event(self, type_: int, code: int, value: int, t: float) -> list[DecodedEvent]:
        """Feed one input event."""
        if type_ == EV_SYN:
            if code == SYN_DROPPED:
                self._dropping = True
                return [self.keys.overflow(t)]
            if code == SYN_REPORT and self._dropping:
                self._dropping = False
                if self._resync is not None:
                    self.keys.resync(self._resync())
                else:
                    self.keys.resync(())
            return []
        if self._dropping or type_ != EV_KEY:
            return []
        # Silence is judged by event stamps, in order: a reader that woke late must not
        # mistake its own delay for a gap between keys.
        return [*self.keys.poll(t), *self.keys.key(code, value, t)]
