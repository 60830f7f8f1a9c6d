"""Critical alarms persist across restarts until acknowledged (issue 15 item 4)."""

from __future__ import annotations

from pathlib import Path

from scanfleet.daemon.core.alarms import AlarmSet, Severity, acknowledge, load_sticky


def test_a_sticky_alarm_survives_a_restart_and_ends_only_when_acknowledged(
    tmp_path: Path,
) -> None:
    store = tmp_path / "alarms.json"
    first = AlarmSet.load(store)
    first.raise_("journal_quarantined", "set aside", Severity.CRITICAL, file="x")
    first.raise_("broker_unreachable", "no broker", Severity.WARNING)
    first.clear("journal_quarantined")  # only an acknowledgement ends it
    assert "journal_quarantined" in first

    again = AlarmSet.load(store)  # the next start
    assert "journal_quarantined" in again
    assert "broker_unreachable" not in again
    (alarm,) = again.active()
    assert (alarm.severity, alarm.details) == (Severity.CRITICAL, {"file": "x"})

    assert acknowledge(store, "journal_quarantined")  # scanfleet alarms ack, another process
    again.sync()
    assert "journal_quarantined" not in again
    assert load_sticky(store) == {}
    assert not acknowledge(store, "journal_quarantined")


def test_ack_ends_any_active_alarm_and_says_when_there_was_none(tmp_path: Path) -> None:
    alarms = AlarmSet.load(tmp_path / "alarms.json")
    alarms.raise_("journal_loss", "3 seqs lost", Severity.CRITICAL)
    assert alarms.ack("journal_loss")
    assert not alarms.ack("journal_loss")
    assert "journal_loss" not in AlarmSet.load(tmp_path / "alarms.json")
