"""The journal's SQLite file: opening, versioned schema, integrity check, quarantine.

Schema versions follow zigpy's appdb: ``schema_sql/schema_vN.sql`` files loaded with
importlib.resources, ``PRAGMA user_version`` names the version, every migration of an
open runs in ONE transaction (all succeed or the file is untouched), and a database
newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from scanfleet.daemon.core.errors import JournalCorruptError, JournalError, JournalSchemaError
from scanfleet.daemon.core.model import GENESIS_HASH
from scanfleet.daemon.journal.codec import builtin_dictionary
from scanfleet.daemon.journal.salvage import wal_damaged

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""The schema this code writes; older files are migrated, newer ones refused."""

WAL_LIMIT_BYTES = 4 << 20
"""journal_size_limit: the WAL is truncated back to this after checkpoints."""

SIDE_FILES = ("-wal", "-shm")


def schema_sql(version: int) -> str:
    """Text of ``schema_v{version}.sql``."""
    package = resources.files("scanfleet.daemon.journal.schema_sql")
    return package.joinpath(f"schema_v{version}.sql").read_text(encoding="utf-8")


# Migration steps: version N-1 -> N. Empty while there is only version 1.
MIGRATIONS: dict[int, str] = {}


class WriterLock:
    """An exclusive ``flock`` on ``<journal>.lock``: one daemon per journal file."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._fd)
            self._fd = None
            raise JournalError(f"{path} is in use by another process (lock {self.path})") from err

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def connect_writer(path: Path) -> sqlite3.Connection:
    """A read-write connection in autocommit mode (transactions are explicit)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def connect_reader(path: Path) -> sqlite3.Connection:
    """A connection that never writes the database (``mode=ro``)."""
    if not path.exists():
        raise JournalError(f"no journal at {path}")
    # A running daemon keeps the -wal file; without one the database is fully
    # checkpointed and nobody writes it, so it is read as immutable: that creates no
    # -wal/-shm files (which, made by root for `status`, would lock out the daemon user).
    idle = not Path(str(path) + "-wal").exists()
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if idle else "")
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def user_version(conn: sqlite3.Connection) -> int:
    """``PRAGMA user_version``; raises sqlite3.DatabaseError on a non-database file."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def quick_check(conn: sqlite3.Connection, *, full: bool = False) -> list[str]:
    """Problems found by ``quick_check`` (or ``integrity_check`` when *full*); [] when ok."""
    pragma = "integrity_check" if full else "quick_check"
    rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}").fetchall()]
    return [] if rows == ["ok"] else rows


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; JournalSchemaError when newer than this code."""
    version = user_version(conn)
    if version > SCHEMA_VERSION:
        raise JournalSchemaError(
            f"{path} has journal schema version {version}, this scanfleet knows only up to "
            f"{SCHEMA_VERSION}: refusing to open a journal written by a newer release"
        )
    return version


def configure(conn: sqlite3.Connection) -> None:
    """Pragmas of the writer connection; auto_vacuum only takes effect on a new file."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(f"cannot switch the journal to WAL mode (got {mode!r})")
    # FULL: the WAL is fsynced at every commit, so a returned append survives power loss.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")


def migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction."""
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 0:
            _require_empty(conn, path)
            _run_script(conn, schema_sql(SCHEMA_VERSION))
        else:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _run_script(conn, MIGRATIONS[target])
                log.info("journal %s migrated to schema version %d", path, target)
        conn.execute("COMMIT")
    except BaseException:
        # All migrations succeed or the file is untouched.
        conn.execute("ROLLBACK")
        raise


def _require_empty(conn: sqlite3.Connection, path: Path) -> None:
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if tables:
        raise JournalSchemaError(f"{path} has tables but no schema version: not a journal")


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT our transaction first; run statement by statement.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip() and not statement.strip().startswith("--"):
        raise JournalSchemaError(f"incomplete SQL statement in schema: {statement!r}")


def fsync_dir(directory: Path) -> None:
    """Make renames in *directory* durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_readable(conn: sqlite3.Connection, path: Path) -> int:
    """Schema version of a reader connection; corrupt or foreign files raise."""
    try:
        version = check_version(conn, path)
    except sqlite3.DatabaseError as err:
        raise JournalCorruptError(f"{path} is not a readable journal: {err}") from err
    if version != SCHEMA_VERSION:
        raise JournalSchemaError(
            f"{path} has schema version {version}; open it once with the daemon to migrate"
        )
    return version


class JournalDamagedError(JournalCorruptError):
    """The journal must be rebuilt (see journal.recovery); *reason* says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Opened:
    """A writer connection on a checked, migrated journal."""

    conn: sqlite3.Connection
    meta: dict[str, str]


def open_writer(
    path: Path,
    device: str,
    budget_bytes: int,
    retention_days: int,
    now: datetime,
    *,
    head_seq: int = 0,
) -> Opened:
    """Open (or create) the journal: version check, quick_check, WAL check, migrate.

    *head_seq* is the highest seq the head file saw handed out: a journal that ends
    below it (or is missing) lost records. Every kind of damage raises
    :class:`JournalDamagedError`; the file is left as it is.
    """
    if head_seq and not path.exists():
        raise JournalDamagedError(path, f"journal file missing (seq {head_seq} was handed out)")
    if wal_damaged(path):
        raise JournalDamagedError(path, "WAL frames fail their checksums")
    conn = connect_writer(path)
    try:
        version = check_version(conn, path)
        _require_intact(conn, path)
        configure(conn)
        migrate(conn, path, version)
        meta = _init_meta(conn, path, device, budget_bytes, retention_days, now)
        _require_head(meta, path, head_seq)
    except JournalDamagedError:
        conn.close()
        raise
    except (sqlite3.DatabaseError, JournalCorruptError) as err:
        conn.close()
        if not is_damage(err):
            raise JournalError(f"cannot open journal {path}: {err}") from err
        raise JournalDamagedError(path, str(err)) from err
    except BaseException:
        conn.close()
        raise
    return Opened(conn, meta)


def is_damage(err: BaseException) -> bool:
    """True for errors that mean a damaged file, not a full disk, a lock or a permission."""
    if isinstance(err, JournalCorruptError):
        return True
    name = str(getattr(err, "sqlite_errorname", ""))
    return isinstance(err, sqlite3.DatabaseError) and (
        name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT")
    )


def _init_meta(
    conn: sqlite3.Connection,
    path: Path,
    device: str,
    budget_bytes: int,
    retention_days: int,
    now: datetime,
) -> dict[str, str]:
    defaults = {
        "device": device,
        "created": now.isoformat(),
        "delivered_seq": "0",
        "pruned_through_seq": "0",
        "pruned_hash": GENESIS_HASH,
        "head_seq": "0",
        "head_hash": GENESIS_HASH,
        "dict_current": "1",
    }
    current = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    wanted = {"budget_bytes": str(budget_bytes), "retention_days": str(retention_days)}
    if (
        current
        and all(k in current for k in defaults)
        and all(current.get(k) == v for k, v in wanted.items())
    ):
        # Nothing to write: opening needs no free space (a restart on a full disk).
        _require_device(current, path, device)
        return current
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", defaults.items())
        conn.execute(
            "INSERT OR IGNORE INTO dictionaries (id, data) VALUES (1, ?)",
            (builtin_dictionary(device),),
        )
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (("budget_bytes", str(budget_bytes)), ("retention_days", str(retention_days))),
        )
        meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        _require_device(meta, path, device)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return meta


def _require_head(meta: Mapping[str, str], path: Path, head_seq: int) -> None:
    have = int(meta["head_seq"])
    if have < head_seq:
        raise JournalDamagedError(
            path, f"journal ends at seq {have} but seq {head_seq} was handed out"
        )


def _require_intact(conn: sqlite3.Connection, path: Path) -> None:
    problems = quick_check(conn)
    if problems:
        raise JournalCorruptError(f"{path}: quick_check: {'; '.join(problems[:5])}")


def _require_device(meta: Mapping[str, str], path: Path, device: str) -> None:
    if meta["device"] != device:
        raise JournalError(f"{path} is the journal of device {meta['device']!r}, not {device!r}")


class Checkpointer:
    """Copies the WAL back into the database from its own thread and connection.

    SQLite's automatic checkpoint runs inside whichever commit crosses the threshold,
    stalling that append for a copy plus an fsync of the database. The writer turns it
    off; this thread checkpoints (PASSIVE: never blocks the writer) when the WAL holds
    about as much as the automatic threshold would allow, or as soon as appends pause.
    Checkpointing on every tick instead would put a database fsync next to ~2 % of
    appends' WAL fsyncs at 50 scans/s, which is what the p99 latency is made of.
    """

    INTERVAL = 0.5
    COMMITS = 300
    """Commits (each ~2 WAL pages) after which a checkpoint runs even without a pause."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._seen = 0
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poked = threading.Event()
        """Set while commits wait for a checkpoint: an idle journal's thread sleeps."""

    def start(self) -> None:
        """Open the checkpointing connection and start the thread."""
        conn = connect_writer(self.path)
        self._conn = conn
        conn.execute("PRAGMA synchronous = FULL")
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name=f"journal-checkpoint:{self.path.name}", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        """Count one commit (called after each)."""
        with self._lock:
            self._pending += 1
            self._poked.set()

    def _run(self, conn: sqlite3.Connection) -> None:
        while not self._stop.is_set():
            self._poked.wait()  # nothing committed since the last checkpoint: sleep
            if self._stop.wait(self.INTERVAL):
                return
            with self._lock:
                pending, idle = self._pending, self._pending == self._seen
                self._seen = pending
                if pending == 0:
                    self._poked.clear()
            if pending == 0 or not (idle or pending >= self.COMMITS):
                continue
            with self._lock:
                self._pending -= pending
                self._seen = self._pending
                if self._pending == 0:
                    self._poked.clear()
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as err:
                # A failed checkpoint loses nothing (the WAL keeps the frames); retry
                # later, and say so once, not every half second (a full disk).
                if not self._failing:
                    log.warning("journal checkpoint failed (retrying quietly): %s", err)
                self._failing = True
                self.poke()
            else:
                if self._failing:
                    log.info("journal checkpoint works again")
                self._failing = False

    def stop(self) -> None:
        """Stop the thread and close its connection (idempotent)."""
        self._stop.set()
        self._poked.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()
        if self._conn is not None:
            self._conn.close()
