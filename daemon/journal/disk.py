"""A full disk as a state of the journal, not an exception per read (issue 15).

The journal keeps a preallocated spare file (``<journal>.spare``) beside it. The first
time SQLite reports the disk full, the spare is given back to the file system and the
commit retried, so the journal keeps recording (and can checkpoint and close) while
everything else on the disk is already failing; the alarm ``disk_full`` says so. When
even that is used up, reads are refused with :class:`JournalDiskFullError` and the
alarm says how much space the journal needs. The first commit that works again clears
the alarm and, once there is room, the spare is allocated anew.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from pathlib import Path

from scanfleet.daemon.core.alarms import AlarmSet, Severity
from scanfleet.daemon.core.errors import JournalDiskFullError

log = logging.getLogger(__name__)

ALARM_DISK_FULL = "disk_full"
SPARE_SUFFIX = ".spare"
SPARE_BYTES = 2 << 20
"""Room kept back for the journal: several thousand records, a checkpoint, a clean close."""
RESPARE_INTERVAL = 10.0


def is_disk_full(err: BaseException) -> bool:
    """True for SQLite's SQLITE_FULL and the OS's ENOSPC/EDQUOT."""
    if isinstance(err, sqlite3.Error):
        return str(getattr(err, "sqlite_errorname", "")).startswith("SQLITE_FULL")
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on *path*'s file system."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class DiskSpace:
    """The journal's spare room and its ``disk_full`` state."""

    def __init__(self, journal: Path, alarms: AlarmSet) -> None:
        self.journal = journal
        self.spare = journal.with_name(journal.name + SPARE_SUFFIX)
        self.alarms = alarms
        self.full = False
        self.refused = 0
        self._next_spare = 0.0

    def ensure_spare(self, *, force: bool = False) -> None:
        """Allocate the spare file when it is missing (at most every RESPARE_INTERVAL)."""
        now = time.monotonic()
        if now < self._next_spare and not force:
            return
        self._next_spare = now + RESPARE_INTERVAL
        try:
            if self.spare.exists() and self.spare.stat().st_size >= SPARE_BYTES:
                return
            fd = os.open(self.spare, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, SPARE_BYTES)
            finally:
                os.close(fd)
        except OSError as err:
            # Not enough room for it yet: the journal works without, and tries later.
            self.spare.unlink(missing_ok=True)
            log.debug("cannot allocate %s: %s", self.spare, err)

    def release(self) -> bool:
        """Give the spare back to the file system; True when there was one to give."""
        try:
            self.spare.unlink()
        except FileNotFoundError:
            return False
        log.error(
            "disk full at %s: released the journal's %d KiB spare; reads are still recorded",
            self.journal.parent,
            SPARE_BYTES // 1024,
        )
        self._raise("the journal is running on its spare room")
        self.full = True
        return True

    def refuse(self, needed: int) -> JournalDiskFullError:
        """The error for a commit the disk has no room for (alarm raised, logged once)."""
        error = JournalDiskFullError(str(self.journal), needed, free_bytes(self.journal.parent))
        self.refused += 1
        if not self.full or self.refused == 1:
            log.error("%s; reads are refused until there is space", error)
        self.full = True
        self._raise(f"reads are refused: {error}", needed_bytes=needed)
        return error

    def _raise(self, text: str, **details: int) -> None:
        self.alarms.raise_(
            ALARM_DISK_FULL,
            f"disk full on {self.journal.parent}: {text}",
            Severity.CRITICAL,
            **details,
        )

    def committed(self) -> None:
        """A commit worked: leave the disk-full state (once), and re-arm the spare."""
        if self.full and not self.spare.exists():
            self.ensure_spare(force=self.refused > 0)
        if self.full and self.spare.exists():
            self.full = False
            log.info(
                "disk space is back at %s (%d reads were refused)",
                self.journal.parent,
                self.refused,
            )
            self.refused = 0
            self.alarms.clear(ALARM_DISK_FULL)
