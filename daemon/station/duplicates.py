"""Duplicate-scan detection at the edge (重复扫码).

A code accepted twice for the same operation at this device within the window is a
duplicate: the second read is refused with ``duplicate_of`` = the earlier seq. Legitimate
repeats are not blocked:

- a different operation is never a duplicate (sold, then ``sale_return_in``);
- a *reset* operation after the earlier scan makes the code fresh again: a code sold,
  returned by the customer and sold again; received, returned to the supplier and
  received again (``RESETS``);
- 拆零: a code whose product prefix is configured in ``[station] split_packs`` may be
  scanned up to the pack's unit count for one operation.

The index is a small SQLite file of our own in the state directory (the journal's schema
belongs to the journal). It is derived data: missing or behind, it is rebuilt from the
journal, so a crash between a journal commit and the index update loses nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.model import Operation
from scanfleet.daemon.journal.journal import Journal

log = logging.getLogger(__name__)

INDEX_FILE = "station-index.sqlite3"

RESETS: Mapping[Operation, frozenset[Operation]] = {
    Operation.RETAIL_SALE: frozenset({Operation.SALE_RETURN_IN}),
    Operation.DISPENSE: frozenset({Operation.SALE_RETURN_IN}),
    Operation.DISPATCH: frozenset({Operation.SALE_RETURN_IN}),
    Operation.RECEIVING: frozenset({Operation.PURCHASE_RETURN_OUT}),
    Operation.PURCHASE_RETURN_OUT: frozenset({Operation.RECEIVING}),
    Operation.SALE_RETURN_IN: frozenset(
        {Operation.RETAIL_SALE, Operation.DISPENSE, Operation.DISPATCH}
    ),
    Operation.TRANSFER_OUT: frozenset({Operation.TRANSFER_IN, Operation.RECEIVING}),
    Operation.TRANSFER_IN: frozenset({Operation.TRANSFER_OUT}),
}
"""operation → later operations after which a code may be scanned for it again."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    code TEXT NOT NULL,
    operation TEXT NOT NULL,
    seq INTEGER NOT NULL PRIMARY KEY,
    t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_code ON seen (code, operation, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class DuplicateCheck:
    """What the index says about a code about to be accepted."""

    duplicate_of: int | None
    """seq of the earlier scan that makes this one a duplicate, or None."""
    uses: int
    """Earlier scans of the code for this operation still counting (拆零 uses)."""
    limit: int
    """How many scans one code may have for this operation (1, or the pack's units)."""

    @property
    def reason(self) -> str | None:
        """The operator-facing reason, or None when not a duplicate."""
        if self.duplicate_of is None:
            return None
        if self.limit > 1:
            return f"split pack used up: {self.uses} of {self.limit} units already scanned"
        return f"duplicate scan: already scanned as seq {self.duplicate_of}"


class DuplicateIndex:
    """Code → accepted scans per operation, with the repeat policy."""

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        *,
        window_days: int,
        split_packs: Mapping[str, int] | None = None,
        enabled: bool = True,
    ) -> None:
        """Wrap *db*, opened by :meth:`open` (no I/O here)."""
        self.path = path
        self.window_days = window_days
        self.enabled = enabled
        self._split_packs = dict(split_packs or {})
        self._lock = threading.Lock()
        self._db = db

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        window_days: int,
        split_packs: Mapping[str, int] | None = None,
        enabled: bool = True,
    ) -> DuplicateIndex:
        """Open (or create) the index file at *path*."""
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return cls(path, db, window_days=window_days, split_packs=split_packs, enabled=enabled)

    def close(self) -> None:
        """Close the index file."""
        with self._lock:
            self._db.close()

    def configure(self, *, window_days: int, split_packs: Mapping[str, int], enabled: bool) -> None:
        """Apply a reloaded policy."""
        with self._lock:
            self.window_days = window_days
            self._split_packs = dict(split_packs)
            self.enabled = enabled

    @property
    def built_through(self) -> int:
        """The last journal seq the index has seen."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'through_seq'").fetchone()
        return int(row[0]) if row else 0

    def catch_up(self, journal: Journal) -> int:
        """Index the journal's records the index has not seen; returns how many were read."""
        count = 0
        after = self.built_through
        if after > journal.last_seq:
            # A different (or reset) journal: the index describes something else.
            log.warning("duplicate index is ahead of the journal; rebuilding it")
            with self._lock:
                self._db.execute("DELETE FROM seen")
            after = 0
        while True:
            batch = journal.read_after(after, limit=1000, max_bytes=4 << 20)
            if not batch:
                break
            for rec in batch:
                self.add_record(rec.as_dict())
                after = rec.seq
                count += 1
            self._set_through(after)
        if count:
            log.info("duplicate index: %d journal records indexed", count)
        return count

    def _set_through(self, seq: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('through_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
                "WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (str(seq),),
            )

    def add_record(self, record: Mapping[str, Any]) -> None:
        """Remember a committed journal record (only accepted scans count)."""
        seq = int(record["seq"])
        if record.get("type") == "scan" and record.get("verdict") == "accepted":
            with self._lock:
                self._db.execute(
                    "INSERT OR IGNORE INTO seen (code, operation, seq, t) VALUES (?, ?, ?, ?)",
                    (record["value"], record["operation"], seq, _epoch(record.get("time"))),
                )
        self._set_through(seq)

    def _limit(self, code: str) -> int:
        if code in self._split_packs:
            return self._split_packs[code]
        if len(code) >= 7 and code[:7] in self._split_packs:
            return self._split_packs[code[:7]]
        # A GS1 code: the product is the GTIN (AI 01) that follows the leading "01".
        if code.startswith("01") and len(code) >= 16:
            gtin = code[2:16]
            for key, units in self._split_packs.items():
                if gtin.startswith(key) or gtin[1:].startswith(key):
                    return units
        return 1

    def check(self, code: str, operation: Operation) -> DuplicateCheck:
        """Whether accepting *code* for *operation* now would be a duplicate."""
        if not self.enabled:
            return DuplicateCheck(None, 0, 1)
        limit = self._limit(code)
        since = time.time() - self.window_days * 86400
        resets = sorted(RESETS.get(operation, frozenset()))
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, operation FROM seen WHERE code = ? AND t >= ? ORDER BY seq",
                (code, since),
            ).fetchall()
        counting: list[int] = []
        for seq, op in rows:
            if op == operation:
                counting.append(seq)
            elif op in resets:
                counting.clear()  # a return (or the like) after them: they no longer count
        if len(counting) >= limit:
            return DuplicateCheck(counting[-1], len(counting), limit)
        return DuplicateCheck(None, len(counting), limit)

    def save_state(self, state: Mapping[str, Any]) -> None:
        """Keep the station's context (operation, bill, manifest) for the next start."""
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('station', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(state, ensure_ascii=False),),
            )

    def load_state(self) -> dict[str, Any] | None:
        """The station context saved by :meth:`save_state`, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'station'").fetchone()
        if row is None:
            return None
        try:
            state = json.loads(row[0])
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    def prune(self) -> int:
        """Forget scans older than the window; returns how many."""
        since = time.time() - self.window_days * 86400
        with self._lock:
            return self._db.execute("DELETE FROM seen WHERE t < ?", (since,)).rowcount


def _epoch(value: object) -> float:
    """The record's wall-clock time as epoch seconds (now when it has none)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return time.time()


def open_index(state_dir: Path, journal: Journal, **policy: Any) -> DuplicateIndex:
    """Open (or create) the index in *state_dir* and bring it up to the journal."""
    index = DuplicateIndex.open(state_dir / INDEX_FILE, **policy)
    try:
        index.catch_up(journal)
        pruned = index.prune()
    except BaseException:
        index.close()
        raise
    if pruned:
        log.info(
            "duplicate index: %d scans older than %d days forgotten", pruned, index.window_days
        )
    return index


def policy(config: Config) -> dict[str, Any]:
    """The index's policy keywords from a configuration."""
    station = config.station
    return {
        "window_days": station.duplicate_window_days or config.journal.retention_days,
        "split_packs": station.split_packs,
        "enabled": station.duplicate_check,
    }
