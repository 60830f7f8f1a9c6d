"""Reading the journal: records, statistics and chain verification.

:class:`JournalReader` never writes and never takes the writer lock, so ``scanfleet
status``, ``export`` and ``verify`` can run while the daemon appends. The daemon's own
:class:`~scanfleet.daemon.journal.journal.Journal` reads through the same code on a second
connection, which is how the publisher thread reads while the pipeline appends (WAL
gives each read transaction a consistent snapshot).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from scanfleet.daemon.core.errors import JournalCorruptError, JournalError
from scanfleet.daemon.core.model import GENESIS_HASH
from scanfleet.daemon.journal.codec import (
    Codec,
    RecordError,
    canonical,
    from_micros,
    parse_time,
    record_hash,
    to_micros,
)
from scanfleet.daemon.journal.recovery import HeadFile, lost_ranges
from scanfleet.daemon.journal.store import (
    chain_head,
    connect_reader,
    ensure_readable,
    quick_check,
)


@dataclass(frozen=True)
class Record:
    """One stored record as the publisher and export see it."""

    seq: int
    time: datetime
    """The record's wall-clock time (its body's ``time``), UTC."""
    payload: bytes
    """RFC 8785 canonical JSON of the record, hash included, exactly as stored."""

    def as_dict(self) -> dict[str, Any]:
        """The record parsed from its payload."""
        result: dict[str, Any] = json.loads(self.payload)
        return result


@dataclass(frozen=True)
class JournalStats:
    """Depth, watermark and space of a journal (``scanfleet status``, ``state``)."""

    last_seq: int
    delivered_seq: int
    depth: int
    oldest_undelivered_time: datetime | None
    size_bytes: int
    """Bytes on disk: the database file plus its WAL."""
    budget_bytes: int
    pruned_through_seq: int
    """0 when nothing was pruned; else the seq of the pruning anchor."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of recomputing the hash chain (and optionally SQLite's integrity check)."""

    ok: bool
    checked: int
    """Records whose hash and link were recomputed."""
    anchor_seq: int
    """The chain was checked from this seq's hash (0 = genesis)."""
    last_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None
    integrity_problems: tuple[str, ...] = field(default_factory=tuple)
    lost: tuple[tuple[int, int], ...] = ()
    """Seq ranges declared lost by a journal_loss record (links across them are unchecked)."""

    def __str__(self) -> str:
        if self.ok:
            text = (
                f"journal OK: {self.checked} records verified "
                f"(seq {self.anchor_seq + 1}..{self.last_seq}, anchor {self.anchor_seq})"
            )
            if self.lost:
                count = sum(b - a + 1 for a, b in self.lost)
                spans = ", ".join(f"{a}..{b}" for a, b in self.lost[:5])
                text += f"; {count} seqs declared lost or never used ({spans})"
            return text
        if self.first_bad_seq is not None:
            return f"journal BROKEN at seq {self.first_bad_seq}: {self.problem}"
        return "journal BROKEN: integrity check: " + "; ".join(self.integrity_problems[:5])


class JournalReader:
    """Read-only access to a journal file; safe to use while a daemon writes it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = connect_reader(self.path)
        self._lock = threading.Lock()
        self._codec = Codec()
        try:
            ensure_readable(self._conn, self.path)
        except JournalError:
            self._conn.close()
            raise

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    # -- reading ---------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        """The journal's key/value facts (device, watermark, anchor, head, budget)."""
        with self._lock:
            return self._meta()

    def _meta(self) -> dict[str, str]:
        meta = {str(k): str(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}
        # The head is the newest record (schema 2); meta's own is a recorded lower bound.
        meta["recorded_head_seq"] = meta.get("head_seq", "0")
        meta["recorded_head_hash"] = meta.get("head_hash", GENESIS_HASH)
        with contextlib.suppress(JournalCorruptError):  # verify names the bad record
            seq, digest = chain_head(self._conn, meta)
            if seq >= int(meta["recorded_head_seq"]):
                meta["head_seq"], meta["head_hash"] = str(seq), digest
        return meta

    @property
    def last_seq(self) -> int:
        """Highest seq ever appended (0 when empty)."""
        return int(self.meta().get("head_seq", "0"))

    @property
    def delivered_seq(self) -> int:
        """Every seq at or below this is delivered."""
        return int(self.meta().get("delivered_seq", "0"))

    def _payload(self, seq: int, dict_id: int, blob: bytes) -> bytes:
        if dict_id not in self._codec:
            row = self._conn.execute(
                "SELECT data FROM dictionaries WHERE id = ?", (dict_id,)
            ).fetchone()
            if row is None:
                raise JournalCorruptError(f"record {seq} names unknown dictionary {dict_id}")
            self._codec.add(dict_id, bytes(row[0]))
        try:
            return self._codec.decompress(dict_id, bytes(blob))
        except zlib.error as err:
            raise JournalCorruptError(f"record {seq} does not decompress: {err}") from err

    def read_after(self, after_seq: int, *, limit: int, max_bytes: int) -> list[Record]:
        """Records with seq > *after_seq*, ascending, at most *limit* records and
        *max_bytes* of payload (but at least one when any exists)."""
        out: list[Record] = []
        total = 0
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, time_us, dict, payload FROM records WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, max(1, limit)),
            ).fetchall()
            for seq, time_us, dict_id, blob in rows:
                payload = self._payload(seq, dict_id, blob)
                if out and total + len(payload) > max_bytes:
                    break
                total += len(payload)
                out.append(Record(seq, from_micros(time_us), payload))
        return out

    def iter_records(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        chunk: int = 2000,
    ) -> Iterator[Record]:
        """Records in seq order within a seq range and/or a time range [since, until)."""
        where, params = _range_clause(from_seq, to_seq, since, until)
        after = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT seq, time_us, dict, payload FROM records WHERE seq > ?{where} "  # noqa: S608 - clause built from fixed fragments
                    "ORDER BY seq LIMIT ?",
                    (after, *params, chunk),
                ).fetchall()
                batch = [
                    Record(seq, from_micros(t), self._payload(seq, d, blob))
                    for seq, t, d, blob in rows
                ]
            if not batch:
                return
            yield from batch
            after = batch[-1].seq

    def count(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """How many records :meth:`iter_records` would yield (for progress bars)."""
        where, params = _range_clause(from_seq, to_seq, since, until)
        with self._lock:
            row = self._conn.execute(
                f"SELECT count(*) FROM records WHERE 1{where}",  # noqa: S608 - fixed fragments
                params,
            ).fetchone()
        return int(row[0])

    def stats(self) -> JournalStats:
        """Depth, watermark and space, read from the file."""
        with self._lock:
            meta = self._meta()
            return self._stats(
                int(meta.get("head_seq", "0")), int(meta.get("delivered_seq", "0")), meta
            )

    def _stats(self, last: int, delivered: int, meta: dict[str, str]) -> JournalStats:
        row = self._conn.execute(
            "SELECT time_us FROM records WHERE seq > ? ORDER BY seq LIMIT 1", (delivered,)
        ).fetchone()
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                size += Path(str(self.path) + suffix).stat().st_size
        return JournalStats(
            last_seq=last,
            delivered_seq=delivered,
            depth=max(0, last - delivered),
            oldest_undelivered_time=from_micros(row[0]) if row else None,
            size_bytes=size,
            budget_bytes=int(meta.get("budget_bytes", "0")),
            pruned_through_seq=int(meta.get("pruned_through_seq", "0")),
        )

    # -- verification ----------------------------------------------------------------

    def verify(self, *, full: bool = False) -> VerifyResult:
        """Recompute every hash and link from the pruning anchor; report the first bad seq.

        ``full`` also runs ``PRAGMA integrity_check``.
        """
        with self._lock:
            # One read transaction: a consistent snapshot even while the daemon appends.
            self._conn.execute("BEGIN")
            try:
                result = self._verify_chain()
                if full:
                    problems = quick_check(self._conn, full=True)
                    if problems:
                        result = VerifyResult(
                            False,
                            result.checked,
                            result.anchor_seq,
                            result.last_seq,
                            result.first_bad_seq,
                            result.problem,
                            tuple(problems),
                        )
            finally:
                self._conn.execute("COMMIT")
        return result

    def _verify_chain(self) -> VerifyResult:
        meta = self._meta()
        device = meta.get("device", "")
        anchor = int(meta.get("pruned_through_seq", "0"))
        prev = meta.get("pruned_hash", GENESIS_HASH) if anchor else GENESIS_HASH
        # The head must reach every head recorded: meta's (the head at the last delivered
        # watermark, or the whole head of a schema 1 file) and the head file's (written
        # after every commit), so deleting the newest records shows as missing records.
        recorded, recorded_hash = self._recorded_head(meta)
        head = max(int(meta.get("head_seq", "0")), recorded)
        lost = tuple(lost_ranges(meta))
        expected = anchor + 1
        checked = 0
        # After a rebuild the anchor's hash may be unknown (pruned_hash ""): unchecked link.
        unlinked = not prev

        def bad(seq: int, problem: str) -> VerifyResult:
            return VerifyResult(False, checked, anchor, head, seq, problem, lost=lost)

        def lost_end(seq: int) -> int | None:
            return next((b for a, b in lost if a <= seq <= b), None)

        rows = self._conn.execute("SELECT seq, time_us, dict, payload FROM records ORDER BY seq")
        for seq, time_us, dict_id, blob in rows:
            if seq < expected:
                return bad(seq, f"record {seq} lies at or below the pruning anchor {anchor}")
            while seq != expected and (end := lost_end(expected)) is not None and end < seq:
                expected, unlinked = end + 1, True
            if seq != expected:
                return bad(expected, f"record {expected} is missing (next present: {seq})")
            try:
                payload = self._payload(seq, dict_id, blob)
                record = json.loads(payload)
                if canonical(record) != payload:
                    return bad(seq, "payload is not RFC 8785 canonical JSON")
                stored_hash = record.pop("hash", None)
                if record.get("seq") != seq or record.get("id") != f"{device}:{seq}":
                    return bad(seq, "seq/id inside the record do not match its position")
                if record.get("device") != device:
                    return bad(seq, f"device {record.get('device')!r} is not {device!r}")
                # A journal_loss record links to its anchor_seq, not to seq - 1.
                unlinked = unlinked or record.get("type") == "journal_loss"
                if not unlinked and record.get("prev_hash") != prev:
                    return bad(seq, f"prev_hash does not link to record {seq - 1}")
                unlinked = False
                if record_hash(record) != stored_hash:
                    return bad(seq, "hash does not match the record's contents")
                if seq == recorded and stored_hash != recorded_hash:
                    return bad(seq, "record's hash differs from the recorded head hash")
                if to_micros(parse_time(str(record.get("time")))) != time_us:
                    return bad(seq, "time column differs from the record's time")
            except (JournalCorruptError, RecordError, ValueError) as err:
                return bad(seq, str(err))
            prev = str(stored_hash)
            expected += 1
            checked += 1
        while (end := lost_end(expected)) is not None and end <= head:
            expected = end + 1
        if expected - 1 != head:
            if expected - 1 < head:
                return bad(expected, f"records {expected}..{head} are missing (head is {head})")
            return bad(head + 1, f"records beyond the recorded head {head}")
        return VerifyResult(True, checked, anchor, head, lost=lost)

    def _recorded_head(self, meta: dict[str, str]) -> tuple[int, str]:
        seq = int(meta.get("recorded_head_seq", "0"))
        digest = meta.get("recorded_head_hash", GENESIS_HASH)
        head_file = HeadFile(self.path)
        try:
            saved = head_file.load()
        finally:
            head_file.close()
        same_chain = (
            saved is not None
            and saved.device == meta.get("device")
            and saved.epoch == int(meta.get("epoch", "0"))
        )
        if saved is not None and same_chain and saved.head_seq > seq:
            seq, digest = saved.head_seq, saved.head_hash
        return seq, digest


def _range_clause(
    from_seq: int | None, to_seq: int | None, since: datetime | None, until: datetime | None
) -> tuple[str, tuple[int, ...]]:
    parts: list[str] = []
    params: list[int] = []
    for clause, value in (
        (" AND seq >= ?", from_seq),
        (" AND seq <= ?", to_seq),
        (" AND time_us >= ?", to_micros(since) if since else None),
        (" AND time_us < ?", to_micros(until) if until else None),
    ):
        if value is not None:
            parts.append(clause)
            params.append(value)
    return "".join(parts), tuple(params)


def open_readonly(path: Path) -> JournalReader:
    """Open *path* for reading only (no writer lock, no writes)."""
    try:
        return JournalReader(path)
    except sqlite3.DatabaseError as err:
        raise JournalCorruptError(f"{path}: {err}") from err
