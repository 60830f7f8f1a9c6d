"""``{state_dir}/status.json``: what the running daemon tells ``scanfleet status``.

The publisher rewrites the file atomically (temporary file + rename) when its
content changes, at most once per ``min_interval`` seconds, and otherwise every
``heartbeat`` seconds so a reader can tell a live daemon from a stale file. It
holds no journal figures: ``scanfleet status`` reads those from the journal
itself, read-only, so they are right even when the daemon is not running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.slotfile import SlotFile

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATUS_SCHEMA = "scanfleet.status/1"
SLOT_SUFFIX = ".slot"
"""``status.json.slot``: the same document in a preallocated file (see :mod:`slotfile`),
written when ``status.json`` cannot be (a full disk), so ``status`` still sees a live
daemon and its disk-full alarm."""
SLOT_SIZE = 16384


class StatusFile:
    """Rate-limited atomic writer of the status file."""

    def __init__(self, path: Path, *, min_interval: float = 1.0, heartbeat: float = 10.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self.heartbeat = heartbeat
        self._last_write: float | None = None
        self._last_content: dict[str, Any] | None = None
        self._failed = False
        self._slot = SlotFile(slot_path(path), slot_size=SLOT_SIZE, mode=0o640)
        self._prepared = False

    def prepare(self) -> None:
        """Remove a stale temporary file and preallocate the slot (once; before a full disk)."""
        if self._prepared:
            return
        self._prepared = True
        _remove_stale_tmp(self.path)
        try:
            self._slot.preallocate()  # now, while there is space
        except OSError as err:
            log.warning("cannot preallocate %s: %s", self._slot.path, err)

    def update(self, content: dict[str, Any], *, force: bool = False) -> bool:
        """Write *content* if it changed (or the heartbeat is due); True when written.

        *force* skips the rate limit (state transitions, shutdown).
        """
        self.prepare()
        now = time.monotonic()
        elapsed = float("inf") if self._last_write is None else now - self._last_write
        changed = content != self._last_content
        if not force and (
            elapsed < self.min_interval or (not changed and elapsed < self.heartbeat)
        ):
            return False
        document = {
            "schema": STATUS_SCHEMA,
            "written_at": datetime.now(UTC).isoformat(),
            **content,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(document, sort_keys=True) + "\n", encoding="utf-8")
            # rename() is atomic: a reader sees the old or the new file, never half of one.
            tmp.replace(self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            # The status file is a convenience; publishing must go on without it. The
            # preallocated slot needs no free space: a full disk still shows a live daemon.
            if not self._failed:
                log.warning("cannot write %s (%s): using %s", self.path, err, self._slot.path)
            self._failed = True
            if not self._store_slot(document):
                return False
            self._last_write = now
            self._last_content = content
            return True
        if self._failed:
            log.info("%s written again", self.path)
        self._failed = False
        self._last_write = now
        self._last_content = content
        return True

    def _store_slot(self, document: dict[str, Any]) -> bool:
        try:
            self._slot.store(document, sync=False)
        except ValueError:
            # Too big for the slot: the figures go, the liveness and alarms stay.
            slim = {k: document[k] for k in document if k not in ("counters", "devices")}
            try:
                self._slot.store(slim, sync=False)
            except (OSError, ValueError):
                return False
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the slot file."""
        self._slot.close()


def slot_path(path: Path) -> Path:
    """Where the preallocated copy of status file *path* lives."""
    return path.with_name(path.name + SLOT_SUFFIX)


def _remove_stale_tmp(path: Path) -> None:
    # Left by a daemon killed between write and rename (or a failed write).
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_status(path: Path) -> dict[str, Any] | None:
    """The newest status document: *path* or its preallocated slot; None when neither."""
    slot = SlotFile(slot_path(path), slot_size=SLOT_SIZE).load()
    found = [d for d in (_read_json(path), slot) if d is not None]
    if not found:
        return None
    return max(found, key=lambda d: str(d.get("written_at", "")))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("cannot read %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """True when a process with *pid* exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_age_s(document: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds since the daemon wrote *document*, or None when it carries no valid time."""
    try:
        written = datetime.fromisoformat(document["written_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return ((now or datetime.now(UTC)) - written).total_seconds()
