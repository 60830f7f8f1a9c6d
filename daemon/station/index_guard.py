"""The station's secondary store (duplicate index and saved station state) fails safe.

``station-index.sqlite3`` is derived data next to the journal. When a write or query
fails (a full disk, a damaged file), the read path goes on without it: the journal
record is already durable, the duplicate check is skipped with a problem on the record,
the alarm ``station_index`` is raised and logged once. The next call that works first
re-indexes what the index missed from the journal, then clears the alarm.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TypeVar

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.station.duplicates import DuplicateIndex

log = logging.getLogger(__name__)

ALARM_INDEX = "station_index"

T = TypeVar("T")


class IndexGuard:
    """Runs index operations so that a failing index never fails the read."""

    def __init__(self, alarms: AlarmSet) -> None:
        self._alarms = alarms
        self.journal: Journal | None = None
        """Set at restore: what the index catches up from after a failure."""
        self.failed = False
        self.failures = 0

    def run(
        self, index: DuplicateIndex | None, what: str, action: Callable[[DuplicateIndex], T]
    ) -> T | None:
        """``action(index)``, or None when there is no index or it fails."""
        if index is None:
            return None
        try:
            if self.failed and self.journal is not None:
                index.catch_up(self.journal)
            result = action(index)
        except (sqlite3.Error, OSError) as err:
            self.failures += 1
            if not self.failed:
                log.error("station index: %s failed (%s); reads go on without it", what, err)  # noqa: TRY400 - the cause is all; no traceback per read
            self.failed = True
            self._alarms.raise_(
                ALARM_INDEX,
                f"station index unavailable ({what}: {err}); duplicate checks are skipped",
            )
            return None
        if self.failed:
            self.failed = False
            log.info("station index works again after %d failures", self.failures)
            self._alarms.clear(ALARM_INDEX)
        return result
