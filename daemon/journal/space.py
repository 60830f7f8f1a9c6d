"""The journal's space policy: retention, pruning under pressure, the pruning anchor.

A mixin of :class:`scanfleet.daemon.journal.journal.Journal`, split out to keep each file
readable; it runs on the journal's writer connection and state. The budget counts the
database pages in use (``(page_count - freelist_count) * page_size``); see
docs/journal.md for the whole policy.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from scanfleet.daemon.core.alarms import AlarmSet, Severity
from scanfleet.daemon.core.errors import JournalError
from scanfleet.daemon.journal.codec import Codec, to_micros

log = logging.getLogger(__name__)

ALARM_PRUNED = "journal_pruned_under_pressure"
PRUNE_CHUNK = 5000
"""Records deleted per transaction by retention pruning (keeps each WAL burst small)."""


class SpacePolicy:
    """Pruning of delivered history; every method expects the journal's write lock
    held (``_make_room`` also an open transaction) unless it says otherwise."""

    # Provided by Journal.
    path: Path
    max_bytes: int
    retention: timedelta
    alarms: AlarmSet
    _clock: Callable[[], datetime]
    _conn: sqlite3.Connection
    _codec: Codec
    _write_lock: threading.Lock
    _page_size: int
    _last_seq: int
    _last_hash: str
    _delivered: int
    _pruned_through: int
    lost: list[tuple[int, int]]

    def _used_bytes(self) -> int:
        # One statement (it runs in every commit): the pages in use.
        row = self._conn.execute(
            "SELECT p.page_count - f.freelist_count FROM pragma_page_count() AS p, "
            "pragma_freelist_count() AS f"
        ).fetchone()
        return int(row[0]) * self._page_size

    def _make_room(self, need: int, after: list[Callable[[], None]]) -> bool:
        """Inside the write transaction: prune delivered history until *need* fits."""
        used = self._used_bytes()
        if used + need <= self.max_bytes:
            return True
        # Free a slice of the budget at once so pruning does not run on every append.
        target = self.max_bytes - need - max(self.max_bytes // 32, 4 * self._page_size)
        start = self._pruned_through
        while used + need > self.max_bytes and self._pruned_through < self._delivered:
            rows = max(1, self._delivered - self._pruned_through)
            per_row = max(1, used // max(1, self._last_seq - self._pruned_through))
            step = max(1, -(-(used + need - target) // per_row))
            self._prune_through(min(self._pruned_through + min(step, rows), self._delivered))
            used = self._used_bytes()
        if self._pruned_through > start:
            self._note_pressure(start, self._pruned_through, after)
        return used + need <= self.max_bytes

    def _note_pressure(self, start: int, through: int, after: list[Callable[[], None]]) -> None:
        row = self._conn.execute(
            "SELECT time_us FROM records WHERE seq > ? ORDER BY seq LIMIT 1", (through,)
        ).fetchone()
        cutoff = to_micros(self._clock() - self.retention)
        if row is None or row[0] > cutoff:
            # History kept is now shorter than the retention target.
            after.append(
                lambda: self.alarms.raise_(
                    ALARM_PRUNED,
                    "journal budget forced pruning of delivered records inside retention",
                    Severity.WARNING,
                    pruned_through_seq=through,
                    budget_bytes=self.max_bytes,
                )
            )
        log.info(
            "journal %s: pruned delivered records %d..%d for space", self.path, start + 1, through
        )

    def _prune_through(self, through: int) -> None:
        """Delete records up to *through* (all delivered) and move the anchor there."""
        row = self._conn.execute(
            "SELECT dict, payload FROM records WHERE seq = ?", (through,)
        ).fetchone()
        if row is not None:
            anchor_hash = self._record_hash(through, int(row[0]), bytes(row[1]))
        elif through == self._last_seq:
            anchor_hash = self._last_hash
        elif any(first <= through <= last for first, last in self.lost):
            anchor_hash = ""  # declared lost: the chain is not checkable across it anyway
        else:
            raise JournalError(f"cannot prune through {through}: record missing")
        self._conn.execute(
            "DELETE FROM records WHERE seq > ? AND seq <= ?", (self._pruned_through, through)
        )
        self._conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            ((str(through), "pruned_through_seq"), (anchor_hash, "pruned_hash")),
        )
        self._pruned_through = through

    def _record_hash(self, seq: int, dict_id: int, blob: bytes) -> str:
        record = json.loads(self._codec.decompress(dict_id, blob))
        if record.get("seq") != seq:
            raise JournalError(f"record {seq} holds seq {record.get('seq')}")
        return str(record["hash"])

    def prune(self) -> int:
        """Prune delivered records older than the retention target; returns how many.

        Runs at open and (at most once a minute) after :meth:`mark_delivered`; the
        daemon may also call it from its housekeeping.
        """
        pruned = 0
        cutoff = to_micros(self._clock() - self.retention)
        while True:
            with self._write_lock:
                if self._conn is None or self._pruned_through >= self._delivered:
                    break
                limit = min(self._delivered, self._pruned_through + PRUNE_CHUNK)
                row = self._conn.execute(
                    "SELECT seq FROM records WHERE seq > ? AND seq <= ? AND time_us >= ? "
                    "ORDER BY seq LIMIT 1",
                    (self._pruned_through, limit, cutoff),
                ).fetchone()
                through = (int(row[0]) - 1) if row else limit
                if through <= self._pruned_through:
                    break
                before = self._pruned_through
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._prune_through(through)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    self._pruned_through = before
                    raise
                pruned += through - before
                if row is not None:
                    break
        if pruned:
            with self._write_lock:
                # Retention pruning gives the space back to the filesystem.
                # execute() steps a statement once, which frees ONE page; executescript()
                # runs the pragma to completion (we are outside any transaction here).
                self._conn.executescript("PRAGMA incremental_vacuum;")
            log.info("journal %s: pruned %d delivered records past retention", self.path, pruned)
        self._maybe_clear_pressure(cutoff)
        return pruned

    def _maybe_clear_pressure(self, cutoff_us: int) -> None:
        if ALARM_PRUNED not in self.alarms:
            return
        with self._write_lock:
            row = self._conn.execute("SELECT time_us FROM records ORDER BY seq LIMIT 1").fetchone()
        if row is not None and row[0] <= cutoff_us:
            self.alarms.clear(ALARM_PRUNED)
