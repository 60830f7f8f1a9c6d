"""Languages and time zones: gettext catalogs (English source, Simplified Chinese) per person.

The ``.po`` catalogs are the committed source; they are compiled to gettext's binary form
with Babel when the console starts, so no build step and no committed ``.mo`` files.
"""

from __future__ import annotations

import gettext
import io
from datetime import UTC, datetime
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

DOMAIN = "console"
LANGUAGE_NAMES = {"en": "English", "zh_Hans": "简体中文"}
"""Languages offered, in the language itself."""


def translations(language: str) -> gettext.NullTranslations:
    """The catalog for *language* (English, the source language, needs none)."""
    if language == "en":
        return gettext.NullTranslations()
    po = resources.files("scanfleet.hub.console") / "locale" / language / "LC_MESSAGES"
    with (po / f"{DOMAIN}.po").open("rb") as f:
        catalog = read_po(f, locale=language.replace("_Hans", ""))
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def zone(name: str) -> ZoneInfo:
    """The time zone *name*, or UTC when it is not a known IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def valid_zone(name: str) -> bool:
    """True when *name* is an IANA time zone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def local_time(when: datetime | str | None, tz: ZoneInfo) -> str:
    """*when* in the person's zone as ``YYYY-MM-DD HH:MM:SS``; ``-`` for none."""
    if when is None or when == "":
        return "-"
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when)
        except ValueError:
            return str(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
