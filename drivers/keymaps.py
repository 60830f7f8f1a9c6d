"""Keyboard layouts of wedge scanners: Linux key code + modifiers → character.

A keyboard-mode scanner types keys, not characters: its *keyboard-country* setting
decides which key it presses for each character. We decode key codes ourselves (the
host's layout never matters), so each table here describes what a scanner set to that
country sends. The same tables serve evdev (Linux ``KEY_*`` codes) and boot-keyboard
HID reports (usages, translated with :data:`HID_USAGE_TO_KEY`, the kernel's
``usb_kbd_keycode`` table for the keys we use).

Tables are built from the physical key rows (ISO positions, named by the Linux key
code of each position), one string per level: plain, Shift, AltGr; ``·`` marks a
position with no character at that level.
Dead keys (``^`` and acute on de, ``^``/``¨``/``~``/`` ` `` on fr) produce their
character when followed by Space, as scanners type them for a Windows host.

Control characters: Ctrl + a letter gives that letter's control code; Ctrl + the keys at
the US ``[``, ``\\`` and ``]`` positions give ESC, FS and GS on every layout (Windows maps
Ctrl by physical position, which is why a German-layout scanner sends GS as Ctrl + ``+``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Linux input key codes (linux/input-event-codes.h).
EV_KEY_TYPE = 1
KEY_ESC = 1
KEY_BACKSPACE = 14
KEY_TAB = 15
KEY_LEFTBRACE = 26
KEY_RIGHTBRACE = 27
KEY_ENTER = 28
KEY_LEFTCTRL = 29
KEY_LEFTSHIFT = 42
KEY_BACKSLASH = 43
KEY_RIGHTSHIFT = 54
KEY_KPASTERISK = 55
KEY_LEFTALT = 56
KEY_SPACE = 57
KEY_CAPSLOCK = 58
KEY_NUMLOCK = 69
KEY_KP7, KEY_KP8, KEY_KP9, KEY_KPMINUS = 71, 72, 73, 74
KEY_KP4, KEY_KP5, KEY_KP6, KEY_KPPLUS = 75, 76, 77, 78
KEY_KP1, KEY_KP2, KEY_KP3, KEY_KP0, KEY_KPDOT = 79, 80, 81, 82, 83
KEY_102ND = 86
KEY_KPENTER = 96
KEY_RIGHTCTRL = 97
KEY_KPSLASH = 98
KEY_RIGHTALT = 100
KEY_LEFTMETA = 125
KEY_RIGHTMETA = 126

SHIFT_KEYS = frozenset((KEY_LEFTSHIFT, KEY_RIGHTSHIFT))
CTRL_KEYS = frozenset((KEY_LEFTCTRL, KEY_RIGHTCTRL))
ALT_KEY = KEY_LEFTALT
ALTGR_KEY = KEY_RIGHTALT
MODIFIER_KEYS = frozenset(
    (*SHIFT_KEYS, *CTRL_KEYS, ALT_KEY, ALTGR_KEY, KEY_LEFTMETA, KEY_RIGHTMETA)
)

KEYPAD_DIGITS: dict[int, int] = {
    KEY_KP0: 0,
    KEY_KP1: 1,
    KEY_KP2: 2,
    KEY_KP3: 3,
    KEY_KP4: 4,
    KEY_KP5: 5,
    KEY_KP6: 6,
    KEY_KP7: 7,
    KEY_KP8: 8,
    KEY_KP9: 9,
}
KEYPAD_SYMBOLS: dict[int, str] = {
    KEY_KPDOT: ".",
    KEY_KPSLASH: "/",
    KEY_KPASTERISK: "*",
    KEY_KPMINUS: "-",
    KEY_KPPLUS: "+",
}
CTRL_POSITIONS: dict[int, str] = {
    KEY_LEFTBRACE: "\x1b",
    KEY_BACKSLASH: "\x1c",
    KEY_RIGHTBRACE: "\x1d",
}
"""Ctrl + these physical keys → ESC, FS, GS on every layout."""

# Physical rows, by the Linux key code of each position (ISO keyboard).
_ROW_E = (41, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)  # ` 1 … 0 - =
_ROW_D = (16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27)  # q … p [ ]
_ROW_C = (30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 43)  # a … l ; ' \ (ISO #)
_ROW_B = (86, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53)  # 102nd z … m , . /
_ROWS = (_ROW_E, _ROW_D, _ROW_C, _ROW_B)
_NOTHING = "·"


@dataclass(frozen=True)
class Layout:
    """One keyboard-country table."""

    name: str
    plain: dict[int, str]
    shift: dict[int, str]
    altgr: dict[int, str]
    dead: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    """(key code, level) pairs that are dead keys; level 0 plain, 1 Shift, 2 AltGr."""

    def char(self, code: int, *, shift: bool, altgr: bool, caps: bool) -> str | None:
        """The character the key gives at this modifier state, or None (unmapped)."""
        if altgr:
            return self.altgr.get(code)
        plain = self.plain.get(code)
        if caps and plain is not None and plain.isalpha() and self.shift.get(code) == plain.upper():
            shift = not shift  # Caps Lock inverts Shift on letter keys only
        return (self.shift if shift else self.plain).get(code)

    def is_dead(self, code: int, *, shift: bool, altgr: bool) -> bool:
        """True when this key at this level is a dead (accent) key."""
        level = 2 if altgr else (1 if shift else 0)
        return (code, level) in self.dead


def _table(rows: tuple[str, str, str, str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for codes, chars in zip(_ROWS, rows, strict=True):
        if len(chars) != len(codes):
            raise ValueError(f"row {chars!r} has {len(chars)} keys, expected {len(codes)}")
        for code, ch in zip(codes, chars, strict=True):
            if ch != _NOTHING:
                out[code] = ch
    out[KEY_SPACE] = " "
    return out


def _sparse(pairs: dict[int, str]) -> dict[int, str]:
    return dict(pairs)


US = Layout(
    "us",
    plain=_table(("`1234567890-=", "qwertyuiop[]", "asdfghjkl;'\\", "\\zxcvbnm,./")),
    shift=_table(("~!@#$%^&*()_+", "QWERTYUIOP{}", 'ASDFGHJKL:"|', "|ZXCVBNM<>?")),
    altgr={},
)
UK = Layout(
    "uk",
    plain=_table(("`1234567890-=", "qwertyuiop[]", "asdfghjkl;'#", "\\zxcvbnm,./")),
    shift=_table(('¬!"£$%^&*()_+', "QWERTYUIOP{}", "ASDFGHJKL:@~", "|ZXCVBNM<>?")),
    altgr=_sparse({41: "¦", 5: "€"}),
)
DE = Layout(
    "de",
    plain=_table(("^1234567890ß\u00b4", "qwertzuiopü+", "asdfghjklöä#", "<yxcvbnm,.-")),
    shift=_table(('°!"§$%&/()=?`', "QWERTZUIOPÜ*", "ASDFGHJKLÖÄ'", ">YXCVBNM;:_")),
    altgr=_sparse(
        {3: "²", 4: "³", 8: "{", 9: "[", 10: "]", 11: "}", 12: "\\", 16: "@", 18: "€", 27: "~"}
        | {86: "|", 50: "µ"}
    ),
    dead=frozenset({(41, 0), (13, 0), (13, 1)}),
)
FR = Layout(
    "fr",
    plain=_table(("²&é\"'(-è_çà)=", "azertyuiop^$", "qsdfghjklmù*", "<wxcvbn,;:!")),
    shift=_table(("·1234567890°+", "AZERTYUIOP¨£", "QSDFGHJKLM%µ", ">WXCVBN?./§")),
    altgr=_sparse(
        {3: "~", 4: "#", 5: "{", 6: "[", 7: "|", 8: "`", 9: "\\", 10: "^", 11: "@"}
        | {12: "]", 13: "}", 18: "€", 27: "¤"}
    ),
    dead=frozenset({(26, 0), (26, 1), (3, 2), (8, 2)}),
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (US, UK, DE, FR)}


def layout(name: str) -> Layout:
    """The layout called *name* (``us``, ``uk``, ``de``, ``fr``).

    :raises KeyError: unknown layout.
    """
    return LAYOUTS[name]


@dataclass(frozen=True)
class Stroke:
    """How a scanner types one character: modifiers held, then one key (or a dead key + key)."""

    keys: tuple[tuple[frozenset[int], int], ...]


def strokes_for(layout_: Layout, ch: str) -> Stroke | None:
    """The key strokes a scanner set to *layout_* sends for *ch* (None: not typeable).

    Used to build traces for tests and the simulator; the decoder is the inverse.
    """
    if ch == "\x1d":
        return Stroke(((frozenset({KEY_LEFTCTRL}), KEY_RIGHTBRACE),))
    levels: tuple[tuple[dict[int, str], frozenset[int], int], ...] = (
        (layout_.plain, frozenset(), 0),
        (layout_.shift, frozenset({KEY_LEFTSHIFT}), 1),
        (layout_.altgr, frozenset({KEY_RIGHTALT}), 2),
    )
    for table, mods, level in levels:
        for code, mapped in sorted(table.items()):
            if mapped != ch:
                continue
            if (code, level) in layout_.dead:
                return Stroke(((mods, code), (frozenset(), KEY_SPACE)))
            return Stroke(((mods, code),))
    return None


# HID keyboard usage (page 0x07) → Linux key code, from the kernel's usb_kbd_keycode[]
# (drivers/hid/usbhid/usbkbd.c), for the keys a scanner types.
HID_USAGE_TO_KEY: dict[int, int] = {
    **{0x04 + i: code for i, code in enumerate((30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38))},
    **{0x10 + i: code for i, code in enumerate((50, 49, 24, 25, 16, 19, 31, 20, 22, 47, 17, 45))},
    0x1C: 21,
    0x1D: 44,
    **{0x1E + i: 2 + i for i in range(10)},  # 1 … 0
    0x28: KEY_ENTER,
    0x29: KEY_ESC,
    0x2A: KEY_BACKSPACE,
    0x2B: KEY_TAB,
    0x2C: KEY_SPACE,
    0x2D: 12,
    0x2E: 13,
    0x2F: KEY_LEFTBRACE,
    0x30: KEY_RIGHTBRACE,
    0x31: KEY_BACKSLASH,
    0x32: KEY_BACKSLASH,  # ISO "#~" (Non-US #) — the kernel maps it to KEY_BACKSLASH too
    0x33: 39,
    0x34: 40,
    0x35: 41,
    0x36: 51,
    0x37: 52,
    0x38: 53,
    0x39: KEY_CAPSLOCK,
    0x53: KEY_NUMLOCK,
    0x54: KEY_KPSLASH,
    0x55: KEY_KPASTERISK,
    0x56: KEY_KPMINUS,
    0x57: KEY_KPPLUS,
    0x58: KEY_KPENTER,
    **{0x59 + i: code for i, code in enumerate((79, 80, 81, 75, 76, 77, 71, 72, 73, 82))},
    0x63: KEY_KPDOT,
    0x64: KEY_102ND,
}
HID_MODIFIER_KEYS: tuple[int, ...] = (
    KEY_LEFTCTRL,
    KEY_LEFTSHIFT,
    KEY_LEFTALT,
    KEY_LEFTMETA,
    KEY_RIGHTCTRL,
    KEY_RIGHTSHIFT,
    KEY_RIGHTALT,
    KEY_RIGHTMETA,
)
"""Boot-report modifier byte: bit *i* is usage 0xE0 + i, i.e. these key codes."""
KEY_TO_HID_USAGE: dict[int, int] = {}
for _usage, _code in sorted(HID_USAGE_TO_KEY.items(), reverse=True):
    KEY_TO_HID_USAGE[_code] = _usage  # the lower usage wins for KEY_BACKSLASH (0x31)


def key_sequence(
    layout: Layout, text: str, terminator: int | None = KEY_ENTER
) -> list[tuple[frozenset[int], int]]:
    """(modifiers held, key) for every key a scanner set to *layout* types for *text*.

    :raises ValueError: a character the layout cannot type.
    """
    keys: list[tuple[frozenset[int], int]] = []
    for ch in text:
        stroke = strokes_for(layout, ch)
        if stroke is None:
            raise ValueError(f"layout {layout.name} cannot type {ch!r}")
        keys.extend(stroke.keys)
    if terminator is not None:
        keys.append((frozenset(), terminator))
    return keys
