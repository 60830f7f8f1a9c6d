"""The durable journal: every read becomes a hash-chained record before "good read".

One SQLite file (WAL, ``synchronous=FULL``) per device, one writer process (``flock``).
``append`` returns only after the record's transaction is committed and fsynced;
appends that arrive while a commit is in flight are group-committed together in the
next transaction. The publisher reads with :meth:`Journal.read_after` from its own
thread and moves the delivered watermark with :meth:`Journal.mark_delivered`.

Space policy (issue 3, item 2): the budget counts the database pages in use
(``(page_count - freelist_count) * page_size``); the WAL is bounded separately by
checkpoints and ``journal_size_limit``. Delivered records older than
``retention_days`` are pruned (and the file shrunk by incremental vacuum); under size
pressure the oldest delivered records are pruned even inside retention (alarm
``journal_pruned_under_pressure``); only when undelivered records fill the budget is an
append refused with :class:`JournalFullError` (alarm ``journal_full``). Pruning keeps the
(seq, hash) of the last pruned record as the anchor the chain is verified from.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from scanfleet.daemon.core.alarms import AlarmSet, Severity
from scanfleet.daemon.core.errors import JournalError, JournalFullError
from scanfleet.daemon.core.records import RecordBody
from scanfleet.daemon.journal.codec import (
    Codec,
    Encoded,
    RecordError,
    encode_device,
    prepare_body,
    seal_encoded,
    train_dictionary,
)
from scanfleet.daemon.journal.disk import DiskSpace, is_disk_full
from scanfleet.daemon.journal.heads import (
    ALARM_LOSS,
    ALARM_QUARANTINED,
    HeadKeeping,
    open_or_rebuild,
)
from scanfleet.daemon.journal.reader import (
    JournalReader,
    JournalStats,
    Record,
    VerifyResult,
    open_readonly,
)
from scanfleet.daemon.journal.recovery import Head, HeadFile, lost_ranges
from scanfleet.daemon.journal.space import ALARM_PRUNED, SpacePolicy
from scanfleet.daemon.journal.store import (
    Checkpointer,
    WriterLock,
)

__all__ = [
    "ALARM_FULL",
    "ALARM_LOSS",
    "ALARM_PRUNED",
    "ALARM_QUARANTINED",
    "Journal",
    "JournalFiles",
    "JournalReader",
    "JournalStats",
    "Record",
    "RecordError",
    "VerifyResult",
]

log = logging.getLogger(__name__)

ALARM_FULL = "journal_full"

TRAIN_AFTER = 256
"""Records after which a dictionary is trained on this journal's own records."""
TRAIN_SAMPLE = 32
ROW_OVERHEAD = 24
"""Bytes a row costs beyond its payload (cell header, pointer, time and dict columns)."""
ROOM_MARGIN_PAGES = 8
"""Below this many pages of headroom each append checks the page count exactly."""
ROOM_RECHECK_COMMITS = 32
"""Commits after which the free room is counted again rather than carried over."""
RETENTION_PRUNE_INTERVAL = 60.0
GATHER_SECONDS = (0.0002, 0.002)
"""Bounds of how long a group-commit leader holds its commit for sibling producers to
queue: half the last commit's duration, within these (a slow disk makes waiting cheap)."""
ACTIVE_SECONDS = 0.01
"""A thread whose append returned this recently counts as a producer about to append again."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JournalFiles:
    """What :meth:`Journal.open` opened and read; :meth:`Journal.close` closes it."""

    lock: WriterLock
    head_file: HeadFile
    head: Head | None
    """The head file's content at open (the seq reservation)."""
    conn: sqlite3.Connection
    meta: dict[str, str]
    space: DiskSpace
    reader: JournalReader
    page_size: int
    dictionaries: list[tuple[int, bytes]]
    checkpointer: Checkpointer
    """Not started yet: :meth:`Journal.open` starts it."""


@dataclass(slots=True)
class _Pending:
    encoded: Encoded
    time_us: int
    record: dict[str, Any] | None = None
    error: BaseException | None = None
    done: bool = False


class Journal(SpacePolicy, HeadKeeping):
    """The device's append-only, hash-chained journal (the single writer)."""

    def __init__(
        self,
        path: Path,
        device: str,
        files: JournalFiles,
        *,
        max_bytes: int = 256 << 20,
        retention_days: int = 100,
        alarms: AlarmSet | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """Wire a journal around *files*, opened by :meth:`open` (no I/O here)."""
        self.path = Path(path)
        self.device = device
        self._device_json = encode_device(device)
        self.max_bytes = max_bytes
        self.retention = timedelta(days=retention_days)
        self.alarms = alarms if alarms is not None else AlarmSet()
        self._clock = clock
        self._lock = files.lock
        self._head_file = files.head_file
        self._conn = files.conn
        self._space = files.space
        self._reader = files.reader
        meta = files.meta
        self._last_seq = int(meta["head_seq"])
        self._last_hash = meta["head_hash"]
        self._delivered = int(meta["delivered_seq"])
        self._pruned_through = int(meta["pruned_through_seq"])
        self._dict_id = int(meta["dict_current"])
        self._epoch = int(meta.get("epoch", "0"))
        self.lost = lost_ranges(meta)
        """Declared lost seq ranges (after a rebuild): the publisher steps over them."""
        self._reserved = 0
        head = files.head
        if head is not None and head.epoch == self._epoch and head.device == device:
            self._reserved = head.reserved_seq
        self._page_size = files.page_size
        self._codec = Codec()
        for dict_id, data in files.dictionaries:
            self._codec.add(dict_id, data)
        self._recent: collections.deque[bytes] = collections.deque(maxlen=TRAIN_SAMPLE)
        self._checkpointer = files.checkpointer
        self._write_lock = threading.Lock()
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._gather = threading.Condition(self._mutex)
        """The group-commit leader waits here for sibling producers to queue."""
        self._gathering = False
        self._commit_seconds = 0.0
        self._room_left: int | None = None
        """Bytes of budget surely free after the last commit (None: ask SQLite)."""
        self._room_age = 0
        self._producers: dict[int, float] = {}
        """Thread id → monotonic time of its last append (who counts as a sibling)."""
        self._queue: list[_Pending] = []
        self._leader = False
        self._closed = False
        self._wakeups = 0
        self._next_retention_prune = 0.0
        self.commits = 0
        """Append transactions committed since open (group commit makes it < appends)."""

    @classmethod
    def open(
        cls,
        path: Path,
        device: str,
        *,
        max_bytes: int = 256 << 20,
        retention_days: int = 100,
        alarms: AlarmSet | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> Journal:
        """Open (create, migrate, or rebuild when damaged) the journal at *path* for writing.

        Takes the writer lock, opens the connections, raises the alarms of a rebuild,
        reserves seqs, starts the checkpointer and prunes; closes what it opened when
        a step fails.
        """
        path = Path(path)
        alarms = alarms if alarms is not None else AlarmSet()
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as undo:
            lock = WriterLock(path)
            undo.callback(lock.release)
            head_file = HeadFile(path)
            undo.callback(head_file.close)
            opened, recovery = open_or_rebuild(
                path, head_file, device, max_bytes, retention_days, clock
            )
            conn = opened.conn
            undo.callback(conn.close)
            space = DiskSpace(path, alarms)
            space.ensure_spare()
            reader = JournalReader(path)
            undo.callback(reader.close)
            files = JournalFiles(
                lock=lock,
                head_file=head_file,
                head=head_file.load(),
                conn=conn,
                meta=opened.meta,
                space=space,
                reader=reader,
                page_size=int(conn.execute("PRAGMA page_size").fetchone()[0]),
                dictionaries=[
                    (int(dict_id), bytes(data))
                    for dict_id, data in conn.execute("SELECT id, data FROM dictionaries")
                ],
                checkpointer=Checkpointer(path),
            )
            journal = cls(
                path,
                device,
                files,
                max_bytes=max_bytes,
                retention_days=retention_days,
                alarms=alarms,
                clock=clock,
            )
            if recovery is not None:
                journal._raise_recovery_alarms(recovery)
            if journal._reserved <= journal._last_seq:
                journal._reserve(journal._last_seq)
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer's job
            files.checkpointer.start()
            undo.callback(files.checkpointer.stop)
            journal.prune()
            undo.pop_all()
        return journal

    # -- lifecycle -------------------------------------------------------------------

    @staticmethod
    def open_readonly(path: Path) -> JournalReader:
        """A reader for other processes: never takes the writer lock, never writes."""
        return open_readonly(path)

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Finish the commit in flight, checkpoint the WAL, release the file (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._leader:
                self._cond.wait()
            self._cond.notify_all()
        self._checkpointer.stop()
        with self._write_lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                log.warning("journal %s: checkpoint at close failed: %s", self.path, err)
            self._conn.close()
        self._reader.close()
        self._head_file.close()
        self._lock.release()

    def _is_closed(self) -> bool:
        return self._closed

    # -- properties ------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Highest committed seq (0 when nothing was ever appended)."""
        return self._last_seq

    @property
    def delivered_seq(self) -> int:
        """The delivered watermark."""
        return self._delivered

    # -- appending -------------------------------------------------------------------

    def append(self, body: RecordBody | Mapping[str, Any]) -> dict[str, Any]:
        """Journal one record; returns it complete once it is committed and fsynced.

        *body* is a typed record body (:mod:`~scanfleet.daemon.core.records`) or a
        mapping of the same fields.
        Raises :class:`JournalFullError` when undelivered records fill the budget and
        :class:`RecordError` (a ValueError) for a body that cannot be a record.
        """
        # Serialized here, in the producer's thread and outside every lock: the commit
        # only joins bytes, hashes and compresses (see journal.codec.Encoded).
        fields = body if isinstance(body, Mapping) else body.to_body()
        prepared, time_us = prepare_body(fields, self._clock())
        pending = _Pending(Encoded(prepared), time_us)
        me = threading.get_ident()
        with self._cond:
            if self._closed:
                raise JournalError("journal is closed")
            self._queue.append(pending)
            self._producers[me] = time.monotonic()
            if self._gathering:
                self._gather.notify()
            while not pending.done:
                if self._is_closed():
                    self._queue.remove(pending)
                    raise JournalError("journal closed before the record was committed")
                if self._leader:
                    self._cond.wait()
                    continue
                # No commit in flight: this thread commits everything queued so far,
                # after a short wait for producers that are about to queue a record.
                self._leader = True
                self._gather_siblings(me)
                batch, self._queue = self._queue, []
                self._cond.release()
                started = time.perf_counter()
                try:
                    self._commit(batch)
                finally:
                    self._commit_seconds = time.perf_counter() - started
                    self._cond.acquire()
                    self._leader = False
                    for item in batch:
                        item.done = True
                    self._cond.notify_all()
            # Back to the caller: a closed-loop producer appends again right away.
            self._producers[me] = time.monotonic()
        if pending.error is not None:
            raise pending.error
        if pending.record is None:  # every path sets record or error; guard the invariant
            raise JournalError("append finished without a record")
        return pending.record

    def _gather_siblings(self, me: int) -> None:
        """Hold the commit (see GATHER_SECONDS) until every producer whose append
        returned within ACTIVE_SECONDS has queued a record (called with the condition held).

        Producers that each wait for their own record come back right after the commit
        that released them; without this the first one back commits alone and the
        others queue behind its fsync, so the batches alternate 1 and 3 (four
        producers) and the fsyncs are barely shared. A lone producer never waits: only
        other threads seen appending count (PostgreSQL's commit_delay/commit_siblings).
        """
        now = time.monotonic()
        producers = self._producers
        siblings = 0
        for ident, seen in list(producers.items()):
            if now - seen > ACTIVE_SECONDS:
                del producers[ident]
            elif ident != me:
                siblings += 1
        if not siblings:
            return
        low, high = GATHER_SECONDS
        deadline = now + min(high, max(low, self._commit_seconds / 2))
        self._gathering = True
        try:
            while len(self._queue) <= siblings and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._gather.wait(remaining)
        finally:
            self._gathering = False

    def _commit(self, batch: list[_Pending]) -> None:
        after: list[Callable[[], None]] = []
        try:
            try:
                with self._write_lock:
                    self._commit_locked(batch, after)
            except sqlite3.Error as err:
                if not (is_disk_full(err) and self._space.release()):
                    raise
                after.clear()
                with self._write_lock:  # the spare's room: the same batch again
                    self._commit_locked(batch, after)
        except BaseException as err:
            # The transaction rolled back: no record of this batch exists, every
            # appender in it hears why (as a JournalError when SQLite failed).
            failure: BaseException = err
            if is_disk_full(err):
                failure = self._space.refuse(self._room_needed(batch))
            elif isinstance(err, sqlite3.Error):
                failure = JournalError(f"journal commit failed: {err}")
            if failure is not err:
                failure.__cause__ = err
            for item in batch:
                item.record = None
                if item.error is None:
                    item.error = failure
            if not isinstance(err, (sqlite3.Error, JournalError)):
                raise
            return
        if self._space.full:
            self._space.committed()
        for action in after:
            action()

    def _room_needed(self, batch: list[_Pending]) -> int:
        # A commit appends WAL frames: the pages it touches (a leaf, the meta page, an
        # interior page now and then) plus a header each.
        return (len(batch) + 3) * (self._page_size + 24)

    def _commit_locked(self, batch: list[_Pending], after: list[Callable[[], None]]) -> None:
        conn = self._conn
        seq, prev = self._last_seq, self._last_hash
        pruned_before, dict_before = self._pruned_through, self._dict_id
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._dict_id == 1 and seq >= TRAIN_AFTER and len(self._recent) >= TRAIN_SAMPLE:
                self._train_dictionary()
            committed: list[tuple[_Pending, dict[str, Any], bytes]] = []
            # Room that surely fits without asking SQLite for page counts per record;
            # close to the budget every record gets the exact check. The count is carried
            # from commit to commit (less what was written) and asked again every
            # ROOM_RECHECK_COMMITS commits or after anything but plain inserts.
            room = self._room_left
            if room is None or self._room_age >= ROOM_RECHECK_COMMITS:
                room = self.max_bytes - self._used_bytes() - ROOM_MARGIN_PAGES * self._page_size
                self._room_age = 0
            exact_room_lost = self._dict_id != dict_before
            if seq + len(batch) > self._reserved:
                self._reserve(seq + len(batch))
            for item in batch:
                try:
                    hash_hex, payload = seal_encoded(item.encoded, self._device_json, seq + 1, prev)
                except RecordError as err:
                    item.error = err
                    continue
                blob = self._codec.compress(self._dict_id, payload)
                need = len(blob) + ROW_OVERHEAD
                if need <= room:
                    room -= need
                else:
                    exact_room_lost = True
                    if not self._make_room(need, after):
                        item.error = JournalFullError(self.max_bytes, self._used_bytes())
                        continue
                seq += 1
                record = {
                    **item.encoded.body,
                    "device": self.device,
                    "seq": seq,
                    "id": f"{self.device}:{seq}",
                    "prev_hash": prev,
                    "hash": hash_hex,
                }
                prev = hash_hex
                conn.execute(
                    "INSERT INTO records (seq, time_us, dict, payload) VALUES (?, ?, ?, ?)",
                    (seq, item.time_us, self._dict_id, blob),
                )
                committed.append((item, record, payload))
            if committed:
                conn.execute(
                    "UPDATE meta SET value = CASE key WHEN 'head_seq' THEN ? ELSE ? END "
                    "WHERE key IN ('head_seq', 'head_hash')",
                    (str(seq), prev),
                )
            conn.execute("COMMIT")
        except BaseException:
            self._room_left = None
            # In-memory state first: SQLite may already have rolled back by itself (a full
            # disk does that), and then an explicit ROLLBACK fails and would hide the cause.
            self._pruned_through, self._dict_id = pruned_before, dict_before
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as err:
                    log.warning("journal %s: rollback failed: %s", self.path, err)
            raise
        self.commits += 1
        self._room_left = None if exact_room_lost else room
        self._room_age += 1
        self._checkpointer.poke()
        self._last_seq, self._last_hash = seq, prev
        if committed:
            with contextlib.suppress(JournalError):  # best effort: the reservation holds
                self._store_head(self._reserved, sync=False)
        for item, record, payload in committed:
            item.record = record
            self._recent.append(payload)
        if committed and ALARM_FULL in self.alarms:
            after.append(lambda: self.alarms.clear(ALARM_FULL))
        if any(isinstance(item.error, JournalFullError) for item in batch):
            used = self._used_bytes()
            after.append(
                lambda: self.alarms.raise_(
                    ALARM_FULL,
                    "journal full of undelivered records: new reads are refused",
                    Severity.CRITICAL,
                    budget_bytes=self.max_bytes,
                    used_bytes=used,
                    delivered_seq=self._delivered,
                )
            )

    def _train_dictionary(self) -> None:
        data = train_dictionary(self._recent)
        new_id = self._dict_id + 1
        self._conn.execute("INSERT INTO dictionaries (id, data) VALUES (?, ?)", (new_id, data))
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'dict_current'", (str(new_id),))
        self._codec.add(new_id, data)
        self._dict_id = new_id
        log.info("journal %s: trained compression dictionary %d", self.path, new_id)

    # -- delivery --------------------------------------------------------------------

    def mark_delivered(self, through_seq: int) -> None:
        """Move the delivered watermark up to *through_seq* (lower values are ignored)."""
        with self._write_lock:
            if through_seq <= self._delivered:
                return
            if through_seq > self._last_seq:
                raise ValueError(
                    f"cannot mark seq {through_seq} delivered: last seq is {self._last_seq}"
                )
            # A watermark lost to power failure only causes re-delivery, which the
            # idempotency key resolves: skip the fsync, the next append's commit syncs it.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self._conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'delivered_seq'", (str(through_seq),)
                )
            except sqlite3.Error as err:
                if not is_disk_full(err):
                    raise
                # The watermark waits for space; delivery goes on (a later mark catches
                # up, a crash meanwhile only re-delivers, which the backend ignores).
                log.debug("journal %s: delivered watermark not saved: %s", self.path, err)
                return
            finally:
                self._conn.execute("PRAGMA synchronous = FULL")
            self._delivered = through_seq
            with contextlib.suppress(JournalError):  # a rebuild then re-sends less
                self._store_head(self._reserved, sync=False)
        now = time.monotonic()
        if now >= self._next_retention_prune:
            self._next_retention_prune = now + RETENTION_PRUNE_INTERVAL
            self.prune()

    def wait_for_records(self, after_seq: int, timeout: float) -> bool:
        """Block until a record with seq > *after_seq* exists (True), *timeout* passes or
        :meth:`wake_waiters` is called (False)."""
        with self._cond:
            wakeups = self._wakeups
            return (
                self._cond.wait_for(
                    lambda: self._last_seq > after_seq or self._closed or self._wakeups != wakeups,
                    timeout,
                )
                and self._last_seq > after_seq
            )

    def wake_waiters(self) -> None:
        """End every :meth:`wait_for_records` now (a stopping publisher's watcher)."""
        with self._cond:
            self._wakeups += 1
            self._cond.notify_all()

    # -- reading ---------------------------------------------------------------------

    def read_after(self, after_seq: int, *, limit: int, max_bytes: int) -> list[Record]:
        """Records with seq > *after_seq* (see :meth:`JournalReader.read_after`)."""
        return self._reader.read_after(after_seq, limit=limit, max_bytes=max_bytes)

    def stats(self) -> JournalStats:
        """Depth, watermark and space."""
        with self._reader._lock:
            meta = self._reader._meta()
            meta["budget_bytes"] = str(self.max_bytes)
            return self._reader._stats(self._last_seq, self._delivered, meta)

    def verify(self, *, full: bool = False) -> VerifyResult:
        """Recompute the hash chain from the pruning anchor (see JournalReader.verify)."""
        return self._reader.verify(full=full)

    @property
    def reader(self) -> JournalReader:
        """The journal's own read connection (export, status inside the daemon)."""
        return self._reader
