"""The console's catalogs and time formatting (no server, no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from babel.messages.extract import extract_from_dir

from scanfleet.hub.console import i18n
from scanfleet.hub.console.auth import Role

CONSOLE = Path(__file__).resolve().parents[2] / "hub" / "console"


def test_every_message_of_the_templates_and_code_has_a_chinese_translation() -> None:
    method_map = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    ids = {
        message if isinstance(message, str) else message[0]
        for _, _, message, _, _ in extract_from_dir(str(CONSOLE), method_map, options_map=options)
    }
    assert len(ids) > 100
    zh = i18n.translations("zh_Hans")
    same = {"CSV"}  # the same in both languages
    untranslated = sorted(m for m in ids - same if zh.gettext(m) == m)
    assert untranslated == []


def test_dates_are_shown_in_the_persons_zone() -> None:
    when = datetime(2026, 12, 7, 20, 30, tzinfo=UTC)
    assert i18n.local_time(when, i18n.zone("Asia/Shanghai")) == "2026-12-08 04:30:00"
    assert i18n.local_time(when.isoformat(), i18n.zone("Europe/Berlin")) == "2026-12-07 21:30:00"
    assert i18n.local_time(None, i18n.zone("UTC")) == "-"
    assert i18n.zone("Mars/Olympus").key == "UTC"
    assert not i18n.valid_zone("Mars/Olympus")


def test_roles_include_the_ones_below_them() -> None:
    assert Role.parse("admin").label == "admin"
    assert Role.ADMIN > Role.OPERATOR > Role.VIEWER
