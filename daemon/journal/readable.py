"""Records of a journal file for export: through SQLite, or page by page when damaged.

A damaged or quarantined journal is exported as far as it is readable: SQLite is
used while it can read the file; at the first sign of damage (the file does not
open, or a page fails mid-way) the rest comes from a page scan
(:func:`~scanfleet.daemon.journal.salvage.assess`), every record checked against its
own hash, and :attr:`Readable.damage` says which seqs could not be read.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

from scanfleet.daemon.core.errors import JournalCorruptError
from scanfleet.daemon.journal.codec import from_micros
from scanfleet.daemon.journal.reader import JournalReader, Record, open_readonly
from scanfleet.daemon.journal.salvage import Damage, assess

log = logging.getLogger(__name__)

DAMAGE = (JournalCorruptError, sqlite3.DatabaseError)


@dataclass(frozen=True)
class Selection:
    """A seq range and/or a time range [since, until)."""

    from_seq: int | None = None
    to_seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def holds(self, record: Record) -> bool:
        """True when *record* is selected."""
        return not (
            (self.from_seq is not None and record.seq < self.from_seq)
            or (self.to_seq is not None and record.seq > self.to_seq)
            or (self.since is not None and record.time < self.since)
            or (self.until is not None and record.time >= self.until)
        )


class Readable:
    """The selected records of one journal file, as far as they can be read."""

    def __init__(self, path: Path, selection: Selection) -> None:
        self.path = path
        self.selection = selection
        self.damage: Damage | None = None
        self._reader: JournalReader | None = None
        try:
            self._reader = open_readonly(path)
        except DAMAGE as err:
            log.warning("journal %s does not open (%s): reading it page by page", path, err)
            self.damage = assess(path)

    def __enter__(self) -> Readable:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.close()

    def count(self) -> int:
        """How many records :meth:`records` yields, as far as known in advance."""
        if self._reader is not None:
            try:
                s = self.selection
                return self._reader.count(
                    from_seq=s.from_seq, to_seq=s.to_seq, since=s.since, until=s.until
                )
            except DAMAGE:
                self.damage = assess(self.path)
        return sum(1 for _ in self._salvaged(0))

    def records(self) -> Iterator[Record]:
        """Selected records in seq order; switches to the page scan at the first damage."""
        last = 0
        s = self.selection
        if self._reader is not None and self.damage is None:
            rows = self._reader.iter_records(
                from_seq=s.from_seq, to_seq=s.to_seq, since=s.since, until=s.until
            )
            try:
                for record in rows:
                    last = record.seq
                    yield record
            except DAMAGE as err:
                log.warning("journal %s: damaged after seq %d (%s)", self.path, last, err)
                self.damage = assess(self.path)
            else:
                return
        yield from self._salvaged(last)

    def _salvaged(self, after: int) -> Iterator[Record]:
        if self.damage is None:
            return
        found = self.damage.found.records
        for seq in sorted(s for s in found if s > after):
            time_us, payload = found[seq]
            record = Record(seq, from_micros(time_us), payload)
            if self.selection.holds(record):
                yield record
