"""Layout tables: what a scanner set to each keyboard country types, and back."""

from __future__ import annotations

import pytest

from scanfleet.drivers import keymaps as km

PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


@pytest.mark.parametrize("name", sorted(km.LAYOUTS))
def test_every_printable_ascii_character_is_typeable_in_each_layout(name: str) -> None:
    layout = km.layout(name)
    assert [ch for ch in PRINTABLE if km.strokes_for(layout, ch) is None] == []


@pytest.mark.parametrize(
    ("name", "code", "shift", "altgr", "expected"),
    [
        ("us", 3, True, False, "@"),
        ("uk", 3, True, False, '"'),  # the InvenTree#10589 confusion: UK Shift+2 is "
        ("uk", 40, True, False, "@"),
        ("de", 21, False, False, "z"),  # QWERTZ
        ("de", 16, False, True, "@"),
        ("de", 27, False, False, "+"),
        ("fr", 16, False, False, "a"),  # AZERTY
        ("fr", 2, False, False, "&"),
        ("fr", 2, True, False, "1"),
        ("fr", 11, False, True, "@"),
    ],
)
def test_layouts_put_characters_where_that_country_has_them(
    name: str, code: int, shift: bool, altgr: bool, expected: str
) -> None:
    assert km.layout(name).char(code, shift=shift, altgr=altgr, caps=False) == expected


def test_caps_lock_inverts_shift_on_letters_only() -> None:
    assert km.US.char(30, shift=False, altgr=False, caps=True) == "A"
    assert km.US.char(30, shift=True, altgr=False, caps=True) == "a"
    assert km.US.char(2, shift=False, altgr=False, caps=True) == "1"


def test_dead_keys_are_typed_with_a_following_space() -> None:
    stroke = km.strokes_for(km.DE, "^")
    assert stroke is not None
    assert stroke.keys == ((frozenset(), 41), (frozenset(), km.KEY_SPACE))


def test_gs_is_ctrl_and_the_key_at_the_us_right_bracket_position() -> None:
    stroke = km.strokes_for(km.DE, "\x1d")
    assert stroke is not None
    assert stroke.keys == ((frozenset({km.KEY_LEFTCTRL}), km.KEY_RIGHTBRACE),)
    assert km.DE.plain[km.KEY_RIGHTBRACE] == "+"  # why German scanners send Ctrl + '+'


def test_hid_usages_map_to_the_kernels_key_codes() -> None:
    # usbkbd.c: 0x04 → KEY_A, 0x28 → KEY_ENTER, 0x58 → KEY_KPENTER, 0x30 → KEY_RIGHTBRACE
    assert km.HID_USAGE_TO_KEY[0x04] == 30
    assert km.HID_USAGE_TO_KEY[0x28] == km.KEY_ENTER
    assert km.HID_USAGE_TO_KEY[0x58] == km.KEY_KPENTER
    assert km.HID_USAGE_TO_KEY[0x30] == km.KEY_RIGHTBRACE
    assert km.HID_USAGE_TO_KEY[0x1D] == 44  # z
    assert km.KEY_TO_HID_USAGE[km.KEY_BACKSLASH] == 0x31
